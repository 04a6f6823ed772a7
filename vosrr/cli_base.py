"""What the ``vosrr`` commands share: the Typer app, one-line errors and exit codes, the device, and the options
that map onto ``SegmentConfig`` (each command's module uses these; ``vosrr.cli`` assembles the commands).
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, NoReturn, TypeVar

import numpy as np
import torch
import typer
from rich.console import Console
from rich.markup import escape

from vosrr.checkpoint import (
    ACCURATE_WEIGHTS,
    WeightsError,
)
from vosrr.davis import DavisError
from vosrr.masks import MaskError
from vosrr.pipeline import OutputError
from vosrr.runtime import RUNTIMES, RuntimeUnavailableError, resolve_runtime
from vosrr.segmenter import AnnotationError, SegmentConfig
from vosrr.video import VideoError

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
    PARTIAL = 8  # several videos: some failed (each has its error line), the others are written
    INTERRUPTED = 130  # Ctrl-C: the frames done so far are written in full


_ERRORS: tuple[tuple[type[BaseException], ExitCode], ...] = (
    (VideoError, ExitCode.INPUT),
    (MaskError, ExitCode.INPUT),
    (AnnotationError, ExitCode.INPUT),
    (WeightsError, ExitCode.WEIGHTS),
    (OutputError, ExitCode.OUTPUT),
    (DavisError, ExitCode.DATASET),
    (RuntimeUnavailableError, ExitCode.DEVICE),
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


def check_runtime(runtime: str, device: torch.device) -> None:
    """Refuse, before any work, a ``--runtime`` that is unknown (exit 2) or cannot run on ``device`` (exit 6)."""
    if runtime not in RUNTIMES:
        _fail(ExitCode.USAGE, f"unknown --runtime {runtime!r}; use {', '.join(RUNTIMES)}")
    try:
        resolve_runtime(runtime, device)  # type: ignore[arg-type]  (checked above)
    except RuntimeUnavailableError as error:
        _fail(ExitCode.DEVICE, str(error))


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
Proximity = Annotated[
    float,
    typer.Option(
        "--proximity",
        help="With several objects: between objects, lower each one's score by this much per object size of "
        "distance from its last position, so that look-alikes keep to their places (0 = off).",
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
Chunk = Annotated[
    int | None,
    typer.Option(
        "--chunk",
        help="Frames per network batch (default: 16 on a GPU, 1 on a CPU); the masks do not depend on it.",
    ),
]
RuntimeOption = Annotated[
    str,
    typer.Option(
        "--runtime",
        help="What runs the network: auto (OpenVINO on a CPU, torch on a GPU), torch, openvino (CPU only; "
        "bfloat16 where the CPU supports it) or openvino-f32 (CPU only; float32 always).",
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
    proximity: float = _DEFAULT.proximity,
    runtime: str = _DEFAULT.runtime,
    chunk: int | None = _DEFAULT.chunk,
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
            proximity=proximity,
            between=between,  # type: ignore[arg-type]  (checked by SegmentConfig)
            runtime=runtime,  # type: ignore[arg-type]  (checked by SegmentConfig)
            chunk=chunk,
        )
    except ValueError as error:  # "lam must be ...": said as the option the user typed, with what to do
        name, _, rest = str(error).partition(" ")
        if name not in _CONFIG_OPTIONS:
            _fail(ExitCode.USAGE, str(error))
        option = f"--{name.replace('_', '-')}"
        _fail(ExitCode.USAGE, f"{option} {rest}; pass another value, or leave {option} out for its default")


_CONFIG_OPTIONS = (
    "lam",
    "blocks",
    "online",
    "window",
    "max_side",
    "scale",
    "min_part",
    "margin",
    "proximity",
    "between",
    "runtime",
)


__all__ = [
    "_DEFAULT",
    "_ERRORS",
    "Accurate",
    "BetweenOption",
    "Blocks",
    "Chunk",
    "Debug",
    "Device",
    "ExitCode",
    "Flip",
    "Lam",
    "Margin",
    "MaxSide",
    "MinPart",
    "Mirror",
    "Online",
    "Proximity",
    "Refine",
    "RuntimeOption",
    "Scale",
    "T",
    "Weights",
    "Window",
    "_fail",
    "_guard",
    "_model_choice",
    "_say",
    "_seed",
    "_segment_config",
    "app",
    "check_runtime",
    "console",
    "pick_device",
]
