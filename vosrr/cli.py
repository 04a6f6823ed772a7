"""``vosrr``: the command line, a thin shell around the library.

Every known failure prints one line naming the problem and what to do, and exits with a documented code
(see ``ExitCode``); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from vosrr.annotations import Mark, marks_in, parse_mark
from vosrr.batch import BatchOptions
from vosrr.checkpoint import (
    DEFAULT_WEIGHTS,
    load_model,
)
from vosrr.cli_base import (
    _DEFAULT,
    Accurate,
    BetweenOption,
    Blocks,
    Chunk,
    Debug,
    Device,
    ExitCode,
    Flip,
    Lam,
    Margin,
    MaxSide,
    MinPart,
    Mirror,
    Online,
    Proximity,
    Refine,
    RuntimeOption,
    Scale,
    Weights,
    Window,
    _fail,
    _guard,
    _model_choice,
    _say,
    _segment_config,
    app,
    check_runtime,
    console,
    pick_device,
)
from vosrr.cli_batch import batch_jobs, is_batch, segment_many
from vosrr.cli_research import bench, evaluate_cmd, export, train
from vosrr.exports import ALPHA_VIDEO, COCO_JSON, EXPORT_KINDS, export_paths, parse_exports
from vosrr.jobs import jobs_from_paths
from vosrr.mask_reader import MASK_KINDS
from vosrr.masks import OVERLAY_STYLES, MaskError
from vosrr.pipeline import Outputs, segment_video
from vosrr.segmenter import Segmenter
from vosrr.video import VideoInfo, frame_files


def _marks(video: Path, masks: list[str], folder: Path | None, scribbles: list[str], kind: str) -> list[Mark]:
    """The annotation files that ``--mask``, ``--masks`` and ``--scribble`` name (a bad option value exits 2)."""
    if kind not in MASK_KINDS:
        _fail(ExitCode.USAGE, f"--mask-kind {kind!r} is not one of {', '.join(MASK_KINDS)}")
    if not (masks or folder or scribbles):
        _fail(
            ExitCode.USAGE,
            "no annotation given; pass --mask FILE (the first frame's mask), --masks DIR or --scribble FILE",
        )
    try:
        marks = [parse_mark(text) for text in masks] + [parse_mark(text, scribble=True) for text in scribbles]
    except ValueError as error:
        _fail(ExitCode.USAGE, str(error))
    if folder is not None:
        names = [p.stem for p in frame_files(video)] if video.is_dir() else None

        def found() -> list[Mark]:
            try:
                return marks_in(folder, names)
            except MaskError:  # no NNNNN.png: the several-videos layout (DIR/<stem>.png, DIR/<stem>/) if it is there
                own = jobs_from_paths([video], folder)[0]
                if isinstance(own.annotation, Path) and own.annotation.exists():
                    return own.marks()
                raise

        marks += _guard(False, found)
    return marks


@app.command()
def segment(
    videos: Annotated[
        list[Path] | None,
        typer.Argument(
            metavar="VIDEO",
            help="Video file (mp4, mov, mkv, avi) or a folder of frames. Several, or a folder of videos: each with "
            "its <stem>_mask.png beside it (or in --masks DIR), one model, one summary table.",
            show_default=False,
        ),
    ] = None,
    mask: Annotated[
        list[str] | None,
        typer.Option(
            "--mask",
            "-m",
            help="A mask PNG (0/255, ids 1..K, palette or colours; 255 beside small ids is void): FILE for frame 0, "
            "or N:FILE for frame N. Repeat it for corrections and objects that enter later.",
        ),
    ] = None,
    masks_dir: Annotated[
        Path | None,
        typer.Option(
            "--masks",
            help="A folder of masks named by frame (00000.png, 00120.png: the DAVIS layout). With several videos: "
            "DIR/<stem>.png (frame 0) or DIR/<stem>/ (named by frame) for each.",
        ),
    ] = None,
    manifest: Annotated[
        Path | None,
        typer.Option(
            "--manifest",
            help="A CSV with the header video,mask,output (one video a row; relative paths from the CSV's folder; "
            "empty mask: <stem>_mask.png beside the video, empty output: <stem>_vosrr). Instead of VIDEO.",
        ),
    ] = None,
    scribble: Annotated[
        list[str] | None,
        typer.Option(
            "--scribble",
            help="Strokes instead of a full mask, FILE or N:FILE (repeatable): an RGBA PNG drawn over the frame "
            "(transparent = unknown, black = background, other colours = objects), or 0 / 1..K / 255 = unknown.",
        ),
    ] = None,
    mask_kind: Annotated[
        str,
        typer.Option(
            "--mask-kind",
            help="How mask values are read: auto (decide, with a note), ids (every value an object), "
            "binary (every non-zero pixel one object), soft (one object at half the maximum).",
        ),
    ] = "auto",
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Output folder (default: <video>_vosrr; several videos: DIR/<stem> each)."),
    ] = None,
    weights: Weights = None,
    device: Device = "auto",
    blocks: Blocks = 1,
    lam: Lam = None,
    online: Online = _DEFAULT.online,
    window: Window = _DEFAULT.window,
    refine: Refine = _DEFAULT.refine,
    margin: Margin = _DEFAULT.margin,
    proximity: Proximity = _DEFAULT.proximity,
    min_part: MinPart = _DEFAULT.min_part,
    between: BetweenOption = _DEFAULT.between,
    mirror_reference: Mirror = _DEFAULT.mirror_reference,
    max_side: MaxSide = None,
    scale: Scale = _DEFAULT.scale,
    flip: Flip = None,
    accurate: Accurate = False,
    runtime: RuntimeOption = _DEFAULT.runtime,
    chunk: Chunk = None,
    fps: Annotated[
        float | None, typer.Option("--fps", help="Frame rate of the overlay (default: the input's; 24 for folders).")
    ] = None,
    masks: Annotated[bool, typer.Option("--masks-out/--no-masks", help="Write per-frame mask PNGs.")] = True,
    overlay: Annotated[bool, typer.Option("--overlay/--no-overlay", help="Write overlay.mp4.")] = True,
    overlay_style: Annotated[
        str, typer.Option("--overlay-style", help="How the overlay draws objects: fill (tinted) or contour (outlines).")
    ] = "fill",
    export: Annotated[
        str,
        typer.Option(
            "--export",
            help=f"Also write, comma-separated: {', '.join(EXPORT_KINDS)} (objects/<id>/, cutout/ RGBA PNGs, "
            f"{ALPHA_VIDEO} ProRes 4444 with alpha, {COCO_JSON} COCO RLE).",
        ),
    ] = "",
    resize_mask: Annotated[
        bool, typer.Option("--resize-mask", help="Scale a mask of another size to the video's (nearest neighbour).")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Write into a non-empty output folder (overwrites vosrr's own files only).")
    ] = False,
    debug: Debug = False,
) -> None:
    """Segment the annotated objects (masks or scribbles, at any frames) in every frame of VIDEO.

    Several VIDEOs, a folder of videos or --manifest: one model, one summary table; torchrun shares them out.
    """
    many = is_batch(videos or [], manifest)
    video = (videos or [Path()])[0]
    jobs = batch_jobs(videos or [], manifest, mask or [], masks_dir, scribble or [], out) if many else []
    if many and mask_kind not in MASK_KINDS:
        _fail(ExitCode.USAGE, f"--mask-kind {mask_kind!r} is not one of {', '.join(MASK_KINDS)}")
    marks = [] if many else _marks(video, mask or [], masks_dir, scribble or [], mask_kind)
    weights, flip = _model_choice(weights, accurate, flip)
    config = _segment_config(
        lam=lam,
        blocks=blocks,
        online=online,
        window=window,
        refine=refine,
        mirror_reference=mirror_reference,
        max_side=max_side,
        scale=scale,
        flip=flip,
        min_part=min_part,
        margin=margin,
        proximity=proximity,
        between=between,
        runtime=runtime,
        chunk=chunk,
    )
    base = video.resolve() if video.name in ("", "..") else video  # "." and ".." have no name of their own
    target = out or base.with_name(f"{base.stem}_vosrr")
    if fps is not None and not (math.isfinite(fps) and 0 < fps <= 1000):
        _fail(ExitCode.USAGE, f"--fps must be a frame rate above 0 and at most 1000, got {fps}; or leave it out")
    if not masks and not overlay and not export:
        _fail(ExitCode.USAGE, "--no-masks --no-overlay leaves nothing to write; keep one of them, or add --export")
    if overlay_style not in OVERLAY_STYLES:
        _fail(ExitCode.USAGE, f"unknown --overlay-style {overlay_style!r}; use {' or '.join(OVERLAY_STYLES)}")
    try:
        exports = parse_exports(export)
    except ValueError as error:
        _fail(ExitCode.USAGE, f"--export: {error}")
    if many:
        options = BatchOptions(
            masks=masks,
            overlay=overlay,
            force=force,
            exports=exports,
            overlay_style=overlay_style,
            resize_mask=resize_mask,
            mask_kind=mask_kind,  # type: ignore[arg-type]  (checked above)
            fps=fps,
        )
        segment_many(jobs, options, weights, config, device, debug)
        return
    outputs = Outputs(target, masks=masks, overlay=overlay, force=force, exports=exports, overlay_style=overlay_style)
    dev = pick_device(device)
    check_runtime(config.runtime, dev)

    def load() -> Segmenter:  # called by segment_video once the video and the mask are known to be good
        model, _ = load_model(weights, dev)
        return Segmenter(model, config, dev)

    def job() -> None:
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[fps]:.1f} fps"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
            disable=not console.is_terminal,
        ) as progress:
            task = progress.add_task("segmenting", total=None, fps=0.0)

            def started(info: VideoInfo, objects: int) -> None:
                progress.update(task, total=info.frames, description=f"{video.name}: {objects} object(s)")

            def advanced(index: int) -> None:
                elapsed = progress.tasks[task].elapsed or 1e-9
                progress.update(task, completed=index + 1, fps=(index + 1) / elapsed)

            summary = segment_video(
                load,
                video,
                marks,
                outputs,
                resize_mask=resize_mask,
                mask_kind=mask_kind,  # type: ignore[arg-type]  (checked by _marks)
                fps=fps,
                on_start=started,
                on_frame=advanced,
            )
        if summary.frames == 0:  # interrupted in the first frame: the output folder was not kept
            _fail(ExitCode.INTERRUPTED, "interrupted before the first frame; nothing was written")
        for note in summary.notes:
            _say(note, "[yellow]note:[/]")
        parts = ([f"{outputs.mask_dir}/"] if masks else []) + ([str(outputs.overlay_path)] if overlay else [])
        parts += export_paths(outputs.folder, exports)
        written = ", ".join(parts) or "nothing written (--no-masks --no-overlay)"
        rate = 1 / max(summary.seconds_per_frame, 1e-9)
        _say(
            f"{summary.frames} frames, {summary.objects} object(s), {dev.type}, "
            f"{summary.seconds_per_frame:.3f} s/frame ({rate:.1f} fps) -> {written}"
        )
        if summary.stopped_at:
            _fail(ExitCode.INPUT, f"{summary.stopped_at}; the {summary.frames} frames before are written ({written})")
        if summary.interrupted:
            _fail(ExitCode.INTERRUPTED, f"interrupted after {summary.frames} frames; those are written ({written})")

    _guard(debug, job)


@app.command()
def annotate(
    video: Annotated[Path, typer.Argument(help="Video file (mp4, mov, mkv, avi) or a folder of frames.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder (default: <video>_vosrr); reopening it resumes.")
    ] = None,
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port on 127.0.0.1 (0: a free one).")] = 0,
    open_page: Annotated[bool, typer.Option("--open/--no-open", help="Open the page in a browser.")] = True,
    weights: Weights = None,
    accurate: Accurate = False,
    device: Device = "auto",
    max_side: MaxSide = None,
    force: Annotated[bool, typer.Option("--force", help="Use a non-empty output folder (see segment).")] = False,
    debug: Debug = False,
) -> None:
    """Serve a local page to mark objects with brush strokes, propagate, correct and export (as `segment` writes)."""
    from vosrr.annotate.run import PortError
    from vosrr.annotate.run import annotate as serve_page

    weights, flip = _model_choice(weights, accurate, None)
    # the page re-propagates a correction forwards (the frames before it keep their masks), so its command does too
    config = _segment_config(
        None, 1, _DEFAULT.online, _DEFAULT.window, _DEFAULT.refine, True, max_side, flip=flip, between="forward"
    )
    options = (["--accurate"] if accurate else ["--weights", str(weights)] if weights else []) + (
        ["--max-side", str(max_side)] if max_side else []
    )
    options += ["--between", "forward"]
    base = video.resolve() if video.name in ("", "..") else video
    dev = pick_device(device)

    def load() -> Segmenter:
        return Segmenter(load_model(weights, dev)[0], config, dev)

    def job() -> None:
        try:
            serve_page(video, out or base.with_name(f"{base.stem}_vosrr"), load, port=port, open_page=open_page,
                       force=force, segment_options=options, say=_say)  # fmt: skip
        except PortError as error:
            _fail(ExitCode.USAGE, str(error))

    _guard(debug, job)


app.command()(train)
app.command("eval")(evaluate_cmd)
app.command()(bench)
app.command()(export)


def main(args: list[str] | None = None) -> NoReturn:
    """The ``vosrr`` command: every failure, the option parser's included, is one ``error:`` line and a code."""
    try:
        result = app(args=args, standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except typer.Exit as done:
        code = done.exit_code
    except (KeyboardInterrupt, typer.Abort):
        _say("interrupted", "[bold red]error:[/]")
        code = int(ExitCode.INTERRUPTED)
    except Exception as error:  # the option parser's usage errors (Click's, or the copy Typer ships)
        if not any(kind.__name__ == "UsageError" for kind in type(error).__mro__):
            raise
        message = " ".join(str(getattr(error, "format_message", error.__str__)()).split()).rstrip(".")
        name = getattr(error, "option_name", None)
        if type(error).__name__ == "NoSuchOption" and isinstance(name, str) and name.startswith("-"):
            files = [a for a in (args if args is not None else sys.argv[1:]) if a.startswith(name) and Path(a).exists()]
            if files:
                message += f"; {files[0]} is a file: put -- before names that start with '-' (-- {files[0]})"
        ctx = getattr(error, "ctx", None)
        command = ctx.command_path if ctx is not None else "vosrr"
        _say(f"{message}; see '{command} --help'", "[bold red]error:[/]")
        code = int(ExitCode.USAGE)
    sys.exit(code)


__all__ = ["DEFAULT_WEIGHTS", "ExitCode", "app", "main"]


if __name__ == "__main__":
    main()
