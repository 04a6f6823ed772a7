"""Exports beyond the masks: per-object PNGs, cut-outs, a video with an alpha channel, COCO run-length encoding.

Each kind is a ``FrameSink`` that receives every frame with its labels, in index order, and writes into the
output folder as it goes, in a background thread of its own (at most a few frames queued), so memory stays flat
in the video's length. Every file appears atomically (a temporary name, then a rename):

    objects  objects/<id>/NNNNN.png   one binary PNG (0 / 255) per object and frame, named by the user's ids
    cutout   cutout/NNNNN.png         RGBA: the frame's colours where any object is, transparent elsewhere
    alpha    alpha.mov                the cut-out as a ProRes 4444 video with its alpha channel (lossless alpha)
    coco     coco.json                per frame and object: COCO RLE (pycocotools), box and area

ProRes 4444 is what video editors (Premiere, Final Cut, DaVinci Resolve, After Effects) import with
transparency; WebM VP9 alpha is mostly read by browsers, and ffmpeg's own VP9 decoder drops its alpha.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, Protocol

import imageio_ffmpeg
import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

from vosrr.encode import TimedEncoder
from vosrr.masks import MaskFormat, atomic_save
from vosrr.video import OutputError, VideoInfo, check_complete, ffmpeg_path

__all__ = [
    "ALPHA_VIDEO",
    "COCO_JSON",
    "EXPORT_KINDS",
    "Exports",
    "FrameSink",
    "close_exports",
    "cutout",
    "export_paths",
    "open_exports",
    "parse_exports",
]

#: what ``--export`` offers, in the order they are described
EXPORT_KINDS = ("objects", "cutout", "alpha", "coco")
ALPHA_VIDEO = "alpha.mov"
COCO_JSON = "coco.json"


class FrameSink(Protocol):
    """Receives every frame of a run: ``write`` in index order 0, 1, ..., n-1, then ``close`` once.

    ``frame[H,W,3]`` uint8 RGB and ``labels[H,W]`` uint8 (0 = background, 1..K) may be kept until ``close``;
    the caller must not change them. ``close(complete=False)`` (an interrupted or failed run) keeps what is
    finished (the files of the frames written; a shorter, playable video) and never raises; ``close(True)``
    raises ``OutputError`` if anything failed to write.
    """

    def write(self, index: int, frame: np.ndarray, labels: np.ndarray) -> None: ...

    def close(self, complete: bool) -> None: ...


def parse_exports(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"objects, coco"`` (or a sequence of kinds) -> ``("objects", "coco")``; raises ``ValueError`` on an
    unknown kind."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    kinds = tuple(dict.fromkeys(part.strip().lower() for part in parts if part.strip()))
    unknown = [kind for kind in kinds if kind not in EXPORT_KINDS]
    if unknown:
        raise ValueError(f"unknown export {unknown[0]!r}; choose from {', '.join(EXPORT_KINDS)} (comma-separated)")
    return kinds


def export_paths(folder: Path, kinds: Sequence[str]) -> list[str]:
    """Where each kind writes, for messages: ``["out/objects/", "out/alpha.mov"]``."""
    where = {"objects": "objects", "cutout": "cutout", "alpha": ALPHA_VIDEO, "coco": COCO_JSON}
    return [f"{folder / where[kind]}{'/' if kind in ('objects', 'cutout') else ''}" for kind in parse_exports(kinds)]


class Exports(list[FrameSink]):
    """The sinks of one run, and a context manager that closes them all: ``complete`` when the body set
    ``exports.complete = True`` and raised nothing."""

    complete = False

    def __enter__(self) -> Exports:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        close_exports(self, self.complete and exc is None)


def open_exports(kinds: Sequence[str], folder: Path, info: VideoInfo, fmt: MaskFormat) -> Exports:
    """One sink per kind, writing into ``folder`` (which exists); ``OutputError`` if a path is in the way."""
    makers: dict[str, Callable[[], FrameSink]] = {
        "objects": lambda: _ObjectsSink(folder / "objects", fmt),
        "cutout": lambda: _CutoutSink(folder / "cutout"),
        "alpha": lambda: _AlphaSink(folder / ALPHA_VIDEO, info),
        "coco": lambda: _CocoSink(folder / COCO_JSON, info, fmt),
    }
    sinks = Exports()
    try:
        for kind in parse_exports(kinds):
            sinks.append(makers[kind]())
    except BaseException:
        close_exports(sinks, complete=False)
        raise
    return sinks


def close_exports(sinks: Sequence[FrameSink], complete: bool) -> None:
    """Close every sink; with ``complete`` the first failure is raised once all are closed."""
    failure: BaseException | None = None
    for sink in sinks:
        try:
            sink.close(complete)
        except Exception as error:
            failure = failure or error
    if failure is not None:
        raise failure


def _refuse_file(path: Path, what: str) -> None:
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path} exists and is not a folder; move it away, choose another --out, or drop {what}")


def _refuse_folder(path: Path, what: str) -> None:
    if path.is_dir():
        raise OutputError(f"{path} is a folder; move it away, choose another --out, or drop {what}")


class _Background:
    """Runs one sink's work in order in a background thread, at most ``depth`` items ahead of the caller."""

    def __init__(self, name: str, what: str, depth: int = 8) -> None:
        self.what = what  # the option that asked for it, for messages
        self.frames = 0  # frames whose work has been queued
        self._depth = depth
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"vosrr-{name}")
        self._pending: deque[Future[None]] = deque()
        self._error: BaseException | None = None
        self._closed = False

    def submit(self, work: Callable[..., None], *args: Any) -> None:
        self._check()
        self._pending.append(self._pool.submit(work, *args))
        self.frames += 1
        while len(self._pending) > self._depth or (self._pending and self._pending[0].done()):
            self._collect(self._pending.popleft())
        self._check()

    def _collect(self, future: Future[None]) -> None:
        try:
            future.result()
        except Exception as error:
            self._error = self._error or error

    def _check(self) -> None:
        if self._error is not None:
            raise self._failure() from self._error

    def _failure(self) -> OutputError:
        error = self._error
        reason = f"{error.strerror}: {error.filename}" if isinstance(error, OSError) and error.strerror else error
        return OutputError(f"{self.what} failed ({reason}); check free disk space, or drop that --export kind")

    def finish(self, complete: bool, wrap_up: Callable[[bool], None]) -> None:
        """Wait for the queued work, then ``wrap_up(ok)`` (ok: all of it succeeded), once however often this
        is called; raise the first failure only when ``complete``."""
        if not self._closed:
            self._closed = True
            while self._pending:
                self._collect(self._pending.popleft())
            self._pool.shutdown(wait=True)
            try:
                wrap_up(self._error is None)
            except Exception as error:
                self._error = self._error or error
        if complete:
            self._check()


class _FolderSink:
    """Per-frame PNGs in folders this sink creates (and removes again, if still empty, when no frame came)."""

    def __init__(self, folders: list[Path], name: str, what: str) -> None:
        wanted = list(dict.fromkeys(p for folder in folders for p in (folder.parent, folder)))
        for folder in wanted:
            _refuse_file(folder, what)
        self._created = [folder for folder in wanted if not folder.exists()]
        for folder in self._created:
            folder.mkdir(exist_ok=True)
        self._work = _Background(name, what)

    def close(self, complete: bool) -> None:
        def wrap_up(ok: bool) -> None:
            if self._work.frames == 0:
                for folder in reversed(self._created):
                    with contextlib.suppress(OSError):
                        folder.rmdir()

        self._work.finish(complete, wrap_up)


class _ObjectsSink(_FolderSink):
    """``objects/<id>/NNNNN.png``: each object's binary mask (0 / 255 grey PNG), every object in every frame."""

    def __init__(self, folder: Path, fmt: MaskFormat) -> None:
        self.folders = [folder / str(fmt.ids[k]) for k in range(1, fmt.num_objects + 1)]
        super().__init__(self.folders, "objects", "writing per-object masks (--export objects)")

    def write(self, index: int, frame: np.ndarray, labels: np.ndarray) -> None:
        self._work.submit(self._save, index, labels)

    def _save(self, index: int, labels: np.ndarray) -> None:
        for k, folder in enumerate(self.folders, start=1):
            binary = np.where(labels == k, np.uint8(255), np.uint8(0))
            atomic_save(folder / f"{index:05d}.png", Image.fromarray(binary, mode="L"))


def cutout(frame: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``cutout(frame[H,W,3] uint8, labels[H,W]) -> rgba[H,W,4]``: alpha 255 on the objects, 0 (black) elsewhere."""
    inside = labels > 0
    rgba = np.zeros((*labels.shape, 4), dtype=np.uint8)
    rgba[inside, :3] = frame[inside]
    rgba[inside, 3] = 255
    return rgba


class _CutoutSink(_FolderSink):
    """``cutout/NNNNN.png``: RGBA PNGs of all the objects over a transparent background."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        super().__init__([folder], "cutout", "writing cut-outs (--export cutout)")

    def write(self, index: int, frame: np.ndarray, labels: np.ndarray) -> None:
        self._work.submit(self._save, index, frame, labels)

    def _save(self, index: int, frame: np.ndarray, labels: np.ndarray) -> None:
        atomic_save(self.folder / f"{index:05d}.png", Image.fromarray(cutout(frame, labels), mode="RGBA"))


_PRORES = ["prores_ks", "-pix_fmt", "yuva444p10le", "-profile:v", "4444", "-alpha_bits", "16", "-vendor", "apl0"]


class _AlphaSink:
    """``alpha.mov``: the cut-out as Apple ProRes 4444 (``prores_ks``, yuva444p10le, 16-bit alpha) in QuickTime.

    Encoded by the ffmpeg that imageio-ffmpeg bundles, under a temporary name; renamed when closed. An
    interrupted run leaves a shorter, playable video; a failed encoder leaves none.
    """

    def __init__(self, path: Path, info: VideoInfo) -> None:
        _refuse_folder(path, "--export alpha")
        self.path = path
        self.tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.partial{path.suffix}")
        self.info = info
        self._encoder: Any = None
        self._work = _Background("alpha", f"writing {path} (--export alpha)")

    def write(self, index: int, frame: np.ndarray, labels: np.ndarray) -> None:
        self._work.submit(self._encode, index, frame, labels)

    def _encode(self, index: int, frame: np.ndarray, labels: np.ndarray) -> None:
        times = self.info.times
        if times is not None:  # a video file: its frames' own times (variable frame rates kept)
            if self._encoder is None:
                size = (self.info.width, self.info.height)
                self._encoder = TimedEncoder(self.tmp, size, self.info.fps, _PRORES, alpha=True)
            self._encoder.send(cutout(frame, labels), times.at(index))
            return
        if self._encoder is None:
            self._encoder = imageio_ffmpeg.write_frames(
                ffmpeg_path(self.tmp),
                (self.info.width, self.info.height),
                fps=self.info.fps,
                codec="prores_ks",
                pix_fmt_in="rgba",
                pix_fmt_out="yuva444p10le",
                macro_block_size=1,
                quality=None,
                ffmpeg_log_level="quiet",  # failures: check_complete, one line
                output_params=_PRORES[3:],
            )
            self._encoder.send(None)
        self._encoder.send(cutout(frame, labels))

    def close(self, complete: bool) -> None:
        def wrap_up(ok: bool) -> None:
            try:
                if self._encoder is not None:
                    self._encoder.close()
                if ok and self._work.frames > 0:
                    check_complete(self.tmp)  # ProRes in a .mov: its index is written last
                    os.replace(self.tmp, self.path)
            finally:
                self.tmp.unlink(missing_ok=True)

        self._work.finish(complete, wrap_up)


class _CocoSink:
    """``coco.json``: a COCO-style file for the video, streamed (one annotation a line) and renamed when closed.

    ``images`` has one entry per frame (``id`` = frame index + 1, ``frame_index``, ``file_name`` NNNNN.png as in
    masks/); ``categories`` one per object (``id`` = the user's object id); ``annotations`` one per frame and
    object present in it, with ``segmentation`` the compressed RLE of pycocotools, ``bbox`` ``[x, y, w, h]`` and
    ``area`` in pixels (``iscrowd`` 0; an object absent from a frame has no annotation there). ``info`` says
    whether the run completed and how many frames it covers. ``pycocotools.coco.COCO`` loads it as it is.
    """

    def __init__(self, path: Path, info: VideoInfo, fmt: MaskFormat) -> None:
        _refuse_folder(path, "--export coco")
        self.path = path
        self.tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        self.info = info
        self.ids = fmt.ids
        self._file: IO[str] | None = None
        self._annotations = 0
        self._work = _Background("coco", f"writing {path} (--export coco)")

    def write(self, index: int, frame: np.ndarray, labels: np.ndarray) -> None:
        self._work.submit(self._encode, index, labels)

    def _start(self) -> IO[str]:
        handle = open(self.tmp, "w", encoding="utf-8")  # noqa: SIM115 (closed in close())
        categories = [{"id": i, "name": f"object {i}", "supercategory": "object"} for i in self.ids[1:]]
        handle.write('{"categories": ' + json.dumps(categories) + ',\n"annotations": [')
        return handle

    def _encode(self, index: int, labels: np.ndarray) -> None:
        if self._file is None:
            self._file = self._start()
        present = np.unique(labels)
        for k in present[present > 0]:
            rle = coco_mask.encode(np.asfortranarray(labels == k, dtype=np.uint8))
            self._annotations += 1
            annotation = {
                "id": self._annotations,
                "image_id": index + 1,
                "category_id": self.ids[int(k)],
                "object_id": self.ids[int(k)],
                "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
                "area": int(coco_mask.area(rle)),
                "bbox": [float(v) for v in coco_mask.toBbox(rle)],
                "iscrowd": 0,
            }
            self._file.write(("\n" if self._annotations == 1 else ",\n") + json.dumps(annotation))

    def close(self, complete: bool) -> None:
        def wrap_up(ok: bool) -> None:
            try:
                if self._file is not None:
                    self._finish(self._file, complete)
                    self._file.close()
                    if ok:
                        os.replace(self.tmp, self.path)
            finally:
                if self._file is not None and not self._file.closed:
                    self._file.close()
                self.tmp.unlink(missing_ok=True)

        self._work.finish(complete, wrap_up)

    def _finish(self, handle: IO[str], complete: bool) -> None:
        """The rest of the file: one image a frame (written one at a time) and what the run covered."""
        frames, width, height = self._work.frames, self.info.width, self.info.height
        handle.write('\n],\n"images": [')
        for i in range(frames):
            image = {"id": i + 1, "frame_index": i, "file_name": f"{i:05d}.png", "width": width, "height": height}
            handle.write(("\n" if i == 0 else ",\n") + json.dumps(image))
        about = {
            "description": f"vosrr segmentation of {self.info.path.name}",
            "video": self.info.path.name,
            "width": width,
            "height": height,
            "fps": self.info.fps,
            "frames": frames,
            "complete": complete,
        }
        handle.write('\n],\n"info": ' + json.dumps(about) + "}\n")
