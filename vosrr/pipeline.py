"""One whole job: a video and its first-frame mask in, per-frame masks and an overlay video out.

Reading (decode thread), the network (this thread) and writing (PNG thread, encoder thread) overlap;
nothing holds more than a few frames, so memory is flat in the video's length.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from vosrr.exports import open_exports
from vosrr.mask_reader import read_mask
from vosrr.masks import MaskError, MaskFormat, davis_palette, overlay, write_mask
from vosrr.segmenter import Segmenter
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
    """The first-frame mask as dense labels at the video's size (nearest-neighbour resize only on request)."""
    labels, fmt = read_mask(mask_path)
    if labels.shape != (info.height, info.width):
        if not resize:
            raise MaskError(
                f"mask {mask_path} is {labels.shape[1]}x{labels.shape[0]} but the video is "
                f"{info.width}x{info.height}; pass --resize-mask to scale it (nearest neighbour)"
            )
        labels = cv2.resize(labels, (info.width, info.height), interpolation=cv2.INTER_NEAREST)
        fmt = MaskFormat(fmt.ids, fmt.palette, (*fmt.notes, f"mask resized to {info.width}x{info.height}"))
        if labels.max() == 0:
            raise MaskError(
                f"mask {mask_path} has no object left after resizing to {info.width}x{info.height}; "
                "draw the mask at the video's size"
            )
    return labels, fmt


def segment_video(
    segmenter: Segmenter | Callable[[], Segmenter],
    video: Path,
    mask: Path,
    outputs: Outputs,
    *,
    resize_mask: bool = False,
    fps: float | None = None,
    on_start: Callable[[VideoInfo, int], None] | None = None,
    on_frame: Callable[[int], None] | None = None,
) -> Summary:
    """Run the whole job. ``on_start(info, objects)`` and ``on_frame(index)`` let a caller show progress.

    ``segmenter`` may be a function that builds one: it is then called only once the video and the mask
    have been checked, so bad input fails fast, before a model is loaded. Nothing is written before the
    first frame has decoded. A stream that breaks part way, or a Ctrl-C, ends the run early: the frames
    before it are written in full and the ``Summary`` says so (``stopped_at``, ``interrupted``); a run that
    ends before its first frame removes the folders it created.
    """
    info, decoded = open_video(video, fps)
    labels, fmt = load_reference(mask, info, resize_mask)
    if not isinstance(segmenter, Segmenter):
        segmenter = segmenter()
    side = max(info.width, info.height)
    if segmenter.config.max_side is None and side > MAX_FULL_SIDE:
        raise VideoError(
            f"{video} is {info.width}x{info.height}, too large to process at full size (over {MAX_FULL_SIDE} "
            f"pixels on the longer side); pass --max-side 1280 (masks are still written at full size)"
        )
    frames = prefetch(decoded)
    try:
        first = next(frames, None)
        if first is None:
            raise VideoError(f"{video} holds no frames; give a video with at least one frame")
        if first.shape[:2] != labels.shape:
            raise VideoError(
                f"the first frame of {video} is {first.shape[1]}x{first.shape[0]}, but the video reported "
                f"{info.width}x{info.height}; re-encode the video"
            )
        created = prepare_output(outputs)
        summary = Summary(objects=fmt.num_objects, notes=list(fmt.notes))
        try:
            _run(segmenter, first, frames, labels, fmt, outputs, info, summary, on_start, on_frame)
        finally:
            if summary.frames == 0:
                _remove_empty(created)
        expected = info.frames or 0
        if not (summary.interrupted or summary.stopped_at) and summary.frames < 0.9 * expected - 1:
            summary.notes.append(
                f"{video} gave {summary.frames} frames, its header announces about {expected}: it may be truncated"
            )
    finally:
        frames.close()
    return summary


def _run(
    segmenter: Segmenter,
    first: np.ndarray,
    frames: Iterator[np.ndarray],
    labels: np.ndarray,
    fmt: MaskFormat,
    outputs: Outputs,
    info: VideoInfo,
    summary: Summary,
    on_start: Callable[[VideoInfo, int], None] | None,
    on_frame: Callable[[int], None] | None,
) -> None:
    """The frame loop: segment, queue each mask for the PNG thread and each overlay frame for the encoder."""
    colours = np.asarray(davis_palette(fmt.num_objects + 1), dtype=np.uint8)
    if on_start:
        on_start(info, fmt.num_objects)
    tic = time.perf_counter()
    pending: deque[Future[None]] = deque()
    with (
        ThreadPoolExecutor(1, thread_name_prefix="vosrr-png") as pool,
        _maybe_writer(outputs, info) as writer,
        open_exports(outputs.exports, outputs.folder, info, fmt) as sinks,
    ):

        def emit(index: int, frame: np.ndarray, out: np.ndarray) -> None:
            if outputs.masks:
                pending.append(pool.submit(write_mask, outputs.mask_dir / f"{index:05d}.png", out, fmt))
                while len(pending) > 8 or (pending and pending[0].done()):
                    pending.popleft().result()
            if writer is not None:
                writer.write(lambda: overlay(frame, out, colours, style=outputs.overlay_style))
            for sink in sinks:
                sink.write(index, frame, out)
            summary.frames = index + 1
            if on_frame:
                on_frame(index)

        try:
            state = segmenter.start(first, labels)[0]
            emit(0, first, labels)
            for frame in frames:
                state, out = segmenter.step(state, frame)
                emit(summary.frames, frame, out)
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


class _NoWriter:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None


def _maybe_writer(outputs: Outputs, info: VideoInfo) -> OverlayWriter | _NoWriter:
    if not outputs.overlay:
        return _NoWriter()
    return OverlayWriter(outputs.overlay_path, info.width, info.height, info.fps)
