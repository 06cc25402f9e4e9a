"""Small synthetic RLDS datasets (LIBERO and DROID layouts) and a tiny sentencepiece model.

Used by the tests and shallow_pi_jax.bench_data; written offline with
`tfds.dataset_builders.store_as_tfds_dataset`, read back with `tfds.builder(name, data_dir=...)`.
"""
from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from shallow_pi_jax.data.tokenizer import train_sentencepiece

TASKS = ("put the bowl on the plate", "open the top drawer", "pick_up the red block",
         "push the button\nthen stop", "stack the cups")


def _image(shape, encoding):
    if encoding is None:
        return tfds.features.Tensor(shape=shape, dtype=np.uint8)
    return tfds.features.Image(shape=shape, encoding_format=encoding)


def libero_features(image_hw=(32, 32), state_dim=8, action_dim=7, encoding="png", state_dtype=np.float32):
    """openvla/openpi LIBERO RLDS layout."""
    return tfds.features.FeaturesDict({
        "steps": tfds.features.Dataset({
            "observation": {
                "image": _image((*image_hw, 3), encoding),
                "wrist_image": _image((*image_hw, 3), encoding),
                "state": tfds.features.Tensor(shape=(state_dim,), dtype=state_dtype),
            },
            "action": tfds.features.Tensor(shape=(action_dim,), dtype=np.float32),
            "language_instruction": tfds.features.Text(),
            "is_first": np.bool_,
            "is_last": np.bool_,
        }),
        "episode_metadata": {"file_path": tfds.features.Text()},
    })


def droid_features(image_hw=(18, 32), encoding="jpeg"):
    """DROID RLDS layout (the fields openpi's loader reads, plus a few it ignores)."""
    img = lambda: _image((*image_hw, 3), encoding)  # noqa: E731
    vec = lambda n: tfds.features.Tensor(shape=(n,), dtype=np.float64)  # noqa: E731
    return tfds.features.FeaturesDict({
        "steps": tfds.features.Dataset({
            "observation": {
                "exterior_image_1_left": img(), "exterior_image_2_left": img(), "wrist_image_left": img(),
                "joint_position": vec(7), "gripper_position": vec(1), "cartesian_position": vec(6),
            },
            "action_dict": {"joint_position": vec(7), "joint_velocity": vec(7), "gripper_position": vec(1),
                            "cartesian_position": vec(6)},
            "action": vec(7),
            "language_instruction": tfds.features.Text(),
            "language_instruction_2": tfds.features.Text(),
            "language_instruction_3": tfds.features.Text(),
            "is_first": np.bool_,
        }),
        "episode_metadata": {"file_path": tfds.features.Text(), "recording_folderpath": tfds.features.Text()},
    })


def libero_episode(rng, steps, image_hw=(32, 32), state_dim=8, action_dim=7, task=None, index=0):
    """Images encode (episode, step, camera) in their pixels so tests can trace every frame."""
    h, w = image_hw
    out = []
    for t in range(steps):
        base = np.zeros((h, w, 3), np.uint8)
        base[..., 0], base[..., 1], base[..., 2] = index % 256, t % 256, 10
        wrist = base.copy()
        wrist[..., 2] = 200
        out.append({
            "observation": {"image": base, "wrist_image": wrist,
                            "state": (rng.normal(size=state_dim) + 100 * index + t).astype(np.float32)},
            "action": (rng.normal(size=action_dim) + 1000 * index + t).astype(np.float32),
            "language_instruction": task if task is not None else TASKS[index % len(TASKS)],
            "is_first": t == 0, "is_last": t == steps - 1,
        })
    return {"steps": out, "episode_metadata": {"file_path": f"/data/libero/episode_{index}.hdf5"}}


def droid_episode(rng, steps, image_hw=(18, 32), index=0, instructions=("pick up the marker", "", "")):
    h, w = image_hw
    out = []
    for t in range(steps):
        ext1 = np.full((h, w, 3), 40, np.uint8)
        ext2 = np.full((h, w, 3), 200, np.uint8)
        wrist = np.full((h, w, 3), 120, np.uint8)
        joints = rng.normal(size=7) * 0.1 + 0.01 * t
        out.append({
            "observation": {"exterior_image_1_left": ext1, "exterior_image_2_left": ext2, "wrist_image_left": wrist,
                            "joint_position": joints, "gripper_position": np.array([t / max(steps, 1)]),
                            "cartesian_position": rng.normal(size=6)},
            "action_dict": {"joint_position": joints + 0.05, "joint_velocity": rng.normal(size=7),
                            "gripper_position": np.array([(t + 1) / max(steps, 1)]),
                            "cartesian_position": rng.normal(size=6)},
            "action": rng.normal(size=7),
            "language_instruction": instructions[0], "language_instruction_2": instructions[1],
            "language_instruction_3": instructions[2], "is_first": t == 0,
        })
    return {"steps": out, "episode_metadata": {"file_path": f"/droid/success/{index}/trajectory.h5",
                                               "recording_folderpath": f"/droid/success/{index}"}}


def write_dataset(name: str, data_dir: str, features, episodes, version="1.0.0"):
    """Write episodes as a TFDS/RLDS dataset at data_dir/name/version; returns the builder."""
    return tfds.dataset_builders.store_as_tfds_dataset(
        name=name, version=version, features=features, data_dir=data_dir,
        split_datasets={"train": [(i, ep) for i, ep in enumerate(episodes)]})


def train_tokenizer(path: str, texts=TASKS, vocab_size: int = 96) -> str:
    """A tiny sentencepiece model with PaliGemma's special ids (pad 0, eos 1, bos 2, unk 3) and '\\n'."""
    corpus = list(texts) * 20 + ["Task: , State: 0 1 2 3 4 5 6 7 8 9 ;\nAction: "] * 20
    model = train_sentencepiece(corpus, vocab_size, character_coverage=1.0)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(model)
    return path
