"""Fixtures shared across test modules."""

from __future__ import annotations

import os

import pytest

# Ray on Linux binds its node to the machine's outward address even when asked for 127.0.0.1; its switch for
# single-machine clusters (read when Ray is first imported) keeps every Ray process of the tests on the loopback.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# google-auth (under gcsfs) probes the GCE metadata server when it looks for credentials; tests stay on the loopback,
# and Ray workers started by the tests inherit this too.
os.environ.setdefault("NO_GCE_CHECK", "true")


@pytest.fixture(scope="session")
def ray_cluster():
    """ONE real local Ray cluster for the whole session (2 CPUs, 127.0.0.1, no dashboard, small object store), started
    the way `--engine ray` starts one on demand; yields its address so a test can also join it from a subprocess
    (`--ray-address ADDRESS`). Tests using it skip where Ray is not installed."""
    pytest.importorskip("ray")
    import ray

    from zhdata.engine.ray_engine import init_ray

    init_ray(None, 2, object_store_memory=150 << 20)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
