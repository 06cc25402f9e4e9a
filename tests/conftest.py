"""Test-wide setup. Simulate an 8-device host so sharding tests run on a CPU-only machine."""
import os
import pathlib
import shutil
import tempfile

# For the trainers that fault, resume and multi-process tests start: they compile far more than they
# run. With LLVM's optimisations off, XLA compiles the demo model's gradient in 6 s instead of 13 s on a
# 2-core CPU and runs it at 122 instead of 64 ms a step. Not for this process or the documented commands:
# their numbers (openpi's noise draws bit for bit, parity) are checked as users' XLA computes them.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
# Must happen before jax is imported anywhere in the test session.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the whole run: this process, the xdist workers (they inherit the
# controller's environment) and every command a test starts. The same tiny model compiled by ten
# subprocesses is compiled once. Made by the first process that loads this file; removed by it at the end.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="shallow_pi_jax_tests_xla_")
# Programs that took 0.5 s or more to compile (a model's forward or train step, not the many one-op
# programs of eager code, whose cache files would cost more than they save).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# The embedded default's cache (the 3000-episode demo dataset, its norm stats, demo teachers), shared by
# every test and command that uses it and kept between runs: built once (~70 s), validated on every use,
# and built under a lock, so parallel workers wait for one build instead of each making their own.
os.environ.setdefault("SHALLOW_PI_CACHE", os.environ.get(
    "SHALLOW_PI_TEST_CACHE", os.path.join(tempfile.gettempdir(), "shallow_pi_jax_test_cache")))

import importlib  # noqa: E402

import pytest  # noqa: E402
from etils.epath import backend as epath_backend  # noqa: E402
from etils.epath import gpath  # noqa: E402
from fsspec.implementations.memory import MemoryFileSystem  # noqa: E402

from shallow_pi_jax.data import norm_stats, synthetic  # noqa: E402
from shallow_pi_jax.data.config import DataConfig  # noqa: E402
from shallow_pi_jax.data.dataset_stats import compute  # noqa: E402
from shallow_pi_jax.sim.demo_dataset import build_demo_dataset  # noqa: E402
from shallow_pi_jax.training import recipes  # noqa: E402

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "openpi_tiny"


def demo_data_with_stats(root: pathlib.Path, **kwargs):
    """A demo dataset under root/data (build_demo_dataset's kwargs) and its norm stats, computed as the tiny
    distillation config reads it, at root/norm_stats.json: (the dataset, the stats path)."""
    ds = build_demo_dataset(root / "data", **kwargs)
    c = recipes.distill_config(1, "size=tiny")
    c.data.datasets[0]["data_dir"] = str(ds.data_dir)
    c.data.tokenizer_path = str(ds.tokenizer_path)
    dc = DataConfig.from_any(c.data)
    stats = root / "norm_stats.json"
    norm_stats.save(compute(dc, dc.datasets, progress=False), stats)
    return ds, stats


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory) -> str:
    """The tests' sentencepiece model (synthetic.train_tokenizer: the synthetic datasets' instructions,
    PaliGemma's special ids): its path. Read-only for tests."""
    return synthetic.train_tokenizer(str(tmp_path_factory.mktemp("tokenizer") / "tok.model"))


@pytest.fixture(params=["pi0", "pi05"])
def fixture_dir(request):
    return FIXTURES / request.param


# `fake_gs`: gs:// served from memory by an fsspec filesystem registered for this test only.
#
# Remote paths are read through fileio.source → etils.epath → fsspec (EPATH_USE_TF=false makes epath use
# fsspec for gs:// instead of TF's gfile, as it does wherever TensorFlow is not installed); the fake is
# what fsspec finds for "gs"/"gcs", so a read that bypassed the filesystem layer (open(), os.path, a
# pathlib.Path made of the URI) finds nothing. Nothing touches the network.

class FakeGCS(MemoryFileSystem):
    """gs://bucket/key ↔ memory /bucket/key; records every file opened."""
    protocol = ("gs", "gcs")

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        for prefix in ("gs://", "gcs://"):
            path = path.removeprefix(prefix)
        return MemoryFileSystem._strip_protocol(path)

    def _open(self, path, mode="rb", **kwargs):
        type(self).opened.append("gs://" + self._strip_protocol(path).lstrip("/"))
        return super()._open(path, mode, **kwargs)

    def upload(self, local: pathlib.Path, url: str) -> str:
        """Copy a local file or folder to url; returns url."""
        self.put(str(local), url, recursive=local.is_dir())
        return url


@pytest.fixture
def fake_gs(monkeypatch):
    # A class per test: its own store and log, nothing left for the next test.
    fake = type("FakeGCS", (FakeGCS,), {"store": {}, "pseudo_dirs": [""], "opened": []})
    monkeypatch.setenv("EPATH_USE_TF", "false")
    registry = importlib.import_module("fsspec.registry")._registry  # (fsspec.registry is the read-only view)
    for name in ("gs", "gcs"):
        monkeypatch.setitem(registry, name, fake)
    # epath reads EPATH_USE_TF once, and keeps one filesystem per scheme: forget both, before and after.
    caches = (gpath._is_tf_installed, epath_backend.fsspec_backend._get_filesystem)
    for cache in caches:
        cache.cache_clear()
    yield fake(skip_instance_cache=True)
    for cache in caches:
        cache.cache_clear()


def pytest_unconfigure(config):
    if _OWN_CACHE:
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


# Test files that take longest (measured with --durations), longest first. pytest-xdist (-n 2 --dist
# loadfile) hands whole files to its workers in collection order; starting the long ones first lets
# both workers finish together instead of one waiting on the other's last long file.
LONGEST_FIRST = [
    "tests/test_docs.py", "tests/training/test_multiprocess.py", "tests/commands/test_ablation.py",
    "tests/training/test_train.py", "tests/export/test_export_onnx.py",
    "tests/perf/test_bench_inference.py", "tests/training/test_faults.py", "tests/serve/test_policy_record.py",
    "tests/tools/test_libero.py", "tests/models/test_model_parity.py", "tests/data/test_lerobot.py",
    "tests/export/test_export_torch.py", "tests/commands/test_make_student.py", "tests/serve/test_policy.py",
    "tests/commands/test_demo_teacher.py", "tests/perf/test_compile_real_size.py", "tests/commands/test_cli_errors.py",
]


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: file order kept
