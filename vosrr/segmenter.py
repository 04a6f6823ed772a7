"""Semi-supervised segmentation of one video: reference frame(s) in, the solve once, then one pass a frame.

``Segmenter`` holds the embedding network and a ``SegmentConfig``; everything about one video lives in a
``VideoState``. The data path::

    frame -> phi -> X[N,C] --(reference: + mask -> Stats -> solve)--> W[C,K+1]
    frame -> phi -> X[N,C] -> P = X W -> upsample -> argmax -> labels[H,W]

More annotated frames (or corrections) and online updates from confident predictions are the same
operation: their ``Stats`` are added before the next solve.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import fuse_conv_bn_eval

from vosrr import solver
from vosrr.embedding import STRIDE, Ensemble, Phi, padded_size
from vosrr.masks import drop_small_parts, targets
from vosrr.refine import guided_filter
from vosrr.solver import Stats

__all__ = ["SegmentConfig", "Segmenter", "VideoState"]

#: the online update samples cells only while at least this many remain (854x480 has 6420 cells)
_MIN_ONLINE_CELLS = 1024


@dataclass(frozen=True)
class SegmentConfig:
    """Options of the solve and the propagation; the ones users tune map onto ``vosrr segment`` options."""

    lam: float | None = None
    """ridge lambda; None uses the checkpoint's (learned, paper value 5)"""
    blocks: int = 1
    """block-diagonal splitting of the C channels into this many blocks (paper Table 2: 1, 2, 4, 8)"""
    balance: bool = True
    """class-balanced pixel weights (every object weighs as much as the background)"""
    online: float = 0.1
    """weight of online updates from confident predictions (0: one solve from the reference only)"""
    decay: float = 0.8
    """how much of the online memory each new frame keeps"""
    confidence: float = 0.9
    """probability a predicted pixel needs to enter the online update"""
    online_stride: int = 2
    """the online update sums every n-th feature cell in each direction, weighted n^2 (its cost falls by n^2);
    frames with fewer than 1024 cells per n^2 use every cell"""
    window: float = 1.0
    """restrict each object to a window around its previous position: radius = window x object size (0: off)"""
    upsample: Literal["bilinear", "bicubic"] = "bicubic"
    """interpolation of the feature-grid scores to the frame (the paper: bilinear)"""
    margin: float = 0.1
    """an object's score must beat the background's by this much (per network) to label a pixel (0: argmax)"""
    refine: bool = False
    """snap the upsampled boundaries to image edges with a guided filter"""
    min_part: float = 0.0
    """drop each object's parts (connected regions) smaller than this fraction of its largest part (0: keep all)"""
    mirror_reference: bool = True
    """also solve from the mirrored reference frame (its statistics add; one more forward pass per video)"""
    max_side: int | None = None
    """process frames whose longer side exceeds this at a reduced size (masks still at full size)"""
    scale: float = 1.0
    """process frames at this multiple of their size (before ``max_side``): above 1 finer features, slower"""
    flip: bool = False
    """test-time mirroring: features are the mean of the frame's and its mirror image's (two passes a frame)"""

    def __post_init__(self) -> None:
        if self.blocks not in (1, 2, 4, 8, 16):
            raise ValueError(f"blocks must be 1, 2, 4, 8 or 16, got {self.blocks}")
        if self.lam is not None and self.lam <= 0:
            raise ValueError(f"lam must be positive, got {self.lam}")
        if self.online < 0 or not 0 <= self.decay <= 1 or not 0.5 <= self.confidence <= 1:
            raise ValueError("online must be >= 0, decay in [0, 1] and confidence in [0.5, 1]")
        if self.online_stride < 1:
            raise ValueError(f"online_stride must be at least 1, got {self.online_stride}")
        if self.window < 0:
            raise ValueError(f"window must be >= 0, got {self.window}")
        if self.max_side is not None and self.max_side < 32:
            raise ValueError(f"max_side must be at least 32, got {self.max_side}")
        if self.upsample not in ("bilinear", "bicubic"):
            raise ValueError(f"upsample must be bilinear or bicubic, got {self.upsample!r}")
        if not -1 <= self.margin <= 1:
            raise ValueError(f"margin must be in [-1, 1], got {self.margin}")
        if not 0 <= self.min_part <= 1:
            raise ValueError(f"min_part must be in [0, 1], got {self.min_part}")
        if not 0.25 <= self.scale <= 4:
            raise ValueError(f"scale must be in [0.25, 4], got {self.scale}")


@dataclass
class VideoState:
    """Everything that belongs to one video: the statistics, the current adaptor and the frame geometry."""

    num_classes: int
    """K + 1: background and K objects"""
    size: tuple[int, int]
    """(H, W) of the input frames, the size masks are returned at"""
    work_size: tuple[int, int]
    """(H, W) the network sees (smaller than ``size`` under ``max_side``)"""
    reference: Stats
    memory: Stats | None
    W: Tensor
    frames_seen: int = 0
    previous: Tensor | None = None
    """labels of the last frame on the feature grid ``[h, w]`` (for the window)"""


class Segmenter:
    """Segments videos with one embedding network (or an ensemble); holds it, never subclasses it."""

    def __init__(self, model: Phi, config: SegmentConfig | None = None, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        # inference copy: batch norms folded into their convolutions (the caller's model is left as it was)
        self.model = fold_batchnorm(model).to(self.device).to(memory_format=torch.channels_last)
        # CUDA only: the network (trunk + head) runs under autocast in this dtype (None: float32 throughout);
        # X, the statistics, the solve and W stay float32. float16 rather than bfloat16: its 3 more mantissa
        # bits flip 4x fewer pixels (99.98% vs 99.92% agreement with float32 on the sample, CPU autocast),
        # and MobileNetV2's bounded activations are far from float16's range limit.
        self.amp_dtype: torch.dtype | None = torch.float16 if self.device.type == "cuda" else None
        # per-channel normalisation for the CPU input path (the same float32 values as Embedder.preprocess)
        self._mean = (*self.model.mean.flatten().tolist(), 0.0)
        self._std = (*self.model.std.flatten().tolist(), 1.0)
        self.config = config or SegmentConfig()
        # an ensemble's members never share a block: k blocks per member, so k = 1 sums the members' own solves
        members = len(model.config.members) if isinstance(model, Ensemble) else 1
        self.blocks = self.config.blocks * members
        """diagonal blocks of the solve: ``config.blocks`` per network"""
        self.margin = self.config.margin * members
        """the background's head start over the objects in ``P`` (which sums the networks' scores)"""
        if model.config.channels % self.blocks:
            per_network = model.config.channels // members
            raise ValueError(f"blocks={self.config.blocks} must divide the network's C={per_network}")

    # ----------------------------------------------------------------- geometry
    def work_size(self, height: int, width: int) -> tuple[int, int]:
        scale = self.config.scale
        side = self.config.max_side
        if side is not None and max(height, width) * scale > side:
            scale = side / max(height, width)
        if scale == 1:
            return height, width
        return max(8, round(height * scale)), max(8, round(width * scale))

    def _resize_frame(self, frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        if frame.shape[:2] == size:
            return frame
        shrink = size[0] * size[1] < frame.shape[0] * frame.shape[1]
        return cv2.resize(frame, (size[1], size[0]), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)

    @property
    def lam(self) -> float | Tensor:
        return self.config.lam if self.config.lam is not None else self.model.lam.detach()

    # ----------------------------------------------------------------- the data path
    def image(self, frame: np.ndarray, work: tuple[int, int]) -> Tensor:
        """``frame[H,W,3] uint8 -> image[1,3,H',W']``: resized to ``work``, padded, normalised, channels_last.

        The same values as ``Embedder.preprocess``: the replicate padding is done on the uint8 frame (it
        commutes with the per-pixel normalisation); on CPU the normalisation runs in OpenCV, which is
        bit-identical and does not wait on torch's thread pool; on CUDA it runs on the device after a
        non-blocking upload of the uint8 frame.
        """
        frame = np.ascontiguousarray(self._resize_frame(frame, work))
        ph, pw = padded_size(*work)
        if (ph, pw) != tuple(work):
            frame = cv2.copyMakeBorder(frame, 0, ph - work[0], 0, pw - work[1], cv2.BORDER_REPLICATE)
        with torch.inference_mode():
            if self.device.type == "cpu":
                x = frame.astype(np.float32)
                cv2.subtract(x, self._mean, dst=x)
                cv2.divide(x, self._std, dst=x)
                return torch.from_numpy(x).unsqueeze(0).permute(0, 3, 1, 2)
            pixels = torch.from_numpy(frame)
            if self.device.type == "cuda":
                pixels = pixels.pin_memory()
            return self.model.preprocess(pixels.unsqueeze(0).to(self.device, non_blocking=True))

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """The context the network runs in: autocast to ``amp_dtype`` on CUDA, nothing on CPU."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def features(self, frame: np.ndarray, work: tuple[int, int]) -> Tensor:
        """``frame[H,W,3] uint8 -> X[h*w, C]`` float32 at the working size (inference mode)."""
        image = self.image(frame, work)
        with torch.inference_mode():
            if self.config.flip:  # the padded image is mirrored, so the two grids align cell for cell
                image = torch.cat([image, image.flip(-1)])
            with self.autocast():
                X = self.model(image)
            if self.config.flip:
                X = (X[:1] + X[1:].flip(-1)) / 2
            return X.flatten(2).transpose(1, 2)[0].float()

    def statistics(
        self, X: Tensor, labels: np.ndarray, num_classes: int, work: tuple[int, int], weights: np.ndarray | None = None
    ) -> Stats:
        """Stats of one annotated frame: ``labels[H,W]`` (0..K) and optional ``weights[H,W]`` (0 = unknown)."""
        with torch.inference_mode():
            lab = torch.from_numpy(cv2.resize(labels, (work[1], work[0]), interpolation=cv2.INTER_NEAREST))
            Y, valid = targets(lab.unsqueeze(0).to(self.device), num_classes, padded_size(*work), STRIDE)
            Y, valid = Y[0], valid[0]
            if weights is not None:
                known = torch.from_numpy(
                    cv2.resize(weights.astype(np.float32), (work[1], work[0]), interpolation=cv2.INTER_NEAREST)
                ).to(self.device)
                known = F.pad(known, (0, padded_size(*work)[1] - work[1], 0, padded_size(*work)[0] - work[0]))
                valid = valid * F.avg_pool2d(known[None, None], STRIDE).flatten()
            w = solver.balanced_weights(Y, valid) if self.config.balance else valid
            return solver.statistics(X, Y, w, self.blocks)

    def start(
        self, frame: np.ndarray, labels: np.ndarray, num_objects: int, weights: np.ndarray | None = None
    ) -> VideoState:
        """Begin a video from its reference frame and dense labels (0..K); W is solved here, once."""
        if frame.shape[:2] != labels.shape:
            raise ValueError(
                f"mask is {labels.shape[1]}x{labels.shape[0]} but the frame is {frame.shape[1]}x{frame.shape[0]}"
            )
        size = frame.shape[:2]
        work = self.work_size(*size)
        X = self.features(frame, work)
        stats = self.statistics(X, labels, num_objects + 1, work, weights)
        if self.config.mirror_reference:
            mirrored = None if weights is None else np.ascontiguousarray(weights[:, ::-1])
            X_mirror = self.features(np.ascontiguousarray(frame[:, ::-1]), work)
            stats = stats + self.statistics(
                X_mirror, np.ascontiguousarray(labels[:, ::-1]), num_objects + 1, work, mirrored
            )
        with torch.inference_mode():
            W = solver.solve(stats, self.lam)
            lab = torch.from_numpy(cv2.resize(labels, (work[1], work[0]), interpolation=cv2.INTER_NEAREST))
            Y, _ = targets(lab.unsqueeze(0), num_objects + 1, padded_size(*work), STRIDE)
            ph, pw = padded_size(*work)
            previous = Y[0].argmax(-1).reshape(ph // STRIDE, pw // STRIDE).to(self.device)
        return VideoState(num_objects + 1, (size[0], size[1]), work, stats, None, W, 1, previous)

    def add_annotation(
        self, state: VideoState, frame: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None
    ) -> VideoState:
        """Another annotated frame (or a correction, with ``weights`` 0 outside the corrected area): add, re-solve."""
        X = self.features(frame, state.work_size)
        stats = state.reference + self.statistics(X, labels, state.num_classes, state.work_size, weights)
        with torch.inference_mode():
            W = solver.solve(stats if state.memory is None else stats + state.memory, self.lam)
        return replace(state, reference=stats, W=W)

    def scores(self, state: VideoState, X: Tensor) -> Tensor:
        """``X[h*w,C] -> P[K+1,h,w]``: the adaptor applied on the feature grid."""
        ph, pw = padded_size(*state.work_size)
        return solver.predict(X, state.W).transpose(0, 1).reshape(state.num_classes, ph // STRIDE, pw // STRIDE)

    def window(self, P: Tensor, previous: Tensor) -> Tensor:
        """``P[K+1,h,w]`` with each object's scores suppressed outside a window around its previous position.

        The window is the previous grid mask dilated by ``config.window`` times the object's size
        (square root of its area, at least 2 cells). A lost object (no pixels) gets no window, and an object
        of which the window keeps less than a third of its previous area (it moved further than the window)
        keeps its unwindowed scores.
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
            radius = max(2, round(self.config.window * area**0.5))
            grown = _dilate(region, radius)
            out[k] = torch.where(grown > 0, P[k], floor)
        winners = out.argmax(0)
        for k, area in areas.items():
            if float((winners == k).sum()) < area / 3:
                out[k] = P[k]
        return out

    def labels(self, state: VideoState, P: Tensor, frame: np.ndarray | None = None) -> np.ndarray:
        """``P[K+1,h,w] -> labels[H,W] uint8``: the scores upsampled to the input size (``config.upsample``;
        guided-filtered with ``frame`` under ``config.refine``); a pixel is the object of highest score if that
        beats the background's by ``config.margin``, else background; then small parts go (``config.min_part``).

        Only the K differences ``P_k - P_0`` are upsampled (interpolation is linear, so the argmax over
        ``{margin, up(P_k - P_0)}`` is the argmax of the upsampled scores with the background's raised), and
        on CPU by OpenCV, whose bilinear and bicubic kernels are ``F.interpolate``'s (same half-pixel centres).
        """
        if P.device.type != "cpu" and not self.config.refine:  # on the GPU, only the labels travel
            out = _labels_torch(P, state.work_size, state.size, self.config.upsample, self.margin)
            return drop_small_parts(out, self.config.min_part)
        with torch.inference_mode():
            D = (P[1:] - P[:1]).float().cpu().numpy()
        work, size, mode = state.work_size, state.size, self.config.upsample
        if self.config.refine and frame is not None:  # filtered at the working size, like the network's input
            guide = self._resize_frame(frame, work)
            radius = max(2, round(8 * max(work) / 854))  # 8 pixels at the DAVIS size, scaled with the frame
            grid = np.stack([_upsample(d, work, work, mode) for d in D])
            filtered = guided_filter(guide, grid, radius=radius, subsample=max(1, min(4, radius // 2)))
            planes: Iterable[np.ndarray] = (_upsample(f, work, size, mode, from_grid=False) for f in filtered)
        else:
            planes = (_upsample(d, work, size, mode) for d in D)
        # running maximum over the K planes (one at a time in memory); ties go to the lower class, as in argmax
        out = np.zeros(size, np.uint8)
        best = np.full(size, self.margin, np.float32)
        for k, plane in enumerate(planes, 1):
            above = plane > best
            out[above] = k
            np.maximum(best, plane, out=best)
        return drop_small_parts(out, self.config.min_part)

    def _online(self, state: VideoState, X: Tensor, P: Tensor) -> VideoState:
        """Add the confident part of this frame's own prediction to the (decaying) memory and re-solve.

        ``X[h*w,C]``, ``P[K+1,h,w]``. The statistics use every ``online_stride``-th cell in each direction
        (neighbouring cells at 1/8 resolution are much alike, and X^T X is most of the update's cost).
        """
        with torch.inference_mode():
            flat = P.flatten(1).transpose(0, 1)  # [N, K+1]
            prob = torch.sigmoid(self.model.logits(flat))
            conf, label = prob.max(-1)
            Y = solver.one_hot(label, state.num_classes)
            keep = (conf >= self.config.confidence).float()
            weights = solver.balanced_weights(Y, keep) if self.config.balance else keep
            s = self.config.online_stride
            h, w = P.shape[-2:]
            if s > 1 and h * w >= _MIN_ONLINE_CELLS * s * s:  # weights from all cells, sums from every s-th one
                X, Y, weights = (t.view(h, w, -1)[::s, ::s].reshape(-1, t.shape[-1]) for t in (X, Y, weights[:, None]))
                weights = weights[:, 0] * (s * s)
            new = solver.statistics(X, Y, weights * self.config.online, self.blocks)
            memory = new if state.memory is None else state.memory.scale(self.config.decay) + new
            W = solver.solve(state.reference + memory, self.lam)
        return replace(state, memory=memory, W=W)

    def step(self, state: VideoState, frame: np.ndarray) -> tuple[VideoState, np.ndarray]:
        """One frame: a forward pass, ``P = X W``, labels; plus the online update when enabled."""
        state, P = self.step_scores(state, frame)
        return state, self.labels(state, P, frame)

    def step_scores(self, state: VideoState, frame: np.ndarray) -> tuple[VideoState, Tensor]:
        """``step`` up to the scores ``P[K+1,h,w]``; ``labels(state, P, frame)`` finishes it (in any thread)."""
        if frame.shape[:2] != state.size:
            raise ValueError(
                f"frame {state.frames_seen} is {frame.shape[1]}x{frame.shape[0]}, "
                f"the video is {state.size[1]}x{state.size[0]}"
            )
        return self.advance_scores(state, self.features(frame, state.work_size))

    def advance(self, state: VideoState, frame: np.ndarray, X: Tensor) -> tuple[VideoState, np.ndarray]:
        """The part of ``step`` after the forward pass: scores, window, labels, online update."""
        state, P = self.advance_scores(state, X)
        return state, self.labels(state, P, frame)

    def advance_scores(self, state: VideoState, X: Tensor) -> tuple[VideoState, Tensor]:
        """Scores of one frame's features (window applied) and the state after it (online update included)."""
        with torch.inference_mode():
            P = self.scores(state, X)
            if self.config.window > 0 and state.previous is not None:
                P = self.window(P, state.previous)
            previous = P.argmax(0)
        if self.config.online > 0:
            state = self._online(state, X, P)
        return replace(state, frames_seen=state.frames_seen + 1, previous=previous), P

    def propagate(self, state: VideoState, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Yield ``labels[H,W]`` for each of ``frames`` (those after the reference), one forward pass each."""
        for frame in frames:
            state, out = self.step(state, frame)
            yield out


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


def _labels_torch(P: Tensor, work: tuple[int, int], size: tuple[int, int], mode: str, margin: float) -> np.ndarray:
    """``Segmenter.labels`` (no refinement, no part filter) with torch ops on ``P``'s device."""
    with torch.inference_mode():
        ph, pw = padded_size(*work)
        up = F.interpolate((P[1:] - P[:1])[None].float(), size=(ph, pw), mode=mode, align_corners=False)[0]
        up = up[:, : work[0], : work[1]]
        if work != size:
            up = F.interpolate(up[None], size=size, mode=mode, align_corners=False)[0]
        best, index = up.max(0)
        return torch.where(best > margin, index + 1, 0).to(torch.uint8).cpu().numpy()


def fold_batchnorm(model: Phi) -> Phi:
    """An eval-mode copy of ``model`` with every ``Conv2d -> BatchNorm2d`` pair of a ``Sequential`` folded into one
    convolution (the same function up to float rounding, about a third less work in the trunk on CPU)."""
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in itertools.pairwise(names):
            conv, norm = module._modules[first], module._modules[second]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d) and norm.track_running_stats:
                module._modules[first] = fuse_conv_bn_eval(conv, norm)
                module._modules[second] = nn.Identity()
    return folded


def _dilate(region: Tensor, radius: int) -> Tensor:
    """``region[h,w]`` dilated by a (2r+1)^2 square: two 1-D max-pools (the square's max is separable)."""
    x = F.max_pool2d(region[None, None], (2 * radius + 1, 1), stride=1, padding=(radius, 0))
    return F.max_pool2d(x, (1, 2 * radius + 1), stride=1, padding=(0, radius))[0, 0]
