"""Sharper boundaries than the 1/8-resolution scores give: a learned refiner, or a guided filter.

The ridge adaptor predicts on the stride-8 grid; plain bilinear upsampling gives rounded, blobby edges.

- ``Refiner`` (learned, in checkpoints that have one): a small convolutional net that reads the trunk's
  stride-4 and stride-8 features and each object's stride-8 logit, and returns a corrected logit at
  stride 4 (a residual on the logit's bilinear upsampling). It is trained after phi, with phi frozen,
  on the same episodes (``vosrr train --refiner-epochs``).
- ``guided_filter`` (no training): fits, in every window, a local linear model ``q = a * I + b`` from the
  frame's grey levels ``I`` to the upsampled scores, so object boundaries snap to image edges. It costs a
  handful of box filters, computed at 1/``subsample`` resolution.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vosrr.backbone import FINE_CHANNELS, LEVEL_CHANNELS

__all__ = ["Refiner", "guided_filter"]


class Refiner(nn.Module):
    """Coarse object logits at stride 8 -> corrected logits at stride 4, guided by the trunk's fine features.

    ``guide(f4[B,24,H/4,W/4], f8[B,32,H/8,W/8]) -> G[B,width,H/4,W/4]`` depends on the frame only (once a
    frame); ``forward(G[1 or K,width,H/4,W/4], d[K,1,H/8,W/8]) -> logits[K,1,H/4,W/4]`` refines each
    object's logit against the background. The last convolution starts at zero, so an untrained refiner
    is bilinear upsampling.
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"the refiner's width must be at least 1, got {width}")
        self.lateral4 = nn.Conv2d(FINE_CHANNELS, width, 1)
        self.lateral8 = nn.Conv2d(LEVEL_CHANNELS[0], width, 1)
        self.fuse = nn.Conv2d(width + 1, width, 3, padding=1)
        self.mix = nn.Conv2d(width, width, 3, padding=2, dilation=2)
        self.out = nn.Conv2d(width, 1, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def guide(self, f4: Tensor, f8: Tensor) -> Tensor:
        up = F.interpolate(self.lateral8(f8), size=f4.shape[-2:], mode="bilinear", align_corners=False)
        return F.relu(self.lateral4(f4) + up)

    def forward(self, G: Tensor, d: Tensor) -> Tensor:
        if G.shape[0] not in (1, d.shape[0]):
            raise ValueError(f"guide batch {G.shape[0]} must be 1 or the logits' batch {d.shape[0]}")
        s = F.interpolate(d, size=G.shape[-2:], mode="bilinear", align_corners=False)
        x = torch.cat([G.expand(d.shape[0], -1, -1, -1), torch.tanh(s / 4)], dim=1)
        x = F.relu(self.mix(F.relu(self.fuse(x))))
        return s + self.out(x)


def guided_filter(
    guide: np.ndarray, scores: np.ndarray, radius: int = 8, eps: float = 1e-2, subsample: int = 4
) -> np.ndarray:
    """``guided_filter(guide[H,W,3] uint8, scores[K,H,W] float32) -> scores[K,H,W]`` filtered with the frame.

    ``radius`` is the window radius in full-resolution pixels, ``eps`` the regulariser (larger = smoother).
    """
    height, width = guide.shape[:2]
    small = (max(1, width // subsample), max(1, height // subsample))
    grey = cv2.cvtColor(guide, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    g = cv2.resize(grey, small, interpolation=cv2.INTER_AREA)
    r = max(1, radius // subsample)
    ksize = (2 * r + 1, 2 * r + 1)

    def box(x: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(x, -1, ksize, borderType=cv2.BORDER_REFLECT)

    mean_g = box(g)
    var_g = box(g * g) - mean_g * mean_g
    out = np.empty_like(scores, dtype=np.float32)
    for k in range(scores.shape[0]):
        p = cv2.resize(scores[k].astype(np.float32), small, interpolation=cv2.INTER_AREA)
        mean_p = box(p)
        a = (box(g * p) - mean_g * mean_p) / (var_g + eps)
        b = mean_p - a * mean_g
        a_full = cv2.resize(box(a), (width, height), interpolation=cv2.INTER_LINEAR)
        b_full = cv2.resize(box(b), (width, height), interpolation=cv2.INTER_LINEAR)
        out[k] = a_full * grey + b_full
    return out
