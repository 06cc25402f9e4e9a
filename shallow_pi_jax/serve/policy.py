"""A servable policy: checkpoint + openpi input/output transforms + a jitted sampler.

    policy = load_policy("runs/l6/student", env="libero", tokenizer_path="paligemma_tokenizer.model")
    out = policy.infer({"observation/image": img, "observation/wrist_image": wrist,
                        "observation/state": state, "prompt": "put the bowl on the plate"})
    out["actions"]            # [horizon, robot action dim], unnormalised (openpi's Policy.infer reply)

A checkpoint directory is either a student written by the trainer / shallow_pi_jax.make_student
(`params/`, `model_config.json`, `layer_map.json`, `assets/norm_stats.json`) or an openpi
checkpoint (`params/`, `assets/<asset_id>/norm_stats.json`); for the latter the sizes are read
from the param tree and the horizon / prompt length come from the env preset or overrides.

Sampling is jitted once per (batch size, set of cameras with a true mask, prompt bucket): cameras
whose mask is false for the whole batch skip the vision tower (openpi runs it anyway) and leave the
prefix, as does the prompt padding past the smallest bucket (32/64/128/max_token_len) that holds the
batch's longest prompt. This is exact: masked prefix tokens are never attended by valid tokens and do
not shift positions (models/prefix.py). load_policy (what the server runs) compacts; a Policy built
directly keeps openpi's prefix length unless given `compact_prefix=True` (the skipped cameras'
tokens are zeros then).
"""
from __future__ import annotations

import dataclasses
import functools
import pathlib
import time
from collections.abc import Callable, Mapping
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from shallow_pi_jax.checkpoint import policy_dir, policy_record
from shallow_pi_jax.data import norm_stats as data_norm_stats
from shallow_pi_jax.data import transforms as data_transforms
from shallow_pi_jax.data.config import DataConfig, DatasetSpec
from shallow_pi_jax.models.config import ModelConfig, is_pi05_tree
from shallow_pi_jax.models.observation import dummy_observation, validate_observation
from shallow_pi_jax.models.pi0 import CameraSkippingPi0, CompactPi0
from shallow_pi_jax.models.prefix import PROMPT_BUCKETS, PrefixPlan, active_cameras, prefix_plan
from shallow_pi_jax.serve.presets import EnvPreset, get_preset
from shallow_pi_jax.sim.demo_tokenizer import cached_tokenizer


@functools.partial(jax.jit, static_argnames=("cfg", "num_steps", "active", "plan"))
def _sample(params, obs, noise, *, cfg: ModelConfig, num_steps: int, active: Optional[tuple[str, ...]],
            plan: Optional[PrefixPlan] = None):
    # With a plan the prefix is compacted (its cameras and prompt bucket only); without, every
    # camera keeps its tokens and only the vision tower of those not `active` is skipped.
    model = CompactPi0(cfg, plan=plan) if plan is not None else CameraSkippingPi0(cfg, active_cameras=active)
    return model.apply({"params": params}, None, obs, num_steps=num_steps, noise=noise, method="sample_actions")


class Policy:
    """openpi-style policy: `infer(raw observation) -> {"actions", "state", "policy_timing"}`.

    Args:
      config, params: the model and its openpi params tree.
      input_transform / output_transform: data.transforms objects (None: observations are already
        model inputs, replies are model-space actions).
      num_steps: Euler steps of the flow (openpi: 10).
      noise_seed: fixed noise for every call (reproducible replies); None draws fresh noise per call
        from `seed`.
      skip_masked_cameras: skip the vision tower for cameras masked on the whole batch.
      compact_prefix: also leave those cameras' tokens and the prompt padding past the smallest of
        `prompt_buckets` that holds the batch's longest prompt out of the prefix (exact up to float
        summation order, ~1e-6; one compiled program per batch size, camera set and bucket). Needs
        skip_masked_cameras. Off here (bit-identical to the uncompacted program), on in load_policy.
      check_input: called with each raw observation before the input transform; raises ValueError
        naming the bad field (load_policy passes the preset's RequestSpec.check).
    """

    def __init__(self, config: ModelConfig, params, *, input_transform=None, output_transform=None,
                 num_steps: int = 10, noise_seed: int | None = None, seed: int = 0,
                 skip_masked_cameras: bool = True, metadata: Mapping | None = None,
                 check_input: Callable[[Mapping], None] | None = None, compact_prefix: bool = False,
                 prompt_buckets: tuple[int, ...] = PROMPT_BUCKETS):
        if num_steps < 1:
            raise ValueError(f"num_steps: expected >= 1, got {num_steps}")
        if any(int(b) < 1 for b in prompt_buckets):
            raise ValueError(f"prompt_buckets: expected positive lengths, got {tuple(prompt_buckets)}")
        self.config = config
        self.params = params
        self.input_transform = input_transform
        self.output_transform = output_transform
        self.num_steps = int(num_steps)
        self.noise_seed = noise_seed
        self.skip_masked_cameras = skip_masked_cameras
        # Compaction drops the masked cameras' tokens, so it implies skipping their vision tower.
        self.compact_prefix = bool(compact_prefix and skip_masked_cameras)
        self.prompt_buckets = tuple(int(b) for b in prompt_buckets)
        self._rng = jax.random.PRNGKey(seed)
        self._metadata = dict(metadata or {})
        self.check_input = check_input

    @property
    def metadata(self) -> dict:
        return dict(self._metadata)

    def noise(self, batch_size: int) -> jax.Array:
        shape = (batch_size, self.config.action_horizon, self.config.action_dim)
        if self.noise_seed is not None:
            return jax.random.normal(jax.random.PRNGKey(self.noise_seed), shape, jnp.float32)
        self._rng, key = jax.random.split(self._rng)
        return jax.random.normal(key, shape, jnp.float32)

    def sample(self, obs: Mapping, noise=None) -> np.ndarray:
        """Model-space actions [B, H, action_dim] for a batch of model inputs."""
        b = validate_observation(self.config, obs)
        if noise is None:
            noise = self.noise(b)
        noise = jnp.asarray(noise, jnp.float32)
        want = (b, self.config.action_horizon, self.config.action_dim)
        if noise.shape != want:
            raise ValueError(f"noise: expected shape {want}, got {tuple(noise.shape)}")
        active = active_cameras(self.config, obs["image_masks"]) if self.skip_masked_cameras else None
        plan = None
        if self.compact_prefix:
            plan = prefix_plan(self.config, obs["image_masks"], obs["tokenized_prompt_mask"], self.prompt_buckets)
            active = None  # the plan's cameras are the active ones; one static key, not two
        obs = {k: obs[k] for k in ("images", "image_masks", "state", "tokenized_prompt", "tokenized_prompt_mask")}
        out = _sample(self.params, obs, noise, cfg=self.config, num_steps=self.num_steps, active=active, plan=plan)
        return np.asarray(jax.device_get(out))

    def infer(self, obs: Mapping, noise=None) -> dict:
        """One raw robot observation → openpi's reply dict (actions unnormalised for the robot)."""
        if not isinstance(obs, Mapping):
            raise ValueError(f"observation: expected a dict, got {type(obs).__name__}")
        start = time.monotonic()
        if self.check_input is not None:
            self.check_input(obs)
        inputs = self.input_transform(obs) if self.input_transform is not None else obs
        batched = jax.tree.map(lambda x: np.asarray(x)[None], inputs)
        if noise is not None:
            noise = np.asarray(noise, np.float32)[None]
        model_start = time.monotonic()
        actions = self.sample(batched, noise)[0]
        model_ms = 1000 * (time.monotonic() - model_start)
        out = {"state": np.asarray(inputs["state"]), "actions": actions}
        if self.output_transform is not None:
            out["actions"] = self.output_transform(actions, raw_state=self._raw_state(obs))
        # A robot must never be sent NaN: refuse the reply instead (the checks at load make this rare).
        if not np.all(np.isfinite(out["actions"])):
            raise ValueError("actions: the policy produced NaN or inf for this observation; not sending them "
                             "(check the checkpoint's params and norm stats)")
        out["policy_timing"] = {"infer_ms": 1000 * (time.monotonic() - start), "model_ms": model_ms}
        return out

    def _raw_state(self, obs: Mapping):
        """The robot's own state vector (for delta → absolute actions), None if not needed."""
        ot = self.output_transform
        if getattr(ot, "delta_mask", None) is None:
            return None
        # A missing part gives None: the input transform has already reported the missing field.
        return data_transforms.raw_state(obs, ot.spec.mapping)


# ----------------------------------------------------------------------------- loading checkpoints

@dataclasses.dataclass
class Checkpoint:
    root: pathlib.Path
    config: ModelConfig
    params: Any
    layer_map: dict | None
    norm_stats: pathlib.Path | None  # found in assets/, None when there is none
    params_dir: pathlib.Path | None = None
    record: policy_record.PolicyRecord | None = None  # how it sees the world (see resolve_record)


def load_checkpoint(path, *, action_horizon: int | None = None, max_token_len: int | None = None,
                    preset: EnvPreset | None = None, dtype: str | None = None, verify: bool = True,
                    params: bool = True, openpi_config: str | None = None) -> Checkpoint:
    """Read a policy directory (ours or openpi's); overrides fill only what it does not record.
    `verify`: check the files against its checksums.json (non-finite params are refused either way);
    `params=False`: metadata only (Checkpoint.params is None), cheap."""
    pd = policy_dir.read(path, verify=verify)
    default_horizon = None
    if pd.config is None:
        default_horizon = preset.horizon(is_pi05_tree(pd.shapes)) if preset else 50
    cfg = pd.model_config(action_horizon=action_horizon, max_token_len=max_token_len,
                          default_horizon=default_horizon)
    if dtype is not None:
        cfg = dataclasses.replace(cfg, dtype=dtype)
    loaded = policy_dir.load_model(pd.params_dir, config=cfg, verify=verify)[1] if params else None
    record = resolve_record(pd, cfg, preset, openpi_config)
    asset_id = record.asset_id if record and record.asset_id else (preset.asset_id if preset else None)
    return Checkpoint(pd.root, cfg, loaded, pd.layer_map, pd.norm_stats(asset_id), pd.params_dir, record)


def resolve_record(pd: policy_dir.PolicyDir, cfg: ModelConfig, preset: EnvPreset | None,
                   openpi_config: str | None = None) -> policy_record.PolicyRecord | None:
    """The checkpoint's policy_record.json; for one without (openpi's), the named openpi config's record,
    else the preset's default. A named config or a preset that contradicts it is an error naming both."""
    named = policy_record.openpi(openpi_config) if openpi_config else None
    record, where = policy_record.resolve(pd.record, f"{pd.root / policy_dir.RECORD}", named,
                                          f"--openpi-config {openpi_config}", named_wins=True)
    if record is None:
        if preset is None:
            return None
        # An openpi checkpoint's sizes come from its tree; the preset's record gives what the tree cannot tell.
        record = dataclasses.replace(preset.default_record(cfg), pi05=cfg.pi05, cameras=tuple(cfg.image_keys),
                                     max_token_len=cfg.max_token_len, action_horizon=cfg.action_horizon,
                                     action_dim=cfg.action_dim)
        where = f"--env {preset.name}'s default for {pd.root}"
    policy_record.check_model(record, where, cfg, f"the model ({pd.root}) has")
    if preset is not None:
        preset.check_record(record, where)
    return record


def serving_data_config(cfg: ModelConfig, preset: EnvPreset, *, tokenizer_path: str, norm_stats_path,
                        default_prompt: str | None = None,
                        record: policy_record.PolicyRecord | None = None) -> DataConfig:
    """The data config that turns this robot's observations into `cfg`'s inputs, as `record` (default: the
    preset's for this model) says: state in the prompt or not, delta actions, quantile or z-score."""
    record = record or preset.default_record(cfg)
    if cfg.image_size[0] != cfg.image_size[1]:
        raise ValueError(f"image_size: serving transforms need square images, got {cfg.image_size}")
    spec = DatasetSpec(name=f"serve_{preset.name}", mapping=preset.mapping,
                       delta_action_mask=record.delta_action_mask)
    return DataConfig(datasets=(spec,), horizon=cfg.action_horizon, action_dim=cfg.action_dim,
                      image_size=cfg.image_size[0], max_token_len=cfg.max_token_len,
                      tokenizer_path=str(tokenizer_path), norm_stats_path=str(norm_stats_path), pi05=cfg.pi05,
                      discrete_state_input=record.state_in_prompt, use_quantile_norm=record.quantile_norm,
                      default_prompt=default_prompt,
                      cameras=cfg.image_keys, augment=False)


def demo_tokenizer_path() -> pathlib.Path:
    """The demo task's tokenizer (trained offline in seconds on first use)."""
    return cached_tokenizer()


def load_policy(checkpoint, *, env: str = "libero", tokenizer_path=None, norm_stats_path=None,
                num_steps: int = 10, noise_seed: int | None = None, seed: int = 0,
                action_horizon: int | None = None, max_token_len: int | None = None,
                default_prompt: str | None = None, skip_masked_cameras: bool = True,
                dtype: str | None = None, verify: bool = True, compact_prefix: bool = True,
                openpi_config: str | None = None) -> Policy:
    """Checkpoint directory + robot preset → Policy with openpi's input and output transforms
    (served with the compacted prefix unless `compact_prefix=False`: see Policy)."""
    preset = get_preset(env)
    # Everything cheap is checked before the params load, which takes minutes for a large checkpoint.
    ckpt = load_checkpoint(checkpoint, action_horizon=action_horizon, max_token_len=max_token_len,
                           preset=preset, dtype=dtype, verify=verify, params=False, openpi_config=openpi_config)
    norm_stats_path = norm_stats_path or ckpt.norm_stats
    if norm_stats_path is None:
        raise ValueError(f"norm_stats: {ckpt.root}/assets has no norm_stats.json; pass --norm-stats")
    if not tokenizer_path:
        if env != "demo":
            raise ValueError("tokenizer_path: pass --tokenizer (the PaliGemma sentencepiece model; "
                             "nothing is downloaded at run time)")
        tokenizer_path = demo_tokenizer_path()
    stats_file, stats = checked_norm_stats(norm_stats_path, ckpt.config, preset)
    _, params = policy_dir.load_model(ckpt.params_dir, config=ckpt.config, verify=verify)
    data_cfg = serving_data_config(ckpt.config, preset, tokenizer_path=tokenizer_path,
                                   norm_stats_path=stats_file, default_prompt=default_prompt, record=ckpt.record)
    c = ckpt.config
    metadata = {
        "env": env, "checkpoint": str(ckpt.root), "pi05": c.pi05, "depth": c.depth,
        "action_horizon": c.action_horizon, "action_dim": c.action_dim, "num_steps": int(num_steps),
        "cameras": list(c.image_keys), "robot_action_dim": None, "layer_map": ckpt.layer_map,
        "policy_record": ckpt.record.to_dict(),
    }
    out_tf = data_transforms.make_output_transform(data_cfg)
    metadata["robot_action_dim"] = int(out_tf.action_dim)
    spec = preset.request_spec(image_size=c.image_size[0], stats_state_dim=stats["state"].dim)
    return Policy(c, params, input_transform=data_transforms.make_input_transform(data_cfg),
                  output_transform=out_tf, num_steps=num_steps, noise_seed=noise_seed, seed=seed,
                  skip_masked_cameras=skip_masked_cameras, metadata=metadata, check_input=spec.check,
                  compact_prefix=compact_prefix)


def checked_norm_stats(path, cfg: ModelConfig, preset: EnvPreset) -> tuple[pathlib.Path, dict]:
    """Read norm_stats.json, refusing (ValueError naming the file) what would make every reply wrong
    or fail: NaN/inf, a missing state/actions entry, fewer dims than the robot sends or takes, more
    dims than the model's action_dim (stats of another model)."""
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / data_norm_stats.FILE_NAME
    robot_state = sum(preset.state_dims) if preset.state_dims else None
    stats = data_norm_stats.load(path, model_dim=cfg.action_dim, state_dim=robot_state, action_dim=preset.action_dim)
    for key in ("state", "actions"):
        if key not in stats:
            raise ValueError(f"{path}: no '{key}' entry (got {sorted(stats)})")
    return path, stats


def warmup_observation(policy: Policy) -> dict:
    """A model-input batch of one whose camera masks match the robot's mapping (compiles the real path)."""
    obs = dummy_observation(policy.config, 1)
    it = policy.input_transform
    if it is not None:
        present = set(it.spec.mapping.camera_names)
        obs["image_masks"] = {cam: np.array([cam in present]) for cam in policy.config.image_keys}
    return obs
