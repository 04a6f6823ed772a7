"""Semi-supervised segmentation of one video: user input at any frame, the solve as it arrives, one pass a frame.

``Segmenter`` holds the embedding network (through a ``Feed``) and a ``SegmentConfig``; everything about one
video lives in a ``VideoState``. The data path::

    annotated frame -> phi -> X --(+ Annotation -> Stats, added to the state's)--> solve -> W[C,K+1]
    any other frame -> phi -> X -> P = X W -> window -> proximity -> decide -> labels[H,W]   (+ online update)

Every annotation (the first mask, a correction, a new object, scribbles) is statistics added to the solve;
the frame loop runs in whichever order the frames come (backwards from a middle frame is the same loop).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from vosrr import decide, solver
from vosrr.annotations import Annotation, grid_statistics, pixel_targets, widen
from vosrr.embedding import STRIDE, Ensemble, Phi, padded_size
from vosrr.feed import Feed
from vosrr.masks import parts_with_strokes
from vosrr.proximity import proximity
from vosrr.solver import Stats
from vosrr.state import SegmentConfig, VideoState

__all__ = ["AnnotationError", "SegmentConfig", "Segmenter", "Tracked", "VideoState", "tracked"]

#: the online update samples cells only while at least this many remain (854x480 has 6420 cells)
_MIN_ONLINE_CELLS = 1024


class AnnotationError(ValueError):
    """An annotation the solve cannot use (no object, no background to contrast it with); says what to add."""


class Tracked(NamedTuple):
    """One frame out of ``Segmenter.track``: its index, the frame, its labels and the state after it."""

    index: int
    frame: np.ndarray
    labels: np.ndarray
    state: VideoState


class Segmenter:
    """Segments videos with one embedding network (or an ensemble); holds it, never subclasses it."""

    def __init__(self, model: Phi, config: SegmentConfig | None = None, device: torch.device | str = "cpu"):
        self.config = config or SegmentConfig()
        self.feed = Feed(model, self.config, device)
        self.device = self.feed.device
        self.model = self.feed.model
        # an ensemble's members never share a block: k blocks per member, so k = 1 sums the members' own solves
        members = len(model.config.members) if isinstance(model, Ensemble) else 1
        self.blocks = self.config.blocks * members
        """diagonal blocks of the solve: ``config.blocks`` per network"""
        self.decision = decide.Decision(
            self.config.upsample, self.config.margin * members, self.config.refine, self.config.min_part
        )
        """scores to labels; the margin is the background's head start in ``P``, which sums the networks' scores"""
        if model.config.channels % self.blocks:
            per_network = model.config.channels // members
            raise ValueError(f"blocks={self.config.blocks} must divide the network's C={per_network}")

    @property
    def _cap(self) -> float | None:
        return self.config.balance_cap or None

    @property
    def lam(self) -> float | Tensor:
        return self.config.lam if self.config.lam is not None else self.model.lam.detach()

    def work_size(self, height: int, width: int) -> tuple[int, int]:
        return self.feed.work_size(height, width)

    def features(self, frame: np.ndarray, work: tuple[int, int]) -> Tensor:
        """``frame[H,W,3] uint8 -> X[h*w, C]`` float32 at the working size."""
        return self.feed.features(frame, work)

    # ----------------------------------------------------------------- user input
    def statistics(
        self, X: Tensor, annotation: Annotation, num_classes: int, work: tuple[int, int], weight: float = 1.0
    ) -> Stats:
        """Stats of one annotated frame's features ``X[h*w,C]`` (every kind of input takes this path)."""
        Y, valid = pixel_targets(annotation.labels, annotation.known, num_classes, work, self.device)
        return grid_statistics(X, Y, valid, self.blocks, self.config.balance, weight, cap=self._cap)

    def _annotation_stats(
        self,
        X: Tensor,
        X_mirror: Tensor | None,
        annotation: Annotation,
        num_classes: int,
        work: tuple[int, int],
        weight: float = 1.0,
    ) -> Stats:
        """The annotation's statistics, plus those of its mirror image when ``X_mirror`` (its features) is given."""
        stats = self.statistics(X, annotation, num_classes, work, weight)
        if X_mirror is not None:
            stats = stats + self.statistics(X_mirror, annotation.mirrored(), num_classes, work, weight)
        return stats

    def start(
        self, frame: np.ndarray, annotation: Annotation | np.ndarray, *, X: Tensor | None = None
    ) -> tuple[VideoState, np.ndarray]:
        """Begin a video at an annotated frame (any frame: propagate forwards and backwards from it).

        ``annotation`` is an ``Annotation`` or dense labels ``[H,W]`` (0..K). Returns the state, W solved, and the
        frame's labels: the annotation where it is known, the solve's prediction elsewhere (scribbles' blanks,
        void pixels).
        """
        annotation = _as_annotation(annotation)
        _check_size(frame, annotation)
        if not annotation.objects:
            raise AnnotationError("the annotation marks no object; mark at least one object's pixels")
        if not annotation.has_background:
            what = "a background stroke (opaque black, or 0)" if annotation.scribble else "some background (0) pixels"
            raise AnnotationError(f"the annotation marks no background; add {what} so that objects can be told apart")
        size = frame.shape[:2]
        work = self.work_size(*size)
        X = self.features(frame, work) if X is None else X
        num_classes = annotation.num_objects + 1
        empty = _zero_stats(X, num_classes, self.blocks)
        state = VideoState(num_classes, (size[0], size[1]), work, empty, None, torch.zeros(0), 0)
        return self._annotate(state, frame, X, annotation)

    def add_annotation(
        self, state: VideoState, frame: np.ndarray, annotation: Annotation | np.ndarray, *, X: Tensor | None = None
    ) -> tuple[VideoState, np.ndarray]:
        """Another annotated frame: a correction, more objects, scribbles. Its statistics join the solve.

        - A mask that names a known object is the frame's full truth: it takes over from the online memory
          (dropped) and the window (restarted from it); earlier annotations keep their statistics.
        - A mask that names only new objects (an object entering) adds them over the prediction.
        - New objects get a column of their own; they were absent from every earlier frame.
        Returns the new state and the frame's labels.
        """
        annotation = _as_annotation(annotation)
        _check_size(frame, annotation)
        if frame.shape[:2] != state.size:
            raise ValueError(
                f"frame is {frame.shape[1]}x{frame.shape[0]}, the video is {state.size[1]}x{state.size[0]}"
            )
        X = self.features(frame, state.work_size) if X is None else X
        named = annotation.objects
        if named and not annotation.scribble and not (named & set(range(1, state.num_classes))):
            # only new objects: they are added over what the current state predicts for this frame
            _, predicted = self.advance(state, frame, X, online=False)
            merged = predicted.copy()
            inside = annotation.labels > 0 if annotation.known is None else (annotation.labels > 0) & annotation.known
            merged[inside] = annotation.labels[inside]
            annotation = Annotation(merged)
        return self._annotate(state, frame, X, annotation)

    def _annotate(
        self, state: VideoState, frame: np.ndarray, X: Tensor, annotation: Annotation
    ) -> tuple[VideoState, np.ndarray]:
        """The solve with ``annotation`` added to ``state``'s earlier input; the memory and the window restart."""
        num_classes = max(state.num_classes, annotation.num_objects + 1)
        work = state.work_size
        earlier = widen(state.reference, num_classes)
        X_mirror = None
        if self.config.mirror_reference:  # the mirror image's statistics add (one more forward pass)
            X_mirror = self.features(np.ascontiguousarray(frame[:, ::-1]), work)
        with torch.inference_mode():
            if annotation.scribble:
                correction = state.frames_seen > 0  # strokes over earlier input (else the video's first input)
                out = self._complete(frame, X, X_mirror, annotation, num_classes, work, earlier, correction)
                annotation = Annotation(out)
            reference = earlier + self._annotation_stats(X, X_mirror, annotation, num_classes, work)
            W = solver.solve(reference, self.lam)
            grown = replace(state, num_classes=num_classes, reference=reference, memory=None, W=W)
            out = annotation.labels
            if annotation.known is not None and not annotation.known.all():  # void pixels: the new solve decides
                predicted = self.labels(grown, self.scores(grown, X), frame)
                out = np.where(annotation.known, annotation.labels, predicted).astype(np.uint8)
            previous = decide.grid_labels(out, work, num_classes, self.device)
            fit = _fit(self.scores(grown, X).argmax(0), previous, num_classes)
        return replace(grown, frames_seen=state.frames_seen + 1, previous=previous, fit=fit), out

    def _complete(
        self,
        frame: np.ndarray,
        X: Tensor,
        X_mirror: Tensor | None,
        strokes: Annotation,
        num_classes: int,
        work: tuple[int, int],
        prior: Stats,
        correction: bool = False,
    ) -> np.ndarray:
        """A frame's full labels from scribbles: solve from the strokes (and ``prior``, earlier input), predict
        the frame, add the confidently predicted cells, solve again (``config.scribble_rounds`` times).
        Stroke pixels keep their labels, and (``config.stroke_parts``, on the video's first input only) an
        object's parts that no stroke of it reaches go to the background. A ``correction``'s strokes weigh as
        much in total as a fully annotated frame (``config.stroke_frame``), so that a few strokes can overrule
        what earlier frames taught."""
        weight = 1.0
        if correction and self.config.stroke_frame:
            _, known = pixel_targets(strokes.labels, strokes.known, num_classes, work, self.device)
            frame_cells = (work[0] / STRIDE) * (work[1] / STRIDE)
            weight = frame_cells / max(float(known.sum()), 1.0)
        stroke_stats = prior + self._annotation_stats(X, X_mirror, strokes, num_classes, work, weight)
        W = solver.solve(stroke_stats, self.lam)
        h, w = (s // STRIDE for s in padded_size(*work))
        for _ in range(self.config.scribble_rounds):
            P = solver.predict(X, W)
            Y, valid = self._confident(P, num_classes)
            pseudo = grid_statistics(
                X, Y, valid, self.blocks, self.config.balance, self.config.scribble_weight, cap=self._cap
            )
            W = solver.solve(stroke_stats + pseudo, self.lam)
        P = solver.predict(X, W).transpose(0, 1).reshape(num_classes, h, w)
        out = decide.labels(P, work, strokes.size, self.decision, frame)
        known = strokes.known if strokes.known is not None else np.ones(strokes.size, bool)
        out = np.where(known, strokes.labels, out).astype(np.uint8)
        if self.config.stroke_parts and not correction:  # a correction's few strokes need not touch every part
            out = parts_with_strokes(out, strokes.labels, known)
        return out

    def _confident(self, P: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
        """``P[N,K+1]`` -> ``(Y[N,K+1], valid[N])``: each cell's predicted class where its probability reaches
        ``config.confidence`` (valid 1), else unknown (valid 0)."""
        prob = torch.sigmoid(self.model.logits(P))
        conf, label = prob.max(-1)
        return solver.one_hot(label, num_classes), (conf >= self.config.confidence).float()

    # ----------------------------------------------------------------- propagation
    def scores(self, state: VideoState, X: Tensor) -> Tensor:
        """``X[h*w,C] -> P[K+1,h,w]``: the adaptor applied on the feature grid."""
        ph, pw = padded_size(*state.work_size)
        return solver.predict(X, state.W).transpose(0, 1).reshape(state.num_classes, ph // STRIDE, pw // STRIDE)

    def window(self, P: Tensor, previous: Tensor) -> Tensor:
        """``P[K+1,h,w]`` with each object kept near its previous position (``decide.window``)."""
        return decide.window(P, previous, self.config.window)

    def labels(self, state: VideoState, P: Tensor, frame: np.ndarray | None = None) -> np.ndarray:
        """``P[K+1,h,w] -> labels[H,W] uint8`` at the video's size (``decide.labels``)."""
        return decide.labels(P, state.work_size, state.size, self.decision, frame)

    def _online(self, state: VideoState, X: Tensor, P: Tensor) -> VideoState:
        """Add the confident part of this frame's own prediction to the (decaying) memory and re-solve.

        ``X[h*w,C]``, ``P[K+1,h,w]``. The statistics use every ``online_stride``-th cell in each direction
        (neighbouring cells at 1/8 resolution are much alike, and X^T X is most of the update's cost).
        """
        with torch.inference_mode():
            h, w = P.shape[-2:]
            Y, valid = self._confident(P.flatten(1).transpose(0, 1), state.num_classes)
            s = self.config.online_stride
            s = s if s > 1 and h * w >= _MIN_ONLINE_CELLS * s * s else 1
            grid = (h, w, -1)
            new = grid_statistics(
                X.view(grid),
                Y.view(grid),
                valid.view(h, w),
                self.blocks,
                self.config.balance,
                self.config.online,
                s,
                cap=self._cap,
            )
            memory = new if state.memory is None else state.memory.scale(self.config.decay) + new
            W = solver.solve(state.reference + memory, self.lam, check=False)  # no wait for the device
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

    def advance(
        self, state: VideoState, frame: np.ndarray, X: Tensor, *, online: bool = True
    ) -> tuple[VideoState, np.ndarray]:
        """The part of ``step`` after the forward pass: scores, window, labels, online update."""
        state, P = self.advance_scores(state, X, online=online)
        return state, self.labels(state, P, frame)

    def advance_scores(self, state: VideoState, X: Tensor, *, online: bool = True) -> tuple[VideoState, Tensor]:
        """Scores of one frame's features (window and proximity applied) and the state after it (online update
        included)."""
        with torch.inference_mode():
            P = self.scores(state, X)
            if self.config.window > 0 and state.previous is not None:
                P = self.window(P, state.previous)
            if self.config.proximity > 0 and state.previous is not None:  # between objects, the nearer wins
                P = proximity(P, state.previous, self.config.proximity)
            previous = P.argmax(0)
        if online and self.config.online > 0:
            state = self._online(state, X, P)
        return replace(state, frames_seen=state.frames_seen + 1, previous=previous), P

    def propagate(self, state: VideoState, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Yield ``labels[H,W]`` for each of ``frames``, in the order given (reversed frames go backwards)."""
        for frame in frames:
            state, out = self.step(state, frame)
            yield out

    def track(
        self,
        frames: Iterable[tuple[int, np.ndarray]],
        annotations: Mapping[int, Annotation],
        state: VideoState | None = None,
    ) -> Iterator[Tracked]:
        """The frame loop: ``(index, frame)`` pairs in the order to process them (forwards or backwards).

        Annotated indices add their statistics (a correction, new objects, scribbles); the others are
        propagated. Without ``state`` the first frame must be annotated. The network runs on chunks of
        ``feed.chunk`` frames; the solve, the window and the online update run frame by frame, so the labels
        do not depend on the chunk size.
        """
        items = iter(frames)
        if state is None:
            first = next(items, None)
            if first is None:
                return
            index, frame = first
            if index not in annotations:
                raise ValueError(f"frame {index} starts the loop but has no annotation")
            state, out = self.start(frame, annotations[index])
            yield Tracked(index, frame, out, state)
        queue = self.label_queue(state)
        for (index, frame), X in self.feed.chunks(items, _frame_of, state.work_size):
            if frame.shape[:2] != state.size:
                raise ValueError(
                    f"frame {index} is {frame.shape[1]}x{frame.shape[0]}, the video is {state.size[1]}x{state.size[0]}"
                )
            annotation = annotations.get(index)
            if annotation is None:
                state, P = self.advance_scores(state, X)
                done = queue.put((index, frame, state), P, frame)
            else:
                state, out = self.add_annotation(state, frame, annotation, X=X)
                done = queue.ready((index, frame, state), out)
            yield from tracked(done)
        yield from tracked(queue.flush())

    def label_queue(self, state: VideoState) -> decide.LabelQueue[tuple[int, np.ndarray, VideoState]]:
        """A queue that turns ``state``'s video's scores into labels in frame order (``decide.LabelQueue``: on a
        GPU they come back without the frame loop waiting for them)."""
        return decide.LabelQueue(self.decision, state.work_size, state.size)


def _fit(predicted: Tensor, annotated: Tensor, num_classes: int) -> float | None:
    """Mean IoU over the objects present in ``annotated[h,w]`` of ``predicted[h,w]`` (None: no object present)."""
    ious = []
    for k in range(1, num_classes):
        truth, guess = annotated == k, predicted == k
        if truth.any():
            ious.append(float((truth & guess).sum() / (truth | guess).sum()))
    return sum(ious) / len(ious) if ious else None


def _frame_of(item: tuple[int, np.ndarray]) -> np.ndarray:
    return item[1]


def tracked(done: Iterable[tuple[tuple[int, np.ndarray, VideoState], np.ndarray]]) -> Iterator[Tracked]:
    """``Tracked`` of a ``LabelQueue``'s finished ``((index, frame, state), labels)`` pairs."""
    for (index, frame, state), out in done:
        yield Tracked(index, frame, out, state)


def _as_annotation(annotation: Annotation | np.ndarray) -> Annotation:
    return annotation if isinstance(annotation, Annotation) else Annotation(np.asarray(annotation, dtype=np.uint8))


def _check_size(frame: np.ndarray, annotation: Annotation) -> None:
    if frame.shape[:2] != annotation.size:
        height, width = annotation.size
        raise ValueError(f"mask is {width}x{height} but the frame is {frame.shape[1]}x{frame.shape[0]}")


def _zero_stats(X: Tensor, num_classes: int, blocks: int) -> Stats:
    """Statistics of no pixel at all, shaped for ``X[N,C]`` and ``num_classes`` columns."""
    c = X.shape[-1] // blocks
    return Stats(X.new_zeros(blocks, c, c), X.new_zeros(X.shape[-1], num_classes))
