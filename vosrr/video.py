"""Frames in and frames out: video files and DAVIS-style frame folders, streamed, never held whole.

Reading and writing run in background threads with small bounded queues, so decoding and encoding
overlap with the network instead of adding to it, and memory stays flat however long the video is.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import imageio_ffmpeg
import numpy as np

__all__ = [
    "FRAME_SUFFIXES",
    "VIDEO_SUFFIXES",
    "OverlayWriter",
    "VideoError",
    "VideoInfo",
    "open_video",
    "prefetch",
]

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
DEFAULT_FPS = 24.0


class VideoError(ValueError):
    """The video cannot be read or written; the message says why."""


@dataclass(frozen=True)
class VideoInfo:
    """What is known before decoding: frame size, frame rate and (an estimate of) the frame count."""

    path: Path
    width: int
    height: int
    fps: float
    frames: int | None


def _frame_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES and not p.name.startswith("."))


def _read_image(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise VideoError(f"cannot decode frame {path}")
    return _to_rgb(image, bgr=True)


def _to_rgb(image: np.ndarray, bgr: bool) -> np.ndarray:
    if image.dtype != np.uint8:
        image = (image / max(1, np.iinfo(image.dtype).max) * 255).astype(np.uint8) if image.dtype.kind == "u" else image
        image = image.astype(np.uint8)
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.shape[2] == 4:
        image = image[:, :, :3]
    if bgr:
        image = image[:, :, ::-1]
    return np.ascontiguousarray(image)


def open_video(path: Path, fps: float | None = None) -> tuple[VideoInfo, Iterator[np.ndarray]]:
    """Open a video file or a folder of frames -> ``(info, frames)``; frames are ``[H,W,3]`` uint8 RGB.

    The iterator decodes lazily. A stream that breaks part way raises ``VideoError`` naming the frame.
    """
    path = Path(path)
    if not path.exists():
        raise VideoError(f"video not found: {path}")
    if path.is_dir():
        files = _frame_files(path)
        if not files:
            raise VideoError(f"folder {path} holds no frames ({', '.join(FRAME_SUFFIXES)})")
        first = _read_image(files[0])
        info = VideoInfo(path, first.shape[1], first.shape[0], fps or DEFAULT_FPS, len(files))

        def frames_from_folder() -> Iterator[np.ndarray]:
            yield first
            for file in files[1:]:
                frame = _read_image(file)
                if frame.shape[:2] != first.shape[:2]:
                    raise VideoError(
                        f"frame {file.name} is {frame.shape[1]}x{frame.shape[0]}, "
                        f"the first is {first.shape[1]}x{first.shape[0]}"
                    )
                yield frame

        return info, frames_from_folder()
    if path.suffix.lower() in FRAME_SUFFIXES:
        frame = _read_image(path)
        return VideoInfo(path, frame.shape[1], frame.shape[0], fps or DEFAULT_FPS, 1), iter([frame])
    try:
        reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        meta: dict[str, Any] = reader.__next__()
    except (OSError, RuntimeError, StopIteration) as error:
        raise VideoError(f"cannot read {path} as a video: {str(error).strip().splitlines()[-1]}") from error
    width, height = (int(v) for v in meta["size"])
    rate = fps or float(meta.get("fps") or DEFAULT_FPS)
    duration = meta.get("duration")
    estimate = round(float(duration) * rate) if duration else None
    info = VideoInfo(path, width, height, rate, estimate)

    def frames_from_file() -> Iterator[np.ndarray]:
        count = 0
        try:
            for raw in reader:
                yield np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3).copy()
                count += 1
        except (OSError, RuntimeError) as error:
            raise VideoError(
                f"{path}: the stream breaks after frame {count}: {str(error).strip().splitlines()[-1]}"
            ) from error
        finally:
            reader.close()

    return info, frames_from_file()


_DONE = object()


def prefetch(frames: Iterator[np.ndarray], depth: int = 4) -> Iterator[np.ndarray]:
    """Decode ``frames`` in a background thread, ``depth`` frames ahead; errors re-raise in the consumer."""
    slots: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for frame in frames:
                if stop.is_set():
                    return
                slots.put(frame)
            slots.put(_DONE)
        except BaseException as error:  # handed to the consumer
            slots.put(error)

    thread = threading.Thread(target=work, name="vosrr-decode", daemon=True)
    thread.start()
    try:
        while True:
            item = slots.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                slots.get_nowait()
            except queue.Empty:
                thread.join(0.05)


class OverlayWriter:
    """Encode frames to an H.264 mp4 in a background thread; the file appears (by rename) only when complete.

    Use as a context manager; ``write(frame)`` queues a frame, or a callable returning one (so the
    blending also runs off the main thread).
    """

    def __init__(self, path: Path, width: int, height: int, fps: float, depth: int = 8) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        self.size = (width, height)
        self.fps = fps
        self.frames = 0
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="vosrr-encode", daemon=True)

    def __enter__(self) -> OverlayWriter:
        self._thread.start()
        return self

    def _work(self) -> None:
        writer = None
        try:
            writer = imageio_ffmpeg.write_frames(
                str(self.tmp),
                self.size,
                fps=self.fps,
                codec="libx264",
                pix_fmt_in="rgb24",
                pix_fmt_out="yuv420p",
                macro_block_size=2,
                quality=6,
                ffmpeg_log_level="error",
                output_params=["-preset", "veryfast"],
            )
            writer.send(None)
            while (item := self._queue.get()) is not _DONE:
                frame = item() if callable(item) else item
                writer.send(np.ascontiguousarray(frame))
                self.frames += 1
        except BaseException as error:
            self._error = error
            while self._queue.get() is not _DONE:  # drain so the producer never blocks
                pass
        finally:
            if writer is not None:
                writer.close()

    def write(self, frame: np.ndarray | Callable[[], np.ndarray]) -> None:
        if self._error is not None:
            raise VideoError(f"writing {self.path} failed: {self._error}") from self._error
        self._queue.put(frame)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._queue.put(_DONE)
        self._thread.join()
        if self._error is not None and exc is None:
            raise VideoError(f"writing {self.path} failed: {self._error}") from self._error
        if self.frames and self.tmp.exists():
            os.replace(self.tmp, self.path)  # an interrupted run still leaves a playable (shorter) video
        elif self.tmp.exists():
            self.tmp.unlink()
