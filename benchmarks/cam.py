"""CAM benchmark: the psa pattern, the irn pattern and `steadypool cam`, side by side.

Same model, same images, one run; images/s and ratios; per-device busy fraction.

    python benchmarks/cam.py [--images 48] [--devices cpu,cpu] [--model tiny|wide]
    python benchmarks/cam.py --simulate 0.3 [--images 16]   # the device-free proof

  psa pattern   psa's infer_cls.py: a DataLoader prepares each image's 8 variants; per
                image a new BatchThreader (the seed's own class, loaded from the bug
                report) runs them, replica chosen by variant index; all variants of an
                image finish before the next starts; sum, normalise and save on the
                main thread.
  irn pattern   irn's make_cam.py: one process per device over a static interleaved
                split of the names; each prepares, runs and saves its share.
  steadypool    `steadypool.cam.run` (psa and irn formats) with threads, and with processes.

Each steadypool row also says how many bytes per image crossed the process boundary
(the pickled task to the device worker, and its outcome back; 0 on threads), how the
inputs travelled, and each GPU's utilisation as the driver reports it (NVML), or "no
NVML".  `--simulate S` replaces the network by a simulated device (`_simdevice.py`:
its forward sleeps S seconds per megapixel, GIL released, and returns cheap maps) and
reports, per device worker, the fraction of its span (first forward to last) spent
inside that sleep: the device's own clock.  It proves the pipeline keeps each device
fed on every backend; it has no PCIe copy and no CUDA launch cost.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import math
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _probes import GpuSampler, WireCounter
from _seed import SEED_DIR, load_seed_class
from _simdevice import read_clocks
from steadypool._tta import _cam
from steadypool._tta._demo import DEMO_LABELS, demo_images
from steadypool._tta._demo_net import TinyCAMNet
from steadypool.cam import CamConfig
from steadypool.cam import run as run_cam

HERE = Path(__file__).resolve().parent
SCALES = (1.0, 0.5, 1.5, 2.0)


class WideCAMNet(TinyCAMNet):
    """A heavier CAM network (about 40 GFLOP per 500x375 image at 4 scales and flips),
    so a GPU has real work: ResNet-like width at stride 8."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 64, 3, stride=2, padding=1), nn.ReLU()]
        layers += [nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.ReLU()]
        layers += [nn.Conv2d(128, 256, 3, stride=2, padding=1), nn.ReLU()]
        for _ in range(4):
            layers += [nn.Conv2d(256, 256, 3, padding=1), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Conv2d(256, 20, 1, bias=False)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in self.parameters():
                fan_in = math.prod(p.shape[1:]) if p.dim() > 1 else 1
                p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(fan_in))


MODELS = {"tiny": "steadypool._tta._demo_net:TinyCAMNet", "wide": "cam:WideCAMNet"}


def make_dataset(root: Path, count: int, size: tuple[int, int]) -> tuple[Path, Path, list[str]]:
    """`count` VOC-sized copies of the bundled photos, and their labels."""
    images = root / "images"
    images.mkdir(parents=True)
    photos = sorted(demo_images().glob("*.jpg"))
    labels = {}
    names = []
    for i in range(count):
        photo = photos[i % len(photos)]
        name = f"{i:05d}_{photo.stem}"
        Image.open(photo).convert("RGB").resize(size, Image.Resampling.BICUBIC).save(
            images / f"{name}.jpg", quality=90
        )
        vector = np.zeros(20, dtype=np.float32)
        vector[DEMO_LABELS[photo.stem]] = 1.0
        labels[name] = vector
        names.append(name)
    np.save(root / "labels.npy", labels)  # type: ignore[arg-type]
    return images, root / "labels.npy", names


def _model(spec: str) -> Any:
    from steadypool._tta._inputs import load_model

    return load_model(spec, None)


# --- psa pattern ------------------------------------------------------------------------------


class _PsaDataset(torch.utils.data.Dataset[Any]):
    def __init__(self, images: Path, labels: dict[str, np.ndarray], names: list[str]):
        self.images, self.labels, self.names = images, labels, names

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> Any:
        name = self.names[i]
        img = Image.open(self.images / f"{name}.jpg").convert("RGB")
        variants = []
        for chw in _cam.prepare_psa(None, img, SCALES):
            variants += [torch.from_numpy(chw), torch.from_numpy(np.flip(chw, -1).copy())]
        return name, variants, torch.from_numpy(self.labels[name]), (img.height, img.width)


def psa_pattern(
    spec: str, devices: list[str], images: Path, labels_path: Path, names: list[str], out: Path
) -> dict[str, Any]:
    batch_threader = load_seed_class()
    if batch_threader is None:
        raise SystemExit("the seed's BatchThreader is not under shared/seed/")
    replicas = [_model(spec).to(d) for d in devices]
    labels = np.load(labels_path, allow_pickle=True).item()
    loader = torch.utils.data.DataLoader(
        _PsaDataset(images, labels, names), batch_size=None, num_workers=2
    )
    spans: list[list[tuple[float, float]]] = [[] for _ in devices]  # per replica
    lock = threading.Lock()
    start = time.perf_counter()
    for name, img_list, label, size in loader:

        def _work(
            i: int, img: torch.Tensor, size: tuple[int, int] = size, label: Any = label
        ) -> np.ndarray:
            t0 = time.perf_counter()
            device = devices[i % len(devices)]
            with torch.no_grad():
                cam = replicas[i % len(devices)].forward_cam(img[None].to(device))
                cam = F.interpolate(cam, size, mode="bilinear", align_corners=False)[0]
                cam = cam.cpu().numpy() * label.view(20, 1, 1).numpy()
            if i % 2 == 1:
                cam = np.flip(cam, axis=-1)
            with lock:
                spans[i % len(devices)].append((t0, time.perf_counter()))
            result: np.ndarray = cam
            return result

        thread_pool = batch_threader(
            _work, list(enumerate(img_list)), batch_size=12, prefetch_size=0, processes=8
        )
        cam_list = thread_pool.pop_results()
        sum_cam = np.sum(cam_list, axis=0)
        norm_cam = sum_cam / (np.max(sum_cam, (1, 2), keepdims=True) + 1e-5)
        cam_dict = {i: norm_cam[i] for i in range(20) if label[i] > 1e-5}
        np.save(out / f"{name}.npy", cam_dict)  # type: ignore[arg-type]
    seconds = time.perf_counter() - start
    # Several variant threads share a replica at once: busy time is the union of spans.
    return {"seconds": seconds, "busy": [_union(s) for s in spans]}


def _union(spans: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for start, stop in sorted(spans):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


# --- irn pattern ------------------------------------------------------------------------------


def _irn_process(
    spec: str, device: str, images: str, labels_path: str, names: list[str], out: str, result: Any
) -> None:
    sys.path.insert(0, str(HERE))
    model = _model(spec).to(device)
    labels = np.load(labels_path, allow_pickle=True).item()
    busy = 0.0
    for name in names:
        img = Image.open(Path(images) / f"{name}.jpg").convert("RGB")
        scaled = _cam.prepare_irn(model, img, SCALES)
        t0 = time.perf_counter()
        cams = _cam.infer_irn(
            model, scaled, (img.height, img.width), labels[name], flip=True, device=device
        )
        busy += time.perf_counter() - t0
        np.save(Path(out) / f"{name}.npy", cams)  # type: ignore[arg-type]
    result.put((device, busy))


def irn_pattern(
    spec: str, devices: list[str], images: Path, labels: Path, names: list[str], out: Path
) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    result = context.Queue()
    start = time.perf_counter()
    procs = [
        context.Process(
            target=_irn_process,
            args=(spec, d, str(images), str(labels), names[i :: len(devices)], str(out), result),
        )
        for i, d in enumerate(devices)
    ]
    for p in procs:
        p.start()
    busy = [result.get(timeout=3600)[1] for _ in procs]
    for p in procs:
        p.join()
    return {"seconds": time.perf_counter() - start, "busy": busy}


# --- steadypool ---------------------------------------------------------------------------------


def steady(
    spec: str,
    devices: list[str],
    images: Path,
    labels: Path,
    out: Path,
    fmt: str,
    backend: str,
    amp: str | None = None,
    simulate: float = 0.0,
) -> dict[str, Any]:
    model_args: dict[str, Any] = {}
    clock_dir = out.parent / f"{out.name}-clocks"
    if simulate:
        clock_dir.mkdir()
        model_args = {
            "seconds_per_megapixel": simulate,
            "clock_dir": str(clock_dir),
            "forwards_per_image": len(SCALES),
        }
    with WireCounter() as wire, GpuSampler() as gpus:
        summary = run_cam(
            CamConfig(
                images=images,
                labels=labels,
                model=spec,
                model_args=model_args,
                out=out,
                format=fmt,
                devices=tuple(devices),
                backend=backend,
                amp=amp,
                progress=False,
            )
        )
    assert not summary.failures, summary.failures
    done = max(summary.done, 1)
    got: dict[str, Any] = {
        "seconds": summary.seconds,
        "busy": list(summary.device_busy.values()),
        "inputs": getattr(summary, "inputs", None),
        "bytes_sent_per_image": 0 if backend == "threads" else wire.sent / done,
        "bytes_back_per_image": 0 if backend == "threads" else wire.received / done,
    }
    if gpus.unavailable is None:
        # by the driver: over the whole run, and over each GPU's active span
        gpu_ids = sorted({int(d.split(":")[1]) for d in devices if d.startswith("cuda")})
        got["gpu_utilisation"] = {i: gpus.utilisation(i) for i in gpu_ids}
        got["gpu_utilisation_active"] = {i: gpus.utilisation(i, active=True) for i in gpu_ids}
        got["gpu_samples"] = len(gpus.samples)
    else:
        got["gpu_utilisation"] = gpus.unavailable
    if simulate:
        clocks = read_clocks(clock_dir)
        got["device_clock"] = clocks
        got["device_busy_of_span"] = [c["busy"] / (c["last"] - c["first"]) for c in clocks]
        got["device_busy_of_run"] = [c["busy"] / summary.seconds for c in clocks]
        # the idle part of the span: waiting for the next image, and the math between
        # one image's forwards (device time on a GPU, CPU time here)
        got["device_idle_between_images"] = [
            c["idle_between_images"] / (c["last"] - c["first"]) for c in clocks
        ]
        got["device_idle_within_images"] = [
            c["idle_within_images"] / (c["last"] - c["first"]) for c in clocks
        ]
        # images/s once the devices run: without the workers' start-up (spawn, model load)
        span = max(c["last"] for c in clocks) - min(c["first"] for c in clocks)
        got["steady_images_per_s"] = summary.done / span
    return got


def largest_difference(a: Path, b: Path) -> float:
    """The largest absolute difference between the maps of two runs' files."""
    largest = 0.0
    for path in a.glob("*.npy"):
        x = np.load(path, allow_pickle=True).item()
        y = np.load(b / path.name, allow_pickle=True).item()
        for key in x:
            if key != "keys":
                largest = max(largest, float(np.abs(np.asarray(x[key]) - np.asarray(y[key])).max()))
    return largest


def _cell(row: dict[str, Any]) -> str:
    """The device columns of one row: the simulated device's clock, else task time;
    bytes per image across the boundary; the GPUs as NVML sees them."""
    clock = row.get("device_busy_of_span")
    busy = clock if clock is not None else row["busy_fraction"]
    text = " ".join(f"{b * 100:.0f}%" for b in busy)
    sent, back = row.get("bytes_sent_per_image"), row.get("bytes_back_per_image")
    wire = "" if sent is None else f"{_bytes(sent):>9} {_bytes(back):>9}"
    gpu = row.get("gpu_utilisation_active", row.get("gpu_utilisation"))
    if isinstance(gpu, dict):
        gpu = " ".join(f"cuda:{i} {u * 100:.0f}%" if u is not None else "-" for i, u in gpu.items())
    steady = row.get("steady_images_per_s")
    steady_text = "" if steady is None else f"{steady:>6.2f}  "
    between = row.get("device_idle_between_images")
    if between is not None:
        text += " (" + " ".join(f"{b * 100:.1f}" for b in between) + ")"
    return f"{steady_text}{text:<20} {wire:<19}  {gpu or ''}"


def _bytes(n: float | None) -> str:
    if n is None:
        return "-"
    if n >= 1e6:
        return f"{n / 1e6:.1f} MB"
    return f"{n / 1e3:.1f} kB" if n >= 1e3 else f"{n:.0f} B"


def _waiting_ms(row: dict[str, Any]) -> list[float]:
    """Per simulated device: ms per image it waited for its next image."""
    per_image = len(SCALES)
    return [
        c["idle_between_images"] / max(c["forwards"] / per_image - 1, 1) * 1e3
        for c in row["device_clock"]
    ]


def _inputs(row: dict[str, Any]) -> str:
    """How the inputs travelled; for runs of code before `CamSummary.inputs`, told by
    the bytes that crossed (the scaled arrays pickled, or the photo)."""
    if row.get("inputs"):
        return str(row["inputs"])
    sent = row.get("bytes_sent_per_image") or 0
    if not sent:
        return "in-process"
    return "scaled arrays, pickled" if sent > 4e6 else "photo, resized by the worker"


def markdown(paths: list[Path]) -> str:
    """The README's table from benchmark JSON files (one row per runner and file)."""
    lines: list[str] = []
    for path in paths:
        data = json.loads(path.read_text())
        simulated = data["meta"].get("simulate_seconds_per_megapixel")
        if simulated and not lines:
            lines += [
                "| runner | inputs | images/s | device busy (own clock) | waiting for the "
                "next image | to the worker | back |",
                "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
            ]
        elif not lines:
            lines += [
                "| runner | devices | images/s (x pattern) | worker busy (task time) | "
                "GPU utilisation (NVML) | to the worker | back |",
                "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
            ]
        for row in data["rows"]:
            sent, back = row.get("bytes_sent_per_image"), row.get("bytes_back_per_image")
            wire = f"{_bytes(sent)} | {_bytes(back)}"
            if simulated:
                busy = ", ".join(f"{b * 100:.0f}%" for b in row["device_busy_of_span"])
                wait = ", ".join(f"{w:.0f} ms" for w in _waiting_ms(row))
                lines.append(
                    f"| {row['runner'].removeprefix('steadypool cam ')} | "
                    f"{_inputs(row)} | {row['steady_images_per_s']:.2f} | {busy} | "
                    f"{wait} | {wire} |"
                )
                continue
            busy = ", ".join(f"{b * 100:.0f}%" for b in row["busy_fraction"])
            gpu = row.get("gpu_utilisation_active", row.get("gpu_utilisation"))
            if isinstance(gpu, dict):
                gpu = ", ".join("-" if u is None else f"{u * 100:.0f}%" for u in gpu.values())
            ratio = "" if row.get("x_pattern") is None else f" ({row['x_pattern']:.2f})"
            lines.append(
                f"| {row['runner']} | {','.join(data['meta']['devices'])} | "
                f"{row['images_per_s']:.2f}{ratio} | {busy} | {gpu or '-'} | {wire} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--devices", default="cpu,cpu")
    parser.add_argument("--model", choices=tuple(MODELS), default="tiny")
    parser.add_argument("--size", default="500x375", help="image size WxH (VOC-like)")
    parser.add_argument("--formats", default="psa,irn", help="which rows: psa, irn or both")
    parser.add_argument(
        "--backends", default="threads,processes,ray", help="steadypool rows: which backends"
    )
    parser.add_argument(
        "--no-patterns", action="store_true", help="leave out the psa and irn pattern rows"
    )
    parser.add_argument(
        "--simulate",
        type=float,
        default=0.0,
        metavar="S",
        help="a simulated device instead of the network: forward sleeps S seconds per "
        "megapixel; busy is the device's own clock (implies --no-patterns)",
    )
    parser.add_argument(
        "--amp",
        default="",
        help="also threads rows with --amp (bf16,fp16), with their largest difference "
        "from the float32 maps",
    )
    parser.add_argument("--json", type=Path, default=HERE / "results" / "cam.json")
    parser.add_argument(
        "--markdown",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="print the README table of these result files and exit (no run)",
    )
    parser.add_argument(
        "--transport",
        type=int,
        default=0,
        metavar="N",
        help="only the transport's ceiling: N images' inputs sent to one worker process "
        "each way (pickled, shared memory, photo), images/s (`_transport.py`)",
    )
    args = parser.parse_args()
    if args.markdown:
        print(markdown(args.markdown))
        return
    # worker processes and Ray actors import the benchmark's modules from here
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(HERE), os.environ.get("PYTHONPATH")])
    )
    if args.transport:
        from _transport import ceiling

        width, height = (int(x) for x in args.size.split("x"))
        photo = Image.open(sorted(demo_images().glob("*.jpg"))[0]).convert("RGB")
        photo = photo.resize((width, height), Image.Resampling.BICUBIC)
        arrays = _cam.prepare_psa(None, photo, SCALES)
        mb = sum(a.nbytes for a in arrays) / 1e6
        print(f"transport ceiling, one worker process, {args.size} at 4 scales ({mb:.1f} MB):")
        rates = ceiling(photo, arrays, args.transport)
        for way, rate in rates.items():
            print(f"  {way:<30} {rate:8.1f} images/s")
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"transport_images_per_s": rates, "size": args.size}))
        return
    devices = [d.strip() for d in args.devices.split(",")]
    spec = "_simdevice:SimulatedDevice" if args.simulate else MODELS[args.model]
    size = tuple(int(x) for x in args.size.split("x"))
    backends = [b.strip() for b in args.backends.split(",")]
    patterns = not (args.no_patterns or args.simulate)
    if args.simulate:
        # The math after the simulated network runs on the CPU here (device time on a
        # GPU): one thread per process, as several workers' intra-op thread pools on a
        # few shared cores only fight (3-10x slower math under load); set before the
        # workers start, so worker processes and Ray actors inherit it.
        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"
    root = Path(tempfile.mkdtemp(prefix="steadypool-cam-bench-"))
    try:
        images, labels, names = make_dataset(root, args.images, size)  # type: ignore[arg-type]
        runs: dict[str, Any] = {}
        seed_missing = patterns and load_seed_class() is None
        if seed_missing:  # a GPU machine gets the checkout, not shared/ beside it
            print(
                "psa pattern: left out, the seed's BatchThreader is not under "
                f"{SEED_DIR} (set STEADYPOOL_SEED_DIR to the folder of the bug report)"
            )
        for fmt in ("psa", "irn"):
            if patterns and fmt == "psa" and not seed_missing:
                runs["psa pattern (seed BatchThreader per image)"] = functools.partial(
                    psa_pattern, spec, devices, images, labels, names
                )
            if patterns and fmt == "irn":
                runs["irn pattern (process per device, static split)"] = functools.partial(
                    irn_pattern, spec, devices, images, labels, names
                )
            for backend in backends:
                runs[f"steadypool cam {fmt}, {backend}"] = functools.partial(
                    steady,
                    spec,
                    devices,
                    images,
                    labels,
                    fmt=fmt,
                    backend=backend,
                    simulate=args.simulate,
                )
        for amp in filter(None, args.amp.split(",")):
            for fmt in ("psa", "irn"):
                runs[f"steadypool cam {fmt}, threads, amp {amp}"] = functools.partial(
                    steady, spec, devices, images, labels, fmt=fmt, backend="threads", amp=amp
                )
        if "ray" in backends and importlib.util.find_spec("ray") is None:
            runs = {k: v for k, v in runs.items() if not k.endswith(", ray")}
        elif "ray" in backends:  # started once here, so the rows measure actors, not start-up
            import ray

            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        formats = set(args.formats.split(","))
        what = f"simulated device {args.simulate} s/megapixel" if args.simulate else args.model
        print(
            f"\n== CAM, {len(names)} images {args.size}, model {what}, devices "
            f"{','.join(devices)}, {os.cpu_count()} CPUs =="
        )
        busy_title = "steady  device clock (% waiting)" if args.simulate else "task busy"
        print(
            f"{'runner':<44} {'images/s':>8} {'x pattern':>9}  {busy_title:<12} "
            f"{'sent/img':>9} {'back/img':>9}  GPU (NVML)",
            flush=True,
        )
        rows: list[dict[str, Any]] = []
        pattern: dict[str, float] = {}
        outs: dict[str, Path] = {}
        for label, run in runs.items():
            fmt = "psa" if label.startswith("psa") or " psa" in label else "irn"
            if fmt not in formats:
                continue
            out = root / str(len(rows))
            out.mkdir(parents=True)
            got = run(out)
            outs[label] = out
            if ", amp " in label:
                exact = outs.get(label.split(", amp ")[0])
                if exact is not None:
                    got["largest_difference_from_fp32"] = largest_difference(exact, out)
            row = {
                "runner": label,
                "format": fmt,
                "images": len(names),
                **got,
                "images_per_s": len(names) / got["seconds"],
            }
            if "pattern" in label:
                pattern[fmt] = row["images_per_s"]
            row["x_pattern"] = row["images_per_s"] / pattern[fmt] if fmt in pattern else None
            row["busy_fraction"] = [b / row["seconds"] for b in row["busy"]]
            rows.append(row)
            diff = row.get("largest_difference_from_fp32")
            note = "" if diff is None else f"  (largest difference from fp32: {diff:.2g})"
            ratio = "" if row["x_pattern"] is None else f"{row['x_pattern']:.2f}"
            print(
                f"{label:<44} {row['images_per_s']:>8.2f} {ratio:>9}  {_cell(row)}" + note,
                flush=True,
            )
        meta = {
            "python": sys.version.split()[0],
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "devices": devices,
            "model": args.model if not args.simulate else "simulated",
            "simulate_seconds_per_megapixel": args.simulate or None,
            "size": args.size,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "date": time.strftime("%F %T"),
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        print(f"\nwrote {args.json}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
