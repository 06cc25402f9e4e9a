"""The policy record: how a policy sees the world (DIR/policy_record.json of a policy directory).

One record per policy, the single owner of its input/output settings: which cameras the model
takes and which of them the robot lacks (fed as a black image with mask False, as openpi's LIBERO
and DROID policies do), whether the normalised state is in the prompt (openpi's
`discrete_state_input`), the prompt length, the action chunk, the model's padded action dim and
the robot's, the delta-action mask, the normalisation (quantile or z-score) and the norm stats'
asset id. The trainer checks its data config against the teacher's record and writes the record
into the student; serving, export and evaluation read it back. openpi's checkpoints carry none:
`OPENPI` holds the record of each openpi TrainConfig by name (read from openpi's
training/config.py and policies/{libero,droid}_policy.py).

    {"format": "shallow_pi_jax.policy_record/1", "pi05": true,
     "cameras": ["base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb"], "masked_cameras": ["right_wrist_0_rgb"],
     "state_in_prompt": false, "max_token_len": 200, "action_horizon": 10, "action_dim": 32,
     "robot_action_dim": 7, "delta_action_mask": null, "quantile_norm": true,
     "asset_id": "physical-intelligence/libero", "source": "openpi:pi05_libero"}
"""
from __future__ import annotations

import dataclasses
import pathlib

from shallow_pi_jax import fileio

FILE = "policy_record.json"
FORMAT = "shallow_pi_jax.policy_record/1"
OPENPI_CAMERAS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")


@dataclasses.dataclass(frozen=True)
class PolicyRecord:
    pi05: bool
    cameras: tuple[str, ...]               # the model's cameras, in the order it consumes them
    masked_cameras: tuple[str, ...]        # cameras the robot lacks: black image, mask False
    state_in_prompt: bool                  # openpi's discrete_state_input
    max_token_len: int
    action_horizon: int
    action_dim: int                        # the model's (padded) action / state dim
    robot_action_dim: int | None           # dims the robot consumes; None: the norm stats' length
    delta_action_mask: tuple[bool, ...] | None  # openpi DeltaActions mask (True = relative to the state)
    quantile_norm: bool                    # openpi: quantile for π0.5, z-score for π0
    asset_id: str | None = None            # openpi's assets/<asset_id>/norm_stats.json
    source: str = ""                       # where the record came from (not compared)

    def __post_init__(self):
        for cam in self.masked_cameras:
            if cam not in self.cameras:
                raise ValueError(f"policy record masked_cameras: {cam!r} is not one of cameras {self.cameras}")
        for name in ("max_token_len", "action_horizon", "action_dim"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"policy record {name}: expected a positive int, got {getattr(self, name)!r}")

    @property
    def present_cameras(self) -> tuple[str, ...]:
        return tuple(c for c in self.cameras if c not in self.masked_cameras)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for key in ("cameras", "masked_cameras", "delta_action_mask"):
            d[key] = None if d[key] is None else list(d[key])
        return {"format": FORMAT, **d}

    @classmethod
    def from_dict(cls, d: dict, where: str = "policy record") -> PolicyRecord:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            got = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"{where}: expected format {FORMAT!r}, got {got!r}")
        d = {k: v for k, v in d.items() if k != "format"}
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown, missing = sorted(set(d) - fields), sorted(f for f in ("pi05", "cameras", "masked_cameras",
                                                                          "state_in_prompt", "max_token_len",
                                                                          "action_horizon", "action_dim",
                                                                          "robot_action_dim", "delta_action_mask",
                                                                          "quantile_norm") if f not in d)
        if unknown or missing:
            raise ValueError(f"{where}: unknown fields {unknown}, missing fields {missing}")
        for key in ("cameras", "masked_cameras"):
            d[key] = tuple(d[key])
        if d["delta_action_mask"] is not None:
            d["delta_action_mask"] = tuple(bool(b) for b in d["delta_action_mask"])
        try:
            return cls(**d)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from None

    def compared(self) -> dict:
        """The fields that decide what the model sees and returns (provenance left out)."""
        d = self.to_dict()
        for key in ("format", "source"):
            d.pop(key)
        return d


# Fields where None means "not stated": a record that leaves one open agrees with any value. The robot's
# dim of a record built from a model alone; the asset id of a record built from a data config (its norm
# stats are a path, not an openpi asset).
_OPEN_WHEN_NONE = ("robot_action_dim", "asset_id")


def differences(a: PolicyRecord, b: PolicyRecord) -> dict[str, tuple]:
    """{field: (a's value, b's value)} where they disagree."""
    da, db = a.compared(), b.compared()
    out = {}
    for key in da:
        if key in _OPEN_WHEN_NONE and None in (da[key], db[key]):
            continue
        if da[key] != db[key]:
            out[key] = (da[key], db[key])
    return out


def check_same(a: PolicyRecord, a_name: str, b: PolicyRecord, b_name: str) -> None:
    """Raise one ValueError naming every field where the two disagree, with both values."""
    diff = differences(a, b)
    if diff:
        raise ValueError("; ".join(f"{key}: {a_name} says {va!r}, {b_name} says {vb!r}"
                                   for key, (va, vb) in diff.items()))


def resolve(own: PolicyRecord | None, own_where: str, named: PolicyRecord | None, named_where: str, *,
            named_wins: bool) -> tuple[PolicyRecord | None, str]:
    """(the record, where it comes from) of a policy: its own (its policy_record.json), else the one it
    is named by (an openpi config, a preset), else None. Given both, they must agree on every field both
    state (one ValueError naming each difference); `named_wins` then picks which one is kept (the
    named one may state what the own one leaves open, and says where it came from)."""
    if own is not None and named is not None:
        check_same(own, own_where, named, named_where)
        return (named, named_where) if named_wins else (own, own_where)
    return (own, own_where) if own is not None else (named, named_where)


def check_model(record: PolicyRecord, where: str, cfg, model: str) -> None:
    """The record and the model config `cfg` it describes must agree on everything both state; `model`
    names the model in the error ("the model config says", "the model (DIR) has")."""
    for name, model_value in (("pi05", cfg.pi05), ("cameras", tuple(cfg.image_keys)),
                              ("max_token_len", cfg.max_token_len), ("action_horizon", cfg.action_horizon),
                              ("action_dim", cfg.action_dim)):
        if getattr(record, name) != model_value:
            raise ValueError(f"{name}: {where} says {getattr(record, name)!r}, {model} {model_value!r}")


def read(root) -> PolicyRecord | None:
    """DIR/policy_record.json of a policy directory; None when it has none (openpi's checkpoints)."""
    path = fileio.source(root) / FILE
    if not path.is_file():
        return None
    return PolicyRecord.from_dict(fileio.read_json(path), str(path))


def write(root, record: PolicyRecord) -> pathlib.Path:
    return fileio.write_json(pathlib.Path(root) / FILE, record.to_dict())


def _openpi(pi05: bool, *, horizon: int, state_in_prompt: bool, robot_action_dim: int, asset_id: str,
            delta: tuple[bool, ...] | None, name: str) -> PolicyRecord:
    # openpi's LIBERO and DROID inputs: base + left wrist from the robot, right wrist zeros, mask False
    # (π0 and π0.5 alike; only FAST keeps the mask True). Quantile norm for π0.5, z-score for π0.
    return PolicyRecord(pi05=pi05, cameras=OPENPI_CAMERAS, masked_cameras=("right_wrist_0_rgb",),
                        state_in_prompt=state_in_prompt, max_token_len=200 if pi05 else 48, action_horizon=horizon,
                        action_dim=32, robot_action_dim=robot_action_dim, delta_action_mask=delta,
                        quantile_norm=pi05, asset_id=asset_id, source=f"openpi:{name}")


_LIBERO, _DROID = "physical-intelligence/libero", "droid"
# openpi's TrainConfigs by name. pi0_libero keeps extra_delta_transform=True (its old checkpoints were
# trained with it: first 6 dims relative, gripper absolute); pi05_libero sets it False and also
# discrete_state_input=False. pi05_droid keeps the π0.5 default (state in the prompt), no delta transform.
OPENPI = {
    "pi05_libero": _openpi(True, horizon=10, state_in_prompt=False, robot_action_dim=7, asset_id=_LIBERO,
                           delta=None, name="pi05_libero"),
    "pi0_libero": _openpi(False, horizon=50, state_in_prompt=False, robot_action_dim=7, asset_id=_LIBERO,
                          delta=(True,) * 6 + (False,), name="pi0_libero"),
    "pi05_droid": _openpi(True, horizon=15, state_in_prompt=True, robot_action_dim=8, asset_id=_DROID,
                          delta=None, name="pi05_droid"),
    "pi0_droid": _openpi(False, horizon=10, state_in_prompt=False, robot_action_dim=8, asset_id=_DROID,
                         delta=None, name="pi0_droid"),
}


def openpi(name: str) -> PolicyRecord:
    if name not in OPENPI:
        raise ValueError(f"openpi config: expected one of {', '.join(OPENPI)}, got {name!r}")
    return OPENPI[name]
