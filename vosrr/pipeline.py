"""One whole job: a video and its annotations in, per-frame masks and an overlay video out.

Reading (decode threads), the network (this thread) and writing (PNG threads, overlay threads, the encoder)
overlap; nothing holds more than a few frames, so memory is flat in the video's length.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

import numpy as np

from vosrr.annotations import Mark, Timeline, load_timeline
from vosrr.encode import OUTPUT_WORKERS, OverlayWriter
from vosrr.exports import Exports, open_exports
from vosrr.mask_reader import MaskKind
from vosrr.masks import MaskError, MaskFormat, davis_palette, overlay, write_mask
from vosrr.propagate import Store, segment_frames
from vosrr.segmenter import AnnotationError, Segmenter
from vosrr.state import VideoState
from vosrr.video import OutputError, VideoError, VideoInfo, open_video, prefetch

__all__ = ["MAX_FULL_SIDE", "OutputError", "Outputs", "Summary", "prepare_output", "segment_video"]

#: held in the output folder while a run without ``force`` writes there (so a second run finds it not empty)
CLAIM = ".vosrr-running"

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


def prepare_output(outputs: Outputs, create: bool = True) -> list[Path]:
    """Create the output folder; refuse one that already holds anything unless ``force``. Deletes nothing.

    Returns the folders it created (outermost first), so a run that writes nothing can remove them again.
    ``create=False`` only checks (nothing is made, ``[]`` is returned).
    """
    folder = outputs.folder
    other = "choose another folder with --out"
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"output path {folder} exists and is not a folder; {other}")
    if (folder / CLAIM).exists() and not outputs.force:
        raise OutputError(
            f"another vosrr run is writing to {folder} (it holds {CLAIM}; if no run is, one was killed: remove that "
            f"file); wait for it, or {other}"
        )
    if folder.is_dir() and any(folder.iterdir()) and not outputs.force:
        raise OutputError(
            f"output folder {folder} is not empty; use --force to overwrite vosrr's files in it "
            f"(other files are never touched) or {other}"
        )
    if outputs.masks and outputs.mask_dir.exists() and not outputs.mask_dir.is_dir():
        raise OutputError(f"{outputs.mask_dir} exists and is not a folder; move it away or {other}")
    if outputs.overlay and outputs.overlay_path.is_dir():
        raise OutputError(f"{outputs.overlay_path} is a folder; move it away or {other}")
    if not create:
        _check_creatable(folder, other)
        return []
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


def _check_creatable(folder: Path, other: str) -> None:
    """Refuse a folder that could not be made: a file among its parents, or a parent that is not writable."""
    parent = folder if folder.exists() else next((p for p in folder.parents if p.exists()), None)
    if parent is None:
        return
    if not parent.is_dir():
        raise OutputError(f"cannot write to {folder}: {parent} is a file, not a folder; {other}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write to {folder}: {parent} is not writable; {other}")


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

    The video is segmented in ``propagate.segment_frames``'s order: backwards from its earliest annotated frame
    to frame 0, then forwards to the end, each later annotation (a correction, objects that enter, scribbles)
    joining the solve where it stands and, under ``between="both"``, also segmenting the frames before it
    backwards. Frames that wait for a later pass are kept in temporary files, so memory stays flat; results
    are written in frame order. ``on_start(info, objects)``
    and ``on_frame(index)`` let a caller show progress.

    ``segmenter`` may be a function that builds one: it is then called only once the video and the
    annotations have been checked, so bad input fails fast, before a model is loaded. Nothing is written
    before the first annotated frame has decoded. A stream that breaks part way, or a Ctrl-C, ends the run
    early: the frames done are written in full and the ``Summary`` says so (``stopped_at``, ``interrupted``);
    a run that ends before its first mask removes the folders it created.
    """
    marks = [Mark(0, Path(marks))] if isinstance(marks, str | os.PathLike) else list(marks)
    info, decoded = open_video(video, fps, exclude=[m.path for m in marks])  # a folder's own mask is no frame
    exact = info.frames if Path(video).is_dir() else None  # a folder's frames are counted; a file's estimated
    timeline = load_timeline(marks, (info.height, info.width), exact, resize=resize_mask, kind=mask_kind)
    prepare_output(outputs, create=False)  # a folder that cannot be used fails now, before any work
    if not isinstance(segmenter, Segmenter):
        segmenter = segmenter()
    work = segmenter.work_size(info.height, info.width)
    if max(work) > MAX_FULL_SIDE:  # the size the network would see, --scale included
        scaled = f" at --scale {segmenter.config.scale}" if segmenter.config.scale != 1 else ""
        raise VideoError(
            f"{video} is {info.width}x{info.height}, too large to process{scaled} ({work[1]}x{work[0]}, over "
            f"{MAX_FULL_SIDE} pixels on the longer side); pass --max-side 1280 (masks are still written at full "
            "size)" + (" or a smaller --scale" if scaled else "")
        )
    frames = prefetch(decoded, depth=max(4, segmenter.feed.chunk))  # a whole chunk decoded while the last one runs
    summary = Summary(objects=timeline.format.num_objects, notes=list(timeline.notes))
    if info.skipped:
        names = ", ".join(info.skipped[:4]) + (f" and {len(info.skipped) - 4} more" if len(info.skipped) > 4 else "")
        summary.notes.append(f"{video}: {len(info.skipped)} file(s) not taken as frames ({names})")
    created: list[Path] | None = None
    claim = outputs.folder / CLAIM
    claimed = False

    def ready() -> None:  # the output folder appears with the first finished frame
        nonlocal created, claimed
        created = prepare_output(outputs)
        if not outputs.force:  # two runs that both found the folder empty: one writes, the other is told why
            try:
                os.close(os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            except FileExistsError:
                busy = f"another vosrr run is writing to {outputs.folder}"
                raise OutputError(f"{busy}; wait for it, or choose another folder with --out") from None
            claimed = True

    try:
        with contextlib.ExitStack() as spills:

            def store(shape: tuple[int, ...], dtype: np.dtype) -> MutableMapping[int, np.ndarray]:
                return spills.enter_context(_Spill(shape, dtype))

            try:
                last = _run(segmenter, frames, timeline, outputs, info, summary, store, ready, on_start, on_frame)
            finally:
                if claimed:
                    claim.unlink(missing_ok=True)
                if created is not None and summary.frames == 0:
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


def _run(
    segmenter: Segmenter,
    frames: Iterator[np.ndarray],
    timeline: Timeline,
    outputs: Outputs,
    info: VideoInfo,
    summary: Summary,
    store: Store,
    ready: Callable[[], None],
    on_start: Callable[[VideoInfo, int], None] | None,
    on_frame: Callable[[int], None] | None,
) -> int:
    """Every frame's labels in frame order (``segment_frames``): each mask to the PNG thread, each overlay frame
    to the encoder. Returns the index of the last frame segmented (-1: none)."""
    fmt = timeline.format
    colours = np.asarray(davis_palette(fmt.num_objects + 1), dtype=np.uint8)
    tic = time.perf_counter()
    pending: deque[Future[None]] = deque()
    last = -1
    sinks: Exports = Exports()
    with (
        ThreadPoolExecutor(OUTPUT_WORKERS, thread_name_prefix="vosrr-png") as pool,
        _maybe_writer(outputs, info) as writer,
        contextlib.ExitStack() as later,
    ):
        try:
            for t in segment_frames(segmenter, frames, timeline.annotations, store=store):
                if last < 0:  # the first finished frame: the output folder, then the exports' files, appear
                    _check_reference(t.state, timeline, summary)
                    ready()
                    sinks = later.enter_context(open_exports(outputs.exports, outputs.folder, info, fmt))
                    if on_start:
                        on_start(info, fmt.num_objects)
                with _whole_frame():  # a signal lands between frames: never a mask without its overlay frame
                    if outputs.masks:
                        pending.append(pool.submit(write_mask, outputs.mask_dir / f"{t.index:05d}.png", t.labels, fmt))
                        while len(pending) > 2 * OUTPUT_WORKERS + 4 or (pending and pending[0].done()):
                            pending.popleft().result()
                    if writer is not None:
                        writer.write(
                            lambda frame=t.frame, out=t.labels, style=outputs.overlay_style: overlay(
                                frame, out, colours, style=style
                            )
                        )
                    for sink in sinks:  # frames come in order, 0 to the last
                        sink.write(t.index, t.frame, t.labels)
                    last = t.index
                    summary.frames += 1
                if on_frame:
                    on_frame(t.index)
            sinks.complete = True  # the others close as interrupted or failed: they keep what is finished
        except AnnotationError as error:  # the video ended before the first annotated frame
            mark = timeline.marks[0]
            raise MaskError(f"{mark.option}: {error}; check the frame index") from error
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


@contextlib.contextmanager
def _whole_frame() -> Iterator[None]:
    """Ctrl-C or SIGTERM while one frame's outputs are handed out takes effect right after them, so a stopped run
    keeps whole frames (each mask with its overlay frame and exports). Only in the main thread, where signals are
    delivered; elsewhere (the annotate page's export) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    saved = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    for number in saved:
        signal.signal(number, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:  # the handlers come back even when the frame failed (its error then ends the run anyway)
        for number, handler in saved.items():
            signal.signal(number, handler)
    for number in caught:  # now, as it would have been: the handler raises, or the default ends the process
        handler = saved[number]
        if callable(handler):
            handler(number, None)
        elif handler == signal.SIG_DFL:
            os.kill(os.getpid(), number)


def _check_reference(state: VideoState, timeline: Timeline, summary: Summary) -> None:
    """A note when the first annotated frame cannot support a solve (blank, dark, featureless)."""
    if state.fit is not None and state.fit < 0.5:
        summary.notes.append(
            f"frame {timeline.first} cannot tell the objects from the background well (the solve reproduces its "
            f"own mask with IoU {state.fit:.2f}: a blank, dark or blurred frame?); the masks will be poor: annotate "
            "a frame where the objects are clearly visible (--mask N:FILE), or add more annotated frames"
        )


class _Spill(MutableMapping[int, np.ndarray]):
    """Arrays of one shape and dtype by frame index, in an unnamed temporary file (gone with the process)."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype | type = np.uint8) -> None:
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
        self.indices: set[int] = set()
        self._file: BinaryIO = tempfile.TemporaryFile(prefix="vosrr-")  # noqa: SIM115 (closed by __exit__)

    def __enter__(self) -> _Spill:
        return self

    def __exit__(self, *args: object) -> None:
        self._file.close()

    def __setitem__(self, index: int, array: np.ndarray) -> None:
        if array.shape != self.shape:
            raise ValueError(f"array {array.shape} does not fit a spill of {self.shape}")
        self._file.seek(index * self.nbytes)
        self._file.write(np.ascontiguousarray(array, dtype=self.dtype).tobytes())
        self.indices.add(index)

    def __getitem__(self, index: int) -> np.ndarray:
        if index not in self.indices:
            raise KeyError(index)
        self._file.seek(index * self.nbytes)
        return np.frombuffer(self._file.read(self.nbytes), dtype=self.dtype).reshape(self.shape).copy()

    def __delitem__(self, index: int) -> None:
        self.indices.discard(index)

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self.indices))

    def __len__(self) -> int:
        return len(self.indices)


class _NoWriter:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None


def _maybe_writer(outputs: Outputs, info: VideoInfo) -> OverlayWriter | _NoWriter:
    if not outputs.overlay:
        return _NoWriter()
    audio = info.path if info.audio else None  # the input's sound, in step when the frame rate is the input's
    # a video file's overlay keeps its frames' own times (a variable-frame-rate phone video stays in step)
    return OverlayWriter(outputs.overlay_path, info.width, info.height, info.fps, audio=audio, times=info.times)
