"""DAVIS evaluation (``vosrr eval``): segment every sequence of a split, score J, F and J&F with vos-benchmark.

The metric is the standard implementation (``vos_benchmark``, first and last frames skipped), not a
re-written one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from vosrr.davis import DavisError, sequences
from vosrr.pipeline import Outputs, segment_video
from vosrr.segmenter import Segmenter

__all__ = ["evaluate", "score_sequence"]


def score_sequence(gt_root: Path, mask_root: Path, name: str) -> tuple[float, float]:
    """``(J, F)`` in percent for one sequence, averaged over its objects (vos-benchmark's definition)."""
    try:
        from vos_benchmark.benchmark import VideoEvaluator
    except ImportError as error:
        raise DavisError("scoring needs the vos-benchmark package: pip install vos-benchmark==0.1.0") from error
    _, iou, boundary = VideoEvaluator(str(gt_root), str(mask_root), skip_first_and_last=True)(name)
    return float(np.mean(list(iou.values()))), float(np.mean(list(boundary.values())))


def evaluate(
    segmenter: Segmenter, davis: Path, split: str, out: Path, names: list[str] | None = None, progress: Any = None
) -> dict[str, Any]:
    """Segment and score; writes ``out/<sequence>/<frame>.png`` and ``out/results.json``; returns the results."""
    seqs = sequences(davis, split)
    if names:
        unknown = sorted(set(names) - {s.name for s in seqs})
        if unknown:
            available = ", ".join(s.name for s in seqs)
            raise DavisError(f"not in {split} of {davis}: {', '.join(unknown)}; available: {available}")
        seqs = [s for s in seqs if s.name in names]
    gt_root = Path(davis) / "Annotations" / "480p"
    rows: dict[str, dict[str, float]] = {}
    task = progress.add_task("sequences", total=len(seqs)) if progress else None
    for seq in seqs:
        if progress:
            progress.update(task, description=seq.name)
        folder = out / seq.name
        outputs = Outputs(folder, masks=True, overlay=False, force=True, mask_subdir="")
        summary = segment_video(segmenter, seq.frames[0].parent, seq.masks[0], outputs)
        if summary.frames != len(seq.frames):
            raise DavisError(f"{seq.name}: segmented {summary.frames} of {len(seq.frames)} frames")
        J, F = score_sequence(gt_root, out, seq.name)
        rows[seq.name] = {
            "frames": summary.frames,
            "J": J,
            "F": F,
            "JF": (J + F) / 2,
            "s_per_frame": summary.seconds_per_frame,
        }
        if progress:
            progress.advance(task)
    frames = sum(int(r["frames"]) for r in rows.values())
    mean = {
        "frames": frames,
        "J": float(np.mean([r["J"] for r in rows.values()])),
        "F": float(np.mean([r["F"] for r in rows.values()])),
        "s_per_frame": sum(r["s_per_frame"] * r["frames"] for r in rows.values()) / max(1, frames),
    }
    mean["JF"] = (mean["J"] + mean["F"]) / 2
    result = {
        "split": split,
        "davis": str(davis),
        "device": str(segmenter.device),
        "config": segmenter.config.__dict__,
        "sequences": rows,
        "mean": mean,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str))
    return result
