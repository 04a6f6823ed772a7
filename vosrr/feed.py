"""Frames to features: the network's side of the data path.

``Feed`` holds the inference copy of phi (batch norms folded, channels-last, float16 autocast on CUDA) and
turns frames into features ``X``. Features do not depend on the per-video state, so ``chunks`` runs the
network on several frames at once, ahead of the sequential part of the frame loop.

    frame[H,W,3] uint8 -> resize to the working size -> pad to 32 -> normalise -> phi -> X[h*w, C] float32
"""

from __future__ import annotations

import contextlib
import copy
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

import cv2
import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import fuse_conv_bn_eval

from vosrr.embedding import Phi, padded_size
from vosrr.runtime import Network, network
from vosrr.state import SegmentConfig

__all__ = ["Feed", "fold_batchnorm", "resize_frame"]

T = TypeVar("T")

#: frames per network batch when ``SegmentConfig.chunk`` is None
GPU_CHUNK, CPU_CHUNK = 16, 1


def resize_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``frame[H,W,...] -> [size]``: area averaging to shrink, bilinear to grow; the same array if already sized."""
    if frame.shape[:2] == size:
        return frame
    shrink = size[0] * size[1] < frame.shape[0] * frame.shape[1]
    return cv2.resize(frame, (size[1], size[0]), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


class Feed:
    """The network and how frames reach it. The caller's model is left as it was (an inference copy is kept)."""

    def __init__(self, model: Phi, config: SegmentConfig, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.config = config
        self.model = fold_batchnorm(model).to(self.device).to(memory_format=torch.channels_last)
        # CUDA only: the network (trunk + head) runs under autocast in this dtype (None: float32 throughout);
        # X, the statistics, the solve and W stay float32. float16 rather than bfloat16: its 3 more mantissa
        # bits flip 4x fewer pixels (99.98% vs 99.92% agreement with float32 on the sample, CPU autocast),
        # and MobileNetV2's bounded activations are far from float16's range limit.
        self.amp_dtype: torch.dtype | None = torch.float16 if self.device.type == "cuda" else None
        # per-channel normalisation for the CPU input path (the same float32 values as Embedder.preprocess)
        self._mean = (*self.model.mean.flatten().tolist(), 0.0)
        self._std = (*self.model.std.flatten().tolist(), 1.0)
        self.network: Network
        """phi as it runs (torch, or a runtime made for CPU inference)"""
        self.network, self.runtime = network(self.model, config.runtime, self.device)
        """the runtime's name as users see it (``torch``, ``openvino bf16``, ...)"""
        default = GPU_CHUNK if self.device.type == "cuda" else CPU_CHUNK
        self.chunk = config.chunk or default
        """frames per network batch in ``chunks``"""

    def work_size(self, height: int, width: int) -> tuple[int, int]:
        """The size frames of ``height x width`` are processed at (``config.scale``, capped by ``max_side``)."""
        scale = self.config.scale
        side = self.config.max_side
        if side is not None and max(height, width) * scale > side:
            scale = side / max(height, width)
        if scale == 1:
            return height, width
        return max(8, round(height * scale)), max(8, round(width * scale))

    def image(self, frame: np.ndarray, work: tuple[int, int]) -> Tensor:
        """``frame[H,W,3] uint8 -> image[1,3,H',W']``: resized to ``work``, padded, normalised, channels_last.

        The same values as ``Embedder.preprocess``: the replicate padding is done on the uint8 frame (it
        commutes with the per-pixel normalisation); on CPU the normalisation runs in OpenCV, which is
        bit-identical and does not wait on torch's thread pool; on CUDA it runs on the device after a
        non-blocking upload of the uint8 frame.
        """
        frame = np.ascontiguousarray(resize_frame(frame, work))
        ph, pw = padded_size(*work)
        if (ph, pw) != tuple(work):
            frame = cv2.copyMakeBorder(frame, 0, ph - work[0], 0, pw - work[1], cv2.BORDER_REPLICATE)
        with torch.inference_mode():
            if self.device.type == "cpu":
                x = frame.astype(np.float32)
                cv2.subtract(x, self._mean, dst=x)
                cv2.divide(x, self._std, dst=x)
                return torch.from_numpy(x).unsqueeze(0).permute(0, 3, 1, 2)
            pixels = torch.from_numpy(frame)
            if self.device.type == "cuda":
                pixels = pixels.pin_memory()
            return self.model.preprocess(pixels.unsqueeze(0).to(self.device, non_blocking=True))

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """The context the network runs in: autocast to ``amp_dtype`` on CUDA, nothing on CPU."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def features(self, frame: np.ndarray, work: tuple[int, int]) -> Tensor:
        """``frame[H,W,3] uint8 -> X[h*w, C]`` float32 at the working size (inference mode)."""
        return self.batch([frame], work)[0]

    def batch(self, frames: Sequence[np.ndarray], work: tuple[int, int]) -> Tensor:
        """``B frames[H,W,3] uint8 -> X[B, h*w, C]`` float32: one network call for all of them.

        Under ``config.flip`` each frame's features are the mean of its own and its mirror image's (the padded
        image is mirrored, so the two grids align cell for cell); the mirrors go in the same batch.
        """
        with torch.inference_mode():
            images = torch.cat([self.image(frame, work) for frame in frames])
            b = images.shape[0]
            if self.config.flip:
                images = torch.cat([images, images.flip(-1)])
            with self.autocast():
                X = self.network(images.contiguous(memory_format=torch.channels_last))
            if self.config.flip:
                X = (X[:b] + X[b:].flip(-1)) / 2
            return X.flatten(2).transpose(1, 2).float()

    def chunks(
        self, items: Iterable[T], frame_of: Callable[[T], np.ndarray], work: tuple[int, int]
    ) -> Iterator[tuple[T, Tensor]]:
        """``(item, X[h*w, C])`` for each of ``items``, in order, with the network run on ``chunk`` frames at once.

        ``frame_of(item)`` gives the item's frame. At most ``chunk`` frames and their features are held.
        """
        iterator = iter(items)
        while batch := list(itertools.islice(iterator, self.chunk)):
            X = self.batch([frame_of(item) for item in batch], work)
            yield from zip(batch, X, strict=True)


def fold_batchnorm(model: Phi) -> Phi:
    """An eval-mode copy of ``model`` with every ``Conv2d -> BatchNorm2d`` pair of a ``Sequential`` folded into one
    convolution (the same function up to float rounding, about a third less work in the trunk on CPU)."""
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in itertools.pairwise(names):
            conv, norm = module._modules[first], module._modules[second]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d) and norm.track_running_stats:
                module._modules[first] = fuse_conv_bn_eval(conv, norm)
                module._modules[second] = nn.Identity()
    return folded
