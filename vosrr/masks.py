"""Object masks: reading whatever PNG a user has, writing DAVIS-style palette PNGs, overlays, and targets.

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
from PIL import Image, UnidentifiedImageError
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


def _interior_values(values: np.ndarray) -> np.ndarray:
    """Values that fill at least one whole 3x3 neighbourhood: real labels, not anti-aliasing ramps."""
    padded = np.pad(values, 1, mode="edge")
    height, width = values.shape
    same = np.ones(values.shape, dtype=bool)
    for dy in range(3):
        for dx in range(3):
            same &= values == padded[dy : dy + height, dx : dx + width]
    found = np.unique(values[same])
    return found if found.size else np.unique(values)


def _snap_grey(values: np.ndarray, real: np.ndarray) -> np.ndarray:
    """Grey values strictly between two real values (ramps) -> the nearest real one; others are kept."""
    pos = np.clip(np.searchsorted(real, values), 1, len(real) - 1)
    lo, hi = real[pos - 1], real[pos]
    ramp = (values > real[0]) & (values < real[-1]) & ~np.isin(values, real)
    nearest = np.where(values.astype(np.int64) - lo <= hi.astype(np.int64) - values, lo, hi)
    return np.where(ramp, nearest, values)


def _snap_colours(packed: np.ndarray, real: np.ndarray) -> np.ndarray:
    """Packed 0xRRGGBB colours -> the nearest (Euclidean RGB) of the ``real`` colours."""
    used, inverse = np.unique(packed, return_inverse=True)

    def rgb(v: np.ndarray) -> np.ndarray:
        return np.stack([(v >> 16) & 255, (v >> 8) & 255, v & 255], -1).astype(np.float32)

    distance = ((rgb(used)[:, None] - rgb(real)[None]) ** 2).sum(-1)
    return real[distance.argmin(1)][inverse].reshape(packed.shape)


def _open(path: Path) -> tuple[np.ndarray, str, list[int] | None]:
    """``(pixels, kind, palette)``: kind is ``palette`` (indices), ``grey`` (values) or ``colour`` (0xRRGGBB)."""
    if not path.exists():
        raise MaskError(f"mask not found: {path}; pass the first frame's mask PNG with --mask")
    if not path.is_file():
        raise MaskError(f"mask {path} is a folder, not an image; pass the first frame's mask PNG with --mask")
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("P", "LA"):  # indices or grey values (transparent pixels are background)
                bands = np.asarray(image).reshape(image.height, image.width, -1)
                values = np.where(bands[..., -1] > 0, bands[..., 0], 0) if bands.shape[-1] == 2 else bands[..., 0]
                return values, "grey" if image.mode == "LA" else "palette", image.getpalette()
            if image.mode not in ("RGB", "RGBA"):
                return np.asarray(image.convert("L")), "grey", None
            rgba = np.asarray(image.convert("RGBA")).astype(np.int64)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise MaskError(f"cannot read mask {path}: not an image ({error}); pass a PNG mask with --mask") from error
    r, g, b, a = (rgba[..., i] for i in range(4))
    if np.all((r == g) & (g == b)):
        return np.where(a > 0, b, 0), "grey", None  # a grey mask saved as RGB
    return np.where(a > 0, (r << 16) | (g << 8) | b, 0), "colour", None


def read_mask(path: Path) -> tuple[np.ndarray, MaskFormat]:
    """Read a mask PNG -> ``(labels[H,W] uint8 in 0..K, MaskFormat)``.

    Accepts palette PNGs (index = object id), grey PNGs (each value an id: 0/255 binary or 0,1,2,...),
    and RGB(A) colour masks (each colour an object, black = background; DAVIS palette colours keep
    their DAVIS ids). Anti-aliased edges of grey and colour masks, values that fill no interior, are
    snapped to the nearest real value and reported in ``notes``; palette indices are taken as they are.
    """
    path = Path(path)
    values, kind, palette = _open(path)
    notes: list[str] = []
    if kind != "palette":
        real = _interior_values(values)
        snapped = _snap_grey(values, real) if kind == "grey" else _snap_colours(values, real)
        if not np.array_equal(snapped, values):
            values = snapped
            notes.append(f"{path.name}: anti-aliased edge values were snapped to the nearest object id")
    found = [int(v) for v in np.unique(values) if v != 0]
    if not found:
        raise MaskError(f"mask {path} is empty: it marks no object (all pixels are 0); draw the objects to track")
    if len(found) > MAX_OBJECTS:
        raise MaskError(
            f"mask {path} has {len(found)} object ids; vosrr takes at most {MAX_OBJECTS} "
            "(merge objects, or save the mask without anti-aliasing or JPEG compression)"
        )
    base = davis_palette()
    if palette is not None:
        flat = list(palette) + [0] * (768 - len(palette))
        base = [(flat[3 * i], flat[3 * i + 1], flat[3 * i + 2]) for i in range(256)]
    if kind == "colour":
        colours = [((v >> 16) & 255, (v >> 8) & 255, v & 255) for v in found]
        davis = {c: i for i, c in enumerate(base)}
        ids = [davis[c] for c in colours] if all(c in davis for c in colours) else list(range(1, len(found) + 1))
        order = np.argsort(ids)
        found, ids = [found[i] for i in order], [ids[i] for i in order]
        rgbs = [(0, 0, 0)] + [colours[i] for i in order]
        named = ", ".join(f"{i} {c}" for i, c in zip(ids, rgbs[1:], strict=True))
        notes.append(f"{path.name}: {len(found)} colours mapped to object ids ({named})")
    else:
        ids, rgbs = found, [base[0]] + [base[v] for v in found]
    labels = np.zeros(values.shape, dtype=np.uint8)
    for label, value in enumerate(found, start=1):
        labels[values == value] = label
    return labels, MaskFormat((0, *ids), tuple(rgbs), tuple(notes))


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
    those of an object with another label (or the background) within ``contour_width(H, W) - 1`` pixels, in
    the object's colour brightened to full strength (DAVIS's dark red reads badly as a thin line). Everything
    else is the frame as it was.
    """
    if style not in OVERLAY_STYLES:
        raise ValueError(f"unknown overlay style {style!r}; choose from {', '.join(OVERLAY_STYLES)}")
    out = frame.copy()
    if style == "contour":
        width = contour_width(*labels.shape)
        kernel = np.ones((2 * width - 1, 2 * width - 1), dtype=np.uint8)
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
