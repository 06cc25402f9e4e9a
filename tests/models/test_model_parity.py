"""Our Flax π0 / π0.5 reproduces openpi's own outputs on the shared tiny fixtures."""
import jax
import numpy as np
import pytest
from conftest import FIXTURES

from shallow_pi_jax import openpi_parity
from shallow_pi_jax.checkpoint.policy_dir import load_model
from shallow_pi_jax.eval import parity
from shallow_pi_jax.models.config import ModelConfig
from shallow_pi_jax.models.pi0 import Pi0


@pytest.fixture(scope="module", params=["pi0", "pi05"])
def run(request):
    d = FIXTURES / request.param
    errs, ours = parity.run_fixture(d)
    return d, errs, ours, dict(np.load(d / "io.npz"))


def test_outputs_within_tolerance(run):
    _, errs, _, _ = run
    for name, err in errs.items():
        assert err <= parity.TOLERANCES[name], (name, err)


def test_sampling_trajectory_and_times(run):
    _, _, ours, io = run
    np.testing.assert_allclose(ours["sample_times"], io["sample_times"], atol=0, rtol=0)
    np.testing.assert_allclose(ours["sample_x_traj"], io["sample_x_traj"], atol=1e-4, rtol=0)
    np.testing.assert_array_equal(ours["prefix_mask"], io["prefix_mask"])


def test_compute_loss_draws_openpi_noise_and_time(run):
    """compute_loss from openpi's rng: same ε and t bit for bit, same loss.

    Run op by op (no jit), as openpi recorded x_t: under jit XLA contracts t·ε + (1−t)·a into an FMA,
    a 1-ulp change of x_t that this deliberately perturbed tiny network amplifies ~250× in v_t.
    """
    from shallow_pi_jax.models.pi0 import flow_targets

    d, _, _, io = run
    ft = flow_targets(jax.random.wrap_key_data(io["loss_rng_key_data"]), io["actions"])
    for name in ("noise", "time", "x_t", "u_t"):
        np.testing.assert_array_equal(np.asarray(getattr(ft, name)), io[name])
    cfg = ModelConfig.from_fixture(d / "config.json")
    model, params = load_model(d / "params", config=cfg)
    obs = parity.fixture_observation(io, cfg)
    rng = jax.random.wrap_key_data(io["loss_rng_key_data"])
    loss = model.apply({"params": params}, rng, obs, io["actions"], method=Pi0.compute_loss)
    np.testing.assert_allclose(np.asarray(loss), io["loss_compute_loss"], atol=1e-5, rtol=0)


def test_parity_cli_saves_outputs_and_fails_on_wrong_params(tmp_path, monkeypatch):
    """The CLI exits 0 on the real fixture and 1 when the outputs are off."""

    out = tmp_path / "out.npz"
    assert openpi_parity.main([str(FIXTURES / "pi0"), "--save-outputs", str(out)]) == 0
    saved = np.load(out)
    assert set(saved.files) == {"v_t", "loss", "sample_actions"}
    io = np.load(FIXTURES / "pi0" / "io.npz")
    assert saved["v_t"].shape == io["v_t"].shape

    real = parity.compute_outputs
    monkeypatch.setattr(parity, "compute_outputs",
                        lambda *a: {**real(*a), "v_t": real(*a)["v_t"] + 1e-3})
    assert openpi_parity.main([str(FIXTURES / "pi0")]) == 1
