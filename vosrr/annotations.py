"""User input as statistics: masks, scribbles, corrections and online updates all take one path to ``Stats``.

An ``Annotation`` is what a user says about one frame: dense labels ``labels[H,W]`` (0 = background,
1..K = objects) and which pixels are known (``known[H,W]``; unknown pixels, scribbles' blank areas or a
mask's void 255, get weight 0). Every piece of input becomes statistics by the same two steps:

    pixels: labels[H,W], known[H,W] --pixel_targets--> Y[N,K+1], valid[N] on the feature grid
    cells:  X[N,C], Y[N,K+1], valid[N] --grid_statistics--> Stats(A, B)   (class-balanced, weighted)

The online update enters at the second step with its confident predictions as ``Y`` and ``valid``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vosrr import solver
from vosrr.embedding import STRIDE, padded_size
from vosrr.masks import targets
from vosrr.solver import Stats

__all__ = ["Annotation", "grid_statistics", "pixel_targets", "widen"]


@dataclass(frozen=True)
class Annotation:
    """What the user gives for one frame: ``labels[H,W]`` uint8 (0..K) and ``known[H,W]`` bool (None: all known).

    ``scribble`` marks partial labels (strokes): the frame's full mask is then inferred by the solver.
    A dense mask's void pixels (unknown) are ``known == False`` with ``scribble`` False.
    """

    labels: np.ndarray
    known: np.ndarray | None = None
    scribble: bool = False

    def __post_init__(self) -> None:
        if self.labels.ndim != 2:
            raise ValueError(f"labels must be [H,W], got shape {self.labels.shape}")
        if self.known is not None and self.known.shape != self.labels.shape:
            raise ValueError(f"known {self.known.shape} must match labels {self.labels.shape}")

    @property
    def size(self) -> tuple[int, int]:
        return self.labels.shape[0], self.labels.shape[1]

    @property
    def num_objects(self) -> int:
        """The highest object label this annotation names (its objects are 1..num_objects or a subset)."""
        return int(self.labels.max()) if self.labels.size else 0

    @property
    def objects(self) -> frozenset[int]:
        """The object labels that some known pixel carries."""
        values = self.labels if self.known is None else self.labels[self.known]
        return frozenset(int(v) for v in np.unique(values) if v)

    @property
    def has_background(self) -> bool:
        """Whether some known pixel is background."""
        background = self.labels == 0
        return bool(background.any() if self.known is None else (background & self.known).any())

    def mirrored(self) -> Annotation:
        """The annotation of the mirrored frame."""
        known = None if self.known is None else np.ascontiguousarray(self.known[:, ::-1])
        return Annotation(np.ascontiguousarray(self.labels[:, ::-1]), known, self.scribble)


def pixel_targets(
    labels: np.ndarray, known: np.ndarray | None, num_classes: int, work: tuple[int, int], device: torch.device
) -> tuple[Tensor, Tensor]:
    """``labels[H,W]`` (0..K), ``known[H,W]`` bool or None -> ``(Y[N,K+1], valid[N])`` on the feature grid of ``work``.

    Labels are resized (nearest) to the working size; ``Y`` holds each class's share of a cell's known pixels and
    ``valid`` the known fraction of the cell (padding is unknown).
    """
    with torch.inference_mode():
        size = (work[1], work[0])
        lab = torch.from_numpy(cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST)).to(device)
        mask = None
        if known is not None:
            mask = torch.from_numpy(cv2.resize(known.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST))
            mask = mask.to(device)[None]
        Y, valid = targets(lab[None], num_classes, padded_size(*work), STRIDE, mask)
        return Y[0], valid[0]


def grid_statistics(
    X: Tensor, Y: Tensor, valid: Tensor, blocks: int, balance: bool = True, weight: float = 1.0, stride: int = 1
) -> Stats:
    """``X[N,C], Y[N,K+1], valid[N] -> Stats``: class-balanced (every class present weighs as much in total),
    times ``weight``. ``stride > 1`` sums only every stride-th cell of an ``[h, w]`` grid in each direction,
    weighted ``stride^2`` (the balance is still computed over all cells); pass ``X`` as ``[h, w, C]`` then."""
    with torch.inference_mode():
        grid = X.shape[:-1] if X.dim() == 3 else None
        X, Y, valid = X.reshape(-1, X.shape[-1]), Y.reshape(-1, Y.shape[-1]), valid.reshape(-1)
        w = solver.balanced_weights(Y, valid) if balance else valid
        if stride > 1 and grid is not None:
            h, wd = grid
            X, Y, w = (t.view(h, wd, -1)[::stride, ::stride].reshape(-1, t.shape[-1]) for t in (X, Y, w[:, None]))
            w = w[:, 0] * (stride * stride)
        return solver.statistics(X, Y, w * weight, blocks)


def widen(stats: Stats, num_classes: int) -> Stats:
    """``stats`` with zero columns appended up to ``num_classes``: objects that enter later were absent (Y = 0)
    from every pixel these statistics saw, so nothing is recomputed."""
    extra = num_classes - stats.B.shape[-1]
    if extra < 0:
        raise ValueError(f"cannot narrow statistics of {stats.B.shape[-1]} classes to {num_classes}")
    if extra == 0:
        return stats
    return Stats(stats.A, F.pad(stats.B, (0, extra)))
