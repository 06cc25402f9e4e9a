"""Test-wide setup. Simulate an 8-device host so sharding tests run on a CPU-only machine."""
import os
import pathlib

# Must happen before jax is imported anywhere in the test session.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import importlib  # noqa: E402

import pytest  # noqa: E402
from etils.epath import backend as epath_backend  # noqa: E402
from etils.epath import gpath  # noqa: E402
from fsspec.implementations.memory import MemoryFileSystem  # noqa: E402

from shallow_pi_jax.data import norm_stats  # noqa: E402
from shallow_pi_jax.data.config import DataConfig  # noqa: E402
from shallow_pi_jax.data.dataset_stats import compute  # noqa: E402
from shallow_pi_jax.sim.demo_dataset import build_demo_dataset  # noqa: E402
from shallow_pi_jax.training import config as train_config  # noqa: E402

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "openpi_tiny"


def demo_data_with_stats(root: pathlib.Path, **kwargs):
    """A demo dataset under root/data (build_demo_dataset's kwargs) and its norm stats, computed as the tiny
    distillation config reads it, at root/norm_stats.json: (the dataset, the stats path)."""
    ds = build_demo_dataset(root / "data", **kwargs)
    c = train_config.distill_config(1, "size=tiny")
    c.data.datasets[0]["data_dir"] = str(ds.data_dir)
    c.data.tokenizer_path = str(ds.tokenizer_path)
    dc = DataConfig.from_any(c.data)
    stats = root / "norm_stats.json"
    norm_stats.save(compute(dc, dc.datasets, progress=False), stats)
    return ds, stats


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
