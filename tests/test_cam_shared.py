"""How inputs reach device workers in other processes (issue 19): shared memory, or
the photo; outputs equal to the reference either way, and no file left in /dev/shm
whatever ends the run (a crashed worker, Ctrl-C, a killed parent's next run)."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("PIL")

from steadypool._tta import _shared
from steadypool._tta._demo import demo_images
from steadypool._tta._demo_net import TinyCAMNet
from steadypool._tta._shared import PREFIX, SHARED, Segments, SharedInputs, remove_stale
from steadypool.cam import run as run_cam

from .conftest import BACKENDS, cam_config
from .test_cam import assert_match_reference

if TYPE_CHECKING:
    import torch

SHM = _shared.shm_dir()
needs_shm = pytest.mark.skipif(SHM is None, reason="needs /dev/shm (Linux)")
OTHER_PROCESS = [b for b in BACKENDS if b != "threads"]
ROOT = Path(__file__).resolve().parent.parent


class CrashOnAstronaut(TinyCAMNet):
    """TinyCAMNet whose worker process dies (os._exit) on the astronaut photo at scale
    1 (the only 320x320 input of the demo photos)."""

    def forward_cam(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) == (320, 320):
            os._exit(3)
        return super().forward_cam(x)


class Slow(TinyCAMNet):
    """TinyCAMNet taking 0.2 s per call, so a run can be interrupted half-way."""

    def forward_cam(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.2)
        return super().forward_cam(x)


def _ours(pid: int) -> list[Path]:
    """The shared-memory files of the run in process `pid`."""
    assert SHM is not None
    return list(SHM.glob(f"{PREFIX}{pid}-*"))


# --- the segments alone -----------------------------------------------------------------


@needs_shm
def test_segments_round_trip_copy_on_write_and_close() -> None:
    """What a worker maps equals what the parent wrote; writing to it changes neither
    the file nor another mapping; release and close unlink; a put after close fails
    and leaves no file."""
    assert SHM is not None
    segments = Segments(SHM)
    arrays = [np.random.default_rng(i).random((3, 5 + i, 7), dtype=np.float32) for i in range(3)]
    ref = segments.put(arrays)
    mapped = ref.open()
    for got, want in zip(mapped, arrays, strict=True):
        np.testing.assert_array_equal(got, want)
    mapped[0][...] = -1  # copy-on-write: private to this mapping
    np.testing.assert_array_equal(ref.open()[0], arrays[0])
    other = segments.put(arrays[:1])
    assert segments.live == 2
    segments.release(ref)
    assert not Path(ref.path).exists()
    np.testing.assert_array_equal(mapped[1], arrays[1])  # a live mapping outlives the unlink
    segments.close()
    assert not Path(other.path).exists()
    with pytest.raises(RuntimeError, match="the run is over"):
        segments.put(arrays)
    assert _ours(os.getpid()) == []


@needs_shm
def test_a_full_shared_memory_is_an_oserror_and_leaves_no_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No room (ENOSPC when the space is reserved) fails `put` cleanly, before any
    write (never a SIGBUS), and removes the file it began."""
    assert SHM is not None

    def no_room(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_room)
    segments = Segments(SHM)
    with pytest.raises(OSError, match="No space"):
        segments.put([np.zeros((3, 4, 4), dtype=np.float32)])
    assert segments.live == 0
    assert _ours(os.getpid()) == []


@needs_shm
def test_files_of_a_dead_process_are_removed_and_a_live_ones_kept() -> None:
    """`remove_stale` (run at the start of each run) unlinks the files a killed run
    left and leaves those of running processes alone."""
    assert SHM is not None
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    stale = SHM / f"{PREFIX}{int(dead.stdout)}-0"
    live = SHM / f"{PREFIX}{os.getpid()}-stale-test"
    stale.write_bytes(b"x")
    live.write_bytes(b"x")
    try:
        assert remove_stale(SHM) >= 1
        assert not stale.exists()
        assert live.exists()
    finally:
        stale.unlink(missing_ok=True)
        live.unlink(missing_ok=True)


# --- runs --------------------------------------------------------------------------------


@needs_shm
@pytest.mark.parametrize("backend", OTHER_PROCESS)
@pytest.mark.parametrize("fmt", ["psa", "irn"])
def test_workers_in_other_processes_map_shared_inputs_equal_to_the_reference(
    fmt: str, backend: str, labels_file: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Process workers and (local) Ray actors get their inputs through shared memory,
    the outputs equal the independent reference (1e-4), and no file is left."""
    if backend == "ray":
        request.getfixturevalue("ray_instance")
    out = tmp_path / "out"
    summary = run_cam(
        cam_config(labels_file, out, format=fmt, backend=backend, devices=("cpu", "cpu"))
    )
    assert (summary.failures, summary.done, summary.inputs) == ([], 4, SHARED)
    assert_match_reference(fmt, out, labels_file)
    assert _ours(os.getpid()) == []


@pytest.mark.parametrize("backend", OTHER_PROCESS)
@pytest.mark.parametrize("fmt", ["psa", "irn"])
def test_workers_sent_the_photo_resize_it_equal_to_the_reference(
    fmt: str,
    backend: str,
    labels_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    """Without shared memory (no /dev/shm; a Ray cluster) the decoded photo goes and
    the worker resizes it: outputs equal to the reference (1e-4)."""
    if backend == "ray":
        request.getfixturevalue("ray_instance")
    monkeypatch.setattr(_shared, "shm_dir", lambda: None)
    out = tmp_path / "out"
    summary = run_cam(cam_config(labels_file, out, format=fmt, backend=backend))
    assert (summary.failures, summary.done, summary.inputs) == ([], 4, _shared.PHOTO)
    assert_match_reference(fmt, out, labels_file)


@needs_shm
def test_a_full_shared_memory_sends_photos_instead(
    labels_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """When /dev/shm has no room, each image goes as its photo (said once in the log),
    and the outputs still equal the reference."""

    def no_room(self: Segments, arrays: Any) -> SharedInputs:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Segments, "put", no_room)
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="steadypool.cam"):
        summary = run_cam(cam_config(labels_file, out, format="psa", backend="processes"))
    assert (summary.failures, summary.done) == ([], 4)
    assert sum("has no room" in r.getMessage() for r in caplog.records) == 1
    assert_match_reference("psa", out, labels_file)


@needs_shm
@pytest.mark.parametrize("backend", OTHER_PROCESS)
def test_a_crashed_worker_leaves_no_shared_memory(
    backend: str, labels_file: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A worker process that dies mid-image fails that image alone; the rest equal the
    reference, and every shared-memory file of the run is gone at its end."""
    if backend == "ray":
        request.getfixturevalue("ray_instance")
    out = tmp_path / "out"
    summary = run_cam(
        cam_config(
            labels_file, out, backend=backend, model=f"{__name__}:{CrashOnAstronaut.__name__}"
        )
    )
    assert [name for name, _ in summary.failures] == ["astronaut"]
    assert summary.done == 3
    assert _ours(os.getpid()) == []
    kept = tmp_path / "labels-kept.npy"
    labels = np.load(labels_file, allow_pickle=True).item()
    del labels["astronaut"]
    np.save(kept, labels)
    assert_match_reference("psa", out, kept)


INTERRUPTIBLE = """
import sys
from pathlib import Path
from steadypool.cam import CamConfig, run as run_cam
run_cam(CamConfig(images=Path(sys.argv[1]), labels=Path(sys.argv[2]), out=Path(sys.argv[3]),
                  model="tests.test_cam_shared:Slow", backend="processes", progress=False))
"""


@needs_shm
@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL])
def test_an_interrupted_run_leaves_no_shared_memory(
    how: signal.Signals, labels_file: Path, tmp_path: Path
) -> None:
    """Ctrl-C in the middle of a processes run unlinks every shared-memory file of the
    run before it exits; after a SIGKILL (no cleanup possible) the next run removes
    what the killed one left."""
    images = tmp_path / "images"
    images.mkdir()
    labels = np.load(labels_file, allow_pickle=True).item()
    many = {}
    for i in range(12):
        source = sorted(demo_images().glob("*.jpg"))[i % 4]
        shutil.copy(source, images / f"{source.stem}{i}.jpg")
        many[f"{source.stem}{i}"] = labels[source.stem]
    np.save(tmp_path / "labels.npy", many)  # type: ignore[arg-type]
    args = [str(images), str(tmp_path / "labels.npy"), str(tmp_path / "out")]
    run = subprocess.Popen([sys.executable, "-c", INTERRUPTIBLE, *args], cwd=ROOT)
    try:
        deadline = time.monotonic() + 90
        while not list((tmp_path / "out").glob("*.npy")):  # the device stream is running
            assert time.monotonic() < deadline, "the run did not start"
            assert run.poll() is None, "the run ended before it could be interrupted"
            time.sleep(0.01)
        assert _ours(run.pid), "no shared-memory file while the run is in flight"
        run.send_signal(how)
        run.wait(60)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(30)
    assert len(list((tmp_path / "out").glob("*.npy"))) < 12, "the signal came too late"
    if how == signal.SIGKILL:
        assert SHM is not None
        remove_stale(SHM)  # what the next run does first
    assert _ours(run.pid) == []
