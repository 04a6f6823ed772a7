"""Semi-supervised segmentation of one video: reference frame(s) in, the solve once, then one pass a frame.

``Segmenter`` holds the embedding network and a ``SegmentConfig``; everything about one video lives in a
``VideoState``. The data path::

    frame -> phi -> X[N,C] --(reference: + mask -> Stats -> solve)--> W[C,K+1]
    frame -> phi -> X[N,C] -> P = X W -> upsample -> argmax -> labels[H,W]

More annotated frames (or corrections) and online updates from confident predictions are the same
operation: their ``Stats`` are added before the next solve.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vosrr import solver
from vosrr.embedding import STRIDE, Embedder, padded_size
from vosrr.masks import targets
from vosrr.solver import Stats

__all__ = ["SegmentConfig", "Segmenter", "VideoState"]


@dataclass(frozen=True)
class SegmentConfig:
    """Options of the solve and the propagation; each one maps onto a ``vosrr segment`` option."""

    lam: float | None = None
    """ridge lambda; None uses the checkpoint's (learned, paper value 5)"""
    blocks: int = 1
    """block-diagonal splitting of the C channels into this many blocks (paper Table 2: 1, 2, 4, 8)"""
    balance: bool = True
    """class-balanced pixel weights (every object weighs as much as the background)"""
    online: float = 0.0
    """weight of online updates from confident predictions (0: one solve from the reference only)"""
    decay: float = 0.8
    """how much of the online memory each new frame keeps"""
    confidence: float = 0.8
    """probability a predicted pixel needs to enter the online update"""
    max_side: int | None = None
    """process frames whose longer side exceeds this at a reduced size (masks still at full size)"""

    def __post_init__(self) -> None:
        if self.blocks not in (1, 2, 4, 8, 16):
            raise ValueError(f"blocks must be 1, 2, 4, 8 or 16, got {self.blocks}")
        if self.lam is not None and self.lam <= 0:
            raise ValueError(f"lam must be positive, got {self.lam}")
        if self.online < 0 or not 0 <= self.decay <= 1 or not 0.5 <= self.confidence <= 1:
            raise ValueError("online must be >= 0, decay in [0, 1] and confidence in [0.5, 1]")
        if self.max_side is not None and self.max_side < 32:
            raise ValueError(f"max_side must be at least 32, got {self.max_side}")


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


class Segmenter:
    """Segments videos with one embedding network; holds the network, never subclasses it."""

    def __init__(self, model: Embedder, config: SegmentConfig | None = None, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        if self.device.type == "cpu":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.config = config or SegmentConfig()
        if model.config.channels % self.config.blocks:
            raise ValueError(f"blocks={self.config.blocks} must divide the model's C={model.config.channels}")

    # ----------------------------------------------------------------- geometry
    def work_size(self, height: int, width: int) -> tuple[int, int]:
        side = self.config.max_side
        if side is None or max(height, width) <= side:
            return height, width
        scale = side / max(height, width)
        return max(8, round(height * scale)), max(8, round(width * scale))

    def _resize_frame(self, frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        if frame.shape[:2] == size:
            return frame
        return cv2.resize(frame, (size[1], size[0]), interpolation=cv2.INTER_AREA)

    @property
    def lam(self) -> float | Tensor:
        return self.config.lam if self.config.lam is not None else self.model.lam.detach()

    # ----------------------------------------------------------------- the data path
    def features(self, frame: np.ndarray, work: tuple[int, int]) -> Tensor:
        """``frame[H,W,3] uint8 -> X[h*w, C]`` at the working size (inference mode)."""
        with torch.inference_mode():
            pixels = torch.from_numpy(np.ascontiguousarray(self._resize_frame(frame, work)))
            image = self.model.preprocess(pixels.unsqueeze(0).to(self.device))
            X = self.model(image)
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
            return solver.statistics(X, Y, w, self.config.blocks)

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
        with torch.inference_mode():
            W = solver.solve(stats, self.lam)
        return VideoState(num_objects + 1, (size[0], size[1]), work, stats, None, W, 1)

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

    def labels(self, state: VideoState, P: Tensor) -> np.ndarray:
        """``P[K+1,h,w] -> labels[H,W] uint8``: bilinear upsampling to the input size, then argmax."""
        with torch.inference_mode():
            ph, pw = padded_size(*state.work_size)
            up = F.interpolate(P[None], size=(ph, pw), mode="bilinear", align_corners=False)[0]
            wh, ww = state.work_size
            up = up[:, :wh, :ww]
            if state.work_size != state.size:
                up = F.interpolate(up[None], size=state.size, mode="bilinear", align_corners=False)[0]
            return up.argmax(0).to(torch.uint8).cpu().numpy()

    def _online(self, state: VideoState, X: Tensor, P: Tensor) -> VideoState:
        """Add the confident part of this frame's own prediction to the (decaying) memory and re-solve."""
        with torch.inference_mode():
            flat = P.flatten(1).transpose(0, 1)  # [N, K+1]
            prob = torch.sigmoid(self.model.logits(flat))
            conf, label = prob.max(-1)
            Y = solver.one_hot(label, state.num_classes)
            keep = (conf >= self.config.confidence).float()
            w = solver.balanced_weights(Y, keep) if self.config.balance else keep
            new = solver.statistics(X, Y, w * self.config.online, self.config.blocks)
            memory = new if state.memory is None else state.memory.scale(self.config.decay) + new
            W = solver.solve(state.reference + memory, self.lam)
        return replace(state, memory=memory, W=W)

    def step(self, state: VideoState, frame: np.ndarray) -> tuple[VideoState, np.ndarray]:
        """One frame: a forward pass, ``P = X W``, labels; plus the online update when enabled."""
        if frame.shape[:2] != state.size:
            raise ValueError(
                f"frame {state.frames_seen} is {frame.shape[1]}x{frame.shape[0]}, "
                f"the video is {state.size[1]}x{state.size[0]}"
            )
        X = self.features(frame, state.work_size)
        with torch.inference_mode():
            P = self.scores(state, X)
        out = self.labels(state, P)
        if self.config.online > 0:
            state = self._online(state, X, P)
        return replace(state, frames_seen=state.frames_seen + 1), out

    def propagate(self, state: VideoState, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Yield ``labels[H,W]`` for each of ``frames`` (those after the reference), one forward pass each."""
        for frame in frames:
            state, out = self.step(state, frame)
            yield out
