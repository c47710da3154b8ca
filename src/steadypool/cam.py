"""Multi-scale x flip CAM inference, the run behind ``steadypool cam``, as a Python API.

```python
from steadypool.cam import CamConfig, run

summary = run(CamConfig(images="VOC2012/JPEGImages", labels="cls_labels.npy",
                        model="network.resnet38_cls:Net", weights="res38_cls.pth",
                        out="cams", devices=("cuda:0", "cuda:1")))
print(summary)          # images/s, per-device busy time, failures
```

`CamConfig` takes the options of the command (README, "steadypool cam"); `run` returns
a `CamSummary`.  `evaluate` computes the seed mIoU of a folder of CAM files (README,
"steadypool eval") and returns an `EvalResult`:

```python
from steadypool.cam import evaluate

result = evaluate("cams", "VOC2012/SegmentationClass", list_file="train.txt",
                  thresholds="0:0.6:0.01")
print(result.best_threshold, result.best_miou)    # and print(result): the table
result.plot("miou.png")
```

Needs the ``cam`` extra (torch, Pillow, matplotlib for plots), imported when `run` or
`evaluate` is called, so importing this module costs nothing.
"""

from __future__ import annotations

from ._tta._demo import demo_images
from ._tta._demo import run_demo as demo
from ._tta._eval import ABSENT_CLASSES as ABSENT_CLASSES
from ._tta._eval import DEFAULT_THRESHOLDS as DEFAULT_THRESHOLDS
from ._tta._eval import EvalError, EvalResult, evaluate
from ._tta._inputs import CamInputError
from ._tta._recipes import FORMATS as FORMATS
from ._tta._runner import CamConfig, CamSummary, run

# The choices of the options (constants, not in __all__, which lists what we define):
# FORMATS (--format), ABSENT_CLASSES (--absent-classes: name -> rule), DEFAULT_THRESHOLDS.
__all__ = (
    "CamConfig",
    "CamInputError",
    "CamSummary",
    "EvalError",
    "EvalResult",
    "demo",
    "demo_images",
    "evaluate",
    "run",
)
