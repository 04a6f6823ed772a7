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

__all__ = ["STRIDE", "Embedder", "Ensemble", "EnsembleConfig", "Head", "ModelConfig", "Phi", "padded_size"]

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


@dataclass(frozen=True)
class EnsembleConfig:
    """Shape of an ensemble: one ``ModelConfig`` per member; ``channels`` is the sum of theirs."""

    members: tuple[ModelConfig, ...]

    def __post_init__(self) -> None:
        if len(self.members) < 2:
            raise ValueError(f"an ensemble needs at least two members, got {len(self.members)}")
        if len({member.channels for member in self.members}) > 1:
            raise ValueError(
                "an ensemble's members must have the same C (each is one block of the solve), got "
                + ", ".join(str(member.channels) for member in self.members)
            )

    @property
    def channels(self) -> int:
        return sum(member.channels for member in self.members)


class Ensemble(nn.Module):
    """Several embedders used as one phi: their features side by side, ``C = C_1 + ... + C_n``.

    Each member's features are scaled by ``sqrt(lam / lam_i)`` (``lam`` the geometric mean of the members'
    learned lambdas), so that with one block of the block-diagonal solve per member (what the segmenter
    does) each block is exactly its member's own ridge solve and ``X W`` is the sum of the members' scores:
    an ensemble at the cost of one solve.

    It offers what the segmenter uses of an ``Embedder`` (``forward``, ``preprocess``, ``lam``, ``logits``,
    ``mean``/``std``, and ``trunk``/``embed`` for the benchmark's stage timings).
    """

    def __init__(self, config: EnsembleConfig) -> None:
        super().__init__()
        self.config = config
        self.members = nn.ModuleList(Embedder(member) for member in config.members)
        first = self.members[0]
        self.register_buffer("mean", first.mean.clone(), persistent=False)
        self.register_buffer("std", first.std.clone(), persistent=False)

    @classmethod
    def of(cls, *members: Embedder) -> Ensemble:
        """An ensemble holding copies of the weights of ``members``."""
        ensemble = cls(EnsembleConfig(tuple(member.config for member in members)))
        for mine, theirs in zip(ensemble.members, members, strict=True):
            mine.load_state_dict(theirs.state_dict())
        return ensemble

    @property
    def lam(self) -> Tensor:
        return torch.stack([member.log_lam for member in self.members]).mean().exp()

    def preprocess(self, frames: Tensor) -> Tensor:
        """``frames[B,H,W,3] uint8 -> image[B,3,H',W']`` normalised as the first member expects, padded."""
        return self.members[0].preprocess(frames)

    def trunk(self, image: Tensor) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Each member's trunk levels; ``image`` is normalised for the first member and re-normalised for the
        others (an affine map per channel, which commutes with the replicate padding)."""
        raw = image * self.std + self.mean
        return [
            member.trunk(image if index == 0 else (raw - member.mean) / member.std)
            for index, member in enumerate(self.members)
        ]

    def embed(self, levels: list[tuple[Tensor, Tensor, Tensor]]) -> Tensor:
        """``embed(levels per member) -> X[B,C,h,w]``: the members' features, each scaled to the common lambda."""
        lam = self.lam
        parts = [
            member.embed(level) * (lam / member.lam).sqrt() for member, level in zip(self.members, levels, strict=True)
        ]
        return torch.cat(parts, dim=1)

    def forward(self, image: Tensor) -> Tensor:
        """``forward(image[B,3,H',W'] preprocessed as by the first member) -> X[B,C,H'/8,W'/8]``."""
        return self.embed(self.trunk(image))

    def logits(self, scores: Tensor) -> Tensor:
        """Logits of the members' mean score: ``X W`` sums n members' scores, hence the ``1 / n``."""
        n = len(self.members)
        scale = torch.stack([member.scale for member in self.members]).mean() / n
        offset = torch.stack([member.offset for member in self.members]).mean()
        return scale * scores + offset


#: what the segmenter runs as phi: one embedding network, or an ensemble of them
Phi = Embedder | Ensemble


def padded_size(height: int, width: int) -> tuple[int, int]:
    """The frame size phi actually sees: each side rounded up to a multiple of 32."""
    return (-(-height // _PAD_MULTIPLE) * _PAD_MULTIPLE, -(-width // _PAD_MULTIPLE) * _PAD_MULTIPLE)
