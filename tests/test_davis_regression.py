"""Accuracy regression: each shipped checkpoint on two DAVIS 2016 val sequences reaches its recorded J (minus 2).

The recorded numbers sit beside each checkpoint (weights/vosrr_mnv2.json and weights/vosrr_ensemble.json,
written from `vosrr eval` on the full-quality val set by benchmarks/record.py), with the segmenter settings
they were measured with. Skipped when ../shared/davis2016 is absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import DAVIS

from vosrr.checkpoint import ACCURATE_WEIGHTS, DEFAULT_WEIGHTS, load_model, sha256
from vosrr.evaluate import evaluate
from vosrr.segmenter import SegmentConfig, Segmenter

SEQUENCES = ["blackswan", "car-shadow"]


@pytest.mark.skipif(not (DAVIS / "JPEGImages" / "480p" / "blackswan").is_dir(), reason="DAVIS 2016 data absent")
@pytest.mark.parametrize("weights", [DEFAULT_WEIGHTS, ACCURATE_WEIGHTS], ids=lambda p: p.stem)
def test_shipped_weights_keep_their_davis_accuracy(weights: Path, tmp_path: Path) -> None:
    record = json.loads(weights.with_suffix(".json").read_text())
    assert record["sha256"] == sha256(weights), "the record is of another checkpoint"
    recorded = record["davis2016_val"]["sequences"]
    config = SegmentConfig(**record["davis2016_val"]["segment_config"])
    model, _ = load_model(weights)
    result = evaluate(Segmenter(model, config), DAVIS, "val", tmp_path, SEQUENCES)
    for name in SEQUENCES:
        assert result["sequences"][name]["J"] >= recorded[name]["J"] - 2.0, (name, result["sequences"][name])
