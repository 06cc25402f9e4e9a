"""shallow_pi_jax: distil openpi's pi0 / pi0.5 policies into shallow students (Shallow-pi)."""
import pathlib

import setuptools

# Every command, as `python -m shallow_pi_jax.<module>` and as the console script shallow-pi-<name>
# (LeRobot's lerobot-train convention): the same main(), the same flags.
COMMANDS = {
    "train": "train", "launch": "launch", "make-student": "make_student", "export-torch": "export_torch",
    "export-onnx": "export_onnx", "export-checkpoint": "export_checkpoint", "evaluate": "evaluate",
    "layer-similarity": "layer_similarity", "openpi-parity": "openpi_parity",
    "compute-norm-stats": "compute_norm_stats", "make-demo-dataset": "make_demo_dataset",
    "aot-compile": "aot_compile", "bench-inference": "bench_inference", "bench-train": "bench_train",
    "bench-export": "bench_export", "bench-data": "bench_data", "serve": "serve.__main__",
    "ablation": "ablation.__main__",
}

_REQS = [
    line.strip()
    for line in pathlib.Path(__file__).with_name("requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]

setuptools.setup(
    name="shallow_pi_jax",
    version="0.1.0",
    description=(
        "Distil openpi pi0 / pi0.5 robot policies to fewer layers, train on TPU/GPU, export to PyTorch/ONNX/TensorRT."
    ),
    packages=setuptools.find_packages(include=["shallow_pi_jax", "shallow_pi_jax.*"]),
    package_data={"shallow_pi_jax": ["assets/**/*"]},
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=_REQS,
    entry_points={"console_scripts": [f"shallow-pi-{name} = shallow_pi_jax.{module}:console"
                                      for name, module in COMMANDS.items()]},
    extras_require={
        # torch itself is not listed: users bring their own build (CUDA/Jetson); tests pin a CPU build.
        "export": ["onnx", "onnxruntime"],
        "serve": ["openpi-client"],
        # libtpu (Linux x86-64 wheels only) lets the suite compile the train step for TPU topologies on a CPU host.
        "test": ["pytest", "pytest-xdist", "onnx", "onnxruntime", "ruff==0.17.6", "import-linter==2.17",
                 "libtpu==0.0.42.1; sys_platform == 'linux' and platform_machine == 'x86_64'"],
        "tpu": ["jax[tpu]==0.10.2", "libtpu==0.0.42.1"],  # libtpu matching jax 0.10.2 (also the AOT TPU compiler)
    },
)
