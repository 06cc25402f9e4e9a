"""config.json of an exported PyTorch policy: the model sizes plus what deployment needs to know.

Layout (all fields written by `python -m shallow_pi_jax.export_torch`):

    {"format": "shallow_pi_jax.torch/1",
     "model": ModelConfig.to_dict(),           # every size; π0 vs π0.5; action dim / horizon
     "layer_map": {"teacher_depth": 18, "indices": [0, 3, 7, 10, 14, 17], ...} or null,
     "precision": "float32",                   # dtype of the tensors in model.safetensors
     "action_dim": 32, "action_horizon": 10,   # openpi's PyTorch config.json fields, for its loader
     "paligemma_variant": "gemma_2b" | "custom", "action_expert_variant": "gemma_300m" | "custom",
     "source": {...},                          # where the weights came from
     "float32_constants": {"time_freqs": [...], "rope_timescale": [...]}}  # JAX's exact values
"""
from __future__ import annotations

import json
import pathlib

from shallow_pi_jax.models.config import GEMMA_2B, GEMMA_300M, ModelConfig

FORMAT = "shallow_pi_jax.torch/1"


def _variant(g, real, name: str) -> str:
    same = all(getattr(g, f) == getattr(real, f) for f in ("width", "mlp_dim", "num_heads", "num_kv_heads", "head_dim"))
    return name if same else "custom"


def make_export_config(cfg: ModelConfig, constants: dict, precision: str = "float32", layer_map: dict | None = None,
                       source: dict | None = None) -> dict:
    """`constants`: torch_model.float32_constants(...) of this model (JAX's exact float32 values)."""
    return {
        "format": FORMAT,
        "model": cfg.to_dict(),
        "layer_map": layer_map,
        "precision": precision,
        "action_dim": cfg.action_dim,
        "action_horizon": cfg.action_horizon,
        "pi05": cfg.pi05,
        "paligemma_variant": _variant(cfg.llm, GEMMA_2B, "gemma_2b"),
        "action_expert_variant": _variant(cfg.expert, GEMMA_300M, "gemma_300m"),
        "source": source or {},
        # float32 values exactly as openpi's JAX computes them (see torch_model.float32_constants).
        "float32_constants": {k: [float(x) for x in v] for k, v in constants.items()},
    }


def read_export_config(path) -> tuple[ModelConfig, dict]:
    """-> (ModelConfig, the whole json dict). ValueError if it is not one of ours."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"config: {str(path)!r} does not exist; "
                         "expected the config.json written by shallow_pi_jax.export_torch")
    d = json.loads(path.read_text())
    if d.get("format") != FORMAT or "model" not in d:
        raise ValueError(f"config: {str(path)!r} has format {d.get('format')!r}, expected {FORMAT!r} "
                         "(openpi's own config.json lacks the sizes; re-export with shallow_pi_jax.export_torch)")
    return ModelConfig.from_dict(d["model"]), d
