"""The options of a segmentation and the state of one video: small, plain data, no behaviour.

``SegmentConfig`` is frozen and maps onto ``vosrr segment`` options; ``VideoState`` is everything the frame
loop carries from one frame to the next (the statistics of the user's input, the online memory, the
adaptor ``W`` and the window's previous labels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Literal

from torch import Tensor

from vosrr.solver import Stats

__all__ = ["Between", "SegmentConfig", "VideoState"]

#: how frames between two annotations are segmented: from both sides (blended), or forwards only
Between = Literal["both", "forward"]


@dataclass(frozen=True)
class SegmentConfig:
    """Options of the solve and the propagation; the ones users tune map onto ``vosrr segment`` options."""

    lam: float | None = None
    """ridge lambda; None uses the checkpoint's (learned, paper value 5)"""
    blocks: int = 1
    """block-diagonal splitting of the C channels into this many blocks (paper Table 2: 1, 2, 4, 8)"""
    balance: bool = True
    """class-balanced pixel weights (every object weighs as much as the background)"""
    balance_cap: float = 0.0
    """bound on the balance: a class's per-pixel weight is at most this many times the largest class's (0: none),
    so that an object of a few pixels cannot outweigh the background. Off: on 8 DAVIS 2016 train sequences a cap
    of 100 moved J&F after corrections by under 0.1; on val (seen afterwards) it cost drift-chicane 4.3 J"""
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
    proximity: float = 0.0
    """between objects only, lower each object's score by this much per object size of distance from its previous
    cells (``vosrr.proximity``), so that look-alikes keep to their own places; what is object and what is
    background does not change, and one object alone is unaffected (0: off). On DAVIS 2016 train composites
    (30 videos, 100 objects) J&F 59.7 off, 65.8 at 2, 66.0 at 3, 66.9 at 5, 62.6 at 10; but on the shipped
    two-object sample mean IoU 0.919 off, 0.901 at 1, 0.861 at 5 (at 3, an object lost in some frames), so it is off
    by default and ``--proximity 5`` is an opt-in for look-alikes"""
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
    between: Between = "both"
    """frames between two annotated frames: segmented from both (scores blended by distance) or forwards only"""
    scribble_rounds: int = 0
    """rounds of solve, predict and add-the-confident-cells after the solve from the strokes (0: the strokes' own
    solve infers the frame's mask; on DAVIS 2016 train, 15 sequences, 0 rounds gave J&F 82.6, 1 round 81.9 and
    3 rounds 80.7: the confident cells mostly confirm the strokes' own mistakes)"""
    stroke_parts: bool = True
    """on a frame inferred from scribbles that are the video's first input, keep only each object's parts
    (connected regions) that hold one of its strokes: a region the solve calls object but no stroke reached goes
    to the background (strokes that correct a later frame are left alone: they mark what to fix, not every part
    of an object). DAVIS 2016 train, 15 sequences: inferred first-frame IoU 85.5 against 80.8 without, video J&F
    83.0 against 82.6"""
    scribble_weight: float = 1.0
    """weight of the confidently predicted cells against the strokes in each of those rounds"""
    stroke_frame: bool = True
    """strokes that correct a frame (scribbles over earlier input) weigh as much in total as a fully annotated
    frame, so that a few strokes can overrule what earlier frames taught (False: a stroke cell weighs as much as
    a mask's cell, and a correction's strokes count for little against a whole annotated frame)"""
    chunk: int | None = None
    """frames per network batch while propagating (None: 16 on a GPU, 1 on a CPU); masks do not depend on it"""
    runtime: Literal["auto", "torch", "openvino", "openvino-f32"] = "auto"
    """what runs the network: torch, or OpenVINO on a CPU (bfloat16 where the CPU supports it; ``openvino-f32``:
    float32 always); auto: OpenVINO on a CPU when installed, else torch"""

    def __post_init__(self) -> None:
        for item in fields(self):  # nan and inf pass every comparison below, so refuse them first
            value = getattr(self, item.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{item.name} must be a finite number, got {value}")
        if self.blocks not in (1, 2, 4, 8, 16):
            raise ValueError(f"blocks must be 1, 2, 4, 8 or 16, got {self.blocks}")
        if self.lam is not None and not 1e-3 <= self.lam <= 1e4:
            raise ValueError(f"lam must be between 0.001 and 10000 (the learned value is about 5), got {self.lam}")
        if not 0 <= self.online <= 10:
            raise ValueError(f"online must be between 0 and 10, got {self.online}")
        if not 0 <= self.decay <= 1 or not 0.5 <= self.confidence <= 1:
            raise ValueError("decay must be in [0, 1] and confidence in [0.5, 1]")
        if self.online_stride < 1:
            raise ValueError(f"online_stride must be at least 1, got {self.online_stride}")
        if not 0 <= self.window <= 100:
            raise ValueError(f"window must be between 0 (off) and 100, got {self.window}")
        if not 0 <= self.proximity <= 100:
            raise ValueError(f"proximity must be between 0 (off) and 100, got {self.proximity}")
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
        if self.between not in ("both", "forward"):
            raise ValueError(f"between must be both or forward, got {self.between!r}")
        if self.balance_cap < 0:
            raise ValueError(f"balance_cap must be >= 0 (0: none), got {self.balance_cap}")
        if not 0 <= self.scribble_rounds <= 20:
            raise ValueError(f"scribble_rounds must be between 0 and 20, got {self.scribble_rounds}")
        if self.runtime not in ("auto", "torch", "openvino", "openvino-f32"):
            raise ValueError(f"runtime must be auto, torch, openvino or openvino-f32, got {self.runtime!r}")
        if self.chunk is not None and not 1 <= self.chunk <= 256:
            raise ValueError(f"chunk must be between 1 and 256 frames, got {self.chunk}")


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
    fit: float | None = None
    """how well the solve reproduces the last annotation on its own frame (mean IoU of its objects on the feature
    grid); low values mean the frame cannot tell the objects from the background (a black frame, say)"""

    @property
    def num_objects(self) -> int:
        return self.num_classes - 1
