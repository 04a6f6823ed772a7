"""Object masks: reading whatever PNG a user has, writing DAVIS-style palette PNGs, overlays, and targets.

Inside vosrr a mask is a dense label map ``labels[H,W]`` (uint8, 0 = background, 1..K = objects);
``MaskFormat`` remembers how those labels map back to the values of the user's file, so written masks
carry the user's own object ids (0/255 stays 0/255, palette index 3 stays 3).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor

__all__ = [
    "MAX_OBJECTS",
    "MaskError",
    "MaskFormat",
    "davis_palette",
    "overlay",
    "read_mask",
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


def _interior_values(values: np.ndarray) -> np.ndarray:
    """Values that fill at least one whole 3x3 neighbourhood: real labels, not anti-aliasing ramps."""
    v = values
    same = np.ones(v.shape, dtype=bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            same &= v == np.roll(np.roll(v, dy, axis=0), dx, axis=1)
    found = np.unique(v[same])
    return found if found.size else np.unique(v)


def _snap(values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Map every value to the nearest of ``keep`` (1-D arrays of the same kind)."""
    keep = np.sort(keep)
    pos = np.clip(np.searchsorted(keep, values), 1, max(len(keep) - 1, 1))
    if len(keep) == 1:
        return np.full_like(values, keep[0])
    lo, hi = keep[pos - 1], keep[pos]
    return np.where(np.abs(values.astype(np.int64) - lo) <= np.abs(hi.astype(np.int64) - values), lo, hi)


def read_mask(path: Path) -> tuple[np.ndarray, MaskFormat]:
    """Read a mask PNG -> ``(labels[H,W] uint8 in 0..K, MaskFormat)``.

    Accepts palette PNGs (index = object id), grey PNGs (each value an id: 0/255 binary or 0,1,2,...),
    and RGB(A) colour masks (each colour an object, black = background). Anti-aliased edges, whose
    values fill no interior, are snapped to the nearest real value and reported in ``notes``.
    """
    path = Path(path)
    if not path.is_file():
        raise MaskError(f"mask not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            palette = image.getpalette() if mode == "P" else None
            if mode == "P":
                values = np.asarray(image)
            elif mode in ("RGB", "RGBA", "LA"):
                values = None
                rgb = np.asarray(image.convert("RGBA" if mode != "LA" else "LA"))
            else:
                values = np.asarray(image.convert("L"))
    except (UnidentifiedImageError, OSError) as error:
        raise MaskError(f"cannot read mask {path}: not an image ({error})") from error
    notes: list[str] = []
    if values is None:
        if rgb.shape[-1] == 2:  # LA: grey plus alpha
            grey = np.where(rgb[..., 1] > 0, rgb[..., 0], 0)
            values, colours = grey, None
        else:
            alpha = rgb[..., 3] > 0
            packed = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
            packed = np.where(alpha, packed, 0)
            if np.all((rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])):
                values, colours = packed & 0xFF, None  # a grey image saved as RGB
            else:
                values, colours = packed, True
    else:
        colours = None
    real = _interior_values(values)
    if not np.array_equal(real, np.unique(values)):
        values = _snap(values, real)
        notes.append(f"{path.name}: edge values that are not object ids were snapped to the nearest id")
    ids = [int(v) for v in np.unique(values) if v != 0]
    if not ids:
        raise MaskError(f"mask {path} is empty: it marks no object (all pixels are 0)")
    if len(ids) > MAX_OBJECTS:
        raise MaskError(f"mask {path} has {len(ids)} object ids; vosrr takes at most {MAX_OBJECTS}")
    lookup = {0: 0, **{v: i + 1 for i, v in enumerate(ids)}}
    labels = np.zeros(values.shape, dtype=np.uint8)
    for value, label in lookup.items():
        labels[values == value] = label
    if colours:
        rgbs = [(0, 0, 0)] + [((v >> 16) & 255, (v >> 8) & 255, v & 255) for v in ids]
        out_ids = tuple(range(len(ids) + 1))
        notes.append(f"{path.name}: {len(ids)} colours mapped to object ids 1..{len(ids)}")
        return labels, MaskFormat(out_ids, tuple(rgbs), tuple(notes))
    base = davis_palette()
    if palette is not None:
        flat = list(palette) + [0] * (768 - len(palette))
        base = [tuple(flat[3 * i : 3 * i + 3]) for i in range(256)]  # type: ignore[misc]
    out_ids = (0, *ids)
    return labels, MaskFormat(out_ids, tuple(base[i % 256] for i in out_ids), tuple(notes))


def write_mask(path: Path, labels: np.ndarray, fmt: MaskFormat) -> None:
    """Write dense labels as a palette PNG holding the user's ids; atomic (temporary file, then rename)."""
    ids = np.asarray(fmt.ids, dtype=np.uint8)
    image = Image.fromarray(ids[labels], mode="P")
    palette = davis_palette()
    for value, colour in zip(fmt.ids, fmt.palette, strict=True):
        palette[value] = colour
    image.putpalette([c for rgb in palette for c in rgb])
    atomic_save(path, image)


def atomic_save(path: Path, image: Image.Image) -> None:
    """Save a PIL image to ``path`` through a temporary file in the same folder, then rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png.tmp")
    os.close(fd)
    try:
        image.save(tmp, format="PNG", compress_level=1)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def overlay(frame: np.ndarray, labels: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``overlay(frame[H,W,3] uint8, labels[H,W], colours[K+1,3] uint8) -> frame[H,W,3]`` with objects tinted."""
    fg = labels > 0
    out = frame.copy()
    tint = colours[labels[fg]].astype(np.float32)
    out[fg] = (frame[fg].astype(np.float32) * (1 - alpha) + tint * alpha).astype(np.uint8)
    return out


def targets(labels: Tensor, num_classes: int, padded: tuple[int, int], stride: int) -> tuple[Tensor, Tensor]:
    """Labels at frame resolution -> regression targets on the feature grid.

    ``targets(labels[B,H,W] in 0..K, K+1, (H',W') padded size, stride) -> (Y[B,h*w,K+1], valid[B,h*w])``
    with ``h = H'/stride``. Y holds each class's area fraction in the cell (soft one-hot); ``valid`` is
    the fraction of the cell inside the real frame (padding is unknown, weight 0).
    """
    b, h, w = labels.shape
    ph, pw = padded
    onehot = F.one_hot(labels.long(), num_classes).permute(0, 3, 1, 2).float()  # [B,K+1,H,W]
    inside = torch.ones(b, 1, h, w, dtype=onehot.dtype, device=onehot.device)
    padded_maps = F.pad(torch.cat([onehot, inside], 1), (0, pw - w, 0, ph - h))
    pooled = F.avg_pool2d(padded_maps, stride)  # [B,K+2,h,w]
    valid = pooled[:, -1]
    Y = pooled[:, :-1] / valid.clamp_min(1e-6).unsqueeze(1)
    return Y.flatten(2).transpose(1, 2), valid.flatten(1)
