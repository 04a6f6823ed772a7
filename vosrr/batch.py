"""Many videos with one model: this process's share of the jobs (torchrun's rank), one summary table.

- The jobs come from ``vosrr.jobs`` (``jobs_from_paths``, ``jobs_from_manifest``).
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
from vosrr.batch import BatchOptions, format_table, run_jobs
from vosrr.jobs import jobs_from_paths

jobs = jobs_from_paths([Path("a.mp4"), Path("b.mp4")])  # masks a_mask.png, b_mask.png beside them
print(format_table(run_jobs(vosrr.load, jobs, BatchOptions(overlay=False))))
```
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Literal

import torch

from vosrr.checkpoint import WeightsError
from vosrr.jobs import BatchError, Job
from vosrr.mask_reader import MaskKind
from vosrr.masks import MaskError
from vosrr.pipeline import Outputs, segment_video
from vosrr.segmenter import AnnotationError, Segmenter
from vosrr.video import OutputError, VideoError, VideoInfo

__all__ = [
    "BatchOptions",
    "Gather",
    "Result",
    "Shard",
    "Status",
    "describe",
    "format_table",
    "run_jobs",
]

Status = Literal["ok", "failed", "stopped", "interrupted", "not run"]
"""ok: every frame written; failed: nothing usable (see ``error``); stopped: the stream broke part way, the frames
before are written; interrupted: Ctrl-C / SIGTERM, the frames done are written; not run: after an interruption."""


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
