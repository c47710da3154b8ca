"""Device workers on real GPUs (run where CUDA is available: `pytest -m gpu`)."""

from __future__ import annotations

import os
from typing import Any

import pytest

import steadypool as sp

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
WAIT = 60.0


def _where(_: int) -> tuple[str | None, int, bool, str]:
    stream = torch.cuda.current_stream()
    on_default = stream == torch.cuda.default_stream()
    x = torch.ones(256, 256, device="cuda")
    return sp.current_worker().device, torch.cuda.current_device(), on_default, str((x @ x).device)


def test_thread_workers_run_on_their_device_and_own_stream() -> None:
    """On threads, each CUDA worker's tasks run with its device current and on a
    stream of its own (not the default stream shared by everyone)."""
    count = torch.cuda.device_count()
    devices = [f"cuda:{i % count}" for i in range(2)]
    with sp.Pool(devices=devices) as pool:
        seen = set(pool.map(_where, range(40)))
    for device, current, on_default, tensor_device in seen:
        assert device is not None
        assert current == int(device.split(":")[1])
        assert not on_default
        assert tensor_device == device


def test_process_workers_see_only_their_device() -> None:
    """On processes, a worker for cuda:N sees one GPU, as cuda:0."""
    last = torch.cuda.device_count() - 1

    def probe(_: int) -> tuple[str | None, str | None, int]:
        import torch as t

        return (
            sp.current_worker().device,
            os.environ.get("CUDA_VISIBLE_DEVICES"),
            (t.cuda.device_count()),
        )

    with sp.Pool(devices=[f"cuda:{last}"], backend="processes") as pool:
        assert pool.submit(probe, 0).result(WAIT) == ("cuda:0", str(last), 1)


def test_unavailable_gpu_is_refused_listing_what_there_is() -> None:
    """cuda:<count> does not exist: a clear error before any work."""
    count = torch.cuda.device_count()
    with pytest.raises(ValueError, match=rf"cuda:{count} is not available.*cuda:0"):
        sp.Pool(devices=[f"cuda:{count}"])


def test_stall_report_has_cuda_memory_when_torch_is_loaded() -> None:
    """A stall on a CUDA worker reports that device's memory."""
    import threading

    gate = threading.Event()
    reports: list[sp.StallReport] = []

    def stuck(_: int) -> None:
        torch.ones(1024, 1024, device="cuda")
        gate.wait(WAIT)

    with sp.Pool(devices=["cuda:0"], stall_timeout=0.3, on_stall=reports.append) as pool:
        future = pool.submit(stuck, 0)
        while not reports:
            threading.Event().wait(0.05)
        gate.set()
        future.result(WAIT)
    assert any("cuda:0:" in line and "MiB allocated" in line for line in reports[0].devices)


@pytest.mark.parametrize("backend", ["threads", "processes"])
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_cam_amp_on_a_gpu(backend: str, amp: str, labels_file: Any, tmp_path: Any) -> None:
    """`steadypool cam --amp` on cuda:0: the network under autocast, maps close to the
    float32 ones computed on the same GPU (CUDA's own kernels)."""
    import numpy as np

    from steadypool.cam import run

    from .conftest import cam_config

    pytest.importorskip("PIL")
    options = {"devices": ("cuda:0",), "backend": backend}
    assert run(cam_config(labels_file, tmp_path / "fp32", **options)).done == 4
    assert run(cam_config(labels_file, tmp_path / amp, amp=amp, **options)).done == 4
    for path in (tmp_path / "fp32").glob("*.npy"):
        exact = np.load(path, allow_pickle=True).item()
        half = np.load(tmp_path / amp / path.name, allow_pickle=True).item()
        for key in exact:
            assert np.abs(half[key] - exact[key]).max() < 0.1


@pytest.mark.parametrize("fmt", ["psa", "irn"])
def test_cam_on_a_gpu_worker_process_equals_threads(
    fmt: str, labels_file: Any, tmp_path: Any
) -> None:
    """GPU worker processes map their inputs from shared memory (issue 19): their maps
    equal those of thread workers on the same GPU (1e-4; the same CUDA kernels, where
    the CPU reference would differ by TF32), and no shared-memory file is left."""
    import numpy as np

    pytest.importorskip("PIL")
    from steadypool._tta._shared import PREFIX, SHARED, shm_dir
    from steadypool.cam import run

    from .conftest import cam_config

    options = {"devices": ("cuda:0", "cuda:0"), "format": fmt}
    threads = run(cam_config(labels_file, tmp_path / "threads", **options))
    processes = run(cam_config(labels_file, tmp_path / "processes", backend="processes", **options))
    assert (threads.done, processes.done, processes.failures) == (4, 4, [])
    folder = shm_dir()
    if folder is not None:
        assert processes.inputs == SHARED
        assert not list(folder.glob(f"{PREFIX}{os.getpid()}-*"))
    for path in (tmp_path / "threads").glob("*.npy"):
        want = np.load(path, allow_pickle=True).item()
        got = np.load(tmp_path / "processes" / path.name, allow_pickle=True).item()
        assert sorted(map(str, got)) == sorted(map(str, want))
        for key in want:
            np.testing.assert_allclose(np.asarray(got[key]), np.asarray(want[key]), atol=1e-4)
