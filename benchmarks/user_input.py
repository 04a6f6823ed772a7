"""Simulated users on DAVIS: corrections, a middle-frame start, and scribbles instead of a mask.

    python benchmarks/user_input.py --davis DAVIS --split val                     # all three, val
    python benchmarks/user_input.py --davis DAVIS --split train --modes scribbles --set scribble_rounds=1

- **corrections**: the user looks at the output and corrects the frame with the lowest J with its ground-truth
  mask; the video is re-propagated. J&F after 0, 1 and 2 corrections, and the wall time of one correction
  (its solve plus the propagation of the later frames).
- **middle**: only the middle frame of each sequence is annotated; the video is segmented both ways.
- **scribbles**: strokes derived from the first ground-truth mask (the object's skeleton, background strokes in
  a band outside it and a few across the frame; at most 3 % of the pixels), the first frame's mask inferred
  by the solver, then the video propagated. The inferred first-frame IoU and the video J&F.

Scores are vos-benchmark's (first and last frames skipped; annotated frames are scored like the others).
``--cache-features`` keeps every frame's features in memory, so that several rounds and settings share one
network pass per frame (the masks are the same; the timings are not then those of a real run).
Settings go in with ``--set name=value`` (``SegmentConfig`` fields), to choose on train before val is seen.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image
from skimage.morphology import skeletonize
from torch import Tensor
from vos_benchmark.evaluator import Evaluator

from vosrr.annotations import Annotation
from vosrr.checkpoint import load_model
from vosrr.davis import Sequence as DavisSequence
from vosrr.davis import sequences
from vosrr.feed import Feed
from vosrr.mask_reader import read_mask
from vosrr.segmenter import Segmenter
from vosrr.state import SegmentConfig
from vosrr.video import open_video

MODES = ("corrections", "middle", "scribbles")


class CachedFeed:
    """A ``Feed`` that remembers each frame's features (by the frame array's identity) across runs."""

    def __init__(self, feed: Feed) -> None:
        self.inner = feed
        self.chunk = feed.chunk
        self.cache: dict[int, Tensor] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def features(self, frame: np.ndarray, work: tuple[int, int]) -> Tensor:
        key = id(frame)
        if key not in self.cache:
            self.cache[key] = self.inner.features(frame, work)
        return self.cache[key]

    def chunks(
        self, items: Iterable[Any], frame_of: Callable[[Any], np.ndarray], work: tuple[int, int]
    ) -> Iterator[tuple[Any, Tensor]]:
        for item in items:
            yield item, self.features(frame_of(item), work)


@dataclass
class Video:
    name: str
    frames: list[np.ndarray]
    truth: list[np.ndarray]
    """ground truth as vos-benchmark reads it (the files' own values)"""
    labels: list[np.ndarray]
    """dense labels 0..K"""
    ids: np.ndarray
    """dense label -> the annotation's value"""


def load(seq: DavisSequence) -> Video:
    _, frames = open_video(seq.frames[0].parent)
    images = list(frames)
    truth, labels = [], []
    ids = np.array(read_mask(seq.masks[0])[1].ids, np.uint8)
    lookup = np.zeros(256, np.uint8)
    lookup[ids] = np.arange(len(ids))
    for path in seq.masks:
        image = Image.open(path)
        values = np.asarray(image if image.mode in ("L", "P") else image.convert("L"))
        truth.append(values)
        labels.append(lookup[values])
    return Video(seq.name, images, truth, labels, ids)


def run(segmenter: Segmenter, video: Video, annotations: dict[int, Annotation]) -> tuple[list[np.ndarray], float]:
    """Labels for every frame (forwards from the first annotation, then backwards from it) and the seconds the
    last annotation costs when it is a correction: its solve and the propagation of the frames after it."""
    n = len(video.frames)
    first, last = min(annotations), max(annotations)
    out: list[np.ndarray] = [np.zeros(0, np.uint8)] * n
    state, tic = None, None
    for t in segmenter.track(((i, video.frames[i]) for i in range(first, n)), annotations):
        out[t.index] = t.labels
        if t.index == first:
            state = t.state
        if last > first and t.index == last - 1:
            tic = time.perf_counter()
    seconds = time.perf_counter() - tic if tic is not None else 0.0
    if first > 0:
        for t in segmenter.track(((i, video.frames[i]) for i in range(first - 1, -1, -1)), {}, state):
            out[t.index] = t.labels
    return out, seconds


def score(video: Video, out: Sequence[np.ndarray]) -> tuple[float, float, list[float]]:
    """``(J, F, per-frame J)`` in percent (vos-benchmark; first and last frames skipped, as DAVIS does)."""
    evaluator = Evaluator(name=video.name)
    for index in range(1, len(out) - 1):
        evaluator.feed_frame(video.ids[out[index]], video.truth[index])
    per_frame = np.mean([values for values in evaluator.object_iou.values()], axis=0) * 100
    iou, boundary = evaluator.conclude()
    return (
        float(np.mean(list(iou.values()))),
        float(np.mean(list(boundary.values()))),
        [float(v) for v in per_frame],
    )


def corrections(segmenter: Segmenter, video: Video, rounds: int = 2) -> list[dict[str, float]]:
    """J and F after 0..rounds corrections of the worst frame (its ground truth given), and each one's time."""
    annotations = {0: Annotation(video.labels[0])}
    rows = []
    for round_ in range(rounds + 1):
        out, seconds = run(segmenter, video, annotations)
        J, F, per_frame = score(video, out)
        rows.append({"J": J, "F": F, "seconds": seconds, "frames_after": len(video.frames) - max(annotations)})
        if round_ == rounds:
            break
        candidates = [i for i in range(1, len(out) - 1) if i not in annotations]
        if not candidates:
            break
        worst = min(candidates, key=lambda i: per_frame[i - 1])
        annotations[worst] = Annotation(video.labels[worst])
        rows[-1]["next"] = worst
    return rows


def middle(segmenter: Segmenter, video: Video) -> dict[str, float]:
    mid = len(video.frames) // 2
    out, _ = run(segmenter, video, {mid: Annotation(video.labels[mid])})
    J, F, _ = score(video, out)
    return {"J": J, "F": F, "frame": mid}


def strokes(labels: np.ndarray, seed: int = 0, band: int = 20, width: int = 3, budget: float = 0.03) -> Annotation:
    """A simulated user's scribbles on one frame: each object's skeleton, a background stroke along a band
    ``band`` pixels outside the objects and three lines across the frame outside them, ``width`` pixels wide.
    At most ``budget`` of the pixels are labelled: strokes are drawn one pixel wide when wide ones would exceed
    it, and dotted (a random share kept) if even that does."""
    rng = np.random.default_rng(seed)
    height, frame_width = labels.shape
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * band + 1, 2 * band + 1))
    near = cv2.dilate((labels > 0).astype(np.uint8), disk)
    ring = near.astype(bool) & ~cv2.erode(near, np.ones((3, 3), np.uint8)).astype(bool)
    lines = np.zeros(labels.shape, np.uint8)
    for _ in range(3):
        y0, y1 = (int(v) for v in rng.integers(0, height, 2))
        cv2.line(lines, (0, y0), (frame_width - 1, y1), 1, 1)
    thin = {0: (ring | (lines.astype(bool) & ~near.astype(bool))) & (labels == 0)}
    for k in np.unique(labels):
        if k:
            thin[int(k)] = skeletonize(labels == k)  # scikit-image (a dependency of vos-benchmark)
    for stroke_width in (width, 1):
        drawn = {
            k: cv2.dilate(m.astype(np.uint8), np.ones((stroke_width, stroke_width), np.uint8)).astype(bool)
            & (labels == k)
            for k, m in thin.items()
        }
        known = np.logical_or.reduce(list(drawn.values()))
        if known.mean() <= budget:
            break
    if known.mean() > budget:
        known &= rng.random(labels.shape) < budget / known.mean()
    out = labels.copy()
    out[~known] = 0
    return Annotation(out, known, scribble=True)


def scribbles(segmenter: Segmenter, video: Video) -> dict[str, float]:
    strokes_0 = strokes(video.labels[0])
    out, _ = run(segmenter, video, {0: strokes_0})
    J, F, _ = score(video, out)
    first = out[0]
    objects = [k for k in np.unique(video.labels[0]) if k]
    truth = video.labels[0]
    ious = [((first == k) & (truth == k)).sum() / ((first == k) | (truth == k)).sum() for k in objects]
    assert strokes_0.known is not None
    return {"J": J, "F": F, "first_iou": float(np.mean(ious)) * 100, "labelled": float(strokes_0.known.mean()) * 100}


def _value(text: str) -> Any:
    if text in ("True", "False"):
        return text == "True"
    return int(text) if text.lstrip("-").isdigit() else float(text)


def _setting(text: str) -> tuple[str, Any]:
    name, _, value = text.partition("=")
    if name not in {f.name for f in fields(SegmentConfig)}:
        raise argparse.ArgumentTypeError(f"unknown SegmentConfig field {name!r}")
    return name, _value(value)


def _variant(text: str) -> tuple[str, dict[str, Any]]:
    """``"name:field=value,field=value"`` -> ``(name, {field: value})``."""
    name, _, changes = text.partition(":")
    return name, dict(_setting(item) for item in changes.split(",") if item)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--davis", type=Path, required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--sequences", default=None, help="comma-separated subset")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--set", dest="settings", type=_setting, action="append", default=[])
    parser.add_argument(
        "--variant",
        dest="variants",
        type=_variant,
        action="append",
        default=[],
        help="name:field=value,... (repeatable): settings compared side by side on shared features",
    )
    parser.add_argument("--cache-features", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the per-sequence numbers")
    args = parser.parse_args()
    model, _ = load_model(args.weights)
    base = replace(SegmentConfig(), **dict(args.settings))
    variants = dict(args.variants) or {"default": {}}
    segmenters = {name: Segmenter(model, replace(base, **changes)) for name, changes in variants.items()}
    modes = args.modes.split(",")
    seqs = sequences(args.davis, args.split)
    if args.sequences:
        wanted = set(args.sequences.split(","))
        seqs = [s for s in seqs if s.name in wanted]
    results: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in variants}
    for seq in seqs:
        video = load(seq)
        shared = CachedFeed(next(iter(segmenters.values())).feed) if args.cache_features else None
        for name, segmenter in segmenters.items():
            if shared is not None:  # every variant reads the same features (one network pass per frame)
                segmenter.feed = shared  # type: ignore[assignment]
            row: dict[str, Any] = {"frames": len(video.frames)}
            if "corrections" in modes:
                row["corrections"] = corrections(segmenter, video)
            if "middle" in modes:
                row["middle"] = middle(segmenter, video)
            if "scribbles" in modes:
                row["scribbles"] = scribbles(segmenter, video)
            results[name][seq.name] = row
            print(name, seq.name, json.dumps(row, default=lambda v: round(v, 2)), flush=True)
    summary = {name: summarise(rows) for name, rows in results.items()}
    print(json.dumps({"settings": dict(args.settings), "variants": variants, "summary": summary}, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        configs = {name: segmenter.config.__dict__ for name, segmenter in segmenters.items()}
        payload = {"configs": configs, "results": results, "summary": summary}
        args.out.write_text(json.dumps(payload, indent=1, default=str))


def summarise(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Means over sequences: J, F, J&F per mode (and per correction round), seconds per correction."""
    out: dict[str, Any] = {}

    def mean(values: list[float]) -> float:
        return float(np.mean(values)) if values else float("nan")

    rows = [r for r in results.values() if "corrections" in r]
    if rows:
        for k in range(max(len(r["corrections"]) for r in rows)):
            J = mean([r["corrections"][k]["J"] for r in rows if len(r["corrections"]) > k])
            F = mean([r["corrections"][k]["F"] for r in rows if len(r["corrections"]) > k])
            out[f"corrections_{k}"] = {"J": J, "F": F, "JF": (J + F) / 2}
        seconds = [c["seconds"] for r in rows for c in r["corrections"][1:]]
        frames = [c["frames_after"] for r in rows for c in r["corrections"][1:]]
        out["correction_seconds_median"] = float(np.median(seconds)) if seconds else float("nan")
        out["correction_seconds_per_frame"] = sum(seconds) / max(1, sum(frames))
    for mode in ("middle", "scribbles"):
        rows = [r[mode] for r in results.values() if mode in r]
        if rows:
            J, F = mean([r["J"] for r in rows]), mean([r["F"] for r in rows])
            out[mode] = {"J": J, "F": F, "JF": (J + F) / 2}
            if mode == "scribbles":
                out[mode]["first_iou"] = mean([r["first_iou"] for r in rows])
                out[mode]["labelled_percent"] = mean([r["labelled"] for r in rows])
    return out


if __name__ == "__main__":
    main()
