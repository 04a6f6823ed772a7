"""The learned refiner: its plumbing through phi, the segmenter and the checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_sample

from vosrr.checkpoint import load_model, save_checkpoint
from vosrr.embedding import Embedder, ModelConfig
from vosrr.refine import Refiner
from vosrr.segmenter import SegmentConfig, Segmenter


def test_untrained_refiner_is_bilinear_upsampling() -> None:
    torch.manual_seed(0)
    refiner = Refiner(8)
    G = refiner.guide(torch.randn(1, 24, 32, 48), torch.randn(1, 32, 16, 24))
    d = torch.randn(3, 1, 16, 24)
    out = refiner(G, d)
    assert G.shape == (1, 8, 32, 48) and out.shape == (3, 1, 32, 48)
    assert torch.allclose(out, F.interpolate(d, size=(32, 48), mode="bilinear", align_corners=False))
    torch.nn.init.normal_(refiner.out.weight)  # a trained one corrects the upsampling, per object
    changed = refiner(G, d)
    assert not torch.allclose(changed, out)
    assert torch.allclose(changed[1:2], refiner(G, d[1:2]), atol=1e-6)


def test_refiner_rejects_a_mismatched_guide() -> None:
    refiner = Refiner(4)
    with pytest.raises(ValueError, match="guide batch 2"):
        refiner(torch.zeros(2, 4, 8, 8), torch.zeros(3, 1, 4, 4))
    with pytest.raises(ValueError, match="width"):
        Refiner(0)


def test_trunk_fine_levels_are_the_trunk_levels() -> None:
    torch.manual_seed(0)
    model = Embedder(ModelConfig(channels=32, width=16, refiner=8)).eval()
    image = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        f4, levels = model.trunk.fine_and_levels(image)
        plain = model.trunk(image)
        X, G = model.encode(image)
        assert f4.shape == (1, 24, 24, 32) and torch.equal(f4, model.trunk.fine(image))
        assert all(torch.allclose(a, b) for a, b in zip(levels, plain, strict=True))
        assert torch.allclose(X, model(image)) and G is not None and G.shape == (1, 8, 24, 32)


def _segment(segmenter: Segmenter, images: list[np.ndarray], labels: np.ndarray) -> list[np.ndarray]:
    state = segmenter.start(images[0], labels, int(labels.max()))
    return list(segmenter.propagate(state, images[1:]))


def test_segmenter_uses_the_refiner_only_when_refining(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Embedder(ModelConfig(channels=32, width=16, refiner=8))
    images, truth = make_sample.make_clip(4, 160, 224, 2, seed=3)
    plain = Segmenter(model, SegmentConfig(refine=False, online=0, window=0, mirror_reference=False))
    learned = Segmenter(model, SegmentConfig(refine=True, online=0, window=0, mirror_reference=False))
    X, G = learned.encode(images[1], (160, 224))
    assert G is not None and G.shape[-2:] == (40, 56) and torch.allclose(X, plain.features(images[1], (160, 224)))
    assert plain.encode(images[1], (160, 224))[1] is None
    # untrained: bilinear 8 -> 4 -> 1 instead of 8 -> 1, the same masks but for a few boundary pixels
    a, b = _segment(plain, images, truth[0]), _segment(learned, images, truth[0])
    for x, y in zip(a, b, strict=True):
        assert x.shape == y.shape == truth[0].shape and float((x == y).mean()) > 0.98
    # a refiner that says "object" everywhere is what decides the learned path's masks
    with torch.no_grad():
        for seg in (learned,):
            seg.model.refiner.out.bias.fill_(100.0)
    assert all(bool((out > 0).all()) for out in _segment(learned, images, truth[0]))
    path = tmp_path / "refined.pt"
    save_checkpoint(path, model)
    loaded, _ = load_model(path)
    assert loaded.config.refiner == 8 and loaded.refiner is not None
