"""Write the record that sits beside the shipped checkpoint: its sha256, training configuration and history,
and the DAVIS numbers measured with it (from a `vosrr eval` results.json).

    vosrr eval --split val --davis PATH --out runs/eval_val
    python benchmarks/record.py runs/eval_val/results.json [--weights weights/vosrr_mnv2.pt] [--started-from OLD.json]

For an ensemble checkpoint (`vosrr export A.pt B.pt`) the record holds each member's training record. A checkpoint
fine-tuned from earlier weights (`vosrr train --init`) keeps, with ``--started-from``, the earlier record's training
(configuration, history, sha256) under ``started_from``.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from vosrr.checkpoint import DEFAULT_WEIGHTS, load_checkpoint, sha256


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--started-from", type=Path, help="the record of the weights this run started from")
    args = parser.parse_args()
    payload = load_checkpoint(args.weights)
    results = json.loads(args.results.read_text())
    if "members" in payload:  # an ensemble: each member's training record
        training = {"members": payload["members"]}
    else:
        training = {
            "epoch": payload.get("epoch"),
            "train_config": payload.get("train_config"),
            "train_history": payload.get("history"),
        }
    if args.started_from is not None:
        earlier = json.loads(args.started_from.read_text())
        kept = ("checkpoint", "sha256", "epoch", "train_config", "train_history", "started_from")
        training["started_from"] = {k: earlier[k] for k in kept if k in earlier}
        training["started_from"]["davis2016_val_mean"] = earlier.get("davis2016_val", {}).get("mean")
    record = {
        "checkpoint": args.weights.name,
        "sha256": sha256(args.weights),
        "model_config": payload["config"],
        **training,
        "davis2016_val": {
            "segment_config": results["config"],
            "mean": results["mean"],
            "sequences": results["sequences"],
            "device": results["device"],
            "host": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        },
    }
    target = args.weights.with_suffix(".json")
    target.write_text(json.dumps(record, indent=2) + "\n")
    print(target, f"J {results['mean']['J']:.1f}  F {results['mean']['F']:.1f}  J&F {results['mean']['JF']:.1f}")


if __name__ == "__main__":
    main()
