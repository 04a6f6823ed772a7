"""One whole job: a video and its first-frame mask in, per-frame masks and an overlay video out.

Reading (decode thread), the network (this thread) and writing (PNG thread, encoder thread) overlap;
nothing holds more than a few frames, so memory is flat in the video's length.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from vosrr.masks import MaskError, MaskFormat, davis_palette, overlay, read_mask, write_mask
from vosrr.segmenter import Segmenter
from vosrr.video import OverlayWriter, VideoError, VideoInfo, open_video, prefetch

__all__ = ["OutputError", "Outputs", "Summary", "prepare_output", "segment_video"]


class OutputError(OSError):
    """The output folder cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class Outputs:
    """Where results go and which ones to write."""

    folder: Path
    masks: bool = True
    overlay: bool = True
    force: bool = False
    mask_subdir: str = "masks"

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


def prepare_output(outputs: Outputs) -> None:
    """Create the output folder; refuse one that already holds vosrr results unless ``force``. Deletes nothing."""
    folder = outputs.folder
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"output path {folder} exists and is not a folder; choose another with --out")
    clash = [p for p in (outputs.mask_dir, outputs.overlay_path) if p.exists()]
    if folder.exists() and any(folder.iterdir()) and not outputs.force:
        raise OutputError(
            f"output folder {folder} is not empty; use --force to overwrite vosrr's files in it "
            "(other files are never touched) or choose another with --out"
        )
    if clash and outputs.force and outputs.mask_dir.exists() and not outputs.mask_dir.is_dir():
        raise OutputError(f"{outputs.mask_dir} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if outputs.masks:
            outputs.mask_dir.mkdir(exist_ok=True)
        probe = folder / ".vosrr-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise OutputError(f"cannot write to {folder}: {error.strerror or error}") from error


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
            raise MaskError(f"mask {mask_path} has no object left after resizing to the video's size")
    return labels, fmt


def segment_video(
    segmenter: Segmenter,
    video: Path,
    mask: Path,
    outputs: Outputs,
    *,
    resize_mask: bool = False,
    fps: float | None = None,
    on_start: Callable[[VideoInfo, int], None] | None = None,
    on_frame: Callable[[int], None] | None = None,
) -> Summary:
    """Run the whole job. ``on_start(info, objects)`` and ``on_frame(index)`` let a caller show progress."""
    info, frames = open_video(video, fps)
    labels, fmt = load_reference(mask, info, resize_mask)
    prepare_output(outputs)
    summary = Summary(objects=fmt.num_objects, notes=list(fmt.notes))
    colours = np.asarray(davis_palette(fmt.num_objects + 1), dtype=np.uint8)
    if on_start:
        on_start(info, fmt.num_objects)
    frames = prefetch(frames)
    tic = time.perf_counter()
    pending: deque[Future[None]] = deque()
    with ThreadPoolExecutor(1, thread_name_prefix="vosrr-png") as pool, _maybe_writer(outputs, info) as writer:

        def emit(index: int, frame: np.ndarray, out: np.ndarray) -> None:
            if outputs.masks:
                pending.append(pool.submit(write_mask, outputs.mask_dir / f"{index:05d}.png", out, fmt))
                while len(pending) > 8 or (pending and pending[0].done()):
                    pending.popleft().result()
            if writer is not None:
                writer.write(lambda: overlay(frame, out, colours))
            summary.frames = index + 1
            if on_frame:
                on_frame(index)

        try:
            first = next(frames)
            if first.shape[:2] != labels.shape:
                raise VideoError(
                    f"the first frame is {first.shape[1]}x{first.shape[0]}, "
                    f"the video reported {info.width}x{info.height}"
                )
            state = segmenter.start(first, labels, fmt.num_objects)
            emit(0, first, labels)
            for frame in frames:
                state, out = segmenter.step(state, frame)
                emit(summary.frames, frame, out)
        except KeyboardInterrupt:
            summary.interrupted = True
        except VideoError as error:
            if summary.frames == 0:
                raise
            summary.stopped_at = str(error)
        finally:
            while pending:
                pending.popleft().result()
    summary.seconds = time.perf_counter() - tic
    return summary


class _NoWriter:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None


def _maybe_writer(outputs: Outputs, info: VideoInfo) -> OverlayWriter | _NoWriter:
    if not outputs.overlay:
        return _NoWriter()
    return OverlayWriter(outputs.overlay_path, info.width, info.height, info.fps)
