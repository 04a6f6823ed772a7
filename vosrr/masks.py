"""Object masks inside vosrr: the label format, writing DAVIS-style palette PNGs, overlays, and targets.

Reading the files users have is ``vosrr.mask_reader``.

Inside vosrr a mask is a dense label map ``labels[H,W]`` (uint8, 0 = background, 1..K = objects);
``MaskFormat`` remembers how those labels map back to the values of the user's file, so written masks
carry the user's own object ids (0/255 stays 0/255, palette index 3 stays 3).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

__all__ = [
    "MAX_OBJECTS",
    "OVERLAY_STYLES",
    "MaskError",
    "MaskFormat",
    "contour_width",
    "davis_palette",
    "drop_small_parts",
    "overlay",
    "targets",
    "write_mask",
]

#: most objects one solve takes (Y has K + 1 columns); far beyond what DAVIS-style videos hold
MAX_OBJECTS = 32


class MaskError(ValueError):
    """The mask file cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class MaskFormat:
    """How dense labels map to the user's values: ``ids[label]`` is the file's value, ``ids[0] == 0``."""

    ids: tuple[int, ...]
    palette: tuple[tuple[int, int, int], ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def num_objects(self) -> int:
        return len(self.ids) - 1

    @classmethod
    def dense(cls, num_objects: int) -> MaskFormat:
        """Ids 0..K with the DAVIS palette: how vosrr writes label maps that came from no user file."""
        return cls(tuple(range(num_objects + 1)), tuple(davis_palette(num_objects + 1)))


def davis_palette(n: int = 256) -> list[tuple[int, int, int]]:
    """The DAVIS / PASCAL VOC colour map (bit-interleaved), index 0 black."""
    colours = []
    for index in range(n):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colours.append((r, g, b))
    return colours


def write_mask(path: Path, labels: np.ndarray, fmt: MaskFormat) -> None:
    """Write dense labels as a palette PNG holding the user's ids; atomic (temporary file, then rename).

    Ids past 255 (16-bit masks) are written as a 16-bit grey PNG holding them.
    """
    if max(fmt.ids) > 255:
        wide = np.asarray(fmt.ids, dtype=np.uint16)[labels]
        atomic_save(path, Image.fromarray(wide))  # uint16: a 16-bit grey PNG
        return
    ids = np.asarray(fmt.ids, dtype=np.uint8)
    image = Image.fromarray(ids[labels], mode="P")
    palette = davis_palette()
    for value, colour in zip(fmt.ids, fmt.palette, strict=True):
        palette[value] = colour
    image.putpalette([c for rgb in palette for c in rgb])
    atomic_save(path, image)


def atomic_save(path: Path, image: Image.Image) -> None:
    """Save a PIL image to ``path`` through a temporary file in the same folder, then rename.

    The temporary file is created like any other file (the umask applies), so the result has the
    usual permissions; it never outlives a failed save.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        image.save(tmp, format="PNG", compress_level=1)
        os.replace(tmp, path)
    except OSError as error:  # name the file the user will look for, not the temporary one
        raise OSError(error.errno, error.strerror or str(error), str(path)) from error
    finally:
        tmp.unlink(missing_ok=True)


#: how ``overlay`` draws the objects: tinted areas, or their outlines only
OVERLAY_STYLES = ("fill", "contour")


def overlay(
    frame: np.ndarray, labels: np.ndarray, colours: np.ndarray, alpha: float = 0.5, style: str = "fill"
) -> np.ndarray:
    """``overlay(frame[H,W,3] uint8, labels[H,W], colours[K+1,3] uint8) -> frame[H,W,3]`` with the objects drawn.

    ``fill`` tints each object's pixels (``alpha`` of its colour); ``contour`` paints only the boundary pixels,
    those of an object with another label (or the background) within ``contour_width(H, W)`` pixels, in
    the object's colour brightened to full strength (DAVIS's dark red reads badly as a thin line). Everything
    else is the frame as it was.
    """
    if style not in OVERLAY_STYLES:
        raise ValueError(f"unknown overlay style {style!r}; choose from {', '.join(OVERLAY_STYLES)}")
    out = frame.copy()
    if style == "contour":
        width = contour_width(*labels.shape)
        kernel = np.ones((2 * width + 1, 2 * width + 1), dtype=np.uint8)
        edge = (labels > 0) & (cv2.dilate(labels, kernel) != cv2.erode(labels, kernel))
        strength = np.maximum(colours.max(axis=1, keepdims=True), 1).astype(np.float32)
        bright = np.round(colours.astype(np.float32) * (255 / strength)).astype(np.uint8)
        out[edge] = bright[labels[edge]]
        return out
    fg = labels > 0
    tint = colours[labels[fg]].astype(np.float32)
    out[fg] = (frame[fg].astype(np.float32) * (1 - alpha) + tint * alpha).astype(np.uint8)
    return out


def contour_width(height: int, width: int) -> int:
    """Outline thickness in pixels for ``overlay(style="contour")``: 3 at 480p, growing with the frame."""
    return max(1, round(min(height, width) / 160))


def drop_small_parts(labels: np.ndarray, fraction: float) -> np.ndarray:
    """``labels[H,W]`` (0..K) with each object's small parts turned to background.

    A part is a connected region (8-connectivity) of one object's pixels; a part smaller than ``fraction``
    times that object's largest part goes. ``fraction`` 0 keeps everything, 1 only each object's largest part
    (parts of equal size all stay). Stray blobs, far from the object or where another object's scores
    bled across, are what this removes.
    """
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    if fraction == 0:
        return labels
    out = labels.copy()
    for k in np.unique(labels):
        if k == 0:
            continue
        count, parts, stats, _ = cv2.connectedComponentsWithStats((labels == k).astype(np.uint8), connectivity=8)
        if count <= 2:  # background and one part
            continue
        areas = stats[:, cv2.CC_STAT_AREA].astype(np.float64)
        areas[0] = np.inf  # component 0 is everything else
        small = areas < fraction * areas[1:].max()
        out[small[parts]] = 0
    return out


def parts_with_strokes(labels: np.ndarray, strokes: np.ndarray, known: np.ndarray) -> np.ndarray:
    """``labels[H,W]`` (0..K) with each object's parts that hold none of its strokes turned to background.

    A part is a connected region (8-connectivity) of one object's pixels; ``strokes[H,W]`` (0..K) marks, where
    ``known[H,W]`` is True, the pixels a user stroked. An object without strokes keeps all its parts.
    """
    out = labels.copy()
    for k in np.unique(strokes[known]):
        if k == 0:
            continue
        count, parts = cv2.connectedComponents((labels == k).astype(np.uint8), connectivity=8)
        keep = np.zeros(count, bool)
        keep[np.unique(parts[known & (strokes == k)])] = True
        keep[0] = True  # component 0: every pixel that is not object k
        out[~keep[parts]] = 0
    return out


def targets(
    labels: Tensor, num_classes: int, padded: tuple[int, int], stride: int, known: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Labels at frame resolution -> regression targets on the feature grid.

    ``targets(labels[B,H,W] in 0..K, K+1, (H',W') padded size, stride, known[B,H,W] in [0,1] or None)
    -> (Y[B,h*w,K+1], valid[B,h*w])`` with ``h = H'/stride``. Y holds each class's share of the cell's
    known pixels (soft one-hot); ``valid`` is the known fraction of the cell. Padding is unknown, and so
    is any pixel where ``known`` is 0 (weight 0 in the solve and the loss).
    """
    b, h, w = labels.shape
    ph, pw = padded
    onehot = F.one_hot(labels.long(), num_classes).permute(0, 3, 1, 2).float()  # [B,K+1,H,W]
    if known is None:
        inside = torch.ones(b, 1, h, w, dtype=onehot.dtype, device=onehot.device)
    else:
        if known.shape != labels.shape:
            raise ValueError(f"known {tuple(known.shape)} must match labels {tuple(labels.shape)}")
        inside = known.to(onehot.dtype).unsqueeze(1)
        onehot = onehot * inside
    padded_maps = F.pad(torch.cat([onehot, inside], 1), (0, pw - w, 0, ph - h))
    pooled = F.avg_pool2d(padded_maps, stride)  # [B,K+2,h,w]
    valid = pooled[:, -1]
    Y = pooled[:, :-1] / valid.clamp_min(1e-6).unsqueeze(1)
    return Y.flatten(2).transpose(1, 2), valid.flatten(1)
