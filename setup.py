"""shallow_pi_jax: distil openpi's pi0 / pi0.5 policies into shallow students (Shallow-pi)."""
import pathlib

import setuptools

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
