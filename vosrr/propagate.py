"""The order a whole video is segmented in, given annotations at any frames; results come out in frame order.

    frames 0 .. t1-1        backwards from the first annotated frame t1 (kept meanwhile, then given in order)
    frame t1                the first annotation (``Segmenter.start``)
    frames t1+1 .. t2-1     forwards from t1, and (``SegmentConfig.between``) backwards from t2 too: the two passes'
                            scores are blended by distance, so a correction at t2 also mends the frames before it
    frame t2                the next annotation joins the solve (``Segmenter.add_annotation``)
    ...                     and so on; after the last annotation, forwards to the end

Frames (and scores) that must wait for a later pass go into a ``Store``: a mapping from frame index to array
(the default holds them in memory; the pipeline gives one backed by a temporary file, so memory stays flat).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping

import numpy as np
import torch

from vosrr.annotations import Annotation
from vosrr.segmenter import AnnotationError, Segmenter, Tracked, VideoState, tracked
from vosrr.state import Between

__all__ = ["Store", "segment_frames"]

#: ``store(shape, dtype)`` -> a fresh mapping from frame index to arrays of that shape and dtype
Store = Callable[[tuple[int, ...], np.dtype], MutableMapping[int, np.ndarray]]


#: the score of an object where it cannot be (before its first annotation)
_ABSENT = -1e6


def _memory(shape: tuple[int, ...], dtype: np.dtype) -> MutableMapping[int, np.ndarray]:
    return {}


def segment_frames(
    segmenter: Segmenter,
    frames: Iterable[np.ndarray],
    annotations: Mapping[int, Annotation],
    *,
    store: Store = _memory,
) -> Iterator[Tracked]:
    """``Tracked(index, frame, labels, state)`` for every frame of ``frames`` (read once, in order), in frame order.

    ``annotations`` maps frame indices to what the user gave. Raises ``AnnotationError`` when the video ends
    before the first annotated frame; frames past the end of the video are simply never reached (the caller
    can compare the last index with its annotations).
    """
    if not annotations:
        raise AnnotationError("no annotation given; annotate at least one frame")
    first = min(annotations)
    stream = enumerate(frames)
    before: MutableMapping[int, np.ndarray] | None = None
    start = None
    for index, frame in stream:
        if index == first:
            start = frame
            break
        if before is None:
            before = store(frame.shape, frame.dtype)
        before[index] = frame
    if start is None:
        count = len(before) if before is not None else 0
        raise AnnotationError(f"frame {first} is annotated but the video has {count} frames (0..{count - 1})")
    state, out = segmenter.start(start, annotations[first])
    if before is not None:
        yield from _backwards(segmenter, state, before, first, store)
    yield Tracked(first, start, out, state)
    later = sorted(i for i in annotations if i > first)
    yield from _forwards(segmenter, state, stream, annotations, later, segmenter.config.between, store)


def _backwards(
    segmenter: Segmenter,
    state: VideoState,
    kept: MutableMapping[int, np.ndarray],
    first: int,
    store: Store,
) -> Iterator[Tracked]:
    """Frames ``first-1 .. 0`` segmented backwards from ``state`` (the first annotation's), given in frame order."""
    labels: MutableMapping[int, np.ndarray] | None = None
    for t in segmenter.track(((i, kept[i]) for i in range(first - 1, -1, -1)), {}, state):
        if labels is None:
            labels = store(t.labels.shape, t.labels.dtype)
        labels[t.index] = t.labels
    assert labels is not None
    for i in range(first):
        yield Tracked(i, kept[i], labels[i], state)


def _forwards(
    segmenter: Segmenter,
    state: VideoState,
    stream: Iterator[tuple[int, np.ndarray]],
    annotations: Mapping[int, Annotation],
    later: list[int],
    between: Between,
    store: Store,
) -> Iterator[Tracked]:
    """Forwards from ``state``: each frame before a later annotation waits (``between="both"``) until that
    annotation's backward pass has given its second opinion."""
    waiting: list[int] = []
    frames: MutableMapping[int, np.ndarray] | None = None
    scores: MutableMapping[int, np.ndarray] | None = None
    anchor = min(annotations)  # the last annotated frame passed
    queue = segmenter.label_queue(state)
    for (index, frame), X in segmenter.feed.chunks(stream, _frame_of, state.work_size):
        if frame.shape[:2] != state.size:
            raise ValueError(
                f"frame {index} is {frame.shape[1]}x{frame.shape[0]}, the video is {state.size[1]}x{state.size[0]}"
            )
        annotation = annotations.get(index)
        if annotation is not None:
            state, out = segmenter.add_annotation(state, frame, annotation, X=X)
            if waiting:
                assert frames is not None and scores is not None
                yield from tracked(queue.flush())
                yield from _blend(segmenter, state, frames, scores, waiting, anchor, index, store)
                waiting = []
            yield from tracked(queue.ready((index, frame, state), out))
            anchor = index
            continue
        state, P = segmenter.advance_scores(state, X)
        if between == "both" and any(i > index for i in later):
            if frames is None or scores is None:
                frames, scores = store(frame.shape, frame.dtype), store(tuple(P.shape), np.dtype(np.float32))
            frames[index], scores[index] = frame, P.float().cpu().numpy()
            waiting.append(index)
            continue
        yield from tracked(queue.put((index, frame, state), P, frame))
    yield from tracked(queue.flush())
    if waiting:  # the video ended before the next annotation: those frames keep their forward pass
        assert frames is not None and scores is not None
        for i in waiting:
            P = torch.from_numpy(scores[i]).to(segmenter.device)
            yield from tracked(queue.put((i, frames[i], state), P, frames[i]))
        yield from tracked(queue.flush())


def _blend(
    segmenter: Segmenter,
    state: VideoState,
    frames: MutableMapping[int, np.ndarray],
    scores: MutableMapping[int, np.ndarray],
    waiting: list[int],
    start: int,
    end: int,
    store: Store,
) -> Iterator[Tracked]:
    """The frames between annotations ``start`` and ``end``: backwards from ``end``'s state, its scores blended
    with the forward pass's by distance (the nearer annotation counts more), then given out in frame order.
    Objects first annotated at ``end`` stay absent before it."""
    items = ((i, frames[i]) for i in reversed(waiting))
    back = state
    mixes: MutableMapping[int, np.ndarray] | None = None
    for (index, _), X in segmenter.feed.chunks(items, _frame_of, state.work_size):
        back, P = segmenter.advance_scores(back, X)
        forward = torch.from_numpy(scores[index]).to(P.device)
        share = (index - start) / (end - start)  # 0 next to the earlier annotation, 1 next to this one
        mixed = (1 - share) * forward + share * P[: forward.shape[0]]
        if P.shape[0] > forward.shape[0]:  # objects that enter at ``end``: absent before it
            absent = mixed.new_full((P.shape[0] - forward.shape[0], *P.shape[1:]), _ABSENT)
            mixed = torch.cat([mixed, absent])
        if mixes is None:
            mixes = store(tuple(mixed.shape), np.dtype(np.float32))
        mixes[index] = mixed.float().cpu().numpy()
    assert mixes is not None
    queue = segmenter.label_queue(state)
    for i in waiting:
        P = torch.from_numpy(mixes[i]).to(segmenter.device)
        yield from tracked(queue.put((i, frames[i], state), P, frames[i]))
    yield from tracked(queue.flush())


def _frame_of(item: tuple[int, np.ndarray]) -> np.ndarray:
    return item[1]
