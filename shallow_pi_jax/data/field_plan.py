"""What a dataset reader tells the format-neutral stage about the mapped fields, and how it is found.

`plan_fields` walks a mapping once for every format: the format checks each field against its own
metadata (the RLDS feature spec, LeRobot's meta/info.json) and words its own errors; the checks of
the fields together against the model (dims, delta-action mask) are the same for every format.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import tensorflow as tf

from shallow_pi_jax.data.config import DataConfig, DatasetSpec


@dataclasses.dataclass(frozen=True)
class FieldPlan:
    """What the dataset's metadata (RLDS feature spec, LeRobot info.json) says about the mapped fields."""
    camera_paths: dict[str, tuple[str, ...]]
    state_dims: tuple[int | None, ...]
    action_dims: tuple[int | None, ...]
    prompt_paths: tuple[str, ...]
    specs: dict[str, tf.TensorSpec]           # per-step spec of every mapped path (images still encoded)
    has_file_path: bool

    @property
    def state_dim(self) -> int | None:
        return None if None in self.state_dims else sum(self.state_dims)

    @property
    def action_dim(self) -> int | None:
        return None if None in self.action_dims else sum(self.action_dims)


def plan_fields(spec: DatasetSpec, cfg: DataConfig, *, camera: Callable[[str, str], tf.TensorSpec],
                vector: Callable[[str, str], tf.TensorSpec], prompt: Callable[[str], None],
                has_file_path: bool = False) -> FieldPlan:
    """The mapping's fields in its order (cameras, state, actions, prompt), each checked by the format:
    `camera(path, camera name)` and `vector(path, "state" | "actions")` return the field's per-step
    spec, `prompt(path)` checks a text field; each raises naming the field. Then the dims are checked
    against data.action_dim and the dataset's delta-action mask."""
    mapping = spec.mapping
    specs = {}
    for cam, paths in mapping.cameras:
        for path in paths:
            specs[path] = camera(path, cam)

    def dims(paths, role):
        for path in paths:
            specs[path] = vector(path, role)
        return tuple(1 if specs[p].shape.rank == 0 else specs[p].shape[0] for p in paths)

    state_dims = dims(mapping.state, "state")
    action_dims = dims(mapping.actions, "actions")
    for path in mapping.prompt:
        prompt(path)
        specs[path] = tf.TensorSpec([], tf.string)
    plan = FieldPlan(camera_paths=dict(mapping.cameras), state_dims=state_dims, action_dims=action_dims,
                     prompt_paths=mapping.prompt, specs=specs, has_file_path=has_file_path)
    for what, dim in (("state", plan.state_dim), ("actions", plan.action_dim)):
        if dim is not None and dim > cfg.action_dim:
            raise ValueError(f"dataset {spec.name!r}: {what} has {dim} dims, more than the model's "
                             f"data.action_dim={cfg.action_dim}")
    mask = cfg.delta_mask_for(spec)
    if mask is not None and plan.action_dim is not None:
        known = min(d for d in (plan.action_dim, plan.state_dim) if d is not None)  # an unknown dim: not checked
        if len(mask) > known:
            raise ValueError(f"dataset {spec.name!r}: delta_action_mask has {len(mask)} entries, more than the "
                             f"state/action dims ({plan.state_dim}/{plan.action_dim})")
    return plan
