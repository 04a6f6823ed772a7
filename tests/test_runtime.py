"""The network's runtime: OpenVINO on a CPU gives torch's features and masks, its conversion is cached by the
weights, and a runtime that cannot run is refused with one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_sample
from typer.testing import CliRunner

from vosrr import runtime
from vosrr.cli import app
from vosrr.embedding import Embedder, ModelConfig
from vosrr.feed import fold_batchnorm
from vosrr.runtime import RuntimeUnavailableError, network, resolve_runtime
from vosrr.segmenter import SegmentConfig, Segmenter

pytest.importorskip("openvino")
CPU = torch.device("cpu")
runner = CliRunner()


def _images(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(seed))


def test_openvino_gives_torchs_features(shipped_model: Embedder, tmp_path: Path) -> None:
    model = fold_batchnorm(shipped_model)
    images = _images()
    with torch.no_grad():
        expected = model(images)
    exact, name = network(model, "openvino-f32", CPU, tmp_path)
    assert name == "openvino f32"
    np.testing.assert_allclose(exact(images).numpy(), expected.numpy(), atol=2e-3)
    fast, name = network(model, "openvino", CPU, tmp_path)
    assert name in ("openvino bf16", "openvino f32")  # bfloat16 only where the CPU has it
    got = fast(images)
    assert got.shape == expected.shape and got.dtype == torch.float32
    relative = (got - expected).norm() / expected.norm()
    assert relative < 0.02, relative  # bfloat16 keeps 8 bits of mantissa: about 0.4% per value
    assert torch.equal(fast(images[:1]), fast(images[:1]))  # a fresh output each call, deterministic


def test_the_conversion_is_cached_by_the_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import openvino

    calls: list[int] = []
    convert = openvino.convert_model

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return convert(*args, **kwargs)

    monkeypatch.setattr(openvino, "convert_model", counting)
    torch.manual_seed(0)
    model = fold_batchnorm(Embedder(ModelConfig(channels=32, width=16)))
    images = _images(1)
    first, _ = network(model, "openvino-f32", CPU, tmp_path)
    second, _ = network(model, "openvino-f32", CPU, tmp_path)
    assert len(calls) == 1  # the second run read the cache
    assert torch.equal(first(images), second(images))
    with torch.no_grad():
        next(model.parameters()).add_(0.5)  # new weights: a new key, a new conversion, their features
        expected = model(images)
    changed, _ = network(model, "openvino-f32", CPU, tmp_path)
    assert len(calls) == 2
    np.testing.assert_allclose(changed(images).numpy(), expected.numpy(), atol=2e-3)
    entries = sorted((tmp_path / "openvino").iterdir())
    assert len(entries) == 2 and not [p for p in entries if p.name.startswith(".partial")]
    (entries[0] / "phi.bin").write_bytes(b"damaged")  # a damaged entry is converted again, not trusted
    (entries[1] / "phi.bin").write_bytes(b"damaged")
    again, _ = network(model, "openvino-f32", CPU, tmp_path)
    assert len(calls) == 3
    np.testing.assert_allclose(again(images).numpy(), expected.numpy(), atol=2e-3)


def test_an_unwritable_cache_still_runs(shipped_model: Embedder, tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    run, name = network(fold_batchnorm(shipped_model), "openvino-f32", CPU, blocked / "cache")
    assert name == "openvino f32" and run(_images()).shape == (2, shipped_model.config.channels, 12, 16)


def test_resolve_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_runtime("auto", CPU) == "openvino"
    assert resolve_runtime("auto", torch.device("cuda")) == "torch"
    assert resolve_runtime("torch", CPU) == "torch"
    with pytest.raises(RuntimeUnavailableError, match="CPU only"):
        resolve_runtime("openvino", torch.device("cuda"))
    monkeypatch.setattr(runtime, "_openvino_available", lambda: False)
    assert resolve_runtime("auto", CPU) == "torch"
    with pytest.raises(RuntimeUnavailableError, match="pip install openvino"):
        resolve_runtime("openvino-f32", CPU)
    with pytest.raises(ValueError, match="runtime must be"):
        resolve_runtime("onnx", CPU)  # type: ignore[arg-type]


def test_masks_agree_with_torch(shipped_model: Embedder) -> None:
    frames, labels = make_sample.make_clip(12, 240, 432, 2, 0)
    mask = labels[0]
    results = {}
    for name in ("torch", "openvino-f32", "openvino"):
        segmenter = Segmenter(shipped_model, SegmentConfig(runtime=name))  # type: ignore[arg-type]
        state, first = segmenter.start(frames[0], mask)
        results[name] = np.stack([first] + [t.labels for t in segmenter.track(enumerate(frames[1:], 1), {}, state)])
    assert (results["openvino-f32"] == results["torch"]).mean() > 0.9999
    assert (results["openvino"] == results["torch"]).mean() > 0.998


def test_cli_refuses_an_unknown_runtime(tmp_path: Path) -> None:
    result = runner.invoke(app, ["segment", "x.mp4", "--mask", "m.png", "--runtime", "onnx", "--out", str(tmp_path)])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "error:" in lines[0] and "openvino-f32" in lines[0], lines
