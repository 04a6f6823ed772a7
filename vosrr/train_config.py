"""The configuration of ``vosrr train``: one frozen dataclass, mapped onto its Typer options."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vosrr.backbone import TRUNKS

__all__ = ["TrainConfig"]


@dataclass(frozen=True)
class TrainConfig:
    davis: Path
    out: Path = Path("runs/train")
    channels: int = 256
    width: int = 192
    lam: float = 5.0
    trunk: str = "mobilenet_v2"
    """ImageNet trunk of phi: one of ``backbone.TRUNKS``"""
    blocks: int = 1
    train_stages: int = 1
    """trunk stages trained with the head: 0 (head only), 1 (+ stride-32 stage), 2 (+ stride-16 stage)"""
    epochs: int = 10
    steps: int = 100
    """optimizer steps per epoch"""
    batch: int = 8
    """episodes per step"""
    refs: int = 1
    """reference frames per episode (their statistics add up)"""
    multi: Path | None = None
    """a DAVIS-layout folder of multi-object videos (split ``train``; palette masks, ids 1..K), e.g. composites
    of the training sequences (``benchmarks/composite.py --split train --exclude <held-out>``): their episodes
    solve W for all K objects at once"""
    multi_rate: float = 0.5
    """share of the episodes drawn from ``multi``"""
    multi_views: int = 2
    """cached views of each ``multi`` frame (as ``views``)"""
    init: Path | None = None
    """start from these weights (fine-tuning: a new optimizer and schedule; the trunk must match)"""
    optimizer: str = "adamw"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    max_gap: int = 30
    crop: tuple[int, int] = (12, 20)
    """crop of the cached feature maps, in stride-32 cells (12 x 20 = 384 x 640 pixels)"""
    views: int = 4
    """cached views of each frame: the frame itself and views-1 scale-and-colour augmented copies"""
    scale: tuple[float, float] = (0.7, 1.4)
    """scale augmentation: the range of the resize factor (log-uniform)"""
    colour: float = 0.3
    """colour augmentation: brightness, contrast and saturation by up to this factor, hue by a tenth of it"""
    holdout: int = 3
    """training sequences held out for validation"""
    seed: int = 0
    device: str = "cpu"
    cache: Path = Path("cache")
    resume: Path | None = None
    force: bool = False
    """start over in an ``out`` that holds an earlier run's ``last.pt`` (it is replaced)"""
    log_every: int = 10
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        numbers = {"--lam": self.lam, "--lr": self.lr, "--weight-decay": self.weight_decay, "--colour": self.colour}
        numbers |= {"momentum": self.momentum, "--scale": self.scale[0], "--scale max": self.scale[1]}
        for option, value in numbers.items():  # nan passes every comparison below, so refuse it first
            if not math.isfinite(value):
                raise ValueError(f"{option} must be a finite number, got {value}")
        at_least = {"--epochs": 1, "--steps": 1, "--batch": 1, "--refs": 1, "--views": 1, "--max-gap": 1}
        at_least |= {"--multi-views": 1}
        at_least |= {"--channels": 2, "--width": 1, "--holdout": 0}
        for option, least in at_least.items():
            value = getattr(self, option[2:].replace("-", "_"))
            if value < least:
                raise ValueError(f"{option} must be at least {least}, got {value}")
        if not 1e-3 <= self.lam <= 1e4:
            raise ValueError(f"--lam must be between 0.001 and 10000 (the learned value is about 5), got {self.lam}")
        if not 0 < self.lr <= 1:
            raise ValueError(f"--lr must be above 0 and at most 1, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"--weight-decay must be at least 0, got {self.weight_decay}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.trunk not in TRUNKS:
            raise ValueError(f"--trunk must be one of {', '.join(TRUNKS)}, got {self.trunk!r}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"--optimizer must be sgd or adamw, got {self.optimizer!r}")
        if self.train_stages not in (0, 1, 2):
            raise ValueError(f"--train-stages must be 0, 1 or 2, got {self.train_stages}")
        if self.channels % self.blocks:
            raise ValueError(f"--blocks {self.blocks} must divide --channels {self.channels}")
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"--scale must be 0 < min <= max, got {self.scale}")
        if not 0 <= self.colour < 1:
            raise ValueError(f"--colour must be in [0, 1), got {self.colour}")
        if not 0 <= self.multi_rate <= 1 or not math.isfinite(self.multi_rate):
            raise ValueError(f"--multi-rate must be in [0, 1], got {self.multi_rate}")
        if self.resume is not None and self.init is not None:
            raise ValueError("--init starts a new run from weights and --resume goes on with one; pass one of them")
