"""The embedding network phi: frame -> C x H/8 x W/8 features, plus the adaptor's learnable scalars.

phi = ImageNet trunk (three levels) -> a light FPN head -> per-pixel L2-normalised C-1 channels and one
constant channel (the regression's bias). The ridge solve works on these features; ``lam``, ``scale``
and ``offset`` are learned with them (logits = scale * X W + offset).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vosrr.backbone import TRUNKS, Trunk

__all__ = ["STRIDE", "Embedder", "Head", "ModelConfig", "padded_size"]

#: output stride of phi: features are at 1/8 of the (padded) frame size
STRIDE = 8
_PAD_MULTIPLE = 32


@dataclass(frozen=True)
class ModelConfig:
    """Shape of phi. ``channels`` is C (the constant bias channel included); ``width`` is the head's inner width;
    ``trunk`` one of ``backbone.TRUNKS``."""

    channels: int = 256
    width: int = 192
    lam: float = 5.0
    trunk: str = "mobilenet_v2"

    def __post_init__(self) -> None:
        if self.trunk not in TRUNKS:
            raise ValueError(f"unknown trunk {self.trunk!r}; choose one of {', '.join(TRUNKS)}")
        if self.channels < 2 or self.width < 1:
            raise ValueError(f"channels ({self.channels}) must be >= 2 and width ({self.width}) >= 1")
        if self.lam <= 0:
            raise ValueError(f"lam must be positive, got {self.lam}")


class Head(nn.Module):
    """``Head(f8, f16, f32) -> X[B,C,H/8,W/8]``: lateral 1x1 convs, upsample-and-sum, depthwise 3x3, 1x1 out."""

    def __init__(self, channels: int, width: int, levels: tuple[int, int, int]) -> None:
        super().__init__()
        c8, c16, c32 = levels
        self.lateral8 = nn.Conv2d(c8, width, 1)
        self.lateral16 = nn.Conv2d(c16, width, 1)
        self.lateral32 = nn.Conv2d(c32, width, 1)
        self.mix = nn.Conv2d(width, width, 3, padding=1, groups=width)
        self.out = nn.Conv2d(width, channels - 1, 1)

    def forward(self, f8: Tensor, f16: Tensor, f32: Tensor) -> Tensor:
        size = f8.shape[-2:]
        x = self.lateral8(f8)
        x = x + F.interpolate(self.lateral16(f16), size=size, mode="bilinear", align_corners=False)
        x = x + F.interpolate(self.lateral32(f32), size=size, mode="bilinear", align_corners=False)
        x = self.out(F.relu(self.mix(F.relu(x))))
        x = F.normalize(x, dim=1)
        return torch.cat([x, torch.ones_like(x[:, :1])], dim=1)


class Embedder(nn.Module):
    """phi and the adaptor scalars. The segmenter holds one of these; it never subclasses it."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.trunk = Trunk(config.trunk)
        self.head = Head(config.channels, config.width, self.trunk.spec.channels)
        self.log_lam = nn.Parameter(torch.tensor(math.log(config.lam)))
        self.scale = nn.Parameter(torch.tensor(8.0))
        self.offset = nn.Parameter(torch.tensor(-4.0))
        self.register_buffer("mean", torch.tensor(self.trunk.spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.trunk.spec.std).view(1, 3, 1, 1), persistent=False)

    @property
    def lam(self) -> Tensor:
        return self.log_lam.exp()

    def preprocess(self, frames: Tensor) -> Tensor:
        """``frames[B,H,W,3] uint8 RGB -> image[B,3,H',W']`` normalised, padded (replicate) to a multiple of 32."""
        x = frames.permute(0, 3, 1, 2).float()
        x = (x - self.mean) / self.std
        h, w = x.shape[-2:]
        ph, pw = padded_size(h, w)
        if (ph, pw) != (h, w):
            x = F.pad(x, (0, pw - w, 0, ph - h), mode="replicate")
        return x.contiguous(memory_format=torch.channels_last)

    def embed(self, levels: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        """``embed((f8, f16, f32)) -> X[B,C,h,w]``: the trainable head on trunk levels (cached or fresh)."""
        return self.head(*levels)

    def forward(self, image: Tensor) -> Tensor:
        """``forward(image[B,3,H',W'] preprocessed) -> X[B,C,H'/8,W'/8]``."""
        return self.embed(self.trunk(image))

    def logits(self, scores: Tensor) -> Tensor:
        """Map ridge scores ``X W`` to logits for BCEWithLogits / sigmoid."""
        return self.scale * scores + self.offset


def padded_size(height: int, width: int) -> tuple[int, int]:
    """The frame size phi actually sees: each side rounded up to a multiple of 32."""
    return (-(-height // _PAD_MULTIPLE) * _PAD_MULTIPLE, -(-width // _PAD_MULTIPLE) * _PAD_MULTIPLE)
