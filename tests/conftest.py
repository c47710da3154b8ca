"""Shared fixtures: the backend parameter and the leak check run after every test."""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from steadypool.cam import CamConfig

BACKENDS = ["threads", "processes"]
try:
    import ray  # noqa: F401 - the Ray suite runs where the ray extra is installed
except ImportError:
    pass
else:
    BACKENDS.append("ray")
LEAK_GRACE = 5.0  # seconds a pool thread may take to exit after the test ends


@pytest.fixture(scope="session")
def ray_instance() -> Iterator[None]:
    """A small local Ray instance for the whole session (2 CPUs, no dashboard)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each behaviour test runs once per backend."""
    name: str = request.param
    if name == "ray":
        request.getfixturevalue("ray_instance")
    return name


def _pool_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("steadypool-")]


def _pool_children() -> list[multiprocessing.process.BaseProcess]:
    return [p for p in multiprocessing.active_children() if p.name.startswith("steadypool-")]


@pytest.fixture(autouse=True)
def no_leaked_workers() -> Iterator[None]:
    """Fail any test that leaves a pool thread or worker process alive (after a short
    grace to exit)."""
    before = set(_pool_threads())
    before_children = {p.pid for p in _pool_children()}
    yield
    deadline = time.monotonic() + LEAK_GRACE
    leaked = [t for t in _pool_threads() if t not in before]
    for thread in leaked:
        thread.join(max(0.0, deadline - time.monotonic()))
    alive = [t.name for t in leaked if t.is_alive()]
    children = [p for p in _pool_children() if p.pid not in before_children]
    for child in children:
        child.join(max(0.0, deadline - time.monotonic()))
    alive += [f"{p.name} (pid {p.pid})" for p in children if p.is_alive()]
    for child in children:
        if child.is_alive():
            child.kill()  # do not let one failure cascade into every later test
    assert not alive, f"pool threads or processes left running after the test: {alive}"


@pytest.fixture(scope="session")
def labels_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """psa-style labels ({name: 20 floats}) of the demo photos."""
    import numpy as np

    from steadypool._tta._demo import DEMO_LABELS

    labels = {}
    for name, classes in DEMO_LABELS.items():
        vector = np.zeros(20, dtype=np.float32)
        vector[classes] = 1.0
        labels[name] = vector
    path = tmp_path_factory.mktemp("labels") / "labels.npy"
    np.save(path, labels)  # type: ignore[arg-type]
    return path


def cam_config(labels: Path, out: Path, **overrides: Any) -> CamConfig:
    """A CAM run over the demo photos with the demo network, no progress bar."""
    from steadypool.cam import CamConfig, demo_images

    options: dict[str, Any] = {
        "images": demo_images(),
        "labels": labels,
        "model": "demo",
        "out": out,
        "progress": False,
    }
    options.update(overrides)
    return CamConfig(**options)
