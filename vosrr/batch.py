"""Many videos with one model: the jobs, their share for this process (torchrun's rank), one summary table.

- ``jobs_from_paths``: videos, frame folders, or one folder of videos; each video's annotation is found by a
  convention (``<stem>_mask.png`` beside it, or ``DIR/<stem>.png`` / ``DIR/<stem>/`` under a masks folder).
- ``jobs_from_manifest``: a CSV with the header ``video,mask,output`` (relative paths are the CSV's folder's).
- ``Shard.from_env()`` reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` as torchrun sets them: job ``i`` of the
  list is done by rank ``i % WORLD_SIZE``, on ``cuda:LOCAL_RANK`` when CUDA is present. No scheduler: the same
  list gives every rank the same share, on one machine or many.
- ``run_jobs`` builds the segmenter once (when the first video has passed its checks) and runs this rank's jobs
  in order; a job that fails becomes a ``Result`` with its one-line error, and the next one starts.
- ``Gather`` brings every rank's results together (a gloo process group, only under torchrun);
  ``format_table`` writes the summary.

```python
from pathlib import Path

import vosrr
from vosrr.batch import BatchOptions, format_table, jobs_from_paths, run_jobs

jobs = jobs_from_paths([Path("a.mp4"), Path("b.mp4")])  # masks a_mask.png, b_mask.png beside them
print(format_table(run_jobs(vosrr.load, jobs, BatchOptions(overlay=False))))
```
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Literal

import torch

from vosrr.annotations import Mark, marks_in
from vosrr.checkpoint import WeightsError
from vosrr.mask_reader import MaskKind
from vosrr.masks import MaskError
from vosrr.pipeline import Outputs, segment_video
from vosrr.segmenter import AnnotationError, Segmenter
from vosrr.video import FRAME_SUFFIXES, VIDEO_SUFFIXES, OutputError, VideoError, VideoInfo, frame_files

__all__ = [
    "MANIFEST_COLUMNS",
    "MASK_SUFFIX",
    "BatchError",
    "BatchOptions",
    "Gather",
    "Job",
    "ManifestError",
    "Result",
    "Shard",
    "Status",
    "describe",
    "format_table",
    "is_video_folder",
    "jobs_from_manifest",
    "jobs_from_paths",
    "run_jobs",
]

#: a video's annotation by convention: ``clip.mp4`` -> ``clip_mask.png`` beside it (as ``samples/``)
MASK_SUFFIX = "_mask.png"
#: a manifest's columns; ``video`` is required, an empty ``mask`` or ``output`` means the convention's
MANIFEST_COLUMNS = ("video", "mask", "output")

Status = Literal["ok", "failed", "stopped", "interrupted", "not run"]
"""ok: every frame written; failed: nothing usable (see ``error``); stopped: the stream broke part way, the frames
before are written; interrupted: Ctrl-C / SIGTERM, the frames done are written; not run: after an interruption."""


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


@dataclass(frozen=True)
class BatchOptions:
    """What every job of a batch shares (``vosrr segment``'s output options)."""

    masks: bool = True
    overlay: bool = True
    force: bool = False
    exports: tuple[str, ...] = ()  # kinds of vosrr.exports.EXPORT_KINDS
    overlay_style: str = "fill"  # one of vosrr.masks.OVERLAY_STYLES
    resize_mask: bool = False
    mask_kind: MaskKind = "auto"
    fps: float | None = None

    def outputs(self, folder: Path) -> Outputs:
        return Outputs(
            folder,
            masks=self.masks,
            overlay=self.overlay,
            force=self.force,
            exports=self.exports,
            overlay_style=self.overlay_style,
        )


@dataclass(frozen=True)
class Result:
    """One job's outcome, as the summary shows it (plain values: it crosses processes under torchrun)."""

    index: int  # the job's position in the whole list
    video: Path
    output: Path
    status: Status
    frames: int = 0
    objects: int = 0
    seconds: float = 0.0  # the frame loop's time (as segment's s/frame), not the model's loading
    error: str = ""  # one line, for failed, stopped and interrupted
    notes: tuple[str, ...] = ()
    rank: int = 0

    @property
    def seconds_per_frame(self) -> float:
        return self.seconds / max(1, self.frames)


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


@dataclass(frozen=True)
class Shard:
    """This process's share of a job list: job ``i`` is done by rank ``i % world``.

    ``rendezvous``: torchrun's ``MASTER_ADDR``/``MASTER_PORT`` are set, so the ranks can meet (``Gather``).
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    rendezvous: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Shard:
        """From ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (as torchrun sets them; absent: one process).

        Raises ``BatchError`` for a value that is not a whole number, or a rank outside ``0..WORLD_SIZE-1``.
        """
        env = os.environ if environ is None else environ

        def number(name: str, default: int) -> int:
            text = env.get(name, "").strip()
            if not text:
                return default
            try:
                return int(text)
            except ValueError:
                raise BatchError(f"{name}={text!r} is not a whole number; torchrun sets it, or unset it") from None

        world, rank = number("WORLD_SIZE", 1), number("RANK", 0)
        local = number("LOCAL_RANK", 0)
        if world < 1 or not 0 <= rank < world or local < 0:
            raise BatchError(f"RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local}: need 0 <= RANK < WORLD_SIZE")
        return cls(rank, world, local, rendezvous=world > 1 and bool(env.get("MASTER_ADDR") and env.get("MASTER_PORT")))

    def take(self, jobs: Sequence[Job]) -> list[tuple[int, Job]]:
        """This rank's jobs with their positions in the whole list."""
        return [(i, job) for i, job in enumerate(jobs) if i % self.world == self.rank]

    def device(self, requested: str = "auto") -> torch.device:
        """``auto`` and ``cuda``: ``cuda:LOCAL_RANK`` when CUDA is present (``auto`` without it: the CPU); any other
        name as given. Raises ``ValueError`` when this machine has no GPU for ``LOCAL_RANK``."""
        if requested not in ("auto", "cuda"):
            return torch.device(requested)
        if not torch.cuda.is_available():
            if requested == "cuda":
                raise ValueError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
            return torch.device("cpu")
        count = torch.cuda.device_count()
        if self.local_rank >= count:
            raise ValueError(
                f"LOCAL_RANK {self.local_rank} has no GPU of its own: this machine has {count}; start at most "
                f"{count} process(es) per machine (torchrun --nproc_per_node {count})"
            )
        return torch.device("cuda", self.local_rank)


class Gather:
    """Under torchrun (``shard.rendezvous``): a gloo process group for the summary. ``gather(results)`` gives every
    rank all the results, in job order; leaving the block waits for every rank (so rank 0 has printed before
    any rank exits) and closes the group. Without a rendezvous both are plain: this process's results only.

    ``timeout`` bounds the wait for the slowest rank (its share of the videos).
    """

    def __init__(self, shard: Shard, timeout: timedelta = timedelta(hours=24)) -> None:
        self.shard = shard
        self.timeout = timeout
        self._created = False

    def __enter__(self) -> Gather:
        if self.shard.rendezvous:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("gloo", rank=self.shard.rank, world_size=self.shard.world, timeout=self.timeout)
                self._created = True
        return self

    def gather(self, results: list[Result]) -> list[Result]:
        if not self.shard.rendezvous:
            return sorted(results, key=lambda r: r.index)
        import torch.distributed as dist

        every: list[list[Result] | None] = [None] * self.shard.world
        dist.all_gather_object(every, results)
        return sorted((r for part in every for r in part or ()), key=lambda r: r.index)

    def __exit__(self, kind: object, error: object, tb: object) -> None:
        if not self._created:
            return
        import torch.distributed as dist

        try:
            if kind is None:
                dist.barrier()
        finally:
            dist.destroy_process_group()
            self._created = False


class _Once:
    """The segmenter factory, called at most once; remembers a failure to build it (fatal for the batch)."""

    def __init__(self, make: Callable[[], Segmenter]) -> None:
        self.make = make
        self.value: Segmenter | None = None
        self.failure: BaseException | None = None

    def __call__(self) -> Segmenter:
        if self.value is None:
            try:
                self.value = self.make()
            except BaseException as error:
                self.failure = error
                raise
        return self.value


def describe(error: BaseException) -> str:
    """One line for a job's failure: vosrr's own message, or what the error is and what to try."""
    if isinstance(error, VideoError | MaskError | AnnotationError | OutputError | WeightsError):
        text = str(error)
    elif isinstance(error, torch.cuda.OutOfMemoryError):
        text = f"out of GPU memory ({str(error).splitlines()[0]}); try --max-side 640 or --device cpu"
    elif isinstance(error, MemoryError):
        text = "out of memory; try --max-side 640 (or a smaller one)"
    elif isinstance(error, OSError) and error.strerror:
        where = f": {error.filename}" if error.filename else ""
        text = f"{error.strerror}{where}; check that path (permissions, free disk space) or choose another output"
    else:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        text = f"unexpected {type(error).__name__}: {first} (run this video alone with --debug for the details)"
    return " ".join(text.split())


def run_jobs(
    segmenter: Segmenter | Callable[[], Segmenter],
    jobs: Sequence[Job],
    options: BatchOptions | None = None,
    *,
    shard: Shard | None = None,
    on_start: Callable[[Job, VideoInfo, int], None] | None = None,
    on_frame: Callable[[int], None] | None = None,
    on_result: Callable[[Result], None] | None = None,
    raise_errors: bool = False,
) -> list[Result]:
    """Segment this rank's share of ``jobs`` (all of them by default) with one segmenter; one ``Result`` each.

    ``segmenter`` may be a factory (``vosrr.load``, say): it is called once, when the first video has passed
    its checks, and not at all when every video fails them. A video that fails (bad input, an output folder in
    use, a disk error, a bug) gets a ``failed`` result with its one-line error (``describe``) and the next one
    starts; ``raise_errors=True`` raises instead. A failure to build the segmenter (``WeightsError``) is raised:
    every video would fail alike. A Ctrl-C (or SIGTERM, under ``vosrr``) ends the batch: the video under way
    keeps its finished frames (``interrupted``), the ones after it are ``not run``.

    ``on_start(job, info, objects)`` and ``on_frame(index)`` follow each video as ``segment_video``'s callbacks
    do; ``on_result(result)`` is called as each job ends.
    """
    options = options or BatchOptions()
    shard = shard or Shard()
    model: Segmenter | _Once = segmenter if isinstance(segmenter, Segmenter) else _Once(segmenter)
    mine = shard.take(jobs)
    results: list[Result] = []
    for position, (index, job) in enumerate(mine):
        row = Result(index, job.video, job.output, "failed", rank=shard.rank)

        def started(info: VideoInfo, objects: int, job: Job = job) -> None:
            if on_start:
                on_start(job, info, objects)

        try:
            summary = segment_video(
                model,
                job.video,
                job.marks() if job.video.exists() else [],  # a missing video is told as such, not as its mask
                options.outputs(job.output),
                resize_mask=options.resize_mask,
                mask_kind=options.mask_kind,
                fps=options.fps,
                on_start=started,
                on_frame=on_frame,
            )
        except KeyboardInterrupt:
            row = replace(row, status="interrupted", error="interrupted before its first frame; nothing written")
        except Exception as error:
            if (isinstance(model, _Once) and model.failure is error) or raise_errors:
                raise
            row = replace(row, error=describe(error))
        else:
            row = replace(row, frames=summary.frames, objects=summary.objects, seconds=summary.seconds)
            row = replace(row, notes=tuple(summary.notes), status="ok")
            if summary.interrupted:
                done = f"interrupted after {summary.frames} frames; those are written"
                row = replace(
                    row, status="interrupted", error=done if summary.frames else "interrupted; nothing written"
                )
            elif summary.stopped_at:
                done = f"{summary.stopped_at}; the {summary.frames} frames before are written"
                row = replace(row, status="stopped", error=" ".join(done.split()))
        results.append(row)
        if on_result:
            on_result(row)
        if row.status == "interrupted":
            for later, job_later in mine[position + 1 :]:
                rest = Result(later, job_later.video, job_later.output, "not run", rank=shard.rank)
                results.append(rest)
            break
    return results


def format_table(results: Sequence[Result]) -> str:
    """The summary: a row per video (frames, objects, s/frame, status, output folder) and a total row.

    The total's s/frame is the frame loops' time over all frames (model loading and start-up not counted).
    """
    header = ("video", "frames", "objects", "s/frame", "status", "output")
    rows = [
        (
            str(r.video),
            str(r.frames),
            str(r.objects) if r.frames else "-",
            f"{r.seconds_per_frame:.3f}" if r.frames else "-",
            r.status,
            str(r.output),
        )
        for r in results
    ]
    frames = sum(r.frames for r in results)
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    seconds = sum(r.seconds for r in results)
    rows.append(
        (
            f"total ({len(results)} video{'s' if len(results) != 1 else ''})",
            str(frames),
            str(sum(r.objects for r in results)) if frames else "-",
            f"{seconds / frames:.3f}" if frames else "-",
            ", ".join(f"{n} {status}" for status, n in counts.items()),
            "",
        )
    )
    widths = [max(len(row[c]) for row in [header, *rows]) for c in range(len(header))]
    right = {1, 2, 3}

    def line(row: tuple[str, ...]) -> str:
        cells = [
            cell.rjust(w) if c in right else cell.ljust(w) for c, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    return "\n".join([line(header), *(line(row) for row in rows)])
