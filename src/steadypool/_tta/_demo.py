"""`steadypool demo`: the CAM runner end to end on bundled photos, on the CPU."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from ._inputs import CamInputError, require_cam_extra
from ._runner import CamConfig, CamSummary, run

__all__ = ["DEMO_LABELS", "demo_images", "run_demo"]

# VOC class indices (see _demo_net.VOC_CLASSES) of what each bundled photo shows.
DEMO_LABELS = {
    "astronaut": [14],  # person
    "chelsea": [7],  # cat
    "coffee": [10, 4],  # diningtable, bottle (a cup is the nearest VOC class)
    "rocket": [0],  # aeroplane (the nearest VOC class)
}


def demo_images() -> Path:
    """The folder of bundled photos (see demo_images/LICENSES.txt)."""
    return Path(str(resources.files("steadypool._tta") / "demo_images"))


def run_demo(out: Path, *, workers: int = 2, progress: bool = True) -> CamSummary:
    """Write labels for the bundled photos and run `steadypool cam` on them with
    `workers` CPU device workers; outputs go to `out`/cams, /pred and /overlay."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise CamInputError(f"--workers must be at least 1, got {workers}")
    require_cam_extra()
    out.mkdir(parents=True, exist_ok=True)
    labels = {}
    for name, classes in DEMO_LABELS.items():
        vector = np.zeros(20, dtype=np.float32)
        vector[classes] = 1.0
        labels[name] = vector
    np.save(out / "labels.npy", labels)  # type: ignore[arg-type]
    config = CamConfig(
        images=demo_images(),
        labels=out / "labels.npy",
        model="demo",
        out=out / "cams",
        pred_dir=out / "pred",
        overlay_dir=out / "overlay",
        devices=("cpu",) * workers,
        resume=False,
        progress=progress,
    )
    return run(config)
