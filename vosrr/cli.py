"""``vosrr``: the command line, a thin shell around the library.

Every known failure prints one line naming the problem and what to do, and exits with a documented code
(see ``ExitCode``); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import enum
import math
import os
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, NoReturn, TypeVar

import numpy as np
import torch
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from vosrr.annotations import Mark, marks_in, parse_mark
from vosrr.checkpoint import (
    ACCURATE_WEIGHTS,
    DEFAULT_WEIGHTS,
    WeightsError,
    ensemble_checkpoint,
    export_checkpoint,
    load_model,
)
from vosrr.davis import DavisError
from vosrr.davis import listed as listed_sequences
from vosrr.davis import sequences as davis_sequences
from vosrr.exports import ALPHA_VIDEO, COCO_JSON, EXPORT_KINDS, export_paths, parse_exports
from vosrr.mask_reader import MASK_KINDS
from vosrr.masks import OVERLAY_STYLES, MaskError
from vosrr.pipeline import OutputError, Outputs, segment_video
from vosrr.segmenter import AnnotationError, SegmentConfig, Segmenter
from vosrr.video import VideoError, VideoInfo, frame_files

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Fast semi-supervised video object segmentation by closed-form ridge regression.",
)
console = Console(stderr=True, soft_wrap=True)  # soft wrap: an error is one line, however narrow
T = TypeVar("T")


class ExitCode(enum.IntEnum):
    """What ``vosrr`` exits with; every failure also prints one ``error:`` line saying what to do."""

    OK = 0
    INTERNAL = 1  # a bug: rerun with --debug and report the traceback
    USAGE = 2  # a bad option or option value
    INPUT = 3  # the video or the mask cannot be used (also: a stream that breaks part way)
    WEIGHTS = 4  # the checkpoint is missing, corrupt, unsafe, of another architecture or fails its checksum
    OUTPUT = 5  # the output folder cannot be used or written
    DEVICE = 6  # the device asked for is absent, or memory ran out
    DATASET = 7  # the DAVIS folder is missing or incomplete
    INTERRUPTED = 130  # Ctrl-C: the frames done so far are written in full


_ERRORS: tuple[tuple[type[BaseException], ExitCode], ...] = (
    (VideoError, ExitCode.INPUT),
    (MaskError, ExitCode.INPUT),
    (AnnotationError, ExitCode.INPUT),
    (WeightsError, ExitCode.WEIGHTS),
    (OutputError, ExitCode.OUTPUT),
    (DavisError, ExitCode.DATASET),
)


def _say(message: str, label: str = "") -> None:
    """One line on stderr; ``message`` is plain text (never parsed as markup: paths may hold brackets)."""
    console.print(f"{label} {escape(message)}" if label else escape(message), highlight=False)


def _fail(code: ExitCode, message: str) -> NoReturn:
    _say(" ".join(message.strip().splitlines()), "[bold red]error:[/]")  # one line, always
    raise typer.Exit(int(code))


def _guard(debug: bool, job: Callable[[], T]) -> T:
    """Run ``job``; turn known errors into one line and an exit code (tracebacks only with --debug)."""
    try:
        return job()
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        _fail(ExitCode.INTERRUPTED, "interrupted; files already written are complete, none is half-written")
    except torch.cuda.OutOfMemoryError as error:
        if debug:
            raise
        _fail(
            ExitCode.DEVICE,
            f"out of GPU memory ({str(error).splitlines()[0]}); try --max-side 640, --device cpu, or fewer --blocks",
        )
    except Exception as error:
        if debug:
            raise
        for kind, code in _ERRORS:
            if isinstance(error, kind):
                _fail(code, str(error))
        if isinstance(error, MemoryError) or "can't allocate memory" in str(error):
            _fail(ExitCode.DEVICE, "out of memory; try --max-side 640 (or a smaller one)")
        if isinstance(error, OSError) and error.strerror:
            where = f": {error.filename}" if error.filename else ""
            _fail(
                ExitCode.OUTPUT,
                f"{error.strerror}{where}; check that path (permissions, free disk space) or choose another --out",
            )
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        _fail(ExitCode.INTERNAL, f"unexpected {type(error).__name__}: {first} (rerun with --debug for details)")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        _fail(ExitCode.USAGE, f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    if device.type not in ("cpu", "cuda", "mps"):
        _fail(ExitCode.USAGE, f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        _fail(ExitCode.DEVICE, f"--device {name} was asked for but no CUDA GPU is available; use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        _fail(ExitCode.DEVICE, f"there is no {name} ({torch.cuda.device_count()} GPU(s)); use cuda:0 or --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        _fail(ExitCode.DEVICE, "--device mps was asked for but MPS is not available; use --device cpu")
    return device


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


Debug = Annotated[bool, typer.Option("--debug", help="Show full tracebacks.")]
Weights = Annotated[Path | None, typer.Option("--weights", help="Checkpoint to use (default: the shipped one).")]
Device = Annotated[str, typer.Option("--device", help="auto (CUDA when present), cpu, cuda, cuda:N.")]
Blocks = Annotated[
    int,
    typer.Option("--blocks", help="Block-diagonal splitting of the solve: 1, 2, 4 or 8 (per network for an ensemble)."),
]
Lam = Annotated[float | None, typer.Option("--lam", help="Ridge lambda (default: the checkpoint's, ~5).")]
Online = Annotated[
    float,
    typer.Option(
        "--online", help="Weight of online updates from confident predictions (0 = one solve from the first frame)."
    ),
]
MaxSide = Annotated[
    int | None,
    typer.Option(
        "--max-side", help="Process at most this many pixels on the longer side (masks are still written at full size)."
    ),
]


Window = Annotated[
    float,
    typer.Option("--window", help="Keep each object within this many object-sizes of its last position (0 = off)."),
]
Refine = Annotated[
    bool, typer.Option("--refine/--no-refine", help="Snap mask boundaries to image edges (guided filter).")
]
Margin = Annotated[
    float,
    typer.Option(
        "--margin",
        help="How much an object's score must beat the background's (per network) to label a pixel (0 = argmax).",
    ),
]
MinPart = Annotated[
    float,
    typer.Option(
        "--min-part",
        help="Drop each object's parts smaller than this fraction of its largest part (0 = keep all).",
    ),
]
Mirror = Annotated[
    bool,
    typer.Option(
        "--mirror-reference/--no-mirror-reference",
        help="Also solve from the mirrored first frame (one more forward pass per video).",
    ),
]
Scale = Annotated[
    float,
    typer.Option("--scale", help="Process frames at this multiple of their size (>1: finer masks, slower)."),
]
Flip = Annotated[
    bool | None,
    typer.Option(
        "--flip/--no-flip",
        help="Average each frame's features with its mirror image's (2 passes a frame). Default: on with --accurate.",
        show_default=False,
    ),
]
BetweenOption = Annotated[
    str,
    typer.Option(
        "--between",
        help="Frames between two annotated frames: both (also segmented backwards from the later one, the two "
        "blended by distance) or forward (from the earlier one only).",
    ),
]
Accurate = Annotated[
    bool,
    typer.Option(
        "--accurate",
        help="Use the shipped ensemble (MobileNetV2 + EfficientNet-Lite0, one solve) with --flip: "
        "higher J and F, several times the time per frame.",
    ),
]
_DEFAULT = SegmentConfig()


def _model_choice(weights: Path | None, accurate: bool, flip: bool | None) -> tuple[Path | None, bool]:
    """The checkpoint and the flip setting that ``--weights``, ``--accurate`` and ``--flip/--no-flip`` ask for."""
    if accurate and weights is not None:
        _fail(
            ExitCode.USAGE, "--accurate chooses the shipped ensemble; drop --weights, or drop --accurate and add --flip"
        )
    return (ACCURATE_WEIGHTS if accurate else weights), (accurate if flip is None else flip)


def _segment_config(
    lam: float | None,
    blocks: int,
    online: float,
    window: float,
    refine: bool,
    mirror_reference: bool,
    max_side: int | None,
    scale: float = _DEFAULT.scale,
    flip: bool = _DEFAULT.flip,
    min_part: float = _DEFAULT.min_part,
    margin: float = _DEFAULT.margin,
    between: str = _DEFAULT.between,
) -> SegmentConfig:
    """The segmenter's configuration from the options `segment` and `eval` share (a bad value exits 2)."""
    try:
        return SegmentConfig(
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
            between=between,  # type: ignore[arg-type]  (checked by SegmentConfig)
        )
    except ValueError as error:
        _fail(ExitCode.USAGE, str(error))


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
            return marks_in(folder, names)

        marks += _guard(False, found)
    return marks


@app.command()
def segment(
    video: Annotated[Path, typer.Argument(help="Video file (mp4, mov, mkv, avi) or a folder of frames.")],
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
        typer.Option("--masks", help="A folder of masks named by frame (00000.png, 00120.png: the DAVIS layout)."),
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
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder (default: <video>_vosrr).")] = None,
    weights: Weights = None,
    device: Device = "auto",
    blocks: Blocks = 1,
    lam: Lam = None,
    online: Online = _DEFAULT.online,
    window: Window = _DEFAULT.window,
    refine: Refine = _DEFAULT.refine,
    margin: Margin = _DEFAULT.margin,
    min_part: MinPart = _DEFAULT.min_part,
    between: BetweenOption = _DEFAULT.between,
    mirror_reference: Mirror = _DEFAULT.mirror_reference,
    max_side: MaxSide = None,
    scale: Scale = _DEFAULT.scale,
    flip: Flip = None,
    accurate: Accurate = False,
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
    """Segment the annotated objects (masks or scribbles, at any frames) in every frame of VIDEO."""
    marks = _marks(video, mask or [], masks_dir, scribble or [], mask_kind)
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
        between=between,
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
    outputs = Outputs(target, masks=masks, overlay=overlay, force=force, exports=exports, overlay_style=overlay_style)
    dev = pick_device(device)

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


@app.command()
def train(
    davis: Annotated[Path, typer.Option("--davis", help="DAVIS 2016 root (JPEGImages, Annotations, ImageSets).")],
    out: Annotated[Path, typer.Option("--out", help="Run folder: last.pt, best.pt, log.")] = Path("runs/train"),
    epochs: Annotated[int, typer.Option(help="Epochs (of --steps steps each; cosine schedule over all).")] = 10,
    steps: Annotated[int, typer.Option(help="Optimizer steps per epoch.")] = 100,
    batch: Annotated[int, typer.Option(help="Episodes per step.")] = 8,
    channels: Annotated[int, typer.Option(help="C, embedding channels (bias channel included).")] = 256,
    width: Annotated[int, typer.Option(help="Inner width of the embedding head.")] = 192,
    lam: Annotated[float, typer.Option(help="Initial ridge lambda (learned).")] = 5.0,
    trunk: Annotated[str, typer.Option(help="ImageNet trunk: mobilenet_v2 or efficientnet_lite0.")] = "mobilenet_v2",
    blocks: Blocks = 1,
    train_stages: Annotated[int, typer.Option(help="Trunk stages trained with the head (0, 1, 2).")] = 1,
    optimizer: Annotated[str, typer.Option(help="adamw or sgd (paper: SGD, momentum 0.9).")] = "adamw",
    lr: Annotated[float, typer.Option(help="Peak learning rate (cosine schedule).")] = 1e-3,
    weight_decay: Annotated[float, typer.Option(help="Weight decay (paper: 5e-4).")] = 5e-4,
    max_gap: Annotated[int, typer.Option(help="Largest frame distance between reference and query.")] = 30,
    refs: Annotated[int, typer.Option(help="Reference frames per episode.")] = 1,
    views: Annotated[int, typer.Option(help="Cached views per frame: the frame and views-1 augmented copies.")] = 4,
    scale: Annotated[
        tuple[float, float], typer.Option(help="Scale augmentation: smallest and largest resize factor.")
    ] = (0.7, 1.4),
    colour: Annotated[float, typer.Option(help="Colour augmentation: brightness/contrast/saturation jitter.")] = 0.3,
    holdout: Annotated[int, typer.Option(help="Training sequences held out for validation.")] = 3,
    cache: Annotated[Path, typer.Option(help="Folder for the frozen-trunk feature cache.")] = Path("cache"),
    resume: Annotated[Path | None, typer.Option(help="Resume from a checkpoint (e.g. runs/train/last.pt).")] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Start over in an --out that holds an earlier run (replaces last.pt).")
    ] = False,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    device: Device = "auto",
    debug: Debug = False,
) -> None:
    """Meta-train phi through the ridge solve on DAVIS 2016 train."""
    from vosrr.train import TrainConfig
    from vosrr.train import train as run_training

    _seed(seed)
    dev = pick_device(device)
    try:
        config = TrainConfig(
            davis=davis,
            out=out,
            channels=channels,
            width=width,
            lam=lam,
            trunk=trunk,
            blocks=blocks,
            train_stages=train_stages,
            epochs=epochs,
            steps=steps,
            batch=batch,
            refs=refs,
            views=views,
            scale=scale,
            colour=colour,
            optimizer=optimizer,
            lr=lr,
            weight_decay=weight_decay,
            max_gap=max_gap,
            holdout=holdout,
            seed=seed,
            device=str(dev),
            cache=cache,
            resume=resume,
            force=force,
        )
    except ValueError as error:
        _fail(ExitCode.USAGE, str(error))

    def job() -> None:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=not console.is_terminal,
        ) as progress:
            best = run_training(config, progress, log=lambda m: _say(str(m)))
        if os.environ.get("RANK", "0") == "0":  # under torchrun, only rank 0 reports
            _say(f"best checkpoint: {best}")

    _guard(debug, job)


def _check_eval_out(out: Path, davis: Path, force: bool) -> None:
    """Refuse an ``eval --out`` inside the dataset (it would overwrite, then score, the ground truth) and a
    non-empty one without ``--force``."""
    target, root = out.resolve(), davis.resolve()
    if target == root or root in target.parents or target in root.parents:
        _fail(ExitCode.USAGE, f"--out {out} is inside (or holds) the DAVIS folder {davis}; choose a folder outside it")
    if target.is_dir() and any(target.iterdir()) and not force:
        _fail(ExitCode.OUTPUT, f"--out {out} is not empty; use --force to overwrite its results, or another --out")
    if target.exists() and not target.is_dir():
        _fail(ExitCode.OUTPUT, f"--out {out} exists and is not a folder; choose another --out")


@app.command("eval")
def evaluate_cmd(
    split: Annotated[str, typer.Option("--split", help="DAVIS split: val or train.")] = "val",
    davis: Annotated[Path, typer.Option("--davis", help="DAVIS 2016 root.")] = Path("../shared/davis2016"),
    out: Annotated[Path, typer.Option("--out", help="Folder for <sequence>/<frame>.png and results.json.")] = Path(
        "runs/eval"
    ),
    sequences: Annotated[str | None, typer.Option("--sequences", help="Comma-separated subset.")] = None,
    weights: Weights = None,
    device: Device = "auto",
    blocks: Blocks = 1,
    lam: Lam = None,
    online: Online = _DEFAULT.online,
    window: Window = _DEFAULT.window,
    refine: Refine = _DEFAULT.refine,
    margin: Margin = _DEFAULT.margin,
    min_part: MinPart = _DEFAULT.min_part,
    between: BetweenOption = _DEFAULT.between,
    mirror_reference: Mirror = _DEFAULT.mirror_reference,
    max_side: MaxSide = None,
    scale: Scale = _DEFAULT.scale,
    flip: Flip = None,
    accurate: Accurate = False,
    force: Annotated[
        bool, typer.Option("--force", help="Write into a non-empty --out (overwrites the masks and results.json).")
    ] = False,
    debug: Debug = False,
) -> None:
    """Segment every sequence of a DAVIS split and score J, F and J&F with vos-benchmark."""
    from vosrr.evaluate import evaluate

    _check_eval_out(out, davis, force)

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
        between=between,
    )
    dev = pick_device(device)

    def job() -> None:
        present = {seq.name for seq in davis_sequences(davis, split)}  # a bad DAVIS folder fails before the model
        absent = [name for name in listed_sequences(davis, split) if name not in present]
        if absent and not sequences:
            _say(
                f"{len(absent)} of the {len(absent) + len(present)} sequences {split}.txt lists are not in {davis} "
                f"({', '.join(absent[:5])}{', ...' if len(absent) > 5 else ''}); the mean is over the "
                f"{len(present)} present, not the whole split",
                "[yellow]note:[/]",
            )
        model, _ = load_model(weights, dev)
        segmenter = Segmenter(model, config, dev)
        names = [s.strip() for s in sequences.split(",")] if sequences else None
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=not console.is_terminal,
        ) as progress:
            result = evaluate(segmenter, davis, split, out, names, progress)
        table = Table(title=f"DAVIS 2016 {split} ({len(result['sequences'])} sequences, {dev.type})")
        for column in ("sequence", "frames", "J", "F", "J&F", "s/frame"):
            table.add_column(column, justify="right" if column != "sequence" else "left")
        for name, row in result["sequences"].items():
            table.add_row(
                name,
                str(row["frames"]),
                f"{row['J']:.1f}",
                f"{row['F']:.1f}",
                f"{row['JF']:.1f}",
                f"{row['s_per_frame']:.3f}",
            )
        mean = result["mean"]
        table.add_row(
            "mean",
            str(mean["frames"]),
            f"{mean['J']:.1f}",
            f"{mean['F']:.1f}",
            f"{mean['JF']:.1f}",
            f"{mean['s_per_frame']:.3f}",
            style="bold",
        )
        Console().print(table)
        console.print(f"results: {out / 'results.json'}")

    _guard(debug, job)


@app.command()
def bench(
    video: Annotated[Path | None, typer.Argument(help="Video or frame folder (default: the shipped sample).")] = None,
    mask: Annotated[Path | None, typer.Option("--mask", help="First-frame mask (default: the sample's).")] = None,
    frames: Annotated[int, typer.Option(min=1, help="Frames to time (the video loops if shorter).")] = 60,
    runs: Annotated[int, typer.Option(min=1, help="Repetitions; medians are reported.")] = 3,
    out: Annotated[Path, typer.Option(help="JSON file for the numbers.")] = Path("runs/bench.json"),
    weights: Weights = None,
    device: Device = "auto",
    max_side: MaxSide = None,
    scale: Scale = _DEFAULT.scale,
    flip: Flip = None,
    accurate: Accurate = False,
    threads: Annotated[
        int | None, typer.Option("--threads", min=1, help="torch CPU threads (default: torch's, one per core).")
    ] = None,
    solve_only: Annotated[
        bool, typer.Option("--solve-only", help="Only the block-splitting table (paper Table 2).")
    ] = False,
    debug: Debug = False,
) -> None:
    """Time every stage per frame, end-to-end s/frame, peak memory, and the k-block solve (paper Table 2)."""
    from vosrr.bench import run_bench

    weights, flip = _model_choice(weights, accurate, flip)
    config = _segment_config(
        lam=None,
        blocks=1,
        online=_DEFAULT.online,
        window=_DEFAULT.window,
        refine=_DEFAULT.refine,
        mirror_reference=_DEFAULT.mirror_reference,
        max_side=max_side,
        scale=scale,
        flip=flip,
    )
    dev = pick_device(device)
    if threads is not None:
        torch.set_num_threads(threads)
    _guard(debug, lambda: run_bench(video, mask, frames, runs, out, weights, dev, solve_only, Console(), config=config))


@app.command()
def export(
    checkpoints: Annotated[
        list[Path],
        typer.Argument(help="A training checkpoint (runs/train/best.pt); several make one ensemble checkpoint."),
    ],
    out: Annotated[Path, typer.Option("--out", help="Where to write the inference checkpoint.")] = DEFAULT_WEIGHTS,
    debug: Debug = False,
) -> None:
    """Strip a training checkpoint to what `vosrr segment` needs and write it with its .sha256.

    With several checkpoints the result is an ensemble: their features side by side, one solve (see --blocks).
    """

    def job() -> None:
        if len(checkpoints) > 1:
            digest = ensemble_checkpoint(checkpoints, out)
        else:
            digest = export_checkpoint(checkpoints[0], out)
        _say(f"{out} ({out.stat().st_size / 2**20:.1f} MiB) sha256 {digest}")

    _guard(debug, job)


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
