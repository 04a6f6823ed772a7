"""Frames out: the overlay video's H.264 encoder, in a background thread, with the source's own frame times.

``OverlayWriter`` takes frames (or callables that draw them, run in a small pool) in order and hands them to one
encoder: imageio-ffmpeg's constant-rate writer, or ``TimedEncoder``, an ffmpeg fed Matroska with each frame's
time, so that a variable-frame-rate phone video keeps its timing and its sound.
"""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import imageio_ffmpeg
import numpy as np

from vosrr.video import TICKS, FrameTimes, OutputError, check_complete, ffmpeg_path, last_line

__all__ = ["OUTPUT_WORKERS", "OverlayWriter", "TimedEncoder", "x264_options"]

#: threads that draw overlay frames (and, in the pipeline, write the mask PNGs): several frames at once where
#: there are cores to spare (a quarter of them, at most 4); one on a small machine, whose cores run the network
OUTPUT_WORKERS = max(1, min(4, (os.cpu_count() or 1) // 4))

_DONE = object()


def _ebml(element: bytes, payload: bytes) -> bytes:
    """One Matroska (EBML) element: its id, its size (a variable-length number), its payload."""
    size = len(payload)
    length = next(n for n in range(1, 9) if size < (1 << (7 * n)) - 1)
    return element + (size | (1 << (7 * length))).to_bytes(length, "big") + payload


def _ebml_uint(element: bytes, value: int) -> bytes:
    return _ebml(element, value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def _matroska_header(width: int, height: int, fourcc: bytes, fps: float) -> bytes:
    """A Matroska stream of one raw video track (``fourcc``: ``RGB\\x18`` or ``RGBA``), timestamps in ns.

    ``fps``, the track's nominal rate, gives each frame a duration (the encoder picks its level by it, and the
    mp4 muxer counts the last frame in by it); the frames' own timestamps still decide when each is shown.
    """
    head = _ebml_uint(b"\x42\x86", 1) + _ebml_uint(b"\x42\xf7", 1) + _ebml_uint(b"\x42\xf2", 4)
    head += _ebml_uint(b"\x42\xf3", 8) + _ebml(b"\x42\x82", b"matroska") + _ebml_uint(b"\x42\x87", 4)
    head += _ebml_uint(b"\x42\x85", 2)
    info = _ebml_uint(b"\x2a\xd7\xb1", 1) + _ebml(b"\x4d\x80", b"vosrr") + _ebml(b"\x57\x41", b"vosrr")
    video = _ebml_uint(b"\xb0", width) + _ebml_uint(b"\xba", height) + _ebml(b"\x2e\xb5\x24", fourcc)
    track = _ebml_uint(b"\xd7", 1) + _ebml_uint(b"\x73\xc5", 1) + _ebml_uint(b"\x83", 1)
    track += _ebml_uint(b"\x23\xe3\x83", round(1_000_000_000 / fps))  # DefaultDuration
    track += _ebml(b"\x86", b"V_UNCOMPRESSED") + _ebml(b"\xe0", video)
    segment = b"\x18\x53\x80\x67\x01\xff\xff\xff\xff\xff\xff\xff"  # of unknown size: a stream
    tracks = _ebml(b"\x16\x54\xae\x6b", _ebml(b"\xae", track))
    return _ebml(b"\x1a\x45\xdf\xa3", head) + segment + _ebml(b"\x15\x49\xa9\x66", info) + tracks


def _matroska_frame(tick: int, frame: np.ndarray) -> bytes:
    """One frame at ``tick`` (1/TICKS s) as a cluster of its own holding one key block."""
    nanoseconds = round(tick * 1_000_000_000 / TICKS)
    block = b"\x81\x00\x00\x80" + frame.tobytes()  # track 1, no offset from the cluster, a key frame
    return _ebml(b"\x1f\x43\xb6\x75", _ebml_uint(b"\xe7", nanoseconds) + _ebml(b"\xa3", block))


class _Encoder(Protocol):
    """What the overlay's encoder thread writes to: frame number ``index`` (in order), then ``close``."""

    def send(self, frame: np.ndarray, index: int) -> None: ...

    def close(self) -> None: ...


@dataclass
class _ConstantRate:
    """imageio-ffmpeg's writer (a generator): every frame the same duration."""

    writer: Any

    def send(self, frame: np.ndarray, index: int) -> None:
        self.writer.send(np.ascontiguousarray(frame))

    def close(self) -> None:
        self.writer.close()


@dataclass
class _Timed:
    """A ``TimedEncoder`` given each frame's time from the source's ``FrameTimes``."""

    encoder: TimedEncoder
    times: FrameTimes

    def send(self, frame: np.ndarray, index: int) -> None:
        self.encoder.send(frame, self.times.at(index))

    def close(self) -> None:
        self.encoder.close()


class TimedEncoder:
    """An ffmpeg encoder fed raw frames that each carry their own time, so the video keeps a variable frame
    rate (imageio-ffmpeg's writer gives every frame the same duration).

    ``send(frame, tick)``: times in 1/TICKS s, increasing (a time not past the last is moved one tick past it).
    ``close()`` waits for ffmpeg and raises ``OSError`` when it failed. ``codec``: ffmpeg's output options for
    the video stream; ``audio``: a file whose first audio stream goes in as AAC, cut to the frames sent.
    """

    def __init__(
        self,
        path: Path,
        size: tuple[int, int],
        fps: float,
        codec: list[str],
        alpha: bool = False,
        audio: Path | None = None,
    ) -> None:
        command = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-y", "-v", "quiet", "-f", "matroska", "-i", "pipe:0"]
        if audio is not None:
            command += ["-i", ffmpeg_path(audio), "-map", "0:v:0", "-map", "1:a:0", "-c:a", "aac", "-shortest"]
        command += ["-c:v", *codec, "-fps_mode", "passthrough", "-enc_time_base", f"1:{TICKS}"]
        command += ["-video_track_timescale", str(TICKS), ffmpeg_path(path)]
        # its own process group, as imageio-ffmpeg's writer: a Ctrl-C stops Python, which closes the file cleanly
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._channels = 4 if alpha else 3
        self._last: int | None = None
        self._write(_matroska_header(*size, b"RGBA" if alpha else b"RGB\x18", fps))

    def _write(self, data: bytes) -> None:
        assert self._process.stdin is not None
        try:
            self._process.stdin.write(data)
        except BrokenPipeError as error:
            raise OSError(f"the encoder stopped: {_ffmpeg_failure(self._process.wait())}") from error

    def send(self, frame: np.ndarray, tick: int) -> None:
        if frame.ndim != 3 or frame.shape[2] != self._channels or frame.dtype != np.uint8:
            raise ValueError(f"a frame must be [H,W,{self._channels}] uint8, not {frame.shape} {frame.dtype}")
        tick = max(tick, 0 if self._last is None else self._last + 1)
        self._last = tick
        self._write(_matroska_frame(tick, np.ascontiguousarray(frame)))

    def close(self) -> None:
        assert self._process.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self._process.stdin.close()
        status = self._process.wait()
        if status:
            raise OSError(_ffmpeg_failure(status))


def _ffmpeg_failure(status: int) -> str:
    """Why ffmpeg exited with ``status``: a negative errno (256 - errno: 228 is a full disk; 255 is a signal)."""
    code = 256 - status
    if 1 < code < 128 and os.strerror(code) != f"Unknown error {code}":
        return os.strerror(code).lower()
    return f"ffmpeg exited with status {status}"


def x264_options(quality: int) -> list[str]:
    """libx264 at imageio-ffmpeg's ``quality`` (0-10, its CRF mapping), yuv420p, the veryfast preset."""
    return ["libx264", "-pix_fmt", "yuv420p", "-crf", str(int((1 - quality / 10.0) * 51)), "-preset", "veryfast"]


class OverlayWriter:
    """Encode frames to an H.264 mp4 in a background thread; the file appears (by rename) only when complete.

    Use as a context manager; ``write(frame)`` queues a frame, or a callable returning one: callables run in a
    pool of ``workers`` threads (the blending runs off the main thread, several frames at once), and the encoder
    takes their frames in order. Odd frame sizes are padded by one pixel (H.264 needs even
    sizes). A run that stops early still leaves a playable video of the frames written so far; a failed
    encoder leaves nothing. With ``times`` (a video file's own frame times) frame ``i`` keeps the time of the
    source's frame ``i`` (a variable-frame-rate phone video stays in step with its sound); without, the frames
    are ``fps`` apart.
    """

    def __init__(
        self,
        path: Path,
        width: int,
        height: int,
        fps: float,
        depth: int = 8,
        quality: int = 6,
        audio: Path | None = None,
        times: FrameTimes | None = None,
        workers: int = OUTPUT_WORKERS,
    ) -> None:
        self.path = Path(path)
        self.times = times
        self.audio = audio
        """a file whose first audio stream goes into the video (AAC, cut to the frames written)"""
        self.quality = quality
        # a name of this writer's own: two runs into one folder never write (or rename) each other's file
        self.tmp = self.path.with_name(f".{self.path.stem}.{uuid.uuid4().hex[:8]}.partial{self.path.suffix}")
        self.size = (width + width % 2, height + height % 2)
        self.fps = fps
        self.frames = 0
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="vosrr-encode", daemon=True)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="vosrr-blend")

    def __enter__(self) -> OverlayWriter:
        self._thread.start()
        return self

    def _work(self) -> None:
        encoder: _Encoder | None = None
        item: Any = None
        try:
            item = self._queue.get()
            if item is _DONE:
                return  # no frame: no file
            encoder = self._open()
            while item is not _DONE:
                encoder.send(self._padded(item.result() if isinstance(item, Future) else item), self.frames)
                self.frames += 1
                item = self._queue.get()
            encoder.close()
        except BaseException as error:
            self._error = error
            while item is not _DONE:  # drain so the producer never blocks
                item = self._queue.get()
            if encoder is not None:
                with contextlib.suppress(Exception):  # the encoder is broken already; its file is dropped
                    encoder.close()

    def _open(self) -> _Encoder:
        """The source's own frame times when known (``TimedEncoder``), else imageio-ffmpeg's constant rate."""
        if self.times is not None:
            encoder = TimedEncoder(self.tmp, self.size, self.fps, x264_options(self.quality), audio=self.audio)
            return _Timed(encoder, self.times)
        writer = imageio_ffmpeg.write_frames(
            ffmpeg_path(self.tmp),
            self.size,
            fps=self.fps,
            codec="libx264",
            pix_fmt_in="rgb24",
            pix_fmt_out="yuv420p",
            macro_block_size=2,
            quality=self.quality,
            ffmpeg_log_level="quiet",  # its failures are found by check_complete, and said in one line
            output_params=["-preset", "veryfast", *(["-shortest"] if self.audio else [])],
            audio_path=None if self.audio is None else ffmpeg_path(self.audio),
            audio_codec=None if self.audio is None else "aac",
        )
        writer.send(None)
        return _ConstantRate(writer)

    def _padded(self, frame: np.ndarray) -> np.ndarray:
        width, height = self.size
        if frame.shape[:2] != (height, width):
            pad = ((0, height - frame.shape[0]), (0, width - frame.shape[1]), (0, 0))
            frame = np.pad(frame, pad, mode="edge")
        return frame

    def _failure(self) -> OutputError:
        return OutputError(
            f"writing {self.path} failed ({last_line(str(self._error))}); "
            "check free disk space, or pass --no-overlay to skip the overlay"
        )

    def write(self, frame: np.ndarray | Callable[[], np.ndarray]) -> None:
        if self._error is not None:
            raise self._failure() from self._error
        self._queue.put(self._pool.submit(frame) if callable(frame) else frame)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            self._queue.put(_DONE)
            self._thread.join()
            self._pool.shutdown(cancel_futures=True)
        finally:
            done = not self._thread.is_alive() and self._error is None and self.frames > 0
            if done and self.tmp.exists():
                try:
                    check_complete(self.tmp)
                except OSError as error:
                    self._error = error
                    done = False
            if done and self.tmp.exists():
                os.replace(self.tmp, self.path)  # an interrupted run still leaves a playable (shorter) video
            else:
                self.tmp.unlink(missing_ok=True)
        if self._error is not None and exc is None:
            raise self._failure() from self._error
