"""The research commands of ``vosrr``: ``train``, ``eval``, ``bench`` and ``export`` (registered by ``vosrr.cli``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from vosrr.checkpoint import (
    DEFAULT_WEIGHTS,
    ensemble_checkpoint,
    export_checkpoint,
    load_model,
)
from vosrr.cli_base import (
    _DEFAULT,
    Accurate,
    BetweenOption,
    Blocks,
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
    _seed,
    _segment_config,
    check_runtime,
    console,
    pick_device,
)
from vosrr.davis import listed as listed_sequences
from vosrr.davis import sequences as davis_sequences
from vosrr.segmenter import Segmenter


def _bar() -> Progress:
    """The progress bar of the long research jobs (hidden when stderr is not a terminal)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
    )


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
    multi: Annotated[
        Path | None,
        typer.Option(
            help="DAVIS-layout folder of multi-object videos (split train, id masks), e.g. composites of the "
            "training sequences (benchmarks/composite.py --split train --exclude the held-out ones)."
        ),
    ] = None,
    multi_rate: Annotated[float, typer.Option(help="Share of the episodes drawn from --multi.")] = 0.5,
    multi_views: Annotated[int, typer.Option(help="Cached views per --multi frame.")] = 2,
    init: Annotated[
        Path | None, typer.Option(help="Start from these weights (fine-tuning; new optimizer and schedule).")
    ] = None,
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
    from vosrr.train import train as run_training
    from vosrr.train_config import TrainConfig

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
            multi=multi,
            multi_rate=multi_rate,
            multi_views=multi_views,
            init=init,
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
        with _bar() as progress:
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
    proximity: Proximity = _DEFAULT.proximity,
    min_part: MinPart = _DEFAULT.min_part,
    between: BetweenOption = _DEFAULT.between,
    mirror_reference: Mirror = _DEFAULT.mirror_reference,
    max_side: MaxSide = None,
    scale: Scale = _DEFAULT.scale,
    flip: Flip = None,
    accurate: Accurate = False,
    runtime: RuntimeOption = _DEFAULT.runtime,
    force: Annotated[
        bool, typer.Option("--force", help="Write into a non-empty --out (overwrites the masks and results.json).")
    ] = False,
    debug: Debug = False,
) -> None:
    """Segment every sequence of a DAVIS split and score J, F and J&F with vos-benchmark.

    Each object is scored on its own (a row each when a sequence has several); the mean is over all objects,
    as in DAVIS 2017 (for DAVIS 2016, one object a sequence, the mean over sequences).
    """
    from vosrr.evaluate import evaluate, table_rows

    _check_eval_out(out, davis, force)
    names = [name for name in (s.strip() for s in sequences.split(",")) if name] if sequences is not None else None
    if names == []:
        _fail(ExitCode.USAGE, f"--sequences {sequences!r} names no sequence; give names such as bear,blackswan")

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
    )
    dev = pick_device(device)
    check_runtime(config.runtime, dev)

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
        with _bar() as progress:
            result = evaluate(segmenter, davis, split, out, names, progress)
        several = result["mean"]["objects"] > len(result["sequences"])
        what = f"{result['mean']['objects']} objects in " if several else ""
        table = Table(title=f"DAVIS {split} ({what}{len(result['sequences'])} sequences, {dev.type})")
        for column in ("sequence", "frames", "J", "F", "J&F", "s/frame"):
            table.add_column(column, justify="right" if column != "sequence" else "left")
        for cells, bold in table_rows(result):
            table.add_row(*cells, style="bold" if bold else None)
        Console().print(table)
        console.print(f"results: {out / 'results.json'}")

    _guard(debug, job)


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
    runtime: RuntimeOption = _DEFAULT.runtime,
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
        runtime=runtime,
    )
    dev = pick_device(device)
    check_runtime(config.runtime, dev)
    if threads is not None:
        torch.set_num_threads(threads)
    _guard(debug, lambda: run_bench(video, mask, frames, runs, out, weights, dev, solve_only, Console(), config=config))


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


__all__ = ["bench", "evaluate_cmd", "export", "train"]
