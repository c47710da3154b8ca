"""Models for the CAM tests (importable in worker processes as tests._cam_models)."""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from steadypool._tta._demo_net import TinyCAMNet


class NoCam(nn.Module):
    """A classifier without forward_cam."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean()


class SlowNet(TinyCAMNet):
    """TinyCAMNet that takes a while per call, so a run can be killed half-way."""

    def forward_cam(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.15)
        return super().forward_cam(x)


def other_width() -> TinyCAMNet:
    """A factory whose weights do not fit TinyCAMNet's (5 classes)."""
    return TinyCAMNet(num_classes=5)


class PsaStyleNet(TinyCAMNet):
    """Defined the way psa's network.resnet38_cls.Net is: train() returns None."""

    def train(self, mode: bool = True) -> None:  # type: ignore[override]
        super().train(mode)


class IrnStyleCAM(nn.Module):
    """Defined the way irn's net.resnet50_cam.CAM is: no forward_cam; forward takes the
    pair [img, flip(img)] and returns the merged CAM (same weights as TinyCAMNet)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = TinyCAMNet()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.net.forward_cam(x)
        return x[0] + x[1].flip(-1)


class NeedsLargeInputs(TinyCAMNet):
    """A network whose last pooling needs feature maps of 7 x 7 or more, as a deep
    network's does: zero images of 32 x 32 fail, 64 x 64 work."""

    def forward_cam(self, x: torch.Tensor) -> torch.Tensor:
        cams = super().forward_cam(x)
        return torch.nn.functional.avg_pool2d(cams, 7, stride=1)


class PooledCam(TinyCAMNet):
    """forward_cam returns class scores (N, C), not maps."""

    def forward_cam(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward_cam(x).mean(dim=(2, 3))


class NanCam(TinyCAMNet):
    """CAMs that are NaN for images wider than tall (of the demo photos all but the
    square astronaut), finite otherwise."""

    def forward_cam(self, x: torch.Tensor) -> torch.Tensor:
        cams = super().forward_cam(x)
        return cams * float("nan") if x.shape[-1] > x.shape[-2] else cams


class NegativeCam(TinyCAMNet):
    """CAMs without the final ReLU: negative values."""

    def forward_cam(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward_cam(x) - 1.0


class Broken(TinyCAMNet):
    """forward_cam fails whatever the input size (a shape bug in the network)."""

    def forward_cam(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, torch.zeros(3, 7))


# Networks defined the way SEAM, PuzzleCAM and ToCo define theirs (their call
# signatures and outputs), each followed by the few-line adapter the README documents.


class SeamStyleNet(nn.Module):
    """Like SEAM's network.resnet38_SEAM.Net: ``forward(x)`` returns ``(cam, cam_rv)``,
    21 channels with the background first; ``cam_rv`` can be negative and has maps
    whose minimum is above 0 (what SEAM's min-max normalisation handles)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = TinyCAMNet(num_classes=21, seed=2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cam = self.net.classifier(self.net.features(x))  # no ReLU: negatives
        return cam, cam + 0.5


class SeamCam(SeamStyleNet):
    """The adapter: SEAM infers with ``cam_rv`` and drops the background channel."""

    def forward_cam(self, x: torch.Tensor) -> torch.Tensor:
        cam_rv: torch.Tensor = self(x)[1]
        return cam_rv[:, 1:]


class PuzzleStyleClassifier(nn.Module):
    """Like PuzzleCAM's core.networks.Classifier: ``forward(x, with_cam=True)`` returns
    ``(logits, features)``, the features before any ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.net = TinyCAMNet(seed=3)

    def forward(self, x: torch.Tensor, with_cam: bool = False) -> Any:
        features = self.net.classifier(self.net.features(x))
        logits = features.mean(dim=(2, 3))
        return (logits, features) if with_cam else logits


class PuzzleCam(PuzzleStyleClassifier):
    """The adapter: PuzzleCAM's ``get_cam`` calls ``model(images, with_cam=True)``."""

    def forward_cam(self, x: torch.Tensor) -> torch.Tensor:
        features: torch.Tensor = self(x, with_cam=True)[1]
        return features


class TocoStyleNetwork(nn.Module):
    """Like ToCo's model.model_seg_neg.network: ``forward(x, cam_only=True)`` returns
    ``(cam_aux, cam)``, plain convolutions of the features (negatives included)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = TinyCAMNet(seed=4)

    def forward(self, x: torch.Tensor, cam_only: bool = False) -> Any:
        features = self.net.features(x)
        cam = F.conv2d(features, self.net.classifier.weight).detach()
        cam_aux = F.conv2d(features, -self.net.classifier.weight).detach()
        if cam_only:
            return cam_aux, cam
        return cam.amax(dim=(2, 3))


class TocoCam(TocoStyleNetwork):
    """The adapter: ToCo's ``multi_scale_cam2`` calls ``model(x, cam_only=True)``."""

    def forward_cam(self, x: torch.Tensor) -> torch.Tensor:
        cam: torch.Tensor = self(x, cam_only=True)[1]
        return cam
