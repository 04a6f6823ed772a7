"""Shared fixtures: generated clips with exact ground truth, the shipped model, the DAVIS data when present."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from vosrr.checkpoint import DEFAULT_WEIGHTS, load_model, save_checkpoint
from vosrr.embedding import Embedder, ModelConfig
from vosrr.encode import OverlayWriter
from vosrr.masks import MaskFormat, write_mask

ROOT = Path(__file__).resolve().parent.parent
DAVIS = ROOT.parent / "shared" / "davis2016"


def _load_sample_module():  # samples/ is not a package; load its generator by path
    spec = importlib.util.spec_from_file_location("make_sample", ROOT / "samples" / "make_sample.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_sample", module)
    spec.loader.exec_module(module)
    return module


make_sample = _load_sample_module()


@pytest.fixture(scope="session")
def shipped_model() -> Embedder:
    assert DEFAULT_WEIGHTS.is_file(), f"the shipped checkpoint {DEFAULT_WEIGHTS} is missing"
    model, _ = load_model(DEFAULT_WEIGHTS)
    return model


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small checkpoint with random weights (C = 32), for tests of mechanics rather than accuracy."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    save_checkpoint(path, Embedder(ModelConfig(channels=32, width=16)))
    return path


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> Path:
    height, width = frames[0].shape[:2]
    with OverlayWriter(path, width, height, fps, quality=9) as writer:
        for frame in frames:
            writer.write(frame)
    return path


def write_frames(folder: Path, frames: list[np.ndarray], suffix: str = ".png") -> Path:
    """A frame folder (``00000.png``, ...; JPEGs at quality 95), made if needed."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{i:05d}{suffix}", **({"quality": 95} if suffix == ".jpg" else {}))
    return folder


def write_palette_mask(path: Path, labels: np.ndarray) -> Path:
    write_mask(path, labels, MaskFormat.dense(int(labels.max())))
    return path


@pytest.fixture
def clip(tmp_path: Path) -> Callable[..., tuple[Path, Path, list[np.ndarray]]]:
    """``clip(frames, height, width, objects)`` -> (video.mp4, first-frame mask, ground-truth labels)."""

    def make(frames: int = 8, height: int = 160, width: int = 288, objects: int = 2, seed: int = 0):
        images, labels = make_sample.make_clip(frames, height, width, objects, seed)
        video = write_video(tmp_path / "clip.mp4", images)
        mask = write_palette_mask(tmp_path / "clip_mask.png", labels[0])
        return video, mask, labels

    return make


def iou(prediction: np.ndarray, truth: np.ndarray, label: int) -> float:
    a, b = prediction == label, truth == label
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0
