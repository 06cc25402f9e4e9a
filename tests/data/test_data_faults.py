"""Damaged data is reported where it is: a truncated or bit-flipped TFRecord names the file and record, an
episode whose fields have the wrong shape names the episode and field (expected vs actual); with
data.skip_bad_episodes they are counted and skipped and the rest is read."""
import shutil

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from shallow_pi_jax.data import norm_stats as ns
from shallow_pi_jax.data import synthetic
from shallow_pi_jax.data.config import DataConfig, DatasetSpec
from shallow_pi_jax.data.pipeline import make_dataset

LENGTHS = (3, 4, 5, 6, 7, 8)  # steps per episode, all different so frame counts say which were read


@pytest.fixture(scope="module")
def clean(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("faults")
    rng = np.random.default_rng(0)
    episodes = [synthetic.libero_episode(rng, n, index=i) for i, n in enumerate(LENGTHS)]
    synthetic.write_dataset("eps", str(root / "clean"), synthetic.libero_features(), episodes)
    tok = tokenizer
    stats = {k: ns.NormStats(np.zeros(8), np.ones(8), -np.ones(8), np.ones(8)) for k in ("state", "actions")}
    ns.save(stats, root / "stats.json")
    return root, tok


def damaged(clean, tmp_path):
    """A copy of the clean dataset: (data_dir, its one shard, the shard's records)."""
    root, _ = clean
    shutil.copytree(root / "clean", tmp_path / "data")
    shard = next((tmp_path / "data" / "eps" / "1.0.0").glob("eps-train.tfrecord-*"))
    return str(tmp_path / "data"), shard, [r.numpy() for r in tf.data.TFRecordDataset(str(shard))]


def steps_of(record: bytes) -> int:
    return len(tf.train.Example.FromString(record).features.feature["steps/is_first"].int64_list.value)


def file_path_of(record: bytes) -> str:
    feature = tf.train.Example.FromString(record).features.feature["episode_metadata/file_path"]
    return feature.bytes_list.value[0].decode()


def rewrite(shard, records):
    with tf.io.TFRecordWriter(str(shard)) as w:  # valid framing and CRCs: only the content is wrong
        for r in records:
            w.write(r)


def with_field(record: bytes, key: str, values) -> bytes:
    ex = tf.train.Example.FromString(record)
    field = ex.features.feature[key].float_list
    del field.value[:]
    field.value.extend(values)
    return ex.SerializeToString()


def cfg(clean, data_dir, **kw):
    root, tok = clean
    return DataConfig(datasets=(DatasetSpec("eps", data_dir, "libero"),), batch_size=2, horizon=3, action_dim=8,
                      image_size=16, max_token_len=24, tokenizer_path=tok, norm_stats_path=str(root / "stats.json"),
                      process_index=0, process_count=1, **kw)


def read_all(clean, data_dir, **kw):
    it = make_dataset(cfg(clean, data_dir, **kw), train=False)
    return sum(b["state"].shape[0] for b in it), it


def offset_of(records, k):
    return sum(16 + len(r) for r in records[:k])  # TFRecord: 8-byte length, 4-byte CRC, data, 4-byte CRC


def test_truncated_file_is_named_with_the_record_where_it_ends(clean, tmp_path):
    data_dir, shard, records = damaged(clean, tmp_path)
    cut = offset_of(records, 3) + 16 + len(records[3]) // 2
    shard.write_bytes(shard.read_bytes()[:cut])
    with pytest.raises(ValueError, match=rf"file '{shard}' is truncated: it ends \({cut} bytes\) inside record 3 "
                                         r"\(episode 'eps-train.tfrecord-00000-of-00001__3'.*records 3\.\.5 of this "
                                         r"file cannot be read.*skip_bad_episodes"):
        read_all(clean, data_dir)


@pytest.mark.parametrize("where", [
    lambda record: 40,
    # in a feature's name: the Example still decodes, with 'steps/action' missing, so only the CRC says why
    lambda record: record.index(b"steps/action") + 11,
], ids=["data", "field-name"])
def test_flipped_bit_is_named_with_file_and_record(clean, tmp_path, where):
    data_dir, shard, records = damaged(clean, tmp_path)
    blob = bytearray(shard.read_bytes())
    blob[offset_of(records, 2) + 12 + where(records[2])] ^= 0x04  # in record 2's data: its data CRC fails
    shard.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match=rf"file '{shard}' is corrupt at record 2 \(episode "
                                         rf"'eps-train.tfrecord-00000-of-00001__2', byte {offset_of(records, 2)}\): "
                                         r"it fails TFRecord's CRC check; records 2\.\.5"):
        read_all(clean, data_dir)


def test_corrupt_file_is_skipped_and_counted_when_configured(clean, tmp_path):
    data_dir, shard, records = damaged(clean, tmp_path)
    blob = bytearray(shard.read_bytes())
    blob[offset_of(records, 4) + 3] ^= 0x80  # record 4's length field: the reader cannot go on past it
    shard.write_bytes(bytes(blob))
    frames, it = read_all(clean, data_dir, skip_bad_episodes=True)
    assert frames == sum(steps_of(r) for r in records[:4])
    assert it.num_skipped_episodes == 2 and it.skipped_by_reason == {"corrupt": 2}


@pytest.mark.parametrize("key, values, match", [
    # one value per step: a scalar state where the spec says (8,) (the wrong rank)
    ("steps/observation/state", lambda n: np.arange(n), r"field 'steps/observation/state' \(state\) has {n} values "
     r"over {n} steps, expected {n} × 8 = {n8} \(per-step shape \(8,\)\); that is 1 per step"),
    ("steps/action", lambda n: np.zeros(n * 6), r"field 'steps/action' \(actions\) has {n6} values over {n} steps, "
     r"expected {n} × 7 = {n7} \(per-step shape \(7,\)\); that is 6 per step"),
])
def test_episode_with_wrong_field_shape_names_episode_and_field(clean, tmp_path, key, values, match):
    data_dir, shard, records = damaged(clean, tmp_path)
    n = steps_of(records[2])
    records[2] = with_field(records[2], key, values(n))
    rewrite(shard, records)
    episode = rf"eps-train.tfrecord-00000-of-00001__2 \({file_path_of(records[2])}\)"
    with pytest.raises(ValueError, match=rf"dataset 'eps', episode '{episode}' \(file '{shard}', record 2\): "
                       + match.format(n=n, n6=6 * n, n7=7 * n, n8=8 * n)):
        read_all(clean, data_dir)


def test_episode_whose_fields_disagree_on_steps_names_the_field(clean, tmp_path):
    data_dir, shard, records = damaged(clean, tmp_path)
    n = steps_of(records[1])
    state = tf.train.Example.FromString(records[1]).features.feature["steps/observation/state"].float_list.value
    records[1] = with_field(records[1], "steps/observation/state", list(state) + list(state[:8]))  # one step more
    rewrite(shard, records)
    with pytest.raises(ValueError, match=rf"episode 'eps-train.tfrecord-00000-of-00001__1 "
                                         rf"\({file_path_of(records[1])}\)': field 'steps/observation/state' \(state\) "
                                         rf"has {n + 1} steps, expected {n} like the episode's other fields"):
        read_all(clean, data_dir)


def test_bad_episodes_inside_a_file_are_skipped_and_the_rest_read(clean, tmp_path):
    data_dir, shard, records = damaged(clean, tmp_path)
    records[1] = with_field(records[1], "steps/action", [1.0])  # does not parse
    state = tf.train.Example.FromString(records[4]).features.feature["steps/observation/state"].float_list.value
    records[4] = with_field(records[4], "steps/observation/state", list(state) + list(state[:8]))  # parses
    rewrite(shard, records)
    frames, it = read_all(clean, data_dir, skip_bad_episodes=True)
    assert frames == sum(steps_of(r) for i, r in enumerate(records) if i not in (1, 4))
    assert it.num_skipped_episodes == 2 and it.skipped_by_reason == {"shape": 2}


def test_encoded_state_tensor_is_refused_before_reading(clean, tmp_path):
    image = tfds.features.Image(shape=(32, 32, 3), encoding_format="png")
    features = tfds.features.FeaturesDict({"steps": tfds.features.Dataset({
        "observation": {"image": image, "wrist_image": image,
                        "state": tfds.features.Tensor(shape=(8,), dtype=np.float32, encoding="bytes")},
        "action": tfds.features.Tensor(shape=(7,), dtype=np.float32), "language_instruction": tfds.features.Text(),
        "is_first": np.bool_, "is_last": np.bool_}), "episode_metadata": {"file_path": tfds.features.Text()}})
    rng = np.random.default_rng(0)
    synthetic.write_dataset("eps", str(tmp_path), features, [synthetic.libero_episode(rng, 3)])
    with pytest.raises(ValueError, match=r"dataset 'eps': field 'steps/observation/state' \(state\): expected a plain "
                                         r"float tensor per step \(tfds encoding 'none'\), got encoding 'bytes'"):
        make_dataset(cfg(clean, str(tmp_path)))
