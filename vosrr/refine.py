"""Edge-aware upsampling of the 1/8-resolution scores: a fast guided filter (He et al., 2010/2015).

The ridge adaptor predicts on the stride-8 grid; plain bilinear upsampling gives rounded, blobby edges.
The guided filter fits, in every window, a local linear model ``q = a * I + b`` from the frame's grey
levels ``I`` to the upsampled scores, so object boundaries snap to image edges. It needs no training
and costs a handful of box filters, computed at 1/``subsample`` resolution.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["guided_filter"]


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
