"""Numerical parity against openpi reference outputs (the `io.npz` + `params/` fixture layout).

Used by `python -m shallow_pi_jax.openpi_parity` and by the tests: builds the model from the fixture's
`config.json`, loads `params/`, replays the recorded inputs with the recorded noise and time, and
reports max-abs errors against openpi's outputs.
"""
from __future__ import annotations

import pathlib
from collections.abc import Mapping
from io import BytesIO

import jax
import jax.numpy as jnp
import numpy as np

from shallow_pi_jax import fileio
from shallow_pi_jax.checkpoint.policy_dir import load_model
from shallow_pi_jax.models.config import ModelConfig
from shallow_pi_jax.models.pi0 import Pi0

# float32 tolerances for a reimplementation (openpi fixtures' README).
TOLERANCES = {"prefix_tokens": 1e-5, "v_t": 1e-5, "loss": 1e-5, "sample_actions": 1e-4}


def fixture_observation(io: Mapping[str, np.ndarray], cfg: ModelConfig) -> dict:
    return {
        "images": {cam: io[f"images.{cam}"] for cam in cfg.image_keys},
        "image_masks": {cam: io[f"image_masks.{cam}"] for cam in cfg.image_keys},
        "state": io["state"],
        "tokenized_prompt": io["tokenized_prompt"],
        "tokenized_prompt_mask": io["tokenized_prompt_mask"],
    }


def compute_outputs(model: Pi0, params, io: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Our prefix tokens, v_t, loss and sampling trajectory for the recorded inputs, noise and time."""
    obs = fixture_observation(io, model.config)
    actions, noise, time = (jnp.asarray(io[k]) for k in ("actions", "noise", "time"))
    t = time[:, None, None]
    x_t, u_t = t * noise + (1 - t) * actions, noise - actions
    variables = {"params": params}

    @jax.jit
    def run(variables, obs, x_t, time, sample_noise):
        prefix = model.apply(variables, obs, method=Pi0.embed_prefix)
        v_t = model.apply(variables, obs, x_t, time, method=Pi0.velocity)
        sample, traj = model.apply(variables, None, obs, num_steps=int(io["num_steps"]), noise=sample_noise,
                                   return_trajectory=True, method=Pi0.sample_actions)
        return prefix.tokens, prefix.mask, v_t, sample, traj

    tokens, mask, v_t, sample, traj = run(variables, obs, x_t, time, jnp.asarray(io["sample_noise"]))
    return {
        "prefix_tokens": np.asarray(tokens), "prefix_mask": np.asarray(mask), "x_t": np.asarray(x_t),
        "v_t": np.asarray(v_t), "loss": np.asarray(jnp.mean(jnp.square(v_t - u_t), axis=-1)),
        "sample_actions": np.asarray(sample), "sample_x_traj": np.asarray(traj["x"]),
        "sample_times": np.asarray(traj["time"]),
    }


def errors(ours: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Max-abs error per output. Prefix rows whose token is padding are junk in openpi and skipped."""
    valid = ref["prefix_mask"]
    return {
        "prefix_tokens": float(np.abs(ours["prefix_tokens"] - ref["prefix_tokens"])[valid].max()),
        "v_t": float(np.abs(ours["v_t"] - ref["v_t"]).max()),
        "loss": float(np.abs(ours["loss"] - ref["loss"]).max()),
        "sample_actions": float(np.abs(ours["sample_actions"] - ref["sample_actions"]).max()),
    }


def run_fixture(fixture_dir) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    fixture_dir = pathlib.Path(fixture_dir)
    cfg = ModelConfig.from_fixture(fixture_dir / "config.json", dtype="float32")
    model, params = load_model(fixture_dir / "params", config=cfg)
    io = dict(np.load(fixture_dir / "io.npz"))
    ours = compute_outputs(model, params, io)
    return errors(ours, io), ours


def check_fixture(fixture_dir: pathlib.Path, save_outputs: pathlib.Path | None = None) -> bool:
    """run_fixture, its errors printed against TOLERANCES (and our outputs saved to `save_outputs`);
    whether every one is within its tolerance."""
    errs, ours = run_fixture(fixture_dir)
    print(f"{'output':<16}{'max abs err':>14}{'tolerance':>12}  ok")
    failed = False
    for name, err in errs.items():
        tol = TOLERANCES[name]
        ok = err <= tol
        failed |= not ok
        print(f"{name:<16}{err:>14.3e}{tol:>12.0e}  {'yes' if ok else 'NO'}")
    if save_outputs:
        buf = BytesIO()
        np.savez(buf, **{k: ours[k] for k in ("v_t", "loss", "sample_actions")})
        fileio.write_bytes(save_outputs, buf.getvalue())
        print(f"wrote {save_outputs}")
    print("PARITY FAILED" if failed else "parity ok")
    return not failed
