"""Random access to one video's frames for the annotation page: decoded on demand, cached within a byte budget.

- A folder of frames is random access already: frame ``i`` is file ``i``.
- A video file is decoded by ffmpeg, the same way ``vosrr segment`` decodes it (so frame ``i`` here is frame ``i``
  there). A frame is reached by a seek to just before its time and a short decode; a background pass decodes the
  whole video once, in order, to count its frames exactly and to record a small hash of each, against which every
  seek is checked. Should a seek land elsewhere (a variable frame rate), the video is read in order from its start
  from then on: slower, never wrong.

Memory is bounded whatever the video's length: the cache holds at most ``cache_bytes`` of frames, a decoder holds
one frame, and the hashes are 8 bytes a frame.
"""

from __future__ import annotations

import hashlib
import subprocess
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import imageio_ffmpeg
import numpy as np

from vosrr.video import FRAME_SUFFIXES, VideoError, VideoInfo, ffmpeg_path, frame_files, open_video, read_image

__all__ = ["FrameSource"]

#: frames read forwards from a decoder's position before a seek is cheaper
_READ_AHEAD = 48


def _digest(frame: np.ndarray) -> bytes:
    """8 bytes identifying a frame (every 4th pixel in each direction is plenty to tell frames apart)."""
    return hashlib.blake2b(np.ascontiguousarray(frame[::4, ::4]).tobytes(), digest_size=8).digest()


class _Decoder:
    """One ffmpeg process reading a video file from frame ``start`` on (a seek, when ``start > 0``)."""

    def __init__(self, path: Path, width: int, height: int, fps: float, start: int) -> None:
        command = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error"]
        if start > 0:  # half a frame early: the first frame at or after it is frame `start` (accurate seek)
            command += ["-ss", f"{(start - 0.5) / fps:.6f}"]
        command += [
            "-i",
            ffmpeg_path(path),
            "-fps_mode",
            "passthrough",
            "-pix_fmt",
            "rgb24",
            "-vcodec",
            "rawvideo",
            "-f",
            "image2pipe",
            "-",
        ]
        self.size = (height, width)
        self.position = start
        self._process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True
        )

    def read(self) -> np.ndarray | None:
        """The next frame, or None at the end of the stream."""
        assert self._process.stdout is not None
        height, width = self.size
        raw = self._process.stdout.read(height * width * 3)
        if len(raw) < height * width * 3:
            return None
        self.position += 1
        return np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3).copy()

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()


class FrameSource:
    """``source[i] -> frame[H,W,3]`` uint8 RGB for one video; thread-safe; ``forward``/``backward`` stream ranges.

    ``len(source)`` is the frame count: exact for folders, the container's estimate for video files until the
    background pass has counted them (``exact``).
    """

    def __init__(self, path: Path, cache_bytes: int = 256 << 20, index: bool = True) -> None:
        self.path = Path(path)
        info, frames = open_video(self.path)
        close = getattr(frames, "close", None)
        if close is not None:
            close()
        self.info: VideoInfo = info
        self.frame_bytes = info.width * info.height * 3
        self.capacity = max(2, cache_bytes // self.frame_bytes)
        """frames the cache holds"""
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._files: list[Path] | None = frame_files(self.path) if self.path.is_dir() else None
        self._single = self._files is None and self.path.suffix.lower() in FRAME_SUFFIXES
        self._count = len(self._files) if self._files is not None else (1 if self._single else max(1, info.frames or 1))
        self.exact = self._files is not None or self._single
        self._digests: list[bytes] = []
        self._seek_ok = True
        self._decoder: _Decoder | None = None
        self._stop = threading.Event()
        self._indexer: threading.Thread | None = None
        self.index_error: str | None = None
        if index and not self.exact:
            self._indexer = threading.Thread(target=self._index, name="vosrr-index", daemon=True)
            self._indexer.start()

    # ----------------------------------------------------------------- size
    def __len__(self) -> int:
        return self._count

    @property
    def size(self) -> tuple[int, int]:
        return self.info.height, self.info.width

    def wait_indexed(self, timeout: float | None = None) -> bool:
        """Wait for the background pass (exact count, seek checks); True once it has finished."""
        if self._indexer is not None:
            self._indexer.join(timeout)
        return self.exact

    def _index(self) -> None:
        """Decode the whole video once, in order: the exact count and a digest per frame."""
        decoder = _Decoder(self.path, self.info.width, self.info.height, self.info.fps, 0)
        try:
            while not self._stop.is_set():
                frame = decoder.read()
                if frame is None:
                    break
                self._digests.append(_digest(frame))
            else:
                return
        except OSError as error:
            self.index_error = f"counting the frames of {self.path} failed: {error}"
            return
        finally:
            decoder.close()
        if not self._digests:
            self.index_error = f"{self.path} decoded no frame"
            return
        with self._lock:
            self._count = len(self._digests)
            self.exact = True
            for stale in [i for i in self._cache if i >= self._count]:
                del self._cache[stale]

    # ----------------------------------------------------------------- access
    def __getitem__(self, index: int) -> np.ndarray:
        """Frame ``index`` (cached); ``IndexError`` past the end."""
        if index < 0 or (self.exact and index >= self._count):
            raise IndexError(f"frame {index} is outside the video's {self._count} frames")
        with self._lock:
            frame = self._cache.get(index)
            if frame is not None:
                self._cache.move_to_end(index)
                return frame
            frame = self._load(index)
            self._remember(index, frame)
            return frame

    def _remember(self, index: int, frame: np.ndarray) -> None:
        self._cache[index] = frame
        self._cache.move_to_end(index)
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)

    def _load(self, index: int) -> np.ndarray:
        if self._files is not None:
            frame = read_image(self._files[index])
            if frame.shape[:2] != self.size:
                raise VideoError(
                    f"frame {self._files[index].name} is {frame.shape[1]}x{frame.shape[0]}, the first is "
                    f"{self.info.width}x{self.info.height}; all frames must have one size"
                )
            return frame
        if self._single:
            return read_image(self.path)
        decoder = self._decoder
        if decoder is None or not decoder.position <= index < decoder.position + _READ_AHEAD:
            if decoder is not None:
                decoder.close()
            decoder = self._decoder = self._open_at(index)
        while True:
            position = decoder.position
            frame = decoder.read()
            if frame is None:
                raise IndexError(f"frame {index} is past the end of {self.path} ({position} frames)")
            if position == index:
                return frame
            self._remember(position, frame)

    def _open_at(self, index: int) -> _Decoder:
        """A decoder whose next frame is ``index``: a seek, checked against the digests where they reach."""
        if not self._seek_ok or index == 0:
            return _Decoder(self.path, self.info.width, self.info.height, self.info.fps, 0)
        decoder = _Decoder(self.path, self.info.width, self.info.height, self.info.fps, index)
        if index < len(self._digests):
            first = decoder.read()
            if first is not None and _digest(first) == self._digests[index]:
                decoder.position = index
                return _Rewound(decoder, first)
            decoder.close()
            self._seek_ok = False  # this video's timestamps do not map to frame numbers: read in order from now on
            return _Decoder(self.path, self.info.width, self.info.height, self.info.fps, 0)
        return decoder

    def forward(self, start: int, stop: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """``(i, frame)`` for ``i = start, start + 1, …`` up to ``stop`` (exclusive) or the video's end."""
        if self._files is not None or self._single:
            for i in range(start, len(self) if stop is None else min(stop, len(self))):
                yield i, self[i]
            return
        with self._lock:
            decoder = self._open_at(start)
        try:
            while stop is None or decoder.position < stop:
                position = decoder.position
                frame = decoder.read()
                if frame is None:
                    return
                if position >= start:
                    yield position, frame
        finally:
            decoder.close()

    def backward(self, start: int, stop: int = 0) -> Iterator[tuple[int, np.ndarray]]:
        """``(i, frame)`` for ``i = start, start - 1, …, stop``: the video is read forwards in blocks that fit the
        cache's budget, each block then handed out in reverse."""
        block = max(1, min(64, self.capacity // 2))
        top = start
        while top >= stop:
            low = max(stop, top - block + 1)
            frames = list(self.forward(low, top + 1))
            if not frames:
                raise IndexError(f"frame {top} is past the end of {self.path}")
            yield from reversed(frames)
            top = low - 1

    def close(self) -> None:
        """Stop the background pass and any decoder (idempotent)."""
        self._stop.set()
        if self._indexer is not None:
            self._indexer.join()
        with self._lock:
            if self._decoder is not None:
                self._decoder.close()
                self._decoder = None


class _Rewound(_Decoder):
    """A decoder whose first frame has been read (to check a seek) and is handed out again first."""

    def __init__(self, inner: _Decoder, first: np.ndarray) -> None:  # wraps; does not start a process
        self.size = inner.size
        self.position = inner.position
        self._inner = inner
        self._first: np.ndarray | None = first

    def read(self) -> np.ndarray | None:
        if self._first is not None:
            frame, self._first = self._first, None
        else:
            frame = self._inner.read()
            if frame is None:
                return None
        self.position += 1
        return frame

    def close(self) -> None:
        self._inner.close()
