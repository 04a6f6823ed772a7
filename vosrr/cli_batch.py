"""``vosrr segment`` on many videos: which jobs the arguments name, and running them with one model (this
process's share under torchrun), a line per video and the summary table. ``vosrr.cli`` decides between this and
one video.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from vosrr.batch import BatchOptions, Gather, Result, Shard, format_table, run_jobs
from vosrr.checkpoint import load_model
from vosrr.cli_base import ExitCode, _fail, _guard, _say, check_runtime, console, pick_device
from vosrr.jobs import MASK_SUFFIX, BatchError, Job, ManifestError, is_video_folder, jobs_from_manifest, jobs_from_paths
from vosrr.segmenter import SegmentConfig, Segmenter
from vosrr.video import VideoInfo

__all__ = ["batch_jobs", "is_batch", "segment_many"]


def is_batch(videos: list[Path], manifest: Path | None) -> bool:
    """Several videos, a folder of videos, or a manifest; one video file or frame folder is today's single job."""
    if not videos and manifest is None:
        _fail(
            ExitCode.USAGE,
            "Missing argument 'video': pass VIDEO (a video file or a folder of frames), several, or --manifest "
            "FILE.csv; see 'vosrr segment --help'",
        )
    return manifest is not None or len(videos) > 1 or is_video_folder(videos[0])


def batch_jobs(
    videos: list[Path],
    manifest: Path | None,
    mask: list[str],
    masks_dir: Path | None,
    scribble: list[str],
    out: Path | None,
) -> list[Job]:
    """The jobs of a batch; options that name one video's files are refused (exit 2), as is a bad manifest (3)."""
    if manifest is not None:
        given = [
            name
            for name, value in (
                ("VIDEO", videos),
                ("--mask", mask),
                ("--masks", masks_dir),
                ("--scribble", scribble),
                ("--out", out),
            )
            if value
        ]
        if given:
            _fail(
                ExitCode.USAGE,
                f"--manifest lists the videos with their masks and outputs; drop {', '.join(given)} or drop --manifest",
            )
        try:
            return jobs_from_manifest(manifest)
        except ManifestError as error:
            _fail(ExitCode.INPUT, str(error))
        except BatchError as error:
            _fail(ExitCode.USAGE, str(error))
    if mask or scribble:
        what = f"{len(videos)} videos were given" if len(videos) > 1 else f"{videos[0]} is a folder of videos"
        _fail(
            ExitCode.USAGE,
            f"{'--mask' if mask else '--scribble'} is one video's annotation and {what}; give each video its mask as "
            f"<stem>{MASK_SUFFIX} beside it, as DIR/<stem>.png with --masks DIR, or in a --manifest",
        )
    try:
        return jobs_from_paths(videos, masks_dir, out)
    except BatchError as error:
        _fail(ExitCode.USAGE, str(error))


def segment_many(
    jobs: list[Job], options: BatchOptions, weights: Path | None, config: SegmentConfig, device: str, debug: bool
) -> None:
    """Every job with one model (this rank's share under torchrun), a line per video, the summary table on stdout.

    Exits 0 when every video is written, ``PARTIAL`` when some failed (each has its ``error:`` line), 130 after
    a Ctrl-C (143 after a SIGTERM). Under torchrun rank 0 prints the table of all ranks and exits with the whole
    batch's code, the other ranks with 0; ranks without a rendezvous (RANK and WORLD_SIZE set by hand) each
    print and exit for their own share.
    """
    try:
        shard = Shard.from_env()
        dev = shard.device(device) if device in ("auto", "cuda") else pick_device(device)
    except BatchError as error:
        _fail(ExitCode.USAGE, str(error))
    except ValueError as error:
        _fail(ExitCode.DEVICE, str(error))
    check_runtime(config.runtime, dev)
    who = f"[rank {shard.rank}] " if shard.world > 1 else ""
    mine = {id(job): k for k, (_, job) in enumerate(shard.take(jobs), start=1)}  # this rank's videos, counted

    def load() -> Segmenter:  # once, when the first video has passed its checks
        model, _ = load_model(weights, dev)
        return Segmenter(model, config, dev)

    def said(result: Result) -> None:
        video = str(result.video)
        for note in result.notes:
            _say(note if video in note else f"{video}: {note}", "[yellow]note:[/]")
        if result.status == "ok":
            rate = 1 / max(result.seconds_per_frame, 1e-9)
            _say(
                f"{who}{video}: {result.frames} frames, {result.objects} object(s), {dev.type}, "
                f"{result.seconds_per_frame:.3f} s/frame ({rate:.1f} fps) -> {result.output}"
            )
        elif result.status != "not run":
            _say(f"{who}{result.error if video in result.error else f'{video}: {result.error}'}", "[bold red]error:[/]")

    def job() -> list[Result]:
        with (
            Gather(shard) as group,
            Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[fps]:.1f} fps"),
                TimeElapsedColumn(),
                console=console,
                transient=True,
                disable=not console.is_terminal or shard.world > 1,
            ) as progress,
        ):
            task = progress.add_task("starting", total=None, fps=0.0)

            def started(job: Job, info: VideoInfo, objects: int) -> None:
                where = f"[{mine[id(job)]}/{len(mine)}] {job.video.name}"
                progress.reset(task, total=info.frames, description=where, fps=0.0)

            def advanced(index: int) -> None:
                elapsed = progress.tasks[task].elapsed or 1e-9
                progress.update(task, advance=1, fps=progress.tasks[task].completed / elapsed)

            results = run_jobs(
                load,
                jobs,
                options,
                shard=shard,
                on_start=started,
                on_frame=advanced,
                on_result=said,
                raise_errors=debug,
            )
            progress.stop()
            every = group.gather(results)
            if shard.rank == 0 or not shard.rendezvous:
                typer.echo(format_table(every))
        return every

    every = _guard(debug, job)
    if shard.rendezvous and shard.rank != 0:  # rank 0 exits with the whole batch's code (torchrun reports it)
        return
    if any(r.status in ("interrupted", "not run") for r in every):
        raise typer.Exit(int(ExitCode.INTERRUPTED))
    if any(r.status != "ok" for r in every):
        raise typer.Exit(int(ExitCode.PARTIAL))
