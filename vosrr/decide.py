"""From scores to labels: the window prior on the feature grid, and the decision at frame resolution.

Pure functions of plain tensors and sizes (no segmenter, no state):

    P[K+1,h,w] --window(previous)--> P' --labels()--> upsample the K differences P_k - P_0 -> margin test
    -> labels[H,W] uint8 (0 = background, 1..K objects)

and ``LabelQueue``, which gives a video's labels in frame order while a GPU's come back asynchronously.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vosrr.embedding import STRIDE, padded_size
from vosrr.feed import resize_frame
from vosrr.masks import drop_small_parts, targets
from vosrr.refine import guided_filter

__all__ = ["Decision", "LabelQueue", "grid_labels", "labels", "labels_device", "labels_torch", "window"]

T = TypeVar("T")


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
    ``factor`` times the object's size (square root of its area, rounded half to even, at least 2 cells). A lost
    object (no cells) gets no window, and an object of which the window keeps less than a third of its previous
    area (it moved further than the window) keeps its unwindowed scores.

    All objects at once, in tensor operations on ``P``'s device: no value is read back to the host, so on a GPU
    the frame loop never waits here.
    """
    K = P.shape[0] - 1
    if K == 0:
        return P.clone()
    objects = torch.arange(1, K + 1, device=P.device).view(K, 1, 1)
    regions = previous.unsqueeze(0) == objects  # [K,h,w]
    areas = regions.flatten(1).sum(1).double()  # [K]
    radius = torch.round(factor * areas.sqrt()).clamp_min(2).long()  # [K]
    grown = _near(_near(regions, radius, 1), radius, 2)
    present = (areas > 0).view(K, 1, 1)
    floor = P.min() - 1.0
    windowed = torch.where(grown | ~present, P[1:], floor)
    winners = torch.cat([P[:1], windowed]).argmax(0)
    kept = (winners.unsqueeze(0) == objects).flatten(1).sum(1).double()  # [K]
    escaped = present & (kept < areas / 3).view(K, 1, 1)  # it moved further than its window: no window
    return torch.cat([P[:1], torch.where(escaped, P[1:], windowed)])


def _near(mask: Tensor, radius: Tensor, dim: int) -> Tensor:
    """``mask[K,h,w]`` bool -> the cells within ``radius[K]`` cells of a set cell of their plane along ``dim``.

    Two passes of it (rows, then columns) are the dilation by a (2r+1)^2 square, with r per plane: the nearest
    set cell on either side comes from a running max (min) of set cells' indices.
    """
    n = mask.shape[dim]
    shape = [1, 1, 1]
    shape[dim] = n
    index = torch.arange(n, device=mask.device).view(shape)
    far = 2 * n  # no set cell on that side: further than any radius below
    radius = radius.clamp_max(n)  # a radius of n already reaches the whole line
    before = torch.where(mask, index, -far).cummax(dim).values
    after = torch.where(mask, index, n + far).flip(dim).cummin(dim).values.flip(dim)
    return torch.minimum(index - before, after - index) <= radius.view(-1, 1, 1)


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
    return labels_device(P, work, size, mode, margin).cpu().numpy()


def labels_device(P: Tensor, work: tuple[int, int], size: tuple[int, int], mode: str, margin: float) -> Tensor:
    """``P[K+1,h,w] -> labels[H,W]`` uint8 on ``P``'s device (``labels`` without refinement and part filter)."""
    with torch.inference_mode():
        ph, pw = padded_size(*work)
        up = F.interpolate((P[1:] - P[:1])[None].float(), size=(ph, pw), mode=mode, align_corners=False)[0]
        up = up[:, : work[0], : work[1]]
        if work != size:
            up = F.interpolate(up[None], size=size, mode=mode, align_corners=False)[0]
        best, index = up.max(0)
        return torch.where(best > margin, index + 1, 0).to(torch.uint8)


@dataclass
class _Copy:
    """Labels on their way from the device into pinned host memory; ``done`` is recorded after the copy."""

    host: Tensor
    done: torch.cuda.Event


class LabelQueue(Generic[T]):
    """Frames' labels in the order their scores came, with a GPU's labels brought back without waiting.

    ``put(item, P, frame)`` decides one frame. On a CPU its labels are ready at once. On a GPU they are made on
    the device and copied into pinned host memory asynchronously; the frame comes out ``depth`` frames later (or
    as soon as its copy is seen to be done), by which time the device has the next frames' work queued, so the
    frame loop never waits for the device. ``ready(item, labels)`` queues labels already known (an annotated
    frame) behind the others. Both return the ``(item, labels[H,W] uint8)`` pairs that are finished, in order;
    ``flush()`` returns the rest.
    """

    def __init__(self, decision: Decision, work: tuple[int, int], size: tuple[int, int], depth: int = 3) -> None:
        self.decision = decision
        self.work = work
        self.size = size
        self.depth = depth
        self._queue: deque[tuple[T, np.ndarray | _Copy]] = deque()

    def put(self, item: T, P: Tensor, frame: np.ndarray | None = None) -> list[tuple[T, np.ndarray]]:
        """Queue the labels of scores ``P[K+1,h,w]`` (``frame`` for refinement); returns the finished ones."""
        if P.device.type != "cuda" or self.decision.refine:
            return self.ready(item, labels(P, self.work, self.size, self.decision, frame))
        d = self.decision
        on_device = labels_device(P, self.work, self.size, d.upsample, d.margin)
        host = torch.empty(on_device.shape, dtype=torch.uint8, pin_memory=True)
        host.copy_(on_device, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        self._queue.append((item, _Copy(host, done)))
        return self._take(self.depth)

    def ready(self, item: T, out: np.ndarray) -> list[tuple[T, np.ndarray]]:
        """Queue labels ``out[H,W]`` known already; returns the finished ones."""
        self._queue.append((item, out))
        return self._take(self.depth)

    def flush(self) -> list[tuple[T, np.ndarray]]:
        """Every queued frame (waiting for the device where needed), in order."""
        return self._take(0)

    def _take(self, keep: int) -> list[tuple[T, np.ndarray]]:
        out = []
        while self._queue:
            item, value = self._queue[0]
            if isinstance(value, _Copy):
                if len(self._queue) <= keep and not value.done.query():
                    break
                value.done.synchronize()
                value = drop_small_parts(value.host.numpy(), self.decision.min_part)
            self._queue.popleft()
            out.append((item, value))
        return out
