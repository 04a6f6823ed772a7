"""One whole job: a video and its annotations in, per-frame masks and an overlay video out.

Reading (decode thread), the network (this thread) and writing (PNG thread, encoder thread) overlap;
nothing holds more than a few frames, so memory is flat in the video's length.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

import numpy as np

from vosrr.annotations import Mark, Timeline, load_timeline
from vosrr.exports import open_exports
from vosrr.mask_reader import MaskKind
from vosrr.masks import MaskError, MaskFormat, davis_palette, overlay, write_mask
from vosrr.segmenter import Segmenter
from vosrr.state import VideoState
from vosrr.video import OutputError, OverlayWriter, VideoError, VideoInfo, open_video, prefetch

__all__ = ["MAX_FULL_SIDE", "OutputError", "Outputs", "Summary", "prepare_output", "segment_video"]

#: longest frame side processed at full size without ``--max-side`` (larger frames would exhaust memory)
MAX_FULL_SIDE = 4096


@dataclass(frozen=True)
class Outputs:
    """Where results go and which ones to write."""

    folder: Path
    masks: bool = True
    overlay: bool = True
    force: bool = False
    mask_subdir: str = "masks"
    exports: tuple[str, ...] = ()  # kinds of vosrr.exports.EXPORT_KINDS
    overlay_style: str = "fill"  # one of vosrr.masks.OVERLAY_STYLES

    @property
    def mask_dir(self) -> Path:
        return self.folder / self.mask_subdir if self.mask_subdir else self.folder

    @property
    def overlay_path(self) -> Path:
        return self.folder / "overlay.mp4"


@dataclass
class Summary:
    frames: int = 0
    objects: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    stopped_at: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def seconds_per_frame(self) -> float:
        return self.seconds / max(1, self.frames)


def prepare_output(outputs: Outputs) -> list[Path]:
    """Create the output folder; refuse one that already holds anything unless ``force``. Deletes nothing.

    Returns the folders it created (outermost first), so a run that writes nothing can remove them again.
    """
    folder = outputs.folder
    other = "choose another folder with --out"
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"output path {folder} exists and is not a folder; {other}")
    if folder.is_dir() and any(folder.iterdir()) and not outputs.force:
        raise OutputError(
            f"output folder {folder} is not empty; use --force to overwrite vosrr's files in it "
            f"(other files are never touched) or {other}"
        )
    if outputs.masks and outputs.mask_dir.exists() and not outputs.mask_dir.is_dir():
        raise OutputError(f"{outputs.mask_dir} exists and is not a folder; move it away or {other}")
    if outputs.overlay and outputs.overlay_path.is_dir():
        raise OutputError(f"{outputs.overlay_path} is a folder; move it away or {other}")
    wanted = [*reversed(folder.parents), folder, *([outputs.mask_dir] if outputs.masks else [])]
    created = [p for p in dict.fromkeys(wanted) if not p.exists()]
    try:
        for path in created:
            path.mkdir()
        probe = folder / f".vosrr-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        _remove_empty(created)
        raise OutputError(f"cannot write to {folder}: {error.strerror or error}; {other}") from error
    return created


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders this run created, innermost first, as long as they are still empty."""
    for path in reversed(folders):
        try:
            path.rmdir()
        except OSError:
            return


def load_reference(mask_path: Path, info: VideoInfo, resize: bool) -> tuple[np.ndarray, MaskFormat]:
    """One first-frame mask as dense labels at the video's size (nearest-neighbour resize only on request)."""
    timeline = load_timeline([Mark(0, Path(mask_path))], (info.height, info.width), resize=resize)
    return timeline.annotations[0].labels, replace(timeline.format, notes=timeline.notes)


def segment_video(
    segmenter: Segmenter | Callable[[], Segmenter],
    video: Path,
    marks: Sequence[Mark] | Path,
    outputs: Outputs,
    *,
    resize_mask: bool = False,
    mask_kind: MaskKind = "auto",
    fps: float | None = None,
    on_start: Callable[[VideoInfo, int], None] | None = None,
    on_frame: Callable[[int], None] | None = None,
) -> Summary:
    """Run the whole job. ``marks`` are the annotation files (a plain path: one mask for frame 0).

    The video is segmented from its earliest annotated frame: backwards to frame 0 (those frames are kept in
    a temporary file meanwhile, so memory stays flat), then forwards to the end, each later annotation (a
    correction, objects that enter, scribbles) joining the solve where it stands. ``on_start(info, objects)``
    and ``on_frame(index)`` let a caller show progress.

    ``segmenter`` may be a function that builds one: it is then called only once the video and the
    annotations have been checked, so bad input fails fast, before a model is loaded. Nothing is written
    before the first annotated frame has decoded. A stream that breaks part way, or a Ctrl-C, ends the run
    early: the frames done are written in full and the ``Summary`` says so (``stopped_at``, ``interrupted``);
    a run that ends before its first mask removes the folders it created.
    """
    marks = [Mark(0, Path(marks))] if isinstance(marks, str | os.PathLike) else list(marks)
    info, decoded = open_video(video, fps)
    exact = info.frames if Path(video).is_dir() else None  # a folder's frames are counted; a file's estimated
    timeline = load_timeline(marks, (info.height, info.width), exact, resize=resize_mask, kind=mask_kind)
    if not isinstance(segmenter, Segmenter):
        segmenter = segmenter()
    side = max(info.width, info.height)
    if segmenter.config.max_side is None and side > MAX_FULL_SIDE:
        raise VideoError(
            f"{video} is {info.width}x{info.height}, too large to process at full size (over {MAX_FULL_SIDE} "
            f"pixels on the longer side); pass --max-side 1280 (masks are still written at full size)"
        )
    frames = prefetch(decoded)
    summary = Summary(objects=timeline.format.num_objects, notes=list(timeline.notes))
    try:
        with _Spill((info.height, info.width, 3)) as before:
            start = _read_until(frames, timeline, before, video)
            if start.shape[:2] != (info.height, info.width):
                raise VideoError(
                    f"frame {timeline.first} of {video} is {start.shape[1]}x{start.shape[0]}, but the video "
                    f"reported {info.width}x{info.height}; re-encode the video"
                )
            created = prepare_output(outputs)
            try:
                last = _run(segmenter, start, frames, before, timeline, outputs, info, summary, on_start, on_frame)
            finally:
                if summary.frames == 0:
                    _remove_empty(created)
        if not (summary.interrupted or summary.stopped_at):
            late = [m for m in timeline.marks if m.frame > last]
            if late:
                raise MaskError(
                    f"{late[0].option}: frame {late[0].frame} is past the end of the video ({last + 1} frames); "
                    f"the {summary.frames} masks are written; check the frame index"
                )
            expected = info.frames or 0
            if summary.frames < 0.9 * expected - 1:
                summary.notes.append(
                    f"{video} gave {summary.frames} frames, its header announces about {expected}: it may be truncated"
                )
    finally:
        frames.close()
    return summary


def _read_until(frames: Iterator[np.ndarray], timeline: Timeline, before: _Spill, video: Path) -> np.ndarray:
    """Decode up to the first annotated frame, keeping the frames before it in ``before``; return that frame."""
    for index, frame in enumerate(frames):
        if index == timeline.first:
            return frame
        before.append(frame)
    mark = timeline.marks[0]
    if before.count == 0:
        raise VideoError(f"{video} holds no frames; give a video with at least one frame")
    raise MaskError(
        f"{mark.option}: frame {mark.frame} is past the end of the video ({before.count} frames, "
        f"0..{before.count - 1}); check the frame index"
    )


def _run(
    segmenter: Segmenter,
    start: np.ndarray,
    frames: Iterator[np.ndarray],
    before: _Spill,
    timeline: Timeline,
    outputs: Outputs,
    info: VideoInfo,
    summary: Summary,
    on_start: Callable[[VideoInfo, int], None] | None,
    on_frame: Callable[[int], None] | None,
) -> int:
    """The frame loops: backwards from the first annotation, then forwards. Masks go to the PNG thread as they
    come; the overlay gets the frames in order. Returns the index of the last frame decoded."""
    fmt = timeline.format
    first = timeline.first
    colours = np.asarray(davis_palette(fmt.num_objects + 1), dtype=np.uint8)
    if on_start:
        on_start(info, fmt.num_objects)
    tic = time.perf_counter()
    pending: deque[Future[None]] = deque()
    last = first
    with (
        ThreadPoolExecutor(1, thread_name_prefix="vosrr-png") as pool,
        _maybe_writer(outputs, info) as writer,
        open_exports(outputs.exports, outputs.folder, info, fmt) as sinks,
    ):

        def mask(index: int, out: np.ndarray) -> None:
            if outputs.masks:
                pending.append(pool.submit(write_mask, outputs.mask_dir / f"{index:05d}.png", out, fmt))
                while len(pending) > 8 or (pending and pending[0].done()):
                    pending.popleft().result()
            summary.frames += 1
            if on_frame:
                on_frame(index)

        def show(index: int, frame: np.ndarray, out: np.ndarray) -> None:  # in index order, 0 to the last
            if writer is not None:
                writer.write(lambda: overlay(frame, out, colours, style=outputs.overlay_style))
            for sink in sinks:
                sink.write(index, frame, out)

        try:
            state, out = segmenter.start(start, timeline.annotations[first])
            _check_reference(state, start, timeline, summary)
            mask(first, out)
            if first > 0:  # backwards to frame 0; the overlay needs them in order, so their labels wait on disk
                with _Spill((info.height, info.width)) as labels:
                    backwards = ((i, before[i]) for i in range(first - 1, -1, -1))
                    for t in segmenter.track(backwards, {}, state):
                        mask(t.index, t.labels)
                        labels.put(t.index, t.labels)
                    for i in range(first):
                        show(i, before[i], labels[i])
            show(first, start, out)
            for t in segmenter.track(enumerate(frames, start=first + 1), timeline.annotations, state):
                last = t.index
                mask(t.index, t.labels)
                show(t.index, t.frame, t.labels)
            sinks.complete = True  # the others close as interrupted or failed: they keep what is finished
        except KeyboardInterrupt:
            summary.interrupted = True
        except VideoError as error:
            if summary.frames == 0:
                raise
            summary.stopped_at = str(error)
        except BaseException:
            for future in pending:  # a failure (a full disk, say): write nothing more
                future.cancel()
            raise
        finally:
            while pending:  # every mask still queued is complete before the summary counts it
                if not (future := pending.popleft()).cancelled():
                    future.result()
    summary.seconds = time.perf_counter() - tic
    return last


def _check_reference(state: VideoState, frame: np.ndarray, timeline: Timeline, summary: Summary) -> None:
    """A note when the first annotated frame cannot support a solve (blank, dark, featureless)."""
    mark = timeline.marks[0]
    flat = float(frame.std()) < 2.0
    if (state.fit is not None and state.fit < 0.5) or flat:
        how = "it is blank (one colour)" if flat else f"the solve reproduces its own mask with IoU {state.fit:.2f}"
        summary.notes.append(
            f"frame {mark.frame} cannot tell the objects from the background well ({how}); the masks will be poor: "
            f"annotate a frame where the objects are clearly visible (--mask N:FILE), or add more annotated frames"
        )


class _Spill:
    """Arrays of one shape and dtype kept in an unnamed temporary file (gone with the process), read in any order."""

    def __init__(self, shape: tuple[int, ...], dtype: type = np.uint8) -> None:
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self.nbytes = int(np.prod(shape)) * self.dtype.itemsize
        self.count = 0
        self._file: BinaryIO | None = None

    def __enter__(self) -> _Spill:
        return self

    def __exit__(self, *args: object) -> None:
        if self._file is not None:
            self._file.close()

    def _open(self) -> BinaryIO:
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="vosrr-")  # noqa: SIM115 (closed by __exit__)
        return self._file

    def append(self, array: np.ndarray) -> None:
        self.put(self.count, array)

    def put(self, index: int, array: np.ndarray) -> None:
        file = self._open()
        file.seek(index * self.nbytes)
        file.write(np.ascontiguousarray(array, dtype=self.dtype).tobytes())
        self.count = max(self.count, index + 1)

    def __getitem__(self, index: int) -> np.ndarray:
        file = self._open()
        file.seek(index * self.nbytes)
        data = file.read(self.nbytes)
        return np.frombuffer(data, dtype=self.dtype).reshape(self.shape).copy()


class _NoWriter:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None


def _maybe_writer(outputs: Outputs, info: VideoInfo) -> OverlayWriter | _NoWriter:
    if not outputs.overlay:
        return _NoWriter()
    return OverlayWriter(outputs.overlay_path, info.width, info.height, info.fps)
