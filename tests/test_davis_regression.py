"""Accuracy regression: the shipped weights on two DAVIS 2016 val sequences reach their recorded J (minus 2).

The recorded numbers sit beside the checkpoint (weights/vosrr_mnv2.json, written by `vosrr eval` on the
full-quality val set). Skipped when ../shared/davis2016 is absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import DAVIS

from vosrr.checkpoint import DEFAULT_WEIGHTS
from vosrr.evaluate import evaluate
from vosrr.segmenter import SegmentConfig, Segmenter

SEQUENCES = ["blackswan", "car-shadow"]


@pytest.mark.skipif(not (DAVIS / "JPEGImages" / "480p" / "blackswan").is_dir(), reason="DAVIS 2016 data absent")
def test_shipped_weights_keep_their_davis_accuracy(shipped_model, tmp_path: Path) -> None:
    record = json.loads(DEFAULT_WEIGHTS.with_suffix(".json").read_text())
    recorded = record["davis2016_val"]["sequences"]
    config = SegmentConfig(**record["davis2016_val"]["segment_config"])
    result = evaluate(Segmenter(shipped_model, config), DAVIS, "val", tmp_path, SEQUENCES)
    for name in SEQUENCES:
        assert result["sequences"][name]["J"] >= recorded[name]["J"] - 2.0, (name, result["sequences"][name])
