"""Remote paths (gs://) are read through fileio.source, as openpi reads them: a policy directory's
metadata, checksums and norm stats from a fake gs:// bucket (conftest.fake_gs), and a clear error for a
scheme the filesystem layer does not know. (A remote LeRobot dataset, norm stats and tokenizer feeding
the pipeline: test_lerobot.py.)"""
import json
import pathlib

import numpy as np
import pytest

from shallow_pi_jax import fileio
from shallow_pi_jax.checkpoint import checksums, openpi_params, policy_dir
from shallow_pi_jax.data import norm_stats as ns


@pytest.fixture
def remote_policy(tmp_path, fake_gs):
    """A sealed policy directory (params, assets/norm_stats.json, checksums.json) uploaded to gs://."""
    local = tmp_path / "policy"
    params = {"PaliGemma": {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, np.float32)}}
    openpi_params.save_params(params, local / "params")
    stats = {"state": ns.compute(np.arange(12, dtype=np.float64).reshape(4, 3)),
             "actions": ns.compute(np.arange(8, dtype=np.float64).reshape(4, 2))}
    ns.save(stats, local / "assets" / "norm_stats.json")
    checksums.write_manifest(local)
    return fake_gs.upload(local, "gs://bucket/ckpt"), stats


def test_a_remote_policy_directory_reads_through_the_filesystem_layer(remote_policy, fake_gs):
    url, stats = remote_policy
    assert str(openpi_params.resolve_params_dir(url)) == f"{url}/params"
    assert str(openpi_params.resolve_params_dir(f"{url}/params")) == f"{url}/params"
    d = policy_dir.read(url)  # the cheap checksum check: sizes of all files, contents of the small ones
    assert (str(d.root), str(d.params_dir), d.config, d.record) == (url, f"{url}/params", None, None)
    assert {f"{url}/checksums.json", f"{url}/params/_METADATA", f"{url}/assets/norm_stats.json"} <= set(
        fake_gs.opened)
    got = ns.load(d.norm_stats())
    for key in stats:
        np.testing.assert_array_equal(got[key].mean, stats[key].mean)
        np.testing.assert_array_equal(got[key].q99, stats[key].q99)
    assert checksums.verify(url, hash_params=True)  # every byte, tensor data included, read remotely

    # A changed file in the bucket is named with its remote path; a missing one as well.
    meta = json.loads(fake_gs.cat(f"{url}/params/_METADATA"))
    fake_gs.pipe(f"{url}/params/_METADATA", json.dumps(meta, indent=2).encode())
    with pytest.raises(ValueError, match=rf"^{url}: 1 file\(s\) differ .*params/_METADATA: expected size "):
        policy_dir.read(url)
    fake_gs.rm(f"{url}/params/_METADATA")
    with pytest.raises(ValueError, match=rf"^params_dir: {url}: params/_METADATA is missing"):
        policy_dir.read(url)
    with pytest.raises(ValueError, match=rf"norm_stats_path: file '{url}/nope/norm_stats.json' does not exist"):
        ns.load(f"{url}/nope/norm_stats.json")


def test_an_unknown_scheme_is_refused_not_read_as_a_local_path():
    with pytest.raises(ValueError, match=r"^memory://x/norm_stats\.json: unsupported filesystem 'memory://' "
                                         r"\(expected a local path or one of gs://, s3://, az://, hf://\)"):
        ns.load("memory://x/norm_stats.json")
    assert fileio.source("~/a") == pathlib.Path.home() / "a"
