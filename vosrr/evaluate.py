"""DAVIS evaluation (``vosrr eval``): segment every sequence of a split, score J, F and J&F with vos-benchmark.

The metric is the standard implementation (``vos_benchmark``, first and last frames skipped), not a
re-written one. Every object of a sequence (each id of its ground truth: DAVIS 2016's single 255, or the 1..K
of a DAVIS 2017 style palette mask) is scored on its own; the mean is over all objects of all sequences, as
vos-benchmark's global score and DAVIS 2017 define it (for DAVIS 2016, one object a sequence, that is the mean
over sequences). The mean over sequences of their object means is reported beside it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from vosrr.davis import DavisError, sequences
from vosrr.pipeline import Outputs, segment_video
from vosrr.segmenter import Segmenter

__all__ = ["evaluate", "score_objects", "score_sequence"]


def score_objects(gt_root: Path, mask_root: Path, name: str) -> dict[int, tuple[float, float]]:
    """``{object id: (J, F)}`` in percent for one sequence, one entry per id of its ground truth
    (vos-benchmark's ``VideoEvaluator``: first and last frames skipped)."""
    try:
        from vos_benchmark.benchmark import VideoEvaluator
    except ImportError as error:
        raise DavisError("scoring needs the vos-benchmark package: pip install vos-benchmark==0.1.0") from error
    _, iou, boundary = VideoEvaluator(str(gt_root), str(mask_root), skip_first_and_last=True)(name)
    if not iou:
        raise DavisError(f"{name}: its ground truth in {gt_root / name} shows no object in the scored frames")
    return {int(k): (float(iou[k]), float(boundary[k])) for k in sorted(iou)}


def score_sequence(gt_root: Path, mask_root: Path, name: str) -> tuple[float, float]:
    """``(J, F)`` in percent for one sequence, averaged over its objects (vos-benchmark's definition)."""
    scores = score_objects(gt_root, mask_root, name)
    return float(np.mean([j for j, _ in scores.values()])), float(np.mean([f for _, f in scores.values()]))


def evaluate(
    segmenter: Segmenter, davis: Path, split: str, out: Path, names: list[str] | None = None, progress: Any = None
) -> dict[str, Any]:
    """Segment and score; writes ``out/<sequence>/<frame>.png`` and ``out/results.json``; returns the results:
    per sequence its J, F, J&F (means over its objects) and ``objects`` (per id), and the mean over all objects
    (``mean``; ``mean["sequence_mean"]`` is over sequences)."""
    seqs = sequences(davis, split)
    if names:
        unknown = sorted(set(names) - {s.name for s in seqs})
        if unknown:
            available = ", ".join(s.name for s in seqs)
            raise DavisError(f"not in {split} of {davis}: {', '.join(unknown)}; available: {available}")
        seqs = [s for s in seqs if s.name in names]
    gt_root = Path(davis) / "Annotations" / "480p"
    rows: dict[str, dict[str, Any]] = {}
    task = progress.add_task("sequences", total=len(seqs)) if progress else None
    for seq in seqs:
        if progress:
            progress.update(task, description=seq.name)
        folder = out / seq.name
        outputs = Outputs(folder, masks=True, overlay=False, force=True, mask_subdir="")
        summary = segment_video(segmenter, seq.frames[0].parent, seq.masks[0], outputs)
        if summary.frames != len(seq.frames):
            raise DavisError(f"{seq.name}: segmented {summary.frames} of {len(seq.frames)} frames")
        scores = score_objects(gt_root, out, seq.name)
        J = float(np.mean([j for j, _ in scores.values()]))
        F = float(np.mean([f for _, f in scores.values()]))
        rows[seq.name] = {
            "frames": summary.frames,
            "J": J,
            "F": F,
            "JF": (J + F) / 2,
            "s_per_frame": summary.seconds_per_frame,
            "objects": {str(k): {"J": j, "F": f, "JF": (j + f) / 2} for k, (j, f) in scores.items()},
        }
        if progress:
            progress.advance(task)
    frames = sum(int(r["frames"]) for r in rows.values())
    objects = [o for r in rows.values() for o in r["objects"].values()]
    mean = {
        "frames": frames,
        "objects": len(objects),
        "J": float(np.mean([o["J"] for o in objects])),
        "F": float(np.mean([o["F"] for o in objects])),
        "s_per_frame": sum(r["s_per_frame"] * r["frames"] for r in rows.values()) / max(1, frames),
    }
    mean["JF"] = (mean["J"] + mean["F"]) / 2
    by_sequence = {key: float(np.mean([r[key] for r in rows.values()])) for key in ("J", "F")}
    mean["sequence_mean"] = {**by_sequence, "JF": (by_sequence["J"] + by_sequence["F"]) / 2}
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


def table_rows(result: dict[str, Any]) -> list[tuple[tuple[str, ...], bool]]:
    """The rows of ``vosrr eval``'s table from ``evaluate``'s result: ``((name, frames, J, F, J&F, s/frame), bold)``
    per sequence, then for a sequence with several objects one row per object (``  #<id>``, J, F, J&F), and
    last the mean over all objects (named ``mean of N objects`` when there are more objects than sequences)."""
    rows: list[tuple[tuple[str, ...], bool]] = []

    def numbers(row: dict[str, Any]) -> tuple[str, str, str]:
        return f"{row['J']:.1f}", f"{row['F']:.1f}", f"{row['JF']:.1f}"

    for name, row in result["sequences"].items():
        rows.append(((name, str(row["frames"]), *numbers(row), f"{row['s_per_frame']:.3f}"), False))
        if len(row["objects"]) > 1:
            for key, obj in row["objects"].items():
                rows.append(((f"  #{key}", "", *numbers(obj), ""), False))
    mean = result["mean"]
    label = f"mean of {mean['objects']} objects" if mean["objects"] > len(result["sequences"]) else "mean"
    rows.append(((label, str(mean["frames"]), *numbers(mean), f"{mean['s_per_frame']:.3f}"), True))
    return rows
