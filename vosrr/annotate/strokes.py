"""Brush strokes: what the page sends, checked and drawn into one frame's stroke layer, and that layer on disk.

A stroke layer is ``layer[H,W]`` uint8 in the scribble convention of ``vosrr segment --scribble``: 0 background,
1..K objects, 255 unknown (never painted, or erased). The page sends strokes as JSON; the server draws them itself
(no anti-aliasing, so every pixel is exactly one label) and never takes an image or a path from the page::

    {"strokes": [{"label": 1, "radius": 8, "points": [[x, y], ...]}, ...]}   label 0 = background, 255 = eraser
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from vosrr.annotations import Annotation
from vosrr.masks import MAX_OBJECTS, atomic_save, davis_palette

__all__ = [
    "ERASE",
    "MAX_POINTS",
    "MAX_STROKES",
    "FrameStrokes",
    "Stroke",
    "StrokeError",
    "colour_labels",
    "parse_strokes",
    "read_layer",
    "write_layer",
]

ERASE = 255
"""the eraser's label, also the layer's value for unknown pixels"""
MAX_POINTS = 20_000
"""points in one request"""
MAX_STROKES = 256
"""strokes in one request"""
MAX_RADIUS = 256
BACKGROUND_COLOUR = (235, 235, 235)
"""how background strokes are shown on the page (objects take the DAVIS palette, as in the masks)"""


class StrokeError(ValueError):
    """Strokes the server will not draw; the message says what is wrong."""


@dataclass(frozen=True)
class Stroke:
    """One brush stroke in frame pixels: ``points[n,2]`` (x, y), a radius, and the label it paints."""

    label: int
    radius: int
    points: np.ndarray

    def draw(self, layer: np.ndarray) -> None:
        """Paint this stroke into ``layer[H,W]`` in place (round caps and joins, no anti-aliasing)."""
        pts = np.round(self.points).astype(np.int32)
        for x, y in pts:
            cv2.circle(layer, (int(x), int(y)), self.radius, self.label, -1, lineType=cv2.LINE_8)
        if len(pts) > 1:
            cv2.polylines(layer, [pts.reshape(-1, 1, 2)], False, self.label, 2 * self.radius + 1, cv2.LINE_8)


def parse_strokes(payload: object, size: tuple[int, int]) -> list[Stroke]:
    """The page's JSON -> strokes, refusing anything malformed or out of bounds (``StrokeError``)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("strokes"), list):
        raise StrokeError('expected {"strokes": [{"label": L, "radius": R, "points": [[x, y], ...]}, ...]}')
    items = payload["strokes"]
    if not 1 <= len(items) <= MAX_STROKES:
        raise StrokeError(f"send between 1 and {MAX_STROKES} strokes at a time, got {len(items)}")
    height, width = size
    strokes, total = [], 0
    for item in items:
        if not isinstance(item, dict):
            raise StrokeError("each stroke must be an object with label, radius and points")
        label, radius, points = item.get("label"), item.get("radius"), item.get("points")
        if not _is_int(label) or not (0 <= label <= MAX_OBJECTS or label == ERASE):
            raise StrokeError(f"label must be 0 (background), 1..{MAX_OBJECTS} (an object) or {ERASE} (eraser)")
        if not _is_int(radius) or not 1 <= radius <= MAX_RADIUS:
            raise StrokeError(f"radius must be a whole number of pixels from 1 to {MAX_RADIUS}")
        if not isinstance(points, list) or not points:
            raise StrokeError("points must be a non-empty list of [x, y]")
        total += len(points)
        if total > MAX_POINTS:
            raise StrokeError(f"at most {MAX_POINTS} points per request; send long strokes in parts")
        try:
            array = np.asarray(points, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise StrokeError("points must be numbers: [[x, y], ...]") from error
        if array.ndim != 2 or array.shape[1] != 2 or not np.isfinite(array).all():
            raise StrokeError("points must be finite numbers: [[x, y], ...]")
        # strokes may start off the frame (the brush is round), but not absurdly far
        array = np.clip(array, [-MAX_RADIUS, -MAX_RADIUS], [width + MAX_RADIUS, height + MAX_RADIUS])
        strokes.append(Stroke(int(label), int(radius), array))
    return strokes


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class FrameStrokes:
    """One frame's strokes: a base layer (read back from disk) and this session's strokes over it (undo pops)."""

    size: tuple[int, int]
    base: np.ndarray | None = None
    strokes: list[Stroke] = field(default_factory=list)

    def layer(self) -> np.ndarray:
        """``layer[H,W]`` uint8: 0 background, 1..K objects, 255 unknown."""
        out = np.full(self.size, ERASE, np.uint8) if self.base is None else self.base.copy()
        for stroke in self.strokes:
            stroke.draw(out)
        return out

    def annotation(self) -> Annotation | None:
        """The scribble annotation of this frame, or None when no pixel is marked."""
        layer = self.layer()
        known = layer != ERASE
        if not known.any():
            return None
        return Annotation(np.where(known, layer, 0).astype(np.uint8), known, scribble=True)


def write_layer(path: Path, layer: np.ndarray) -> None:
    """A stroke layer as the palette PNG ``vosrr segment --scribble`` reads (0, 1..K, 255 unknown); atomic."""
    image = Image.fromarray(layer, mode="P")
    palette = davis_palette()
    palette[ERASE] = (255, 255, 255)
    image.putpalette([c for rgb in palette for c in rgb])
    atomic_save(path, image)


def read_layer(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A stroke PNG written by ``write_layer`` (or any palette/grey PNG of the same convention) -> ``layer[H,W]``."""
    with Image.open(path) as image:
        if image.mode not in ("P", "L"):
            raise StrokeError(f"{path} is not a palette or grey PNG (0 background, 1..K objects, 255 unknown)")
        layer = np.asarray(image, dtype=np.uint8)
    if layer.shape != size:
        raise StrokeError(f"{path} is {layer.shape[1]}x{layer.shape[0]}, the video is {size[1]}x{size[0]}")
    bad = (layer > MAX_OBJECTS) & (layer != ERASE)
    if bad.any():
        raise StrokeError(f"{path} holds values other than 0, 1..{MAX_OBJECTS} and {ERASE}")
    return layer.copy()


def colour_labels(labels: np.ndarray, alpha: int = 255, background: tuple[int, int, int] | None = None) -> np.ndarray:
    """``labels[H,W]`` -> ``rgba[H,W,4]`` uint8 for the page: objects in the DAVIS palette with ``alpha``; 0 is
    transparent unless ``background`` gives it a colour; 255 (unknown) is always transparent."""
    colours = np.zeros((256, 4), np.uint8)
    colours[: MAX_OBJECTS + 1, :3] = np.asarray(davis_palette(MAX_OBJECTS + 1), np.uint8)
    colours[1 : MAX_OBJECTS + 1, 3] = alpha
    if background is not None:
        colours[0] = (*background, alpha)
    return colours[labels]
