"""Reading the masks and scribbles users have: which pixel values are objects, which are edges, which are unknown.

A file is read into a ``RawMask``: per pixel an object key (a grey or palette value, or a packed 0xRRGGBB
colour; 0 is background) and whether the pixel is known. ``annotations.Timeline`` turns the keys of all files
of a video into one set of dense labels.

How values are read (``kind``):

- ``ids``: every distinct value (grey, palette index or colour) is one object, exactly as it is.
- ``binary``: every non-zero pixel is the one object.
- ``soft``: one object, the pixels at or above half the mask's maximum (a feathered or matted mask).
- ``auto`` (default) decides per file, and says what it did in a note naming the values and pixel counts:
  palette indices are ids; small grey values (1..32) are ids; 255 beside small ids is DAVIS's void
  (unknown); a grey or alpha mask whose levels cannot be ids (more than 32 levels, or only edge ramps around
  one level) is soft; anti-aliasing ramps between several real ids or colours are snapped to the nearest.

A level is an edge ramp when it fills no 3x3 neighbourhood and most of its pixels sit between a lower and a
higher value (colours: between two other colours); a small object (2x2 pixels, a 2-pixel line) touches its
neighbours on one side only, so it stays an object.

Scribbles: an RGBA PNG drawn over the frame (transparent = unknown, opaque black = background, any other
opaque colour = an object), or a palette / grey PNG (0 = background, 1..K = objects, 255 = unknown).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from vosrr.masks import MAX_OBJECTS, MaskError, MaskFormat, davis_palette

__all__ = ["MASK_KINDS", "MaskKind", "RawMask", "read_mask", "read_raw"]

MaskKind = Literal["auto", "ids", "binary", "soft"]
MASK_KINDS: tuple[str, ...] = ("auto", "ids", "binary", "soft")

#: DAVIS's "void" value: pixels to ignore
VOID = 255
#: an opaque scribble colour whose channels are all at most this is background ("black")
_BLACK = 40
#: a level is an edge ramp when at least this share of its pixels touch both a lower and a higher value
_RAMP_SHARE = 0.8


@dataclass(frozen=True)
class RawMask:
    """One file, read: ``values[H,W]`` int64 object keys (0 = background), ``known[H,W]`` bool or None (all known).

    ``colour``: the keys are packed 0xRRGGBB colours (else grey values or palette indices); ``palette`` is the
    file's own palette (palette PNGs), ``notes`` what reading changed.
    """

    values: np.ndarray
    known: np.ndarray | None
    colour: bool
    palette: tuple[tuple[int, int, int], ...] | None
    notes: tuple[str, ...]

    @property
    def keys(self) -> list[int]:
        """The object keys present among the known pixels, ascending."""
        values = self.values if self.known is None else self.values[self.known]
        return [int(v) for v in np.unique(values) if v != 0]


@dataclass(frozen=True)
class _Pixels:
    values: np.ndarray  # int64: grey values, palette indices or packed colours
    alpha: np.ndarray | None  # uint8 alpha, None without an alpha channel
    mode: Literal["palette", "grey", "colour"]
    palette: tuple[tuple[int, int, int], ...] | None
    bits: int  # 8 or 16


def _open(path: Path, what: str) -> _Pixels:
    """Decode an image file into values, alpha and how to read them."""
    if not path.exists():
        raise MaskError(f"{what} not found: {path}; check the path")
    if not path.is_file():
        raise MaskError(f"{what} {path} is a folder, not an image; pass a PNG file")
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode == "P":
                flat = list(image.getpalette() or []) + [0] * 768
                palette = tuple((flat[3 * i], flat[3 * i + 1], flat[3 * i + 2]) for i in range(256))
                return _Pixels(np.asarray(image).astype(np.int64), None, "palette", palette, 8)
            if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                values = np.asarray(image)
                if values.dtype.kind == "f":
                    values = np.clip(np.rint(values), 0, 65535)
                return _Pixels(values.astype(np.int64), None, "grey", None, 16)
            if mode in ("1", "L", "LA"):
                bands = np.asarray(image.convert("LA"))
                alpha = bands[..., 1] if mode == "LA" else None
                return _Pixels(bands[..., 0].astype(np.int64), alpha, "grey", None, 8)
            has_alpha = mode in ("RGBA", "RGBa", "PA", "La") or "transparency" in image.info
            rgba = np.asarray(image.convert("RGBA")).astype(np.int64)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise MaskError(f"cannot read {what} {path}: not an image ({error}); pass a PNG file") from error
    r, g, b, a = (rgba[..., i] for i in range(4))
    alpha = a.astype(np.uint8) if has_alpha else None
    if np.all((r == g) & (g == b)):
        return _Pixels(b, alpha, "grey", None, 8)  # a grey mask saved as RGB
    return _Pixels((r << 16) | (g << 8) | b, alpha, "colour", None, 8)


def read_raw(path: Path, *, scribble: bool = False, kind: MaskKind = "auto") -> RawMask:
    """Read a mask (or, with ``scribble``, a scribble) file into object keys and known pixels."""
    path = Path(path)
    if kind not in MASK_KINDS:
        raise MaskError(f"unknown mask kind {kind!r}; use one of {', '.join(MASK_KINDS)}")
    what = "scribble" if scribble else "mask"
    pixels = _open(path, what)
    if scribble:
        return _scribble(path, pixels)
    notes: list[str] = []
    values, mode = pixels.values, pixels.mode
    if pixels.alpha is not None:
        values, mode = _apply_alpha(pixels, notes, path)
    known = None
    if kind == "binary":
        values, mode = (values > 0).astype(np.int64) * 255, "grey"
    elif kind == "soft":
        values, mode = _soft(_as_grey(values, mode), path, notes), "grey"
    elif kind == "auto":
        if mode != "colour" and pixels.bits == 8:
            values, known = _void(values, path, notes)
        if mode == "grey":
            values = _auto_grey(values, path, notes)
        elif mode == "colour":
            values = _snap_blends(values, path, notes, colour=True)
    raw = RawMask(values, known, mode == "colour", pixels.palette if mode == "palette" else None, tuple(notes))
    if not raw.keys:
        raise MaskError(f"mask {path} is empty: it marks no object (all pixels are 0); draw the objects to track")
    if len(raw.keys) > MAX_OBJECTS:
        raise MaskError(
            f"mask {path} has {len(raw.keys)} object ids; vosrr takes at most {MAX_OBJECTS} "
            "(merge objects, save the mask without anti-aliasing or JPEG compression, or pass --mask-kind soft "
            "for a single feathered object)"
        )
    return raw


def read_mask(path: Path, kind: MaskKind = "auto") -> tuple[np.ndarray, MaskFormat]:
    """One mask file -> ``(labels[H,W] uint8 in 0..K, MaskFormat)``; void pixels (if any) read as background.

    The labels are dense (1..K in the order of the file's ids or colours); ``MaskFormat`` maps them back
    to the file's own values, so written masks carry the user's ids.
    """
    raw = read_raw(Path(path), kind=kind)
    keys = raw.keys
    if raw.colour:  # dense labels in the order of the ids the colours get
        ids = colour_ids(keys)
        keys = [key for _, key in sorted(zip(ids, keys, strict=True))]
    labels = np.zeros(raw.values.shape, np.uint8)
    for label, key in enumerate(keys, start=1):
        labels[raw.values == key] = label
    if raw.known is not None:
        labels[~raw.known] = 0
    return labels, format_for(keys, raw.colour, raw.palette, raw.notes, Path(path).name)


def format_for(
    keys: list[int],
    colour: bool,
    palette: tuple[tuple[int, int, int], ...] | None = None,
    notes: tuple[str, ...] = (),
    source: str = "",
) -> MaskFormat:
    """The ``MaskFormat`` of dense labels 1..K standing for ``keys`` (grey/palette values, or packed colours).

    Values keep their palette's colour (the file's, else DAVIS's; ids past 255 get DAVIS colours by label);
    colours become ids: their DAVIS palette index when every colour is a DAVIS colour, else 1..K.
    """
    if not colour:
        base = list(palette) if palette is not None else davis_palette()
        spare = davis_palette(len(keys) + 1)
        rgbs = [base[0], *(base[k] if k < len(base) else spare[i] for i, k in enumerate(keys, start=1))]
        return MaskFormat((0, *keys), tuple(rgbs), notes)
    colours = [_rgb(v) for v in keys]
    ids = colour_ids(keys)
    named = ", ".join(f"{i} {c}" for i, c in zip(ids, colours, strict=True))
    note = f"{source}{': ' if source else ''}{len(keys)} colours mapped to object ids ({named})"
    return MaskFormat((0, *ids), ((0, 0, 0), *colours), (*notes, note))


def colour_ids(keys: list[int]) -> list[int]:
    """Object ids for packed colours: their DAVIS palette indices when all are DAVIS colours, else 1..K in order."""
    davis = {c: i for i, c in enumerate(davis_palette())}
    colours = [_rgb(v) for v in keys]
    return [davis[c] for c in colours] if all(c in davis for c in colours) else list(range(1, len(keys) + 1))


def _rgb(value: int) -> tuple[int, int, int]:
    return (value >> 16) & 255, (value >> 8) & 255, value & 255


# ------------------------------------------------------------------------------------------ decisions
def _apply_alpha(pixels: _Pixels, notes: list[str], path: Path) -> tuple[np.ndarray, str]:
    """A mask with an alpha channel -> ``(values, mode)``: transparent pixels are background. When the alpha has
    soft levels and the opaque part is one colour, the alpha is the mask itself (a matte, read as grey)."""
    alpha = pixels.alpha
    assert alpha is not None
    values = pixels.values
    levels = np.unique(alpha)
    if levels.size > 2 or (levels.size == 2 and levels[0] != 0):
        if np.unique(values[alpha > 0]).size <= 1:
            notes.append(f"{path.name}: its alpha channel is the mask ({levels.size} levels)")
            return alpha.astype(np.int64), "grey"
        return np.where(alpha >= 128, values, 0), pixels.mode
    return np.where(alpha > 0, values, 0), pixels.mode


def _as_grey(values: np.ndarray, mode: str) -> np.ndarray:
    if mode != "colour":
        return values
    return np.maximum(np.maximum((values >> 16) & 255, (values >> 8) & 255), values & 255)


def _soft(values: np.ndarray, path: Path, notes: list[str]) -> np.ndarray:
    """One object: the pixels at or above half the maximum value (written as 255)."""
    top = int(values.max())
    if top == 0:
        return values
    threshold = top / 2
    inside = values >= threshold
    levels = np.unique(values[values > 0]).size
    notes.append(
        f"{path.name}: read as one soft-edged object ({levels} grey levels up to {top}); pixels at or above "
        f"{threshold:g} ({int(inside.sum())} px) are the object, written as 255 "
        "(pass --mask-kind ids to read the levels as object ids)"
    )
    return inside.astype(np.int64) * 255


def _void(values: np.ndarray, path: Path, notes: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """DAVIS's void: 255 beside small ids (1..32) marks unknown pixels; 0/255 alone is a binary mask."""
    present = np.unique(values)
    others = present[(present != 0) & (present != VOID)]
    if VOID not in present or others.size == 0 or others.max() > MAX_OBJECTS:
        return values, None
    known = values != VOID
    notes.append(
        f"{path.name}: {int((~known).sum())} pixels of value 255 read as void (unknown, ignored by the solve); "
        "pass --mask-kind ids to make 255 an object"
    )
    return np.where(known, values, 0), known


def _neighbourhood(values: np.ndarray) -> np.ndarray:
    """``values[H,W] -> [8,H,W]``: each pixel's 8 neighbours (edge pixels repeat themselves past the border)."""
    padded = np.pad(values, 1, mode="edge")
    height, width = values.shape
    shifts = [(dy, dx) for dy in range(3) for dx in range(3) if (dy, dx) != (1, 1)]
    return np.stack([padded[dy : dy + height, dx : dx + width] for dy, dx in shifts])


def _interior(values: np.ndarray, around: np.ndarray) -> np.ndarray:
    """Values that fill at least one whole 3x3 neighbourhood."""
    return np.unique(values[(around == values).all(0)])


def _auto_grey(values: np.ndarray, path: Path, notes: list[str]) -> np.ndarray:
    """Grey values: small ids as they are; many levels or ramps around one level: soft; ramps between ids: snapped."""
    levels = np.unique(values[values > 0])
    if levels.size <= 1 or levels.max() <= MAX_OBJECTS:
        return values
    if levels.size > MAX_OBJECTS:
        return _soft(values, path, notes)
    around = _neighbourhood(values)
    lower, higher = (around < values).any(0), (around > values).any(0)
    between = lower & higher
    interior = set(_interior(values, around).tolist())
    ramps = [int(v) for v in levels if v not in interior and between[values == v].mean() >= _RAMP_SHARE]
    if not ramps:
        return values
    real = [int(v) for v in levels if v not in ramps]
    if len(real) <= 1:
        return _soft(values, path, notes)
    is_ramp = np.isin(values, ramps)
    reals = np.asarray([0, *real])
    pos = np.clip(np.searchsorted(reals, values), 1, len(reals) - 1)
    lo, hi = reals[pos - 1], reals[pos]
    nearest = np.where(values - lo <= hi - values, lo, hi)
    _note_snapped(path, notes, values, is_ramp, "grey levels")
    return np.where(is_ramp, nearest, values)


def _snap_blends(values: np.ndarray, path: Path, notes: list[str], colour: bool) -> np.ndarray:
    """Colours that only occur where two other colours meet (anti-aliasing) -> the nearest real colour."""
    used = np.unique(values)
    if used.size <= 2:
        return values
    around = _neighbourhood(values)
    interior = set(_interior(values, around).tolist())
    others = np.sort(np.where(around == values, -1, around), axis=0)
    distinct = ((others[1:] != others[:-1]) & (others[1:] >= 0)).sum(0) + (others[0] >= 0)
    two = distinct >= 2
    blends = [int(v) for v in used if v != 0 and v not in interior and two[values == v].mean() >= _RAMP_SHARE]
    if not blends:
        return values
    real = np.asarray([int(v) for v in used if v not in blends])
    is_blend = np.isin(values, blends)

    def rgb(v: np.ndarray) -> np.ndarray:
        return np.stack([(v >> 16) & 255, (v >> 8) & 255, v & 255], -1).astype(np.float32)

    blend_values = np.asarray(blends)
    distance = ((rgb(blend_values)[:, None] - rgb(real)[None]) ** 2).sum(-1)
    nearest = dict(zip(blends, real[distance.argmin(1)].tolist(), strict=True))
    _note_snapped(path, notes, values, is_blend, "colours" if colour else "levels")
    lookup = np.vectorize(lambda v: nearest.get(int(v), int(v)), otypes=[np.int64])
    out = values.copy()
    out[is_blend] = lookup(values[is_blend])
    return out


def _note_snapped(path: Path, notes: list[str], values: np.ndarray, which: np.ndarray, what: str) -> None:
    found, counts = np.unique(values[which], return_counts=True)
    shown = ", ".join(f"{_show(int(v), what)}: {int(c)} px" for v, c in list(zip(found, counts, strict=True))[:6])
    more = f" and {found.size - 6} more" if found.size > 6 else ""
    notes.append(
        f"{path.name}: {found.size} anti-aliasing {what} on object edges ({shown}{more}) were snapped to the "
        "nearest object id (pass --mask-kind ids to keep every value as an object)"
    )


def _show(value: int, what: str) -> str:
    if what == "colours":
        return f"#{value:06x}"
    return str(value)


# ------------------------------------------------------------------------------------------ scribbles
def _scribble(path: Path, pixels: _Pixels) -> RawMask:
    """Scribbles: with alpha, transparent = unknown, opaque black = background, other colours = objects;
    without alpha, 0 = background, 1..K = objects, 255 = unknown."""
    notes: list[str] = []
    if pixels.alpha is not None:
        known = pixels.alpha >= 128
        values = pixels.values
        if pixels.mode == "colour":
            r, g, b = (values >> 16) & 255, (values >> 8) & 255, values & 255
            black = (r <= _BLACK) & (g <= _BLACK) & (b <= _BLACK)
        else:
            black = values <= _BLACK
        values = np.where(known & ~black, values, 0)
        if pixels.mode == "colour":
            snapped = _snap_blends(np.where(known, values, 0), path, notes, colour=True)
            values = np.where(known, snapped, 0)
        colour = pixels.mode == "colour"
    else:
        known = pixels.values != VOID
        values = np.where(known, pixels.values, 0)
        colour = pixels.mode == "colour"
    if known.all():
        notes.append(f"{path.name}: the scribble has no unknown pixels, so it is read as a full mask")
    raw = RawMask(values, known, colour, pixels.palette, tuple(notes))
    if not known.any():
        raise MaskError(f"scribble {path} marks no pixel (all transparent or 255); draw strokes on the objects")
    return raw
