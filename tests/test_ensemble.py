"""Ensembles: several embedders as one phi, one solve; `vosrr export A B` writes one checkpoint of them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import iou
from PIL import Image
from typer.testing import CliRunner

from vosrr.checkpoint import ACCURATE_WEIGHTS, WeightsError, ensemble_checkpoint, load_model, save_checkpoint
from vosrr.cli import _model_choice, app
from vosrr.embedding import Embedder, Ensemble, EnsembleConfig, ModelConfig
from vosrr.segmenter import SegmentConfig, Segmenter

PLAIN = SegmentConfig(window=0, online=0, refine=False, mirror_reference=False)


def _members() -> tuple[Embedder, Embedder]:
    torch.manual_seed(0)
    first = Embedder(ModelConfig(channels=16, width=8, lam=3.0)).eval()
    second = Embedder(ModelConfig(channels=16, width=8, lam=7.0, trunk="efficientnet_lite0")).eval()
    with torch.no_grad():
        second.scale.fill_(6.0)
    return first, second


def _frames() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    reference = rng.integers(0, 256, (96, 160, 3), dtype=np.uint8)
    query = rng.integers(0, 256, (96, 160, 3), dtype=np.uint8)
    labels = np.zeros((96, 160), np.uint8)
    labels[30:70, 40:100] = 1
    return reference, query, labels


def _scores(model: Embedder | Ensemble, config: SegmentConfig) -> torch.Tensor:
    reference, query, labels = _frames()
    segmenter = Segmenter(model, config)
    state = segmenter.start(reference, labels)[0]
    return segmenter.scores(state, segmenter.features(query, state.work_size))


def test_one_block_per_member_sums_the_members_own_solves() -> None:
    # members with different trunks (so different input normalisations) and different learned lambdas
    first, second = _members()
    ensemble = Ensemble.of(first, second).eval()
    assert ensemble.config.channels == 32
    assert Segmenter(ensemble, PLAIN).blocks == 2
    torch.testing.assert_close(
        _scores(ensemble, PLAIN), _scores(first, PLAIN) + _scores(second, PLAIN), rtol=1e-4, atol=1e-5
    )


def test_blocks_split_each_member() -> None:
    first, second = _members()
    ensemble = Ensemble.of(first, second).eval()
    split = replace(PLAIN, blocks=2)
    assert Segmenter(ensemble, split).blocks == 4
    combined = _scores(ensemble, split)
    torch.testing.assert_close(combined, _scores(first, split) + _scores(second, split), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(combined, _scores(ensemble, PLAIN), atol=1e-4)


def test_logits_are_the_mean_of_the_members_logits() -> None:
    # X W sums the members' scores; with equal learned scales the ensemble's logit is their mean logit
    first, second = _members()
    with torch.no_grad():
        second.scale.copy_(first.scale)
        second.offset.fill_(-2.0)
    ensemble = Ensemble.of(first, second)
    p1, p2 = torch.randn(50), torch.randn(50)
    with torch.no_grad():
        torch.testing.assert_close(ensemble.logits(p1 + p2), (first.logits(p1) + second.logits(p2)) / 2)


def test_an_ensemble_needs_two_members_of_one_width() -> None:
    with pytest.raises(ValueError, match="at least two"):
        EnsembleConfig((ModelConfig(),))
    with pytest.raises(ValueError, match="same C"):
        EnsembleConfig((ModelConfig(channels=32), ModelConfig(channels=64)))


def test_ensemble_checkpoint_round_trip_and_cli(tmp_path: Path) -> None:
    first, second = _members()
    save_checkpoint(tmp_path / "a.pt", first, epoch=3, history=[0.5])
    save_checkpoint(tmp_path / "b.pt", second, epoch=7)
    runner = CliRunner()
    args = ["export", str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "--out", str(tmp_path / "e.pt")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "e.pt.sha256").is_file()
    loaded, payload = load_model(tmp_path / "e.pt")
    assert isinstance(loaded, Ensemble)
    assert [m["trunk"] for m in payload["config"]["members"]] == ["mobilenet_v2", "efficientnet_lite0"]
    assert [(m["source"], m["epoch"]) for m in payload["members"]] == [("a.pt", 3), ("b.pt", 7)]
    image = loaded.preprocess(torch.randint(0, 256, (1, 64, 96, 3), dtype=torch.uint8))
    with torch.no_grad():
        torch.testing.assert_close(loaded(image), Ensemble.of(first, second).eval()(image))
    # an ensemble is not a member, and one checkpoint is not an ensemble
    with pytest.raises(WeightsError, match="already an ensemble"):
        ensemble_checkpoint([tmp_path / "e.pt", tmp_path / "a.pt"], tmp_path / "f.pt")
    with pytest.raises(WeightsError, match="at least two"):
        ensemble_checkpoint([tmp_path / "a.pt"], tmp_path / "f.pt")


def test_accurate_segments_with_the_shipped_ensemble_and_flip(clip, tmp_path: Path) -> None:
    assert ACCURATE_WEIGHTS.is_file(), f"the shipped ensemble {ACCURATE_WEIGHTS} is missing"
    model, _ = load_model(ACCURATE_WEIGHTS)
    assert isinstance(model, Ensemble)
    assert [m.trunk for m in model.config.members] == ["mobilenet_v2", "efficientnet_lite0"]
    video, mask, truth = clip(frames=4, height=192, width=320)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["segment", str(video), "--mask", str(mask), "--out", str(out), "--device", "cpu", "--accurate"]
    )
    assert result.exit_code == 0, result.output
    pngs = sorted((out / "masks").glob("*.png"))
    assert len(pngs) == 4
    scores = [iou(np.asarray(Image.open(p)), truth[i], k) for i, p in enumerate(pngs[1:], 1) for k in (1, 2)]
    # a sanity bound on generated shapes (both shipped checkpoints score about 0.7 here); the accuracy check
    # is tests/test_davis_regression.py, on DAVIS sequences
    assert np.mean(scores) > 0.6, scores


def test_accurate_with_weights_is_refused(clip, tmp_path: Path, tiny_weights: Path) -> None:
    video, mask, _ = clip(frames=2)
    args = ["segment", str(video), "--mask", str(mask), "--accurate", "--weights", str(tiny_weights)]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "drop --weights" in result.output


def test_accurate_turns_flip_on_unless_told_otherwise() -> None:
    assert _model_choice(None, accurate=True, flip=None) == (ACCURATE_WEIGHTS, True)
    assert _model_choice(None, accurate=True, flip=False) == (ACCURATE_WEIGHTS, False)
    assert _model_choice(None, accurate=False, flip=None) == (None, False)
    assert _model_choice(Path("w.pt"), accurate=False, flip=True) == (Path("w.pt"), True)
