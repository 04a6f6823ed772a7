"""Frames in: video files and DAVIS-style frame folders, streamed, never held whole (``vosrr.encode``: out).

Decoding runs in background threads (ffmpeg, or a pool for a folder's images) with small bounded queues, so
it overlaps with the network instead of adding to it, and memory stays flat however long the video is.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import re
import shutil
import subprocess
import tempfile
import threading
from collections import deque
from collections.abc import Collection, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import imageio_ffmpeg
import numpy as np

__all__ = [
    "FRAME_SUFFIXES",
    "TICKS",
    "VIDEO_SUFFIXES",
    "FrameTimes",
    "OutputError",
    "VideoError",
    "VideoInfo",
    "check_complete",
    "ffmpeg_path",
    "frame_files",
    "last_line",
    "open_video",
    "prefetch",
    "read_image",
]

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
DEFAULT_FPS = 24.0
_WHAT_TO_GIVE = f"give a video file ({', '.join(VIDEO_SUFFIXES)}) or a folder of frames"


TICKS = 90_000
"""Frame timestamps are counted in 1/90000 s: exact for the usual stream time bases (1/600, 1/1000, 1/30000,
1/90000), within a microsecond of any other."""


class FrameTimes:
    """The presentation times of a video file's frames, in ``TICKS``, recorded as the frames are decoded.

    ``at(i)`` is frame ``i``'s time; a frame whose time was not recorded (yet) continues at the last step.
    """

    def __init__(self, fps: float) -> None:
        self._ticks: list[int] = []
        self._step = max(1, round(TICKS / fps))

    def add(self, tick: int | None) -> None:
        """Record the next frame's time (``None``: unknown, one step after the last)."""
        self._ticks.append(self.at(len(self._ticks)) if tick is None else tick)

    def __len__(self) -> int:
        return len(self._ticks)

    def at(self, index: int) -> int:
        if index < len(self._ticks):
            return self._ticks[index]
        if not self._ticks:
            return index * self._step
        step = max(1, self._ticks[-1] - self._ticks[-2]) if len(self._ticks) > 1 else self._step
        return self._ticks[-1] + (index - len(self._ticks) + 1) * step


class VideoError(ValueError):
    """The video cannot be read; the message says why and what to do."""


class OutputError(OSError):
    """An output cannot be written; the message says why and what to do."""


@dataclass(frozen=True)
class VideoInfo:
    """What is known before decoding: frame size, frame rate and (an estimate of) the frame count."""

    path: Path
    width: int
    height: int
    fps: float
    frames: int | None
    audio: bool = False
    """whether the file has an audio stream (the overlay keeps it)"""
    skipped: tuple[str, ...] = ()
    """files of a frame folder that are not taken as frames (not images, or annotations given with the video)"""
    times: FrameTimes | None = field(default=None, compare=False)
    """a video file's own frame times (filled in as it decodes), which the overlay keeps; ``None``: the frames
    are ``fps`` apart (a frame folder, an image, ``--fps``, or an ffmpeg older than 6.1)"""


def frame_files(folder: Path, exclude: Collection[Path] = ()) -> list[Path]:
    """The frame images of a folder, sorted by name (hidden files, and the files of ``exclude``, skipped)."""
    left_out = {Path(p).resolve() for p in exclude}
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in FRAME_SUFFIXES and not p.name.startswith(".") and p.resolve() not in left_out
    )


def read_image(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise VideoError(f"cannot decode frame {path}: not a readable image; replace or remove it")
    return _to_rgb(image, bgr=True)


#: frame files decoded at once, ahead of the one given out (OpenCV's decoders let go of the GIL)
READ_WORKERS = max(1, min(4, os.cpu_count() or 1))


def _read_ahead(files: list[Path], workers: int = READ_WORKERS) -> Iterator[np.ndarray]:
    """The frames of ``files`` in order, decoded by ``workers`` threads, at most ``2 * workers`` ahead (one JPEG
    thread tops out near 250 frames a second at 854x480: a GPU can take more). Stopping early cancels the rest."""
    pool = ThreadPoolExecutor(workers, thread_name_prefix="vosrr-read")
    pending: deque[Future[np.ndarray]] = deque()
    names = iter(files)
    try:
        for file in itertools.islice(names, 2 * workers):
            pending.append(pool.submit(read_image, file))
        while pending:
            frame = pending.popleft().result()
            if (file := next(names, None)) is not None:
                pending.append(pool.submit(read_image, file))
            yield frame
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _to_rgb(image: np.ndarray, bgr: bool) -> np.ndarray:
    """Any 8/16-bit grey, grey+alpha, colour or colour+alpha image -> ``[H,W,3]`` uint8 RGB (alpha dropped)."""
    if image.dtype != np.uint8:
        top = np.iinfo(image.dtype).max if image.dtype.kind in "ui" else max(1.0, float(image.max()))
        image = np.clip(image.astype(np.float32) * (255 / top), 0, 255).astype(np.uint8)
    if image.ndim == 3 and image.shape[2] in (1, 2):
        image = image[:, :, 0]
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    image = image[:, :, :3]
    if bgr:
        image = image[:, :, ::-1]
    return np.ascontiguousarray(image)


def last_line(text: str) -> str:
    """The last non-empty line of an error text (ffmpeg's, say), for one-line messages."""
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"


def open_video(
    path: Path, fps: float | None = None, exclude: Collection[Path] = ()
) -> tuple[VideoInfo, Iterator[np.ndarray]]:
    """Open a video file, a folder of frames or one image -> ``(info, frames)``; frames are ``[H,W,3]`` uint8 RGB.

    ``exclude``: files a frame folder may hold that are not frames (the annotations given with it). The iterator
    decodes lazily. A stream that breaks part way (or decodes no frame at all) raises
    ``VideoError`` naming how many frames came out first.
    """
    path = Path(path)
    if not path.exists():
        raise VideoError(f"video not found: {path}; check the path")
    if path.is_dir():
        files = frame_files(path, exclude)
        if not files:
            raise VideoError(f"folder {path} holds no frames ({', '.join(FRAME_SUFFIXES)}); {_WHAT_TO_GIVE}")
        first = read_image(files[0])
        taken = set(files)
        skipped = tuple(
            p.name for p in sorted(path.iterdir()) if p.is_file() and not p.name.startswith(".") and p not in taken
        )
        info = VideoInfo(path, first.shape[1], first.shape[0], fps or DEFAULT_FPS, len(files), skipped=skipped)

        def frames_from_folder() -> Iterator[np.ndarray]:
            yield first
            for file, frame in zip(files[1:], _read_ahead(files[1:]), strict=True):
                if frame.shape[:2] != first.shape[:2]:
                    raise VideoError(
                        f"frame {file.name} is {frame.shape[1]}x{frame.shape[0]}, "
                        f"the first is {first.shape[1]}x{first.shape[0]}; all frames must have one size"
                    )
                yield frame

        return info, frames_from_folder()
    if path.suffix.lower() in FRAME_SUFFIXES:
        frame = read_image(path)
        return VideoInfo(path, frame.shape[1], frame.shape[0], fps or DEFAULT_FPS, 1), iter([frame])
    try:
        with _quiet_reader():
            reader = imageio_ffmpeg.read_frames(ffmpeg_path(path), pix_fmt="rgb24")
            meta: dict[str, Any] = reader.__next__()
            reader.close()
        width, height = (int(v) for v in meta["size"])
    except (OSError, RuntimeError, StopIteration, KeyError, ValueError, TypeError) as error:
        text = str(error)
        if any(s in text for s in ("received no packets", "does not contain any stream", "matches no streams")):
            raise VideoError(f"{path} holds no video frames (0 frames); {_WHAT_TO_GIVE}") from error
        reason = (
            "moov atom not found: not a complete mp4/mov file" if "moov atom not found" in text else last_line(text)
        )
        raise VideoError(f"cannot read {path} as a video ({reason}); {_WHAT_TO_GIVE}") from error
    source_rate = float(meta.get("fps") or DEFAULT_FPS)
    rate = fps or source_rate  # the overlay's; the frame count comes from the source's own rate
    duration = meta.get("duration")
    estimate = round(float(duration) * source_rate) if duration else None
    times = FrameTimes(source_rate) if fps is None and _reports_frame_times() else None
    info = VideoInfo(path, width, height, rate, estimate, has_audio(path), times=times)
    return info, _decode(path, width, height, times)


def _reports_frame_times() -> bool:
    """Whether the bundled ffmpeg can report each frame's time as it decodes (``-stats_enc_pre``: 6.1 and later)."""
    version = re.match(r"n?(\d+)\.(\d+)", imageio_ffmpeg.get_ffmpeg_version())
    return version is None or (int(version[1]), int(version[2])) >= (6, 1)  # no number: a recent build


def ffmpeg_path(path: Path) -> str:
    """``path`` as ffmpeg must be given it: an absolute path behind ``file:``, so that a name with a colon
    (``take:1.mp4``) is never read as a protocol."""
    return f"file:{Path(path).absolute()}"


def check_complete(path: Path) -> None:
    """Raise ``OSError`` when the video file an encoder just closed cannot be opened (its index was never written:
    the disk filled up, say); ffmpeg itself exits without a word to the caller."""
    try:
        with _quiet_reader():
            reader = imageio_ffmpeg.read_frames(ffmpeg_path(path))
            reader.__next__()
            reader.close()
    except (OSError, RuntimeError, StopIteration, ValueError) as error:
        free = shutil.disk_usage(Path(path).parent).free
        why = "no space left on the device" if free < 1 << 20 else last_line(str(error)) or "unreadable"
        raise OSError(f"the encoder's file is incomplete ({why})") from error


@contextlib.contextmanager
def _quiet_reader() -> Iterator[None]:
    """Keep imageio-ffmpeg's own log lines (a rotated video's "The frame size for reading ... is different",
    which is expected: frames come in the displayed orientation) off the user's terminal, for this call only."""
    log = logging.getLogger("imageio_ffmpeg")
    quiet = logging.Filter("vosrr.quiet")  # passes only records of a logger of that name: none of imageio's
    log.addFilter(quiet)
    try:
        yield
    finally:
        log.removeFilter(quiet)


def has_audio(path: Path) -> bool:
    """Whether the video file ``path`` has an audio stream (ffmpeg's own listing of its streams)."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-hide_banner", "-i", ffmpeg_path(path)]
    try:
        listing = subprocess.run(command, capture_output=True, timeout=60, check=False).stderr
    except (OSError, subprocess.TimeoutExpired):
        return False
    return re.search(rb"Stream #\d+:\d+.*: Audio:", listing) is not None


def _decode(path: Path, width: int, height: int, times: FrameTimes | None = None) -> Iterator[np.ndarray]:
    """Frames of a video file from one ffmpeg process; any decoding error ffmpeg reports ends it with ``VideoError``.

    ``times``: each frame's time is recorded there before the frame is yielded (ffmpeg writes it, one line a
    frame, to a file of its own before the frame reaches the pipe).
    """
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-i", ffmpeg_path(path)]
    # every coded frame once, with its own timing (a variable-frame-rate phone video is not padded with copies)
    command += ["-fps_mode", "passthrough", "-pix_fmt", "rgb24", "-vcodec", "rawvideo"]
    size, count, raw = width * height * 3, 0, b""
    with tempfile.TemporaryFile() as log, tempfile.TemporaryDirectory(prefix="vosrr-times-") as folder:
        stamps = Path(folder) / "times.txt"
        if times is not None:
            command += ["-enc_time_base", f"1:{TICKS}", "-stats_enc_pre", ffmpeg_path(stamps)]
            command += ["-stats_enc_pre_fmt", "{pts}"]
        command += ["-f", "image2pipe", "-"]
        # its own session: a Ctrl-C reaches Python (which stops cleanly), not the decoder mid-stream
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, start_new_session=True)
        assert process.stdout is not None
        lines = _Lines(stamps)
        try:
            while len(raw := process.stdout.read(size)) == size:
                if times is not None:
                    for line in lines.new():
                        times.add(int(line) if line.lstrip("-").isdigit() else None)
                yield np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3).copy()
                count += 1
            process.wait()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            process.stdout.close()
            lines.close()
        log.seek(0)
        problems = [re.sub(r"^(\[[^\]]*\]\s*)+", "", line) for line in log.read().decode(errors="replace").splitlines()]
    problem = next((p for p in problems if p.strip()), None)
    if problem is None and process.returncode:
        problem = f"ffmpeg exited with status {process.returncode}"
    if problem is None and raw:
        problem = "the last frame is incomplete"
    if problem is not None:
        if count == 0:
            raise VideoError(f"cannot decode any frame of {path} ({problem}); the file is corrupt or not a video")
        raise VideoError(f"{path}: decoding stopped after {count} frames ({problem}); the file is truncated or corrupt")
    if count == 0:
        raise VideoError(f"{path} holds no video frames; {_WHAT_TO_GIVE}")


class _Lines:
    """The complete lines a process has added to a file since the last call (nothing while the file is absent)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: Any = None
        self._rest = ""

    def new(self) -> list[str]:
        if self._file is None:
            try:
                self._file = self.path.open(encoding="ascii", errors="replace")
            except FileNotFoundError:
                return []
        *lines, self._rest = (self._rest + self._file.read()).split("\n")
        return lines

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


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
        finally:
            close = getattr(frames, "close", None)
            if close is not None:
                close()  # ends a decoder process left half-read

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
