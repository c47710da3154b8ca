"""Multi-scale x flip CAM inference, the run behind ``steadypool cam``, as a Python API.

```python
from steadypool.cam import CamConfig, run

summary = run(CamConfig(images="VOC2012/JPEGImages", labels="cls_labels.npy",
                        model="network.resnet38_cls:Net", weights="res38_cls.pth",
                        out="cams", devices=("cuda:0", "cuda:1")))
print(summary)          # images/s, per-device busy time, failures
```

`CamConfig` takes the options of the command (README, "steadypool cam"); `run` returns
a `CamSummary`.  Needs the ``cam`` extra (torch and Pillow), imported when `run` is
called, so importing this module costs nothing.
"""

from __future__ import annotations

from ._tta._demo import demo_images
from ._tta._demo import run_demo as demo
from ._tta._inputs import CamInputError
from ._tta._runner import CamConfig, CamSummary, run

__all__ = ("CamConfig", "CamInputError", "CamSummary", "demo", "demo_images", "run")
