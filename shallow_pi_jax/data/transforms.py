"""openpi's per-example transforms in numpy, for inference (policy server) and shared helpers.

    inp = make_input_transform(data_config)            # raw robot observation → model inputs
    model_inputs = inp({"observation/image": uint8 HxWx3, "observation/wrist_image": ...,
                        "observation/state": float [S], "prompt": "pick up the bowl"})
    out = make_output_transform(data_config)           # model actions → robot actions
    robot_actions = out(model_actions, raw_state=obs_state)   # [H, dataset action dim]

Inputs are unbatched (add a leading batch axis for the model). Order, as in openpi:
repack → normalise state → resize with pad → uint8 → [-1, 1] → tokenize → pad to model dims.
Outputs: unnormalise → absolute actions (if a delta mask is configured) → slice to the robot's dims.
"""
from __future__ import annotations

from collections.abc import Mapping as _AbcMapping

import numpy as np
from PIL import Image

from shallow_pi_jax import trees
from shallow_pi_jax.data import norm_stats as _ns
from shallow_pi_jax.data.config import DataConfig, DatasetSpec
from shallow_pi_jax.data.tokenizer import PaligemmaTokenizer


def resize_with_pad(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Aspect-preserving bilinear resize, centred on a black canvas (openpi's PIL convention)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image: expected uint8 [H, W, 3], got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"image: expected a non-empty image, got shape {image.shape}")
    if (h, w) == (height, width):
        return image
    ratio = max(w / width, h / height)
    new_h, new_w = int(h / ratio), int(w / ratio)
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), resample=Image.BILINEAR))
    out = np.zeros((height, width, 3), np.uint8)
    top, left = max(0, int((height - new_h) / 2)), max(0, int((width - new_w) / 2))
    out[top : top + new_h, left : left + new_w] = resized
    return out


def to_model_image(image_uint8: np.ndarray) -> np.ndarray:
    return image_uint8.astype(np.float32) / 255.0 * 2.0 - 1.0


def as_uint8_hwc(image, field: str) -> np.ndarray:
    """Accept what robot clients send: uint8 or float [0, 1], HWC or CHW (as openpi's policies do)."""
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"{field}: expected an image [H, W, 3], got shape {image.shape}")
    if image.shape[0] == 3 and image.shape[-1] != 3:
        image = np.transpose(image, (1, 2, 0))
    if image.shape[-1] != 3:
        raise ValueError(f"{field}: expected 3 colour channels, got shape {image.shape}")
    if np.issubdtype(image.dtype, np.floating):
        # openpi casts 255·x straight to uint8, which wraps values outside [0, 1] into noise.
        if image.size and not (np.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0):
            raise ValueError(f"{field}: a float image must hold finite values in [0, 1], got range "
                             f"[{np.nanmin(image):.4g}, {np.nanmax(image):.4g}]")
        image = (255 * image).astype(np.uint8)
    if image.dtype != np.uint8:
        raise ValueError(f"{field}: expected uint8 or float image, got dtype {image.dtype}")
    return image


def pad_to_dim(x: np.ndarray, dim: int, field: str) -> np.ndarray:
    if x.shape[-1] > dim:
        raise ValueError(f"{field}: has {x.shape[-1]} dims, more than the model's action_dim={dim}")
    pad = [(0, 0)] * (x.ndim - 1) + [(0, dim - x.shape[-1])]
    return np.pad(x, pad)


def _shift_by_state(actions: np.ndarray, state: np.ndarray, mask, sign: float) -> np.ndarray:
    if mask is None:
        return actions
    m = np.asarray(mask, bool)
    out = np.array(actions, dtype=np.float32, copy=True)
    d = m.shape[0]
    out[..., :d] += sign * np.where(m, state[..., :d], 0)[..., None, :]
    return out


def delta_actions(actions: np.ndarray, state: np.ndarray, mask) -> np.ndarray:
    """openpi DeltaActions: actions[..., i] -= state[i] where mask[i] (mask may be shorter)."""
    return _shift_by_state(actions, state, mask, -1.0)


def absolute_actions(actions: np.ndarray, state: np.ndarray, mask) -> np.ndarray:
    """The inverse (openpi AbsoluteActions): actions[..., i] += state[i] where mask[i]."""
    return _shift_by_state(actions, state, mask, 1.0)


def _lookup(flat: dict, path: str):
    # openpi clients send "observation/image"; accept the bare step path ("image") too.
    for key in (path, f"observation/{path}"):
        if key in flat:
            return flat[key]
    return None


def raw_state(obs, mapping) -> np.ndarray | None:
    """The robot's own state vector from a raw observation, per `mapping.state`; None if a part is missing."""
    flat = trees.flatten(obs, "/")
    parts = [_lookup(flat, p) for p in mapping.state]
    if any(p is None for p in parts):
        return None
    return np.concatenate([np.atleast_1d(np.asarray(p, np.float32)) for p in parts])


class InputTransform:
    """Raw robot observation (one example) → model inputs, for the policy server."""

    def __init__(self, cfg: DataConfig, spec: DatasetSpec, stats: dict[str, _ns.NormStats],
                 tokenizer: PaligemmaTokenizer):
        self.cfg, self.spec, self.tokenizer = cfg, spec, tokenizer
        self.state_stats = _ns.require(stats, "state", cfg.quantile_norm, cfg.norm_stats_for(spec))

    def __call__(self, obs: _AbcMapping) -> dict:
        cfg, mapping = self.cfg, self.spec.mapping
        flat = trees.flatten(obs, "/")
        images, masks = {}, {}
        for cam in cfg.cameras:
            paths = dict(mapping.cameras).get(cam)
            if paths is None:
                # openpi: a camera the robot lacks is a black uint8 image (-1 after scaling), masked out.
                images[cam] = np.full((cfg.image_size, cfg.image_size, 3), -1.0, np.float32)
                masks[cam] = np.bool_(False)
                continue
            raw = next((v for v in (_lookup(flat, p) for p in paths) if v is not None), None)
            if raw is None:
                raise ValueError(f"observation: missing camera field {paths[0]!r} (for {cam}); got keys {sorted(flat)}")
            img = resize_with_pad(as_uint8_hwc(raw, paths[0]), cfg.image_size, cfg.image_size)
            images[cam], masks[cam] = to_model_image(img), np.bool_(True)
        parts = []
        for p in mapping.state:
            v = _lookup(flat, p)
            if v is None:
                raise ValueError(f"observation: missing state field {p!r}; got keys {sorted(flat)}")
            parts.append(np.atleast_1d(np.asarray(v, np.float32)))
        state = np.concatenate(parts, axis=-1)
        if not np.all(np.isfinite(state)):
            raise ValueError(f"observation: state {mapping.state} contains NaN or inf: {state}")
        norm_state = _ns.normalize(state, self.state_stats, cfg.quantile_norm)
        prompt = flat.get("prompt")
        if prompt is None:
            prompt = next((_lookup(flat, p) for p in mapping.prompt if _lookup(flat, p) is not None), None)
        if prompt is None or (isinstance(prompt, (str, bytes)) and not prompt):
            prompt = cfg.default_prompt
        if prompt is None:
            raise ValueError("observation: no 'prompt' and data.default_prompt is not set")
        if isinstance(prompt, bytes):
            prompt = prompt.decode("utf-8")
        prompt = str(np.asarray(prompt).item()) if not isinstance(prompt, str) else prompt
        tokens, token_mask = self.tokenizer.tokenize(prompt, norm_state if cfg.state_in_prompt else None)
        return {
            "images": images,
            "image_masks": masks,
            "state": pad_to_dim(norm_state, cfg.action_dim, "state"),
            "tokenized_prompt": tokens,
            "tokenized_prompt_mask": token_mask,
        }


class OutputTransform:
    """Model actions [..., H, model_dim] → robot actions [..., H, robot dim] (unnormalised, absolute)."""

    def __init__(self, cfg: DataConfig, spec: DatasetSpec, stats: dict[str, _ns.NormStats],
                 action_dim: int | None = None):
        self.cfg, self.spec = cfg, spec
        self.stats = _ns.require(stats, "actions", cfg.quantile_norm, cfg.norm_stats_for(spec))
        # The robot's dims: explicit, else the smaller of the mapping's and the stats' (openpi's older
        # stats are padded to 32 dims; a LIBERO-layout dataset may carry fewer than LIBERO's 7).
        self.action_dim = action_dim or min(spec.mapping.action_dim or self.stats.dim, self.stats.dim)
        self.delta_mask = cfg.delta_mask_for(spec)

    def __call__(self, actions: np.ndarray, raw_state: np.ndarray | None = None) -> np.ndarray:
        actions = np.asarray(actions, np.float32)
        out = _ns.unnormalize(actions, self.stats, self.cfg.quantile_norm)
        if self.delta_mask is not None:
            if raw_state is None:
                raise ValueError("raw_state: needed to turn delta actions back into absolute ones "
                                 f"(delta_action_mask={self.delta_mask}), got None")
            raw_state = np.asarray(raw_state, np.float32)
            out = absolute_actions(out, pad_to_dim(raw_state, out.shape[-1], "raw_state"), self.delta_mask)
        return out[..., : self.action_dim]


def _spec_and_stats(cfg, dataset_index: int):
    cfg = DataConfig.from_any(cfg)
    if not 0 <= dataset_index < len(cfg.datasets):
        raise ValueError(f"dataset_index: expected 0..{len(cfg.datasets) - 1}, got {dataset_index}")
    spec = cfg.datasets[dataset_index]
    path = cfg.norm_stats_for(spec)
    if path is None:
        raise ValueError("data.norm_stats_path: not set (compute it with shallow_pi_jax.compute_norm_stats)")
    return cfg, spec, _ns.load(path, model_dim=cfg.action_dim)


def make_input_transform(cfg, dataset_index: int = 0, tokenizer: PaligemmaTokenizer | None = None) -> InputTransform:
    cfg, spec, stats = _spec_and_stats(cfg, dataset_index)
    tokenizer = tokenizer or PaligemmaTokenizer(cfg.tokenizer_path, cfg.max_token_len)
    return InputTransform(cfg, spec, stats, tokenizer)


def make_output_transform(cfg, dataset_index: int = 0, action_dim: int | None = None) -> OutputTransform:
    cfg, spec, stats = _spec_and_stats(cfg, dataset_index)
    return OutputTransform(cfg, spec, stats, action_dim)
