"""A small CAM network with fixed, deterministic weights (no download), for the demo.

It follows the model contract of `steadypool cam`: ``forward_cam(x)`` maps a batch
(N, 3, h, w) to non-negative class activation maps (N, 20, h/8, w/8), one per VOC class.
Its weights come from a fixed seed, so every machine computes the same maps; they are
not trained, so the maps show what the network responds to, not real classes.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["VOC_CLASSES", "TinyCAMNet"]

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip


class TinyCAMNet(nn.Module):
    """Three strided 3x3 convolutions and a 1x1 classifier: CAMs at 1/8 resolution."""

    def __init__(self, num_classes: int = len(VOC_CLASSES), seed: int = 0) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.classifier = nn.Conv2d(64, num_classes, 1, bias=False)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for parameter in self.parameters():
                fan_in = math.prod(parameter.shape[1:]) if parameter.dim() > 1 else 1
                parameter.copy_(
                    torch.randn(parameter.shape, generator=generator) / math.sqrt(fan_in)
                )

    def forward_cam(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, h, w) -> non-negative CAMs (N, C, ceil(h/8), ceil(w/8))."""
        out: torch.Tensor = F.relu(self.classifier(self.features(x)))
        return out

    def forward(self, x: torch.Tensor) -> Any:
        """Class scores: the CAMs averaged over space."""
        return self.forward_cam(x).mean(dim=(2, 3))
