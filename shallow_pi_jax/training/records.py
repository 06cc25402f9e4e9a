"""The policy record of a run: what its data config feeds the model, checked against the teacher's.

A student must see its teacher's inputs, so the record a run writes into its student is the teacher's
(its own policy_record.json, else the openpi config named by config.teacher.preset, else "data":
config.data's), and config.data must agree with it. Plain training (no teacher) writes config.data's.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib

from shallow_pi_jax.checkpoint import policy_record
from shallow_pi_jax.data.config import DataConfig
from shallow_pi_jax.training.validate import local

# The config key that sets each record field, for error messages.
_RECORD_KEYS = {"pi05": "data.pi05", "cameras": "data.cameras", "masked_cameras": "data.datasets[].mapping.cameras",
                "state_in_prompt": "data.discrete_state_input", "max_token_len": "data.max_token_len",
                "action_horizon": "data.horizon", "action_dim": "data.action_dim",
                "robot_action_dim": "data.datasets[].mapping.action_dim",
                "delta_action_mask": "data.delta_action_mask", "quantile_norm": "data.use_quantile_norm"}


def record_from_data(data: DataConfig) -> policy_record.PolicyRecord:
    """The record of what `data` feeds the model (what a model trained on it sees)."""
    one = {}
    for i, spec in enumerate(data.datasets):
        fields = {"masked_cameras": tuple(c for c in data.cameras if c not in spec.mapping.camera_names),
                  "robot_action_dim": spec.mapping.action_dim, "delta_action_mask": data.delta_mask_for(spec)}
        for key, value in fields.items():
            # A mixture must feed one policy: the datasets cannot disagree on what it sees or returns.
            if key in one and one[key] != value:
                raise ValueError(f"config.data.datasets[{i}]: {key} is {value!r}, datasets[0] gives {one[key]!r}; "
                                 "every dataset of a mixture must give the policy the same inputs and outputs")
            one[key] = value
    return policy_record.PolicyRecord(
        pi05=data.pi05, cameras=tuple(data.cameras), masked_cameras=one["masked_cameras"],
        state_in_prompt=data.state_in_prompt, max_token_len=data.max_token_len, action_horizon=data.horizon,
        action_dim=data.action_dim, robot_action_dim=one["robot_action_dim"],
        delta_action_mask=one["delta_action_mask"], quantile_norm=data.quantile_norm, source="config.data")


def teacher_record(data: DataConfig, params: str, preset: str) -> policy_record.PolicyRecord:
    """How the teacher at `params` sees the world, checked against `data` (ValueError naming both values).

    From the teacher's policy_record.json when it has one, else from `preset` (config.teacher.preset: an
    openpi config name, or "data"); both given must agree. Without a teacher (plain training) the record is
    `data`'s. A contradiction is an error, never an override: a student must see its teacher's inputs."""
    data_record = record_from_data(data)
    if not params:
        return data_record
    own = None
    if local(params) and os.path.isdir(params):
        root = pathlib.Path(params)
        own = policy_record.read(root.parent if root.name == "params" else root)
    named = {"": None, "data": data_record}.get(preset) or policy_record.OPENPI.get(preset)
    record, _ = policy_record.resolve(own, f"the teacher's {policy_record.FILE}", named,
                                      f"config.teacher.preset={preset!r}", named_wins=False)
    if record is None:
        raise ValueError(f"config.teacher.preset: expected the openpi config the teacher was trained with "
                         f"({', '.join(policy_record.OPENPI)}) or 'data', got '' and {params} has no "
                         f"{policy_record.FILE} (openpi's checkpoints record none)")
    where = f"the teacher's {policy_record.FILE}" if own is not None else f"teacher.preset={preset!r}"
    diff = policy_record.differences(record, data_record)
    if diff:
        raise ValueError("config.data contradicts the teacher: " + "; ".join(
            f"{key}: {where} says {want!r}, config.{_RECORD_KEYS[key]} gives {got!r}"
            for key, (want, got) in diff.items()))
    return record


def student_record(data: DataConfig, params: str, preset: str) -> policy_record.PolicyRecord:
    """The record the trained model is written with: its teacher's (checked against `data`), or for
    plain training `data`'s. Passed to policy_dir.write so serving sees what training fed."""
    record = teacher_record(data, params, preset)
    source = f"teacher {params} ({record.source})" if params else record.source
    return dataclasses.replace(record, source=source)
