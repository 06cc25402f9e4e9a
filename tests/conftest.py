"""Test-wide setup. Simulate an 8-device host so sharding tests run on a CPU-only machine."""
import os
import pathlib

# Must happen before jax is imported anywhere in the test session.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "openpi_tiny"


@pytest.fixture(params=["pi0", "pi05"])
def fixture_dir(request):
    return FIXTURES / request.param
