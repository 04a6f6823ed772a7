"""The job list of a batch: which videos, with which annotations, into which folders.

- ``jobs_from_paths``: videos, frame folders, or one folder of videos; each video's annotation is found by a
  convention (``<stem>_mask.png`` beside it, or ``DIR/<stem>.png`` / ``DIR/<stem>/`` under a masks folder).
- ``jobs_from_manifest``: a CSV with the header ``video,mask,output`` (relative paths are the CSV's folder's).

``vosrr.batch`` runs the jobs (this process's share under torchrun) and writes the summary.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vosrr.annotations import Mark, marks_in
from vosrr.masks import MaskError
from vosrr.video import FRAME_SUFFIXES, VIDEO_SUFFIXES, frame_files

__all__ = [
    "MANIFEST_COLUMNS",
    "MASK_SUFFIX",
    "BatchError",
    "Job",
    "ManifestError",
    "is_video_folder",
    "jobs_from_manifest",
    "jobs_from_paths",
]

#: a video's annotation by convention: ``clip.mp4`` -> ``clip_mask.png`` beside it (as ``samples/``)
MASK_SUFFIX = "_mask.png"
#: a manifest's columns; ``video`` is required, an empty ``mask`` or ``output`` means the convention's
MANIFEST_COLUMNS = ("video", "mask", "output")


class BatchError(ValueError):
    """The job list cannot be made as asked (two videos writing one folder, a bad ``RANK``/``WORLD_SIZE``)."""


class ManifestError(BatchError):
    """The manifest cannot be read or holds a bad row; the message names the file and line."""


@dataclass(frozen=True)
class Job:
    """One video to segment: its frames (a file or a frame folder), its annotation, its output folder.

    ``annotation`` is a mask file for frame 0, a folder of masks named by frame (``00000.png``, ``00120.png``:
    the ``--masks DIR`` layout), or the ``Mark`` list itself (corrections, scribbles). A path is only looked at
    when the job runs, so a missing mask fails that video alone.
    """

    video: Path
    annotation: Path | tuple[Mark, ...]
    output: Path

    def marks(self) -> list[Mark]:
        """The annotation files (raises ``MaskError`` for a missing mask or an empty masks folder)."""
        if isinstance(self.annotation, tuple):
            return list(self.annotation)
        path = self.annotation
        if path.is_dir():
            names = [p.stem for p in frame_files(self.video)] if self.video.is_dir() else None
            return marks_in(path, names)
        if not path.exists():
            raise MaskError(
                f"no annotation for {self.video}: {path} is missing; put its first frame's mask there, or give it "
                "in a --manifest row (video,mask,output)"
            )
        return [Mark(0, path)]


def _base(path: Path) -> Path:
    """The path whose name (its stem) names a video's mask and output: "." and ".." have no name of their own."""
    return path.resolve() if path.name in ("", "..") else path


def is_video_folder(path: Path) -> bool:
    """A folder of video files (and no frame images): each video is a job. A folder with frames is one video."""
    if not path.is_dir():
        return False
    files = [p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")]
    return not any(p.suffix.lower() in FRAME_SUFFIXES and not p.name.endswith(MASK_SUFFIX) for p in files) and any(
        p.suffix.lower() in VIDEO_SUFFIXES for p in files
    )


def _videos(paths: Sequence[Path]) -> list[Path]:
    """The videos that ``paths`` name: a folder of videos gives its videos, sorted by name; anything else itself."""
    found: list[Path] = []
    for path in paths:
        if is_video_folder(path):
            found += sorted(
                p
                for p in path.iterdir()
                if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file() and not p.name.startswith(".")
            )
        else:
            found.append(path)
    return found


def _check_outputs(jobs: list[Job]) -> list[Job]:
    """Refuse two jobs that would write into one folder (``BatchError`` naming both)."""
    seen: dict[str, Job] = {}
    for job in jobs:
        key = os.path.normcase(os.path.abspath(job.output))
        if key in seen:
            first = seen[key]
            raise BatchError(
                f"{first.video} and {job.video} would both write to {job.output}; give each video a name of its own, "
                "or list them in a --manifest with an output column"
            )
        seen[key] = job
    return jobs


def jobs_from_paths(paths: Sequence[Path], masks: Path | None = None, out: Path | None = None) -> list[Job]:
    """One job per video that ``paths`` name (video files, frame folders; a folder of videos gives each of them).

    Each video's annotation, by its stem (``clip`` for ``clip.mp4`` or a frame folder ``clip/``): without
    ``masks``, ``<stem>_mask.png`` beside it; with ``masks``, ``masks/<stem>.png`` (frame 0) or else the folder
    ``masks/<stem>/`` (masks named by frame, as ``--masks`` for one video: DAVIS's ``Annotations/480p``).
    Outputs: ``out/<stem>`` with ``out``, else ``<stem>_vosrr`` beside the video. Raises ``BatchError`` when two
    videos would write into one folder (``a/clip.mp4`` and ``b/clip.mp4`` under one ``out``).
    """
    jobs = []
    for video in _videos(paths):
        base = _base(video)
        if masks is None:
            annotation = base.with_name(f"{base.stem}{MASK_SUFFIX}")
        else:
            file, folder = masks / f"{base.stem}.png", masks / base.stem
            annotation = folder if folder.is_dir() and not file.exists() else file
        jobs.append(
            Job(video, annotation, out / base.stem if out is not None else base.with_name(f"{base.stem}_vosrr"))
        )
    return _check_outputs(jobs)


def jobs_from_manifest(manifest: Path) -> list[Job]:
    """The jobs of a CSV manifest: a header row with ``video`` and optionally ``mask`` and ``output``, one video a row.

    Relative paths are taken from the manifest's folder. ``mask`` is a mask file (frame 0) or a folder of masks
    named by frame; empty or absent, ``<stem>_mask.png`` beside the video. ``output`` empty or absent:
    ``<stem>_vosrr`` beside the video. Raises ``ManifestError`` naming the file and line for an unreadable file,
    an unknown column, a row without a video, or no rows; ``BatchError`` for two rows writing one folder.
    """
    where = manifest.parent

    def path(text: str) -> Path:
        return where / Path(text).expanduser()

    try:
        with open(manifest, newline="", encoding="utf-8-sig") as handle:  # -sig: a spreadsheet's byte-order mark
            rows = [(line, row) for line, row in enumerate(csv.reader(handle), 1) if any(c.strip() for c in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise ManifestError(f"cannot read manifest {manifest}: {reason}; give a CSV file with a video column") from None
    if not rows:
        raise ManifestError(f"manifest {manifest} is empty; its first row names the columns: video,mask,output")
    header = [cell.strip().lower() for cell in rows[0][1]]
    unknown = [name for name in header if name not in MANIFEST_COLUMNS]
    if unknown or "video" not in header or len(set(header)) != len(header):
        problem = f"unknown column {unknown[0]!r}" if unknown else "no video column" if "video" not in header else ""
        raise ManifestError(
            f"manifest {manifest}: {problem or 'a column named twice'} in its first row; the columns are "
            f"{','.join(MANIFEST_COLUMNS)} (video required)"
        )
    jobs = []
    for line, row in rows[1:]:
        if len(row) > len(header):
            raise ManifestError(f"manifest {manifest} line {line}: {len(row)} cells, the header has {len(header)}")
        cells = dict(zip(header, (cell.strip() for cell in row), strict=False))
        if not cells.get("video"):
            raise ManifestError(f"manifest {manifest} line {line}: no video; every row needs one")
        base = _base(path(cells["video"]))
        mask = path(cells["mask"]) if cells.get("mask") else base.with_name(f"{base.stem}{MASK_SUFFIX}")
        output = path(cells["output"]) if cells.get("output") else base.with_name(f"{base.stem}_vosrr")
        jobs.append(Job(path(cells["video"]), mask, output))
    if not jobs:
        raise ManifestError(f"manifest {manifest} lists no videos; add a row per video under the header")
    return _check_outputs(jobs)
