"""Ablation on DAVIS 2016 (val, or --split train): several segmenter configurations from one feature pass per frame.

    python benchmarks/ablation.py --davis PATH [--weights W] [--split val] [--sequences a,b] [--out runs/ablation]

Features are computed once per frame for each distinct (scale, flip, max_side) and shared by the
configurations that agree on them; each configuration keeps its own ``VideoState`` and writes its own
masks, which vos-benchmark then scores. Prints a table and writes ``results.json``.
Configurations: block splitting k = 1, 2, 4, 8; class balancing off; online updates; the
previous-mask window; guided-filter refinement; the mirrored reference; lambda other than the learned one;
test-time mirroring and scale; and the shipped default. Configuration names hold no commas
(``--configs`` splits on them).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from vosrr.checkpoint import load_model
from vosrr.davis import sequences
from vosrr.evaluate import score_sequence
from vosrr.mask_reader import read_mask
from vosrr.masks import write_mask
from vosrr.segmenter import SegmentConfig, Segmenter
from vosrr.video import open_video

#: the paper's inference: one solve from the reference frame, bilinear upsampling and argmax, nothing else
PAPER = SegmentConfig(online=0.0, window=0.0, refine=False, mirror_reference=False, upsample="bilinear", margin=0.0)
#: how masks were made from the scores before the decision margin (the defaults up to this ablation)
GUIDED_ARGMAX: dict[str, Any] = {"upsample": "bilinear", "margin": 0.0, "refine": True}
#: variants of the last step, scores -> labels, applied to the default and to the default with --flip
LABEL_VARIANTS: dict[str, dict[str, Any]] = {
    "as before (bilinear + guided filter + argmax)": GUIDED_ARGMAX,
    "with bilinear upsampling": {"upsample": "bilinear"},
    "with margin 0": {"margin": 0.0},
    "with margin 0.15": {"margin": 0.15},
    "with margin 0.2": {"margin": 0.2},
    "with the guided filter": {"refine": True},
    "with min part 0.1": {"min_part": 0.1},
}
CONFIGS: dict[str, SegmentConfig] = {
    "paper (k=1 balanced)": PAPER,
    "k=2": replace(PAPER, blocks=2),
    "k=4": replace(PAPER, blocks=4),
    "k=8": replace(PAPER, blocks=8),
    "no class balance": replace(PAPER, balance=False),
    "online 0.1": replace(PAPER, online=0.1),
    "window": replace(PAPER, window=1.0),
    "refine": replace(PAPER, refine=True),
    "window + refine": replace(PAPER, window=1.0, refine=True),
    "window + online 0.1": replace(PAPER, window=1.0, online=0.1),
    "window + refine + online 0.05": replace(PAPER, window=1.0, refine=True, online=0.05),
    "window + refine + online 0.1": replace(PAPER, window=1.0, refine=True, online=0.1),
    "window + refine + online 0.2": replace(PAPER, window=1.0, refine=True, online=0.2),
    "window + refine + online 0.1 (stride 2)": replace(PAPER, window=1.0, refine=True, online=0.1, online_stride=2),
    "window 0.5 + refine + online 0.1": replace(PAPER, window=0.5, refine=True, online=0.1),
    "default without the mirrored reference": SegmentConfig(mirror_reference=False),
    "default with lambda 1.25": SegmentConfig(lam=1.25),
    "default with lambda 2.5": SegmentConfig(lam=2.5),
    "default with lambda 10": SegmentConfig(lam=10.0),
    "default + flip": SegmentConfig(flip=True),
    "default at scale 1.25": SegmentConfig(scale=1.25),
    "default at scale 1.5": SegmentConfig(scale=1.5),
    "default + flip at scale 1.25": SegmentConfig(flip=True, scale=1.25),
    "default with k=2 blocks": SegmentConfig(blocks=2),
    **{f"default {name}": replace(SegmentConfig(), **change) for name, change in LABEL_VARIANTS.items()},
    **{
        f"default + flip {name}": replace(SegmentConfig(flip=True), **change) for name, change in LABEL_VARIANTS.items()
    },
    "default": SegmentConfig(),
}


def feature_key(config: SegmentConfig) -> tuple[float, bool, int | None]:
    """Configurations that agree on this see the same features."""
    return config.scale, config.flip, config.max_side


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--davis", type=Path, required=True)
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--split", default="val", help="DAVIS split: val, or train to choose options off val")
    parser.add_argument("--sequences", default=None)
    parser.add_argument("--configs", default=None, help="comma-separated subset of the configuration names")
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    args = parser.parse_args()
    model, _ = load_model(args.weights)
    names = list(CONFIGS) if args.configs is None else [n.strip() for n in args.configs.split(",")]
    segs = {name: Segmenter(model, CONFIGS[name]) for name in names}
    seqs = sequences(args.davis, args.split)
    if args.sequences:
        wanted = set(args.sequences.split(","))
        seqs = [s for s in seqs if s.name in wanted]
    gt_root = args.davis / "Annotations" / "480p"
    scores: dict[str, dict[str, tuple[float, float]]] = {name: {} for name in names}
    feature_seconds = 0.0
    groups = {feature_key(seg.config): name for name, seg in segs.items()}  # one segmenter per feature key
    frames_total = 0
    for seq in seqs:
        labels, fmt = read_mask(seq.masks[0])
        _, frames = open_video(seq.frames[0].parent)
        first = next(frames)
        states = {name: seg.start(first, labels)[0] for name, seg in segs.items()}
        for name in names:
            folder = args.out / name.replace(" ", "_") / seq.name
            folder.mkdir(parents=True, exist_ok=True)
            write_mask(folder / "00000.png", labels, fmt)
        for index, frame in enumerate(frames, 1):
            tic = time.perf_counter()
            X = {key: segs[name].features(frame, states[name].work_size) for key, name in groups.items()}
            feature_seconds += time.perf_counter() - tic
            frames_total += 1
            for name, seg in segs.items():
                states[name], out = seg.advance(states[name], frame, X[feature_key(seg.config)])
                write_mask(args.out / name.replace(" ", "_") / seq.name / f"{index:05d}.png", out, fmt)
        for name in names:
            scores[name][seq.name] = score_sequence(gt_root, args.out / name.replace(" ", "_"), seq.name)
        print(seq.name, {n: round(scores[n][seq.name][0], 1) for n in names}, flush=True)
    table = {}
    for name in names:
        J = float(np.mean([j for j, _ in scores[name].values()]))
        F = float(np.mean([f for _, f in scores[name].values()]))
        table[name] = {
            "J": J,
            "F": F,
            "JF": (J + F) / 2,
            "config": asdict(CONFIGS[name]),
            "sequences": {s: {"J": j, "F": f} for s, (j, f) in scores[name].items()},
        }
        print(f"{name:32s} J {J:5.1f}  F {F:5.1f}  J&F {(J + F) / 2:5.1f}")
    print(
        f"feature passes ({len(groups)} kinds): {feature_seconds / max(1, frames_total):.3f} s/frame "
        f"over {frames_total} frames"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
