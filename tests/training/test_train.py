"""The trainer end to end at smoke-test sizes: sharded KD steps, exports, NaN stop, kill -9 and resume."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import FAST_COMPILE, demo_data_with_stats

from shallow_pi_jax import train
from shallow_pi_jax.checkpoint import openpi_params
from shallow_pi_jax.models.config import ModelConfig
from shallow_pi_jax.models.params import init_params, param_shapes
from shallow_pi_jax.training import loop, recipes
from shallow_pi_jax.training.checkpoints import RunCheckpoints

pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).parents[2]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A small demo dataset, its norm stats and a random 18-layer tiny teacher in openpi's layout."""
    root = tmp_path_factory.mktemp("train_assets")
    ds, stats = demo_data_with_stats(root, num_episodes=16)
    teacher = root / "teacher" / "params"
    model = recipes.distill_config(6, "size=tiny").model
    params = init_params(ModelConfig.from_dict(model), jax.random.PRNGKey(3))
    openpi_params.save_params(jax.device_get(params), teacher)
    return {"data_dir": str(ds.data_dir), "tokenizer": str(ds.tokenizer_path), "stats": str(stats),
            "teacher": str(teacher)}


def tiny_config(assets, arg="size=tiny", depth=6):
    c = recipes.distill_config(depth, arg)
    c.data.datasets[0]["data_dir"] = assets["data_dir"]
    c.data.tokenizer_path = assets["tokenizer"]
    c.data.norm_stats_path = assets["stats"]
    c.teacher.params = assets["teacher"]
    c.mesh.data, c.mesh.fsdp = 4, 2
    return c


def plain_config(assets):
    c = recipes.teacher_config("size=tiny")
    c.data.datasets[0]["data_dir"] = assets["data_dir"]
    c.data.tokenizer_path, c.data.norm_stats_path = assets["tokenizer"], assets["stats"]
    return c


def test_three_distillation_steps_on_a_simulated_8_device_mesh(assets, tmp_path):
    assert jax.device_count() == 8
    c = tiny_config(assets)
    c.student.freeze_vision = True  # frozen and equal to the teacher's: image tokens computed once, shared
    metrics, state = train.run(c, tmp_path, max_steps=3, progress=False)
    for k in ("loss", "loss/task", "loss/velocity_kd", "loss/attention_kd", "grad_norm", "learning_rate",
              "samples_per_s", "step_time_s"):
        assert k in metrics and np.isfinite(metrics[k]), k
    assert metrics["loss/attention_kd"] > 0 and metrics["loss/velocity_kd"] > 0
    assert int(state.step) == 3
    teacher = openpi_params.restore_params(assets["teacher"])
    img_t = jax.tree.leaves(teacher["PaliGemma"]["img"])
    img_s = jax.tree.leaves(jax.device_get(state.params["PaliGemma"]["img"]))
    assert all(np.array_equal(a, b) for a, b in zip(img_t, img_s)), "frozen vision tower changed"
    emb_t = teacher["PaliGemma"]["llm"]["embedder"]["input_embedding"]
    assert not np.array_equal(emb_t, jax.device_get(state.params["PaliGemma"]["llm"]["embedder"]["input_embedding"]))
    # params are FSDP-sharded over the mesh, not replicated everywhere
    q = state.params["PaliGemma"]["llm"]["layers"]["mlp"]["linear"]
    assert q.sharding.spec != jax.sharding.PartitionSpec() and len(q.sharding.device_set) == 8

    student = tmp_path / "student"
    lm = json.loads((student / "layer_map.json").read_text())
    assert lm["indices"] == [0, 3, 7, 10, 14, 17] and lm["teacher"] == assets["teacher"]
    cfg = ModelConfig.from_dict(json.loads((student / "model_config.json").read_text()))
    assert cfg.depth == 6
    openpi_params.validate_params(openpi_params.params_shapes(student / "params"), param_shapes(cfg))
    assert (student / "assets" / "norm_stats.json").exists()
    assert json.loads((tmp_path / "config.json").read_text())["student"]["depth"] == 6
    assert any((tmp_path / "tensorboard").iterdir())
    ckpts = RunCheckpoints(tmp_path, 3)
    assert ckpts.latest_step() == 3
    # what resume reads back is exactly the state the run ended with: params, optimizer state, step
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    step, restored = ckpts.restore(abstract)
    assert step == 3 and int(restored.step) == 3
    for a, b in zip(jax.tree.leaves(jax.device_get(restored)), jax.tree.leaves(jax.device_get(state))):
        np.testing.assert_array_equal(a, b)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(assets, tmp_path, monkeypatch):
    real = loop.make_dataset

    def poisoned(cfg, train=True, **kw):
        it = real(cfg, train, **kw)
        for i, b in enumerate(it):
            if i == 3:  # the batch of step 4
                b = dict(b, actions=np.full_like(b["actions"], np.nan))
            yield b

    monkeypatch.setattr(loop, "make_dataset", poisoned)  # the name the training loop calls
    c = plain_config(assets)
    with pytest.raises(FloatingPointError, match="non-finite values at step 4"):
        train.run(c, tmp_path, progress=False)
    ck = RunCheckpoints(tmp_path, 3)
    assert ck.latest_step() == 2
    assert not (tmp_path / "student").exists()


CONFIG_FILE = '''
from shallow_pi_jax.training import recipes
def get_config(arg=None):
    c = recipes.teacher_config("size=tiny")  # plain training: the same loop, resume and checkpoints
    c.data.datasets[0]["data_dir"] = {data_dir!r}
    c.data.tokenizer_path, c.data.norm_stats_path = {tok!r}, {stats!r}
    c.num_steps, c.checkpoint_every, c.async_checkpoint = 40, 1, False
    return c
'''


def test_kill_9_and_rerun_resumes_from_last_complete_checkpoint(assets, tmp_path):
    cfg_file = tmp_path / "cfg.py"
    cfg_file.write_text(CONFIG_FILE.format(data_dir=assets["data_dir"], tok=assets["tokenizer"],
                                           stats=assets["stats"]))
    wd = tmp_path / "run"
    cmd = [sys.executable, "-m", "shallow_pi_jax.train", f"--config={cfg_file}", f"--workdir={wd}"]
    env = {**os.environ, "XLA_FLAGS": FAST_COMPILE}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and not (wd / "checkpoints" / "3").exists():
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (wd / "checkpoints" / "3").exists(), "training did not reach step 3 in time"
    ck = RunCheckpoints(wd, 3)
    last = ck.latest_step()
    assert last is not None and last >= 3

    out = subprocess.run(cmd + ["--config.num_steps=" + str(last + 2)], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resumed from {wd / 'checkpoints'} at step {last}" in out.stdout
    assert RunCheckpoints(wd, 3).latest_step() == last + 2
