"""One annotation session: a video, its strokes, one segmenter, and the masks they give, kept on disk.

The session follows the frame order ``vosrr segment`` uses for annotations at several frames: forwards from the
earliest annotated frame to the end (each later annotation joins the solve as it is reached), and backwards from
the earliest one to frame 0. So what the page shows is what the command line computes from the same strokes.

- **Strokes** at a frame are a scribble annotation. After each stroke that frame's full mask is inferred by the
  solver from its strokes and from every earlier annotation (``Segmenter.start`` / ``add_annotation``), shown,
  and written. The state right after each annotated frame (an *anchor*) is kept: a correction at frame ``t``
  needs only the anchor before it, since a new annotation restarts the online memory and the window.
- **Propagation** writes each frame's mask as it goes; it resumes where it stopped.
- **On disk** (``out/``): ``strokes/NNNNN.png`` (the scribble PNGs ``vosrr segment --scribble`` reads),
  ``masks/NNNNN.png`` and, after an export, ``overlay.mp4``; ``command.txt`` is the command line that redoes the
  whole job from the strokes. Every file is written whole (temporary file, then rename), and the masks folder only
  ever holds masks that match the current strokes: a correction at frame ``t`` removes the masks it makes stale
  (those from ``t`` on, or all of them when ``t`` is the earliest annotated frame) until they are propagated again.
"""

from __future__ import annotations

import shlex
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor

from vosrr.annotate.frames import FrameSource
from vosrr.annotate.jobs import BusyError, Event, JobCancelledError, Jobs
from vosrr.annotate.strokes import FrameStrokes, Stroke, StrokeError, read_layer, write_layer
from vosrr.annotations import Annotation
from vosrr.masks import MaskFormat, write_mask
from vosrr.pipeline import Outputs, prepare_output
from vosrr.segmenter import AnnotationError, Segmenter, Tracked, VideoState

__all__ = ["BusyError", "Event", "Session"]

#: frames whose features are kept for repeated strokes
_FEATURE_CACHE = 4


@dataclass
class _Cursor:
    """Where an interrupted propagation stops: the next frame in its direction and the state to go on with."""

    direction: str
    next: int
    state: VideoState


class Session:
    """Strokes in, masks out, for one video, one output folder and one segmenter. Thread-safe.

    ``notify(event)`` (called from worker threads) receives ``{"type": "progress" | "job" | "info", ...}`` events.
    ``segment_options`` are the ``vosrr segment`` options that reproduce this session's segmenter (for
    ``command.txt``).
    """

    def __init__(
        self,
        segmenter: Segmenter,
        source: FrameSource,
        out: Path,
        *,
        force: bool = False,
        segment_options: Iterable[str] = (),
        notify: Callable[[Event], None] | None = None,
    ) -> None:
        if segmenter.config.between != "forward":  # the page re-propagates a correction forwards only
            raise ValueError(
                "the annotation page propagates corrections forwards; give it a Segmenter built with "
                "SegmentConfig(between='forward'), so that its export (vosrr segment --between forward) agrees"
            )
        self.source = source
        self.out = Path(out)
        self.strokes_dir = self.out / "strokes"
        self.outputs = Outputs(self.out, force=True)
        self.segment_options = list(segment_options)
        self.notify: Callable[[Event], None] = notify or (lambda event: None)
        resumed = self._stroke_files()  # a folder of an earlier session (it has strokes/) is resumed, not refused
        prepare_output(Outputs(self.out, force=force or self.strokes_dir.is_dir()))
        self.strokes_dir.mkdir(exist_ok=True)
        self.segmenter = segmenter
        self.strokes: dict[int, FrameStrokes] = {}
        self.errors: dict[int, str] = {}
        """annotated frames whose strokes the solve cannot use yet (say, no background)"""
        self._anchors: dict[int, VideoState] = {}
        self._valid = bytearray(len(source))
        """1 where masks/NNNNN.png matches the current strokes"""
        self._cursors: dict[str, _Cursor] = {}
        self._feature_cache: OrderedDict[int, Tensor] = OrderedDict()
        self._lock = threading.RLock()  # one piece of segmenter work at a time
        self.jobs = Jobs(self._lock, lambda event: self.notify(event), self.status)
        """propagation and export, one at a time (``vosrr.annotate.jobs``)"""
        self._objects: dict[int, int] = {}
        """the highest object label of each frame's strokes"""
        for index, path in resumed:
            self.strokes[index] = FrameStrokes(source.size, read_layer(path, source.size))
            self._objects[index] = _objects(self.strokes[index].layer())
        if resumed:
            for index in range(len(source)):
                if self._mask_path(index).exists():
                    self._valid[index] = 1
        self._write_command()

    # ----------------------------------------------------------------- reading
    def _stroke_files(self) -> list[tuple[int, Path]]:
        if not self.strokes_dir.is_dir():
            return []
        found = []
        for path in sorted(self.strokes_dir.glob("[0-9]" * 5 + ".png")):
            index = int(path.stem)
            if index < len(self.source):
                found.append((index, path))
        return found

    def _mask_path(self, index: int) -> Path:
        return self.outputs.mask_dir / f"{index:05d}.png"

    def _stroke_path(self, index: int) -> Path:
        return self.strokes_dir / f"{index:05d}.png"

    def annotations(self) -> dict[int, Annotation]:
        """Frame index -> its scribble annotation, for every frame with strokes."""
        out = {}
        for index, strokes in sorted(self.strokes.items()):
            annotation = strokes.annotation()
            if annotation is not None:
                out[index] = annotation
        return out

    def mask(self, index: int) -> np.ndarray | None:
        """``labels[H,W]`` of frame ``index`` if its mask is current, else None."""
        if not self._is_valid(index):
            return None
        try:
            with Image.open(self._mask_path(index)) as image:
                return np.asarray(image, dtype=np.uint8).copy()
        except FileNotFoundError:
            return None

    def layer(self, index: int) -> np.ndarray | None:
        """The stroke layer of frame ``index`` (0, 1..K, 255 unknown), or None without strokes (no lock: a running
        job holds it)."""
        strokes = self.strokes.get(index)
        return None if strokes is None else strokes.layer()

    def _is_valid(self, index: int) -> bool:
        return 0 <= index < len(self._valid) and bool(self._valid[index])

    def status(self) -> Event:
        """What the page shows: frame count, annotated frames, objects, which frames have masks, the job."""
        valid = np.frombuffer(bytes(self._valid), np.uint8).astype(bool)
        edges = np.flatnonzero(np.diff(np.concatenate([[False], valid, [False]]).astype(np.int8)))
        ranges = edges.reshape(-1, 2).tolist()
        objects = max(dict(self._objects).values(), default=0)  # a snapshot: no lock, a running job holds it
        return {
            "frames": len(self.source),
            "exact": self.source.exact,
            "width": self.source.info.width,
            "height": self.source.info.height,
            "fps": self.source.info.fps,
            "name": self.source.path.name,
            "annotated": sorted(dict(self.strokes)),
            "errors": {str(k): v for k, v in self.errors.items()},
            "objects": objects,
            "done": int(valid.sum()),
            "ranges": ranges,
            "job": self.job,
            "out": str(self.out),
            "command": self.command(),
        }

    def command(self) -> str:
        """The ``vosrr segment`` command that redoes this session's whole job from its stroke files."""
        parts = ["vosrr", "segment", str(self.source.path)]
        for index in sorted(dict(self.strokes)):
            parts += ["--scribble", f"{index}:{self._stroke_path(index)}"]
        parts += ["--out", str(self.out), "--force", *self.segment_options]
        return shlex.join(parts)

    def _write_command(self) -> None:
        path = self.out / "command.txt"
        tmp = path.with_name(".command.txt.tmp")
        tmp.write_text(self.command() + "\n")
        tmp.replace(path)

    # ----------------------------------------------------------------- strokes
    def paint(self, index: int, strokes: list[Stroke]) -> Event:
        """Add strokes to frame ``index``; the frame's inferred mask is written. Stops a running job first."""
        return self._edit(index, lambda s: s.strokes.extend(strokes))

    def undo(self, index: int) -> Event:
        """Take back frame ``index``'s last stroke of this session."""

        def pop(s: FrameStrokes) -> None:
            if not s.strokes:
                raise StrokeError(f"frame {index} has no stroke of this session to undo")
            s.strokes.pop()

        return self._edit(index, pop)

    def clear(self, index: int) -> Event:
        """Remove every stroke of frame ``index``."""

        def empty(s: FrameStrokes) -> None:
            s.base, s.strokes[:] = None, []

        return self._edit(index, empty)

    def _edit(self, index: int, change: Callable[[FrameStrokes], None]) -> Event:
        self._check_index(index)
        self.stop()
        with self._lock:
            before = min(self.annotations(), default=None)
            strokes = self.strokes.get(index) or FrameStrokes(self.source.size)
            change(strokes)
            if strokes.annotation() is None:
                self.strokes.pop(index, None)
                self._objects.pop(index, None)
                self._stroke_path(index).unlink(missing_ok=True)
            else:
                self.strokes[index] = strokes
                layer = strokes.layer()
                self._objects[index] = _objects(layer)
                write_layer(self._stroke_path(index), layer)
            after = min(self.annotations(), default=None)
            self._invalidate(index, before, after)
            self._write_command()
            message = None
            # the frame's own mask again, or (its strokes gone) that of the next annotated frame
            target = min((a for a in self.strokes if a >= index), default=None)
            if target is not None:
                try:
                    self._anchor(target)
                except AnnotationError as error:
                    message = str(error)
            result: Event = {"frame": index, "message": message, "mask": self._is_valid(index)}
        self.notify({"type": "info", **self.status()})
        return result

    def _check_index(self, index: int) -> None:
        if not 0 <= index < len(self.source):
            raise IndexError(f"frame {index} is outside the video's {len(self.source)} frames")

    def _invalidate(self, index: int, before: int | None, after: int | None) -> None:
        """Forget what the change at ``index`` makes stale: anchors, masks (files removed), cursors, overlay."""
        forward_only = before is not None and after is not None and index > before and index > after
        first = index if forward_only else 0
        for frame in [a for a in self._anchors if a >= first]:
            del self._anchors[frame]
        for frame in [a for a in self.errors if a >= first]:
            del self.errors[frame]
        self._cursors.clear()
        for frame in range(first, len(self._valid)):
            if self._valid[frame] or first == 0:
                self._mask_path(frame).unlink(missing_ok=True)
            self._valid[frame] = 0
        self.outputs.overlay_path.unlink(missing_ok=True)

    def _state_before(self, index: int) -> VideoState | None:
        """The state the forward pass brings to annotated frame ``index``: the anchor of the annotated frame
        before it (None: ``index`` is the earliest, the video starts there)."""
        earlier = [a for a in self.strokes if a < index]
        return self._anchor(max(earlier)) if earlier else None

    def _anchor(self, index: int) -> VideoState:
        """The state right after annotated frame ``index`` (computed from the earliest one on, as needed); the
        frame's mask is written on the way. ``AnnotationError`` when its strokes cannot be used yet."""
        with self._lock:
            annotations = self.annotations()
            chain = [a for a in annotations if a <= index and a not in self._anchors]
            for frame in chain:
                earlier = [a for a in annotations if a < frame]
                previous = self._anchors[max(earlier)] if earlier else None
                image = self.source[frame]
                try:
                    if previous is None:
                        state, labels = self.segmenter.start(image, annotations[frame], X=self._features(frame))
                    else:
                        X = self._features(frame, previous.work_size)
                        state, labels = self.segmenter.add_annotation(previous, image, annotations[frame], X=X)
                except AnnotationError as error:
                    self.errors[frame] = str(error)
                    raise
                self.errors.pop(frame, None)
                self._anchors[frame] = state
                self._write_mask(frame, labels, state.num_objects)
            return self._anchors[index]

    def _features(self, index: int, work: tuple[int, int] | None = None) -> Tensor:
        """``X[h*w,C]`` of frame ``index``, kept for the last few frames painted (a stroke needs no new forward pass
        of its frame; the mirror image's still runs)."""
        X = self._feature_cache.get(index)
        if X is None:
            work = work or self.segmenter.work_size(*self.source.size)
            X = self._feature_cache[index] = self.segmenter.features(self.source[index], work)
            while len(self._feature_cache) > _FEATURE_CACHE:
                self._feature_cache.popitem(last=False)
        self._feature_cache.move_to_end(index)
        return X

    def _write_mask(self, index: int, labels: np.ndarray, objects: int) -> None:
        if index >= len(self._valid):
            self._valid.extend(bytes(index + 1 - len(self._valid)))
        write_mask(self._mask_path(index), labels, MaskFormat.dense(max(1, objects)))
        self._valid[index] = 1

    # ----------------------------------------------------------------- jobs
    @property
    def job(self) -> Event | None:
        """The running or last job's record (``Jobs.record``)."""
        return self.jobs.record

    @property
    def busy(self) -> bool:
        return self.jobs.busy

    def propagate(self) -> None:
        """Start propagating (in a thread) every frame whose mask is missing; ``BusyError`` if a job runs."""
        self.jobs.start("propagate", self._propagate)

    def export(self) -> None:
        """Start the export (in a thread): ``vosrr segment``'s whole job on the strokes; ``BusyError`` if busy."""
        self.jobs.start("export", self._export)

    def stop(self, timeout: float | None = None) -> None:
        """Ask the running job to stop after its current frame, and wait for it."""
        self.jobs.stop(timeout)

    def wait(self, timeout: float | None = None) -> Event | None:
        """Wait for the running job to end; its final record."""
        return self.jobs.wait(timeout)

    def close(self) -> None:
        """Stop any job (its files are complete) and the frame source."""
        self.stop()
        self.source.close()

    def _step(self, tracked: Tracked, direction: str, annotated: dict[int, Annotation]) -> None:
        """Write one propagated frame's mask, remember where to go on, report progress."""
        index = tracked.index
        self._write_mask(index, tracked.labels, tracked.state.num_objects)
        if index in annotated:
            self._anchors[index] = tracked.state
        self._cursors[direction] = _Cursor(direction, index + (1 if direction == "forward" else -1), tracked.state)
        if not self.jobs.advance(index):
            raise JobCancelledError

    def _propagate(self) -> None:
        annotated = self.annotations()
        if not annotated:
            raise AnnotationError("no frame has strokes yet; paint an object and some background first")
        first = min(annotated)
        self._anchor(first)  # fails early (no background, say) before anything runs
        valid = np.frombuffer(bytes(self._valid), np.uint8)
        assert self.job is not None
        self.job["total"] = int(len(valid) - valid.sum())
        # forwards from the first frame after the earliest annotation whose mask is missing
        missing = np.flatnonzero(valid[first:] == 0)
        start = first + int(missing[0]) if missing.size else len(valid)
        if missing.size:
            cursor = self._cursors.get("forward")
            if cursor is not None and cursor.next == start:
                state, begin = cursor.state, start
            else:
                latest = max(a for a in annotated if a <= start)
                if latest == start:
                    state, begin = self._state_before(start), start
                else:
                    state, begin = self._anchor(latest), latest + 1
            for tracked in self._track(self.source.forward(begin), annotated, state):
                self._step(tracked, "forward", annotated)
        # backwards from the earliest annotation to frame 0
        missing = np.flatnonzero(valid[:first] == 0)
        if missing.size:
            top = int(missing[-1])
            cursor = self._cursors.get("backward")
            if cursor is not None and cursor.next == top:
                state, begin = cursor.state, top
            else:
                state, begin = self._anchor(first), first - 1
            for tracked in self._track(self.source.backward(begin, 0), {}, state):
                self._step(tracked, "backward", annotated)

    def _track(
        self, frames: Iterator[tuple[int, np.ndarray]], annotated: dict[int, Annotation], state: VideoState | None
    ) -> Iterator[Tracked]:
        try:
            yield from self.segmenter.track(frames, annotated, state)
        finally:
            close = getattr(frames, "close", None)
            if close is not None:
                close()

    def _export(self) -> None:
        """``vosrr segment``'s job on the stroke files (masks and overlay.mp4), as ``command.txt`` says."""
        from vosrr.annotations import Mark
        from vosrr.pipeline import segment_video

        annotated = self.annotations()
        if not annotated:
            raise AnnotationError("no frame has strokes yet; paint an object and some background first")
        self._anchor(min(annotated))
        marks = [Mark(index, self._stroke_path(index), scribble=True) for index in annotated]
        assert self.job is not None
        self.job["total"] = len(self.source)
        tic = time.perf_counter()

        def advanced(index: int) -> None:
            if not self.jobs.advance(index):
                raise KeyboardInterrupt  # segment_video's own interruption: what is written is complete

        summary = segment_video(self.segmenter, self.source.path, marks, self.outputs, on_frame=advanced)
        self._cursors.clear()
        for index in range(len(self._valid)):
            self._valid[index] = int(self._mask_path(index).exists())
        self.job["message"] = (
            f"{summary.frames} frames in {time.perf_counter() - tic:.1f} s -> {self.outputs.mask_dir}/, "
            f"{self.outputs.overlay_path}"
        )
        if summary.interrupted:
            raise JobCancelledError


def _objects(layer: np.ndarray) -> int:
    """The highest object label a stroke layer paints."""
    return int(layer[layer != 255].max(initial=0))
