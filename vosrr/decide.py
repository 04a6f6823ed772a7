"""From scores to labels: the window prior on the feature grid, and the decision at frame resolution.

Pure functions of plain tensors and sizes (no segmenter, no state):

    P[K+1,h,w] --window(previous)--> P' --labels()--> upsample the K differences P_k - P_0 -> margin test
    -> labels[H,W] uint8 (0 = background, 1..K objects)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vosrr.embedding import STRIDE, padded_size
from vosrr.feed import resize_frame
from vosrr.masks import drop_small_parts, targets
from vosrr.refine import guided_filter

__all__ = ["Decision", "dilate", "grid_labels", "labels", "labels_torch", "window"]


@dataclass(frozen=True)
class Decision:
    """How scores become labels: interpolation, the background's head start, refinement, the part filter."""

    upsample: Literal["bilinear", "bicubic"] = "bicubic"
    margin: float = 0.1
    """the background's head start over the objects in ``P`` (already multiplied by the networks summed in P)"""
    refine: bool = False
    min_part: float = 0.0


def window(P: Tensor, previous: Tensor, factor: float) -> Tensor:
    """``P[K+1,h,w]`` with each object's scores suppressed outside a window around its previous position.

    ``previous[h,w]`` holds the last frame's grid labels. The window is the previous grid mask dilated by
    ``factor`` times the object's size (square root of its area, at least 2 cells). A lost object (no cells)
    gets no window, and an object of which the window keeps less than a third of its previous area (it moved
    further than the window) keeps its unwindowed scores.
    """
    out = P.clone()
    floor = P.min() - 1.0
    areas = {}
    for k in range(1, P.shape[0]):
        region = (previous == k).float()
        area = float(region.sum())
        if area == 0:
            continue
        areas[k] = area
        radius = max(2, round(factor * area**0.5))
        grown = dilate(region, radius)
        out[k] = torch.where(grown > 0, P[k], floor)
    winners = out.argmax(0)
    for k, area in areas.items():
        if float((winners == k).sum()) < area / 3:
            out[k] = P[k]
    return out


def grid_labels(labels: np.ndarray, work: tuple[int, int], num_classes: int, device: torch.device) -> Tensor:
    """``labels[H,W]`` (0..K) -> ``[h,w]`` on the feature grid: each cell's majority class (what the window keeps)."""
    lab = torch.from_numpy(cv2.resize(labels, (work[1], work[0]), interpolation=cv2.INTER_NEAREST))
    Y, _ = targets(lab.unsqueeze(0), num_classes, padded_size(*work), STRIDE)
    ph, pw = padded_size(*work)
    return Y[0].argmax(-1).reshape(ph // STRIDE, pw // STRIDE).to(device)


def labels(
    P: Tensor, work: tuple[int, int], size: tuple[int, int], decision: Decision, frame: np.ndarray | None = None
) -> np.ndarray:
    """``P[K+1,h,w] -> labels[H,W] uint8`` at ``size``: the scores upsampled (guided-filtered with ``frame`` under
    ``decision.refine``); a pixel is the object of highest score if that beats the background's by
    ``decision.margin``, else background; then small parts go (``decision.min_part``).

    Only the K differences ``P_k - P_0`` are upsampled (interpolation is linear, so the argmax over
    ``{margin, up(P_k - P_0)}`` is the argmax of the upsampled scores with the background's raised), and
    on CPU by OpenCV, whose bilinear and bicubic kernels are ``F.interpolate``'s (same half-pixel centres).
    """
    mode = decision.upsample
    if P.device.type != "cpu" and not decision.refine:  # on the GPU, only the labels travel
        out = labels_torch(P, work, size, mode, decision.margin)
        return drop_small_parts(out, decision.min_part)
    with torch.inference_mode():
        D = (P[1:] - P[:1]).float().cpu().numpy()
    if decision.refine and frame is not None:  # filtered at the working size, like the network's input
        guide = resize_frame(frame, work)
        radius = max(2, round(8 * max(work) / 854))  # 8 pixels at the DAVIS size, scaled with the frame
        grid = np.stack([_upsample(d, work, work, mode) for d in D])
        filtered = guided_filter(guide, grid, radius=radius, subsample=max(1, min(4, radius // 2)))
        planes: Iterable[np.ndarray] = (_upsample(f, work, size, mode, from_grid=False) for f in filtered)
    else:
        planes = (_upsample(d, work, size, mode) for d in D)
    # running maximum over the K planes (one at a time in memory); ties go to the lower class, as in argmax
    out = np.zeros(size, np.uint8)
    best = np.full(size, decision.margin, np.float32)
    for k, plane in enumerate(planes, 1):
        above = plane > best
        out[above] = k
        np.maximum(best, plane, out=best)
    return drop_small_parts(out, decision.min_part)


def _upsample(
    d: np.ndarray, work: tuple[int, int], size: tuple[int, int], mode: str, from_grid: bool = True
) -> np.ndarray:
    """One plane ``d[h,w]`` on the feature grid -> ``[H,W]`` at ``size``: to the padded working size (cells are
    ``STRIDE`` pixels), cropped to the working size, then resized to ``size`` when that differs.
    ``from_grid=False``: ``d`` is already at the working size (only the last resize is left)."""
    interpolation = cv2.INTER_CUBIC if mode == "bicubic" else cv2.INTER_LINEAR
    if from_grid:
        ph, pw = padded_size(*work)
        d = cv2.resize(d, (pw, ph), interpolation=interpolation)[: work[0], : work[1]]
    if work != size:
        d = cv2.resize(d, (size[1], size[0]), interpolation=interpolation)
    return d


def labels_torch(P: Tensor, work: tuple[int, int], size: tuple[int, int], mode: str, margin: float) -> np.ndarray:
    """``labels`` (no refinement, no part filter) with torch ops on ``P``'s device."""
    with torch.inference_mode():
        ph, pw = padded_size(*work)
        up = F.interpolate((P[1:] - P[:1])[None].float(), size=(ph, pw), mode=mode, align_corners=False)[0]
        up = up[:, : work[0], : work[1]]
        if work != size:
            up = F.interpolate(up[None], size=size, mode=mode, align_corners=False)[0]
        best, index = up.max(0)
        return torch.where(best > margin, index + 1, 0).to(torch.uint8).cpu().numpy()


def dilate(region: Tensor, radius: int) -> Tensor:
    """``region[h,w]`` dilated by a (2r+1)^2 square: two 1-D max-pools (the square's max is separable)."""
    x = F.max_pool2d(region[None, None], (2 * radius + 1, 1), stride=1, padding=(radius, 0))
    return F.max_pool2d(x, (1, 2 * radius + 1), stride=1, padding=(0, radius))[0, 0]
