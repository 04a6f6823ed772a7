"""Generate vosrr's sample clip from nothing: procedural textures, two moving objects, exact masks.

    python samples/make_sample.py            # writes samples/clip.mp4 and samples/clip_mask.png

The clip is 854x480 (the DAVIS frame size), 48 frames at 24 fps: a panning textured background with
two textured objects (a blob and a rounded box) that move, turn and cross. ``make_clip`` also serves the
tests, which need small videos with known ground truth. Only numpy and OpenCV are used.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent


def _texture(rng: np.random.Generator, height: int, width: int, palette: np.ndarray, scale: float) -> np.ndarray:
    """Smooth coloured noise: a few octaves of blurred random fields mapped through a palette."""
    field = np.zeros((height, width), np.float32)
    for octave in range(4):
        step = max(2, int(scale / 2**octave))
        small = rng.random((height // step + 2, width // step + 2)).astype(np.float32)
        field += cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC) / 2**octave
    field = (field - field.min()) / (np.ptp(field) + 1e-6)
    index = np.clip((field * (len(palette) - 1)).round().astype(int), 0, len(palette) - 1)
    low = palette[np.floor(field * (len(palette) - 1)).astype(int)]
    high = palette[index]
    return ((low.astype(np.float32) + high) / 2).astype(np.uint8)


def _shape(kind: str, size: int) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    c = size // 2
    if kind == "blob":
        angles = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        radius = c * (0.8 + 0.15 * np.sin(3 * angles) + 0.05 * np.cos(5 * angles))
        points = np.stack([c + radius * np.cos(angles), c + radius * np.sin(angles)], 1).astype(np.int32)
        cv2.fillPoly(mask, [points], 1)
    else:
        r = size // 6
        cv2.rectangle(mask, (r, size // 4), (size - r, size - size // 4), 1, -1)
        for x in (r, size - r):
            for y in (size // 4, size - size // 4):
                cv2.circle(mask, (x, y), r, 1, -1)
        cv2.rectangle(mask, (0, size // 4), (size, size - size // 4), 1, -1)
    return mask


def make_clip(
    frames: int = 48,
    height: int = 480,
    width: int = 854,
    objects: int = 2,
    seed: int = 0,
    enter: tuple[int, ...] = (),
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Frames ``[H,W,3]`` uint8 RGB and label maps ``[H,W]`` uint8 (0 background, 1..objects).

    ``enter[i]`` is the frame where object ``i + 1`` first appears (objects not listed are there from frame 0);
    the clip is otherwise the same."""
    rng = np.random.default_rng(seed)
    pan = 2 * frames
    background = _texture(
        rng,
        height + 40,
        width + pan,
        np.array([[40, 70, 40], [90, 120, 60], [150, 160, 110], [70, 90, 120]], np.uint8),
        60,
    )
    palettes = [
        np.array([[200, 40, 30], [240, 120, 40], [250, 200, 80]], np.uint8),
        np.array([[30, 60, 200], [80, 170, 230], [230, 240, 250]], np.uint8),
        np.array([[120, 30, 140], [200, 90, 200], [60, 20, 60]], np.uint8),
    ]
    size = min(height, width) // 3
    sprites = [
        (_texture(rng, size, size, palettes[i % 3], 12), _shape(("blob", "box")[i % 2], size)) for i in range(objects)
    ]
    out_frames, out_labels = [], []
    for t in range(frames):
        phase = t / max(1, frames - 1)
        frame = background[20 : 20 + height, 2 * t : 2 * t + width].copy()
        labels = np.zeros((height, width), np.uint8)
        for i, (texture, shape) in enumerate(sprites):
            angle = 40 * phase * (1 if i % 2 == 0 else -1)
            scale = 1.0 + 0.25 * np.sin(np.pi * phase + i)
            rot = cv2.getRotationMatrix2D((size / 2, size / 2), angle, scale)
            tex = cv2.warpAffine(texture, rot, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
            msk = cv2.warpAffine(shape, rot, (size, size), flags=cv2.INTER_NEAREST)
            cx = int((0.2 + 0.6 * (phase if i % 2 == 0 else 1 - phase)) * (width - size))
            cy = int((0.25 + 0.3 * np.sin(2 * np.pi * phase + 2 * i) + 0.2 * i) * (height - size))
            cy = int(np.clip(cy, 0, height - size))
            if i < len(enter) and t < enter[i]:
                continue
            region = frame[cy : cy + size, cx : cx + size]
            region[msk > 0] = tex[msk > 0]
            labels[cy : cy + size, cx : cx + size][msk > 0] = i + 1
        out_frames.append(frame)
        out_labels.append(labels)
    return out_frames, out_labels


def strokes(labels: np.ndarray, band: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Scribbles a user might draw on a frame with labels ``labels[H,W]``: ``(strokes[H,W] uint8, known[H,W] bool)``.

    A line through each object's middle, each way, inside it; a loop ``band`` pixels outside the objects and a
    line across the frame as background strokes; a few percent of the pixels are known.
    """
    known = np.zeros(labels.shape, bool)
    drawn = np.zeros(labels.shape, np.uint8)
    for k in np.unique(labels):
        if k == 0:
            continue
        ys, xs = np.nonzero(labels == k)
        row = int(np.median(ys))
        cols = xs[ys == row]
        line = np.zeros(labels.shape, np.uint8)
        cv2.line(line, (int(cols.min()) + 4, row), (int(cols.max()) - 4, row), 1, 3)
        column = int(np.median(xs))
        rows = ys[xs == column]
        cv2.line(line, (column, int(rows.min()) + 4), (column, int(rows.max()) - 4), 1, 3)
        on = (line > 0) & (labels == k)
        drawn[on], known[on] = k, True
    near = cv2.dilate((labels > 0).astype(np.uint8), np.ones((2 * band + 1, 2 * band + 1), np.uint8))
    ring = cv2.morphologyEx(near, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    across = np.zeros(labels.shape, np.uint8)
    cv2.line(across, (0, labels.shape[0] - 10), (labels.shape[1] - 1, 10), 1, 3)
    background = ((ring | (across > 0)) & (near == 0)) | ring
    known |= background & (labels == 0)
    return drawn, known


#: stroke colours of the sample's scribble file (the DAVIS palette's first two, so they read as ids 1 and 2)
STROKE_COLOURS = {1: (128, 0, 0), 2: (0, 128, 0)}


def write_annotations(folder: Path, frames: int = 48, later: int = 24) -> tuple[Path, Path]:
    """Write ``clip_mask_24.png`` (the mask of frame ``later``) and ``clip_strokes.png`` (scribbles on frame 0,
    an RGBA PNG: transparent = unknown, black = background, a colour per object) into ``folder``."""
    from PIL import Image

    from vosrr.masks import MaskFormat, write_mask

    _, labels = make_clip(frames)
    mask = folder / f"clip_mask_{later}.png"
    write_mask(mask, labels[later], MaskFormat.dense(int(labels[later].max())))
    drawn, known = strokes(labels[0])
    rgba = np.zeros((*labels[0].shape, 4), np.uint8)
    rgba[known] = (0, 0, 0, 255)
    for k, colour in STROKE_COLOURS.items():
        rgba[known & (drawn == k)] = (*colour, 255)
    scribble = folder / "clip_strokes.png"
    Image.fromarray(rgba, mode="RGBA").save(scribble, optimize=True)
    return mask, scribble


def write_sample(folder: Path, frames: int = 48, fps: float = 24.0) -> tuple[Path, Path]:
    """Write ``clip.mp4`` and ``clip_mask.png`` (first-frame mask, ids 1 and 2) into ``folder``."""
    from vosrr.encode import OverlayWriter
    from vosrr.masks import MaskFormat, write_mask

    images, labels = make_clip(frames)
    height, width = labels[0].shape
    video, mask = folder / "clip.mp4", folder / "clip_mask.png"
    with OverlayWriter(video, width, height, fps, quality=8) as writer:
        for image in images:
            writer.write(image)
    write_mask(mask, labels[0], MaskFormat.dense(int(labels[0].max())))
    return video, mask


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--frames", type=int, default=48)
    args = parser.parse_args()
    for path in (*write_sample(args.out, args.frames), *write_annotations(args.out, args.frames)):
        print(path)
