"""How masks are made from the scores, on a whole DAVIS split: many variants from one segmentation pass.

    python benchmarks/labels.py --davis PATH [--weights W] [--flip] [--split train] [--scores runs/scores/NAME]

The last step of the segmenter, ``labels(state, P, frame)``, never feeds back into the state (the window and
the online update work on the feature grid), so every variant of it sees the same scores. The first run
segments the split once with the default options and stores each frame's scores ``P[K+1,h,w]`` (float16,
``--scores DIR/<sequence>.npz``); every run then makes masks from them with each variant of ``VARIANTS`` and
scores them with vos-benchmark (first and last frames skipped). Prints a table and writes ``results.json``.
This is how the upsampling, the decision margin and the guided filter were chosen on the train split.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, replace
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from vos_benchmark.evaluator import Evaluator

from vosrr.checkpoint import load_model
from vosrr.davis import Sequence, sequences
from vosrr.mask_reader import read_mask
from vosrr.segmenter import SegmentConfig, Segmenter, VideoState
from vosrr.video import open_video

#: variants of the last step (each replaces fields of the default configuration)
VARIANTS: dict[str, dict[str, Any]] = {
    "bilinear, guided filter, argmax (before)": {"upsample": "bilinear", "margin": 0.0, "refine": True},
    "bilinear, argmax": {"upsample": "bilinear", "margin": 0.0},
    "bicubic, argmax": {"margin": 0.0},
    "bilinear, margin 0.1": {"upsample": "bilinear"},
    "bicubic, margin 0.1 (default)": {},
    "bicubic, margin 0.15": {"margin": 0.15},
    "bicubic, margin 0.2": {"margin": 0.2},
    "bicubic, margin 0.1, guided filter": {"refine": True},
    "bicubic, margin 0.1, min part 0.1": {"min_part": 0.1},
}


def dump(segmenter: Segmenter, seq: Sequence, target: Path) -> None:
    """Segment ``seq`` and store every later frame's scores and the working size."""
    labels, _ = read_mask(seq.masks[0])
    _, frames = open_video(seq.frames[0].parent)
    state = segmenter.start(next(frames), labels)[0]
    scores = []
    for frame in frames:
        state, P = segmenter.step_scores(state, frame)
        scores.append(P.float().cpu().numpy().astype(np.float16))
    target.parent.mkdir(parents=True, exist_ok=True)
    np.savez(target, P=np.stack(scores), work=np.array(state.work_size), size=np.array(state.size))


#: each worker's segmenters, one per variant (built once per worker by ``_start_worker``)
_VARIANTS: dict[str, Segmenter] = {}


def _start_worker(weights: Path | None, flip: bool) -> None:
    torch.set_num_threads(1)
    model, _ = load_model(weights)
    base = SegmentConfig(flip=flip)
    _VARIANTS.update({name: Segmenter(model, replace(base, **change)) for name, change in VARIANTS.items()})


def score(job: tuple[Sequence, Path]) -> tuple[str, dict[str, tuple[float, float]]]:
    """``(sequence, {variant: (J, F)})`` for the stored scores of one sequence (in a worker)."""
    seq, stored = job
    variants = _VARIANTS
    data = np.load(stored)
    P, work, size = data["P"], tuple(int(v) for v in data["work"]), tuple(int(v) for v in data["size"])
    state = VideoState(P.shape[1], size, work, None, None, torch.zeros(1))  # type: ignore[arg-type]
    evaluators = {name: Evaluator(name=seq.name) for name in variants}
    ids = np.array(read_mask(seq.masks[0])[1].ids, np.uint8)  # dense labels -> the annotation's own values
    _, frames = open_video(seq.frames[0].parent)
    next(frames)
    for index, frame in enumerate(frames, 1):
        if index == len(seq.frames) - 1:  # the last frame is not scored (nor is the first)
            break
        image = Image.open(seq.masks[index])  # as vos-benchmark reads it (it may hold no object) ...
        truth = np.asarray(image if image.mode in ("L", "P") else image.convert("L"))  # ... or a grey + alpha PNG
        scores = torch.from_numpy(P[index - 1].astype(np.float32))
        for name, segmenter in variants.items():
            evaluators[name].feed_frame(ids[segmenter.labels(state, scores, frame)], truth)
    out = {}
    for name, evaluator in evaluators.items():
        iou, boundary = evaluator.conclude()
        out[name] = (float(np.mean(list(iou.values()))), float(np.mean(list(boundary.values()))))
    return seq.name, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--davis", type=Path, required=True)
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--flip", action="store_true", help="test-time mirroring (with the ensemble: --accurate)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--scores", type=Path, default=None, help="where the scores are kept (default: runs/scores/…)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    model, _ = load_model(args.weights)
    base = SegmentConfig(flip=args.flip)
    folder = args.scores or Path("runs/scores") / f"{(args.weights or Path('default')).stem}_{args.split}_{args.flip}"
    seqs = sequences(args.davis, args.split)
    segmenter = Segmenter(model, base)
    for seq in seqs:
        if not (folder / f"{seq.name}.npz").is_file():
            dump(segmenter, seq, folder / f"{seq.name}.npz")
            print("scores", seq.name, flush=True)
    with Pool(args.workers, initializer=_start_worker, initargs=(args.weights, args.flip)) as pool:
        rows = dict(pool.map(score, [(seq, folder / f"{seq.name}.npz") for seq in seqs]))
    table = {}
    for name in VARIANTS:
        J = float(np.mean([rows[s.name][name][0] for s in seqs]))
        F = float(np.mean([rows[s.name][name][1] for s in seqs]))
        table[name] = {"J": J, "F": F, "JF": (J + F) / 2, "config": asdict(replace(base, **VARIANTS[name]))}
        table[name]["sequences"] = {s.name: {"J": rows[s.name][name][0], "F": rows[s.name][name][1]} for s in seqs}
        print(f"{name:44s} J {J:5.1f}  F {F:5.1f}  J&F {(J + F) / 2:5.1f}")
    (folder / "results.json").write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
