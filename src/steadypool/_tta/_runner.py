"""`run_cam`: multi-scale x flip CAM inference over an image set on N devices.

Data flow (all through the public `steadypool.Pool` API)::

    names --cpu.imap(prepare)--> scaled images --dev.imap(infer)--> final maps
          --cpu.submit(save)--> out/NAME.npy (temp file + rename), pred PNG, overlay

How the scaled images reach a device worker (`CamSummary.inputs`): on threads, as
they are; to worker processes and Ray actors on this machine, through shared memory
(`_shared.py`: the parent's CPU workers write them, the worker maps them, ~200 bytes
pickled instead of ~17 MB); to Ray actors of a cluster (or without /dev/shm, or when
it is full), the decoded photo goes (~0.5 MB) and the worker resizes it.

Both streams are ordered and windowed: while device workers run image k, CPU workers
decode and resize images k+1.. and save images ..k-1 (no per-image barrier).  Every
device worker holds its own replica (`setup`), so no replica is ever driven by two
workers.  A failure of one image (missing, corrupt, no label, a crashed worker) is
recorded and the run goes on; the summary lists it and the exit code says so.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import steadypool as sp
from steadypool._checks import check_size

from . import _cam
from ._cam import merges_flip
from ._eval import DEFAULT_THRESHOLDS, EvalError, EvalResult, evaluate, parse_thresholds
from ._files import content
from ._inputs import (
    CamInputError,
    check_label_lengths,
    check_unambiguous,
    class_count,
    find_image,
    index_images,
    label_for,
    load_labels,
    load_model,
    read_names,
    require_cam_extra,
)
from ._outputs import (
    layout_on_disk,
    make_output_dirs,
    remove_dirs,
    remove_stale_temps,
    write_atomic,
)
from ._overlay import save_overlay
from ._recipes import FORMATS, RECIPES
from ._record import check_record, record_of, write_record
from ._shared import (
    IN_PROCESS,
    PHOTO,
    SHARED,
    Segments,
    SharedInputs,
    choose_inputs,
    remove_stale,
    shm_dir,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from concurrent.futures import Future

    import numpy as np

__all__ = ["CamConfig", "CamSummary", "run"]

_LOG = logging.getLogger("steadypool.cam")

BACKENDS = ("threads", "processes", "ray")


@dataclass(frozen=True)
class CamConfig:
    """What a CAM run is asked to do; the fields are the options of ``steadypool cam``
    (README, "steadypool cam").  Paths may be given as strings.

    Raises:
        CamInputError: On construction, for values no run can use (an unknown format or
            backend, scales that are not positive finite numbers, no devices, ...).
    """

    images: Path
    labels: Path
    model: str
    out: Path
    list_file: Path | None = None
    weights: Path | None = None
    model_args: Mapping[str, Any] = field(default_factory=dict)
    scales: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)
    flip: bool = True
    format: str = "psa"
    devices: tuple[str, ...] = ("cpu",)
    backend: str = "threads"
    address: str | None = None  # Ray cluster (backend "ray")
    # Recycle a device worker past this resident memory (bytes or "4GiB"; processes, Ray)
    max_worker_memory: int | str | None = None
    pred_dir: Path | None = None
    bg: float = 0.2
    overlay_dir: Path | None = None
    resume: bool = True
    cpu_workers: int | None = None
    amp: str | None = None  # "bf16" | "fp16": the network under autocast
    progress: bool = True
    eval_gt: Path | None = None  # evaluate the seed mIoU against these GT PNGs after the run
    eval_thresholds: str | float | tuple[float, ...] = DEFAULT_THRESHOLDS
    eval_absent: str = "irn"  # --absent-classes

    def __post_init__(self) -> None:
        for name in (
            "images",
            "labels",
            "out",
            "list_file",
            "weights",
            "pred_dir",
            "overlay_dir",
            "eval_gt",
        ):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, Path(value))
        object.__setattr__(self, "scales", tuple(self.scales))
        object.__setattr__(self, "devices", tuple(self.devices))
        if self.format not in FORMATS:
            raise CamInputError(
                f"--format must be one of {', '.join(FORMATS)}, got {self.format!r}"
            )
        if not self.scales or not all(
            isinstance(s, int | float) and math.isfinite(s) and s > 0 for s in self.scales
        ):
            raise CamInputError(
                f"--scales must be positive finite numbers, got {', '.join(map(str, self.scales))}"
                if self.scales
                else "--scales names no scale"
            )
        if not self.devices or not all(isinstance(d, str) and d.strip() for d in self.devices):
            raise CamInputError(
                f"--devices must name at least one device (cpu, cuda:0, ...), got {self.devices}"
            )
        if self.backend not in BACKENDS:
            raise CamInputError(
                f"--backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}"
            )
        if self.address is not None and self.backend != "ray":
            raise CamInputError("--address applies to --backend ray only")
        if self.max_worker_memory is not None:
            if self.backend == "threads":
                raise CamInputError(
                    "--max-worker-memory needs --backend processes or ray: device workers "
                    "on threads share this process, whose memory a new thread does not free"
                )
            try:
                check_size("--max-worker-memory", self.max_worker_memory)
            except (TypeError, ValueError) as exc:
                raise CamInputError(str(exc)) from None
        if self.cpu_workers is not None and (
            not isinstance(self.cpu_workers, int) or self.cpu_workers < 1
        ):
            raise CamInputError(f"--cpu-workers must be at least 1, got {self.cpu_workers}")
        if self.amp is not None and self.amp not in _cam.AMP_DTYPES:
            raise CamInputError(f"--amp must be bf16 or fp16, got {self.amp!r}")
        if not math.isfinite(self.bg):
            raise CamInputError(f"--bg must be a finite number, got {self.bg}")
        if self.eval_gt is not None:
            try:
                parse_thresholds(self.eval_thresholds)
            except ValueError as exc:
                raise CamInputError(str(exc).replace("--thresholds", "--eval-thresholds")) from None


@dataclass
class CamSummary:
    """What a run did."""

    total: int = 0
    done: int = 0
    skipped: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    device_busy: dict[str, float] = field(default_factory=dict)
    devices: tuple[str, ...] = ()
    backend: str = ""
    evaluation: EvalResult | None = None
    inputs: str = ""  # how the scaled images reached the device workers (_shared.INPUTS)
    recycled: int = 0  # device workers recycled past --max-worker-memory

    @property
    def images_per_second(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0

    def __str__(self) -> str:
        lines = [
            f"images: {self.total} listed, {self.done} done, {self.skipped} skipped "
            f"(already done), {len(self.failures)} failed",
            f"time: {self.seconds:.2f}s, {self.images_per_second:.2f} images/s "
            f"({self.backend}, devices {', '.join(self.devices)}"
            + (f"; inputs: {self.inputs})" if self.inputs not in ("", IN_PROCESS) else ")"),
        ]
        for worker, busy in self.device_busy.items():
            share = busy / self.seconds * 100 if self.seconds else 0.0
            lines.append(f"  {worker}: busy {busy:.2f}s ({share:.0f}% of the run)")
        if self.recycled:
            lines.append(f"  device workers recycled (--max-worker-memory): {self.recycled}")
        for name, reason in self.failures:
            lines.append(f"  FAILED {name}: {reason}")
        if self.evaluation is not None:
            lines.append(str(self.evaluation))
        return "\n".join(lines)


@dataclass(frozen=True)
class _Prepared:
    name: str
    size: tuple[int, int]  # (H, W)
    label: np.ndarray
    scaled: list[np.ndarray] | SharedInputs | None  # None: the device worker resizes
    image: Any  # the RGB photo: for overlays, and for workers that resize themselves

    def for_device(self) -> _Prepared:
        """What the device worker needs: the photo only when it resizes it."""
        return self if self.scaled is None else replace(self, image=None)


def _folders(config: CamConfig) -> list[Path | None]:
    return [config.out, config.pred_dir, config.overlay_dir]


def _finished(config: CamConfig, name: str) -> bool:
    """Whether every output this run asks for exists, the ``.npy`` in this run's format
    (a psa file does not count for an irn run, nor an irn file without irn's types)."""
    npy = config.out / f"{name}.npy"
    pngs = [d / f"{name}.png" for d in (config.pred_dir, config.overlay_dir) if d is not None]
    if not all(path.is_file() for path in (npy, *pngs)):
        return False
    return layout_on_disk(npy) == RECIPES[config.format].layout.value


def _replica(config: CamConfig) -> Any:
    spec, weights, model_args = config.model, config.weights, dict(config.model_args)

    def setup(worker: sp.Worker) -> Any:
        model = load_model(spec, weights, model_args)
        return model.to(worker.device or "cpu")

    return setup


def _infer(config: CamConfig, item: _Prepared) -> tuple[str, Any]:
    worker = sp.current_worker()
    recipe = RECIPES[config.format]
    scaled = item.scaled
    if scaled is None:  # resize here: ~0.5 MB of photo travelled instead of ~17 MB of scales
        scaled = _cam.prepare(recipe, worker.state, item.image, config.scales)
    elif isinstance(scaled, SharedInputs):  # written by the parent's CPU workers
        scaled = scaled.open()
    result = _cam.infer(
        recipe,
        worker.state,
        scaled,
        item.size,
        item.label,
        scales=config.scales,
        flip=config.flip,
        device=worker.device or "cpu",
        amp=config.amp,
    )
    return item.name, result


def _save(config: CamConfig, item: _Prepared, result: _cam.CamMaps) -> None:
    from PIL import Image

    keys, maps = result.keys, result.high_res
    write_atomic(config.out / f"{item.name}.npy", content(RECIPES[config.format].layout, result))
    if config.pred_dir is not None:
        pred = _cam.predict(keys, maps, item.size, config.bg)
        tmp = config.pred_dir / f".{item.name}.png.{os.getpid()}.tmp"
        Image.fromarray(pred).save(tmp, format="PNG")
        os.replace(tmp, config.pred_dir / f"{item.name}.png")
    if config.overlay_dir is not None:
        save_overlay(config.overlay_dir / f"{item.name}.png", item.image, keys, maps)


class _Skip:
    """What the CPU stage hands on for an image whose outputs are all there (resume)."""


SKIP = _Skip()


def run(config: CamConfig) -> CamSummary:
    """Run the CAM job `config` describes; return its summary.

    Each image's failure (missing, corrupt, no label, a NaN or negative CAM, a crashed
    worker) is listed in the summary and the run goes on; nothing is raised for it.

    Raises:
        CamInputError: Before any work, when the run cannot start (bad model, weights,
            labels, list, devices, output folder, no Ray cluster at the address); the
            output folders it would have created are not left behind; also when torch
            or Pillow is missing (the ``cam`` extra).

    **Interruption:** Ctrl-C stops the run within seconds; what was written stays, each
    file whole (temporary name, then rename), and a rerun with ``resume`` (the default)
    does only the images not finished in this run's format and outputs.
    """
    require_cam_extra()
    from PIL import Image

    recipe = RECIPES[config.format]
    names = read_names(config.images, config.list_file)
    index = index_images(config.images)
    check_unambiguous(index, names)
    labels = load_labels(config.labels)
    model = load_model(config.model, config.weights, config.model_args)
    classes = class_count(model)
    if merges_flip(model) and not config.flip:
        raise CamInputError(
            f"{type(model).__name__} merges [img, flip(img)] in its forward (irn's CAM "
            "does), so it needs the flips: leave out --no-flip"
        )
    if merges_flip(model) and not recipe.takes_merged_forward:
        raise CamInputError(
            f"{type(model).__name__} merges [img, flip(img)] in its forward, but --format "
            f"{recipe.name} needs each variant's CAM (it "
            + ("merges the flip by max" if not recipe.relu_variants else "applies a ReLU to each")
            + "): give the model a forward_cam(x) returning the CAMs of a batch"
        )
    check_label_lengths(labels, names, classes)
    record = record_of(
        format=config.format,
        scales=config.scales,
        flip=config.flip,
        model=config.model,
        model_args=config.model_args,
        weights=config.weights,
        labels=config.labels,
        amp=config.amp,
    )
    if config.resume and config.out.is_dir():
        check_record(config.out, record)
    if config.eval_gt is not None and not config.eval_gt.is_dir():
        raise CamInputError(f"--eval-gt {config.eval_gt} is not a directory")
    created = make_output_dirs(_folders(config))
    summary = CamSummary(total=len(names), devices=config.devices, backend=config.backend)
    warned = threading.Event()  # set once a 16-bit photo was reported
    inputs = IN_PROCESS  # decided once the device pool is up (Ray: is it this machine?)
    segments: Segments | None = None
    full = threading.Event()  # set once shared memory was full (reported once)

    def prepare(name: str) -> _Prepared | _Skip:
        if config.resume and _finished(config, name):
            return SKIP
        path = find_image(config.images, name, index)
        label = label_for(labels, name, classes)
        with Image.open(path) as opened:
            if opened.mode.startswith("I") and not warned.is_set():
                warned.set()
                _LOG.warning(
                    "%s is a %s (16-bit) picture: converted to RGB as psa and irn do, its "
                    "values above 255 become white; convert the images to 8 bits for "
                    "meaningful maps (reported once per run)",
                    path,
                    opened.mode,
                )
            image = opened.convert("RGB")
        size = (image.height, image.width)
        if inputs == PHOTO:
            return _Prepared(name, size, label, None, image)
        keep = image if config.overlay_dir is not None else None
        scaled = _cam.prepare(recipe, model, image, config.scales)
        if segments is None:
            return _Prepared(name, size, label, scaled, keep)
        try:
            return _Prepared(name, size, label, segments.put(scaled), keep)
        except OSError as exc:  # /dev/shm full: this image goes as its photo
            if not full.is_set():
                full.set()
                _LOG.warning(
                    "shared memory (%s) has no room for %s's inputs (%s): such images go "
                    "to the device worker as photos, which resizes them (reported once)",
                    segments.directory,
                    name,
                    exc,
                )
            return _Prepared(name, size, label, None, image)

    cpu_workers = config.cpu_workers or max(2, min(8, os.cpu_count() or 2))
    in_device: deque[_Prepared] = deque()  # prepared items in the device stream, in order
    saving: deque[tuple[str, Future[None]]] = deque()
    bar = _progress(config.progress, len(names))
    workers = len(config.devices)
    bar.set_postfix_str(
        f"starting {workers} device worker{'s' * (workers > 1)} ({config.backend}) on "
        f"{', '.join(dict.fromkeys(config.devices))}: loading the model"
    )
    started = False

    def prepared_ok(stream: Iterator[Any]) -> Iterator[_Prepared]:
        for name, item in zip(names, stream, strict=True):
            if isinstance(item, BaseException):
                summary.failures.append((name, _reason(item)))
                bar.update(1)
            elif isinstance(item, _Skip):
                summary.skipped += 1
                bar.update(1)
            else:
                in_device.append(item)
                yield item.for_device()

    def finish_save(name: str, future: Future[None]) -> None:
        try:
            future.result()
            summary.done += 1
        except Exception as exc:
            summary.failures.append((name, _reason(exc)))
        bar.update(1)

    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        shared_dir = shm_dir() if config.backend != "threads" else None
        if shared_dir is not None:
            remove_stale(shared_dir)
            segments = Segments(shared_dir)
            # after the pools have ended (callbacks run last in, first out), so no CPU
            # worker still writes: every file of this run goes, whatever ended it
            stack.callback(segments.close)
        try:
            cpu = stack.enter_context(sp.Pool(cpu_workers, name="cam-cpu"))
            dev = stack.enter_context(
                sp.Pool(
                    devices=list(config.devices),
                    setup=_replica(config),
                    backend=config.backend,
                    address=config.address,
                    max_worker_memory=config.max_worker_memory,
                    name="cam-dev",
                )
            )
        except (ValueError, ConnectionError, ImportError) as exc:
            bar.close()
            remove_dirs(created)
            raise CamInputError(str(exc)) from exc
        inputs = summary.inputs = choose_inputs(config.backend)
        if inputs != SHARED:
            segments = None
        remove_stale_temps(_folders(config))
        write_record(config.out, record)  # the run starts: its record goes beside the maps
        prepared = cpu.imap(prepare, names, on_error="return", window=2 * cpu_workers)
        infer = _bind_infer(config)
        results = dev.imap(infer, prepared_ok(prepared), on_error="return", window=2 * workers)
        for result in results:
            if not started:
                bar.set_postfix_str("")
                started = True
            item = in_device.popleft()
            if segments is not None:  # its outcome is in: the worker is done with them
                segments.release(item.scaled)
            if isinstance(result, BaseException):
                summary.failures.append((item.name, _reason(result)))
                bar.update(1)
                continue
            saving.append((item.name, cpu.submit(_save, config, item, result[1])))
            while len(saving) > 2 * cpu_workers or (saving and saving[0][1].done()):
                finish_save(*saving.popleft())
        while saving:
            finish_save(*saving.popleft())
        stats = dev.stats()
    summary.seconds = time.perf_counter() - start
    bar.close()
    summary.recycled = stats.recycled
    for worker in stats.workers:
        summary.device_busy[f"worker {worker.index} ({worker.device})"] = worker.busy_seconds
    if config.eval_gt is not None:
        done = [n for n in names if (config.out / f"{n}.npy").is_file()]
        try:
            summary.evaluation = evaluate(
                config.out,
                config.eval_gt,
                names=done,
                format=config.format,
                thresholds=config.eval_thresholds,
                absent=config.eval_absent,
                classes=classes + 1,
            )
        except EvalError as exc:
            raise CamInputError(f"the maps are written; evaluating them failed: {exc}") from exc
    return summary


def _bind_infer(config: CamConfig) -> Any:
    def infer(item: _Prepared) -> tuple[str, Any]:
        return _infer(config, item)

    return infer


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


class _NoBar:
    def update(self, n: int) -> None: ...

    def set_postfix_str(self, text: str) -> None: ...

    def close(self) -> None: ...


def _progress(enabled: bool, total: int) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="image", desc="steadypool cam", dynamic_ncols=True)
