"""User input as statistics: masks, scribbles, corrections and online updates all take one path to ``Stats``.

An ``Annotation`` is what a user says about one frame: dense labels ``labels[H,W]`` (0 = background,
1..K = objects) and which pixels are known (``known[H,W]``; unknown pixels, scribbles' blank areas or a
mask's void 255, get weight 0). Every piece of input becomes statistics by the same two steps:

    pixels: labels[H,W], known[H,W] --pixel_targets--> Y[N,K+1], valid[N] on the feature grid
    cells:  X[N,C], Y[N,K+1], valid[N] --grid_statistics--> Stats(A, B)   (class-balanced, weighted)

The online update enters at the second step with its confident predictions as ``Y`` and ``valid``.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vosrr import solver
from vosrr.embedding import STRIDE, padded_size
from vosrr.mask_reader import MaskKind, RawMask, format_for, read_raw
from vosrr.masks import MAX_OBJECTS, MaskError, MaskFormat, davis_palette, targets
from vosrr.solver import Stats

__all__ = [
    "Annotation",
    "Mark",
    "Timeline",
    "grid_statistics",
    "load_timeline",
    "marks_in",
    "parse_mark",
    "pixel_targets",
    "widen",
]


@dataclass(frozen=True)
class Annotation:
    """What the user gives for one frame: ``labels[H,W]`` uint8 (0..K) and ``known[H,W]`` bool (None: all known).

    ``scribble`` marks partial labels (strokes): the frame's full mask is then inferred by the solver.
    A dense mask's void pixels (unknown) are ``known == False`` with ``scribble`` False.
    """

    labels: np.ndarray
    known: np.ndarray | None = None
    scribble: bool = False

    def __post_init__(self) -> None:
        if self.labels.ndim != 2:
            raise ValueError(f"labels must be [H,W], got shape {self.labels.shape}")
        if self.known is not None and self.known.shape != self.labels.shape:
            raise ValueError(f"known {self.known.shape} must match labels {self.labels.shape}")

    @property
    def size(self) -> tuple[int, int]:
        return self.labels.shape[0], self.labels.shape[1]

    @property
    def num_objects(self) -> int:
        """The highest object label this annotation names (its objects are 1..num_objects or a subset)."""
        return int(self.labels.max()) if self.labels.size else 0

    @property
    def objects(self) -> frozenset[int]:
        """The object labels that some known pixel carries."""
        values = self.labels if self.known is None else self.labels[self.known]
        return frozenset(int(v) for v in np.unique(values) if v)

    @property
    def has_background(self) -> bool:
        """Whether some known pixel is background."""
        background = self.labels == 0
        return bool(background.any() if self.known is None else (background & self.known).any())

    def mirrored(self) -> Annotation:
        """The annotation of the mirrored frame."""
        known = None if self.known is None else np.ascontiguousarray(self.known[:, ::-1])
        return Annotation(np.ascontiguousarray(self.labels[:, ::-1]), known, self.scribble)


def pixel_targets(
    labels: np.ndarray, known: np.ndarray | None, num_classes: int, work: tuple[int, int], device: torch.device
) -> tuple[Tensor, Tensor]:
    """``labels[H,W]`` (0..K), ``known[H,W]`` bool or None -> ``(Y[N,K+1], valid[N])`` on the feature grid of ``work``.

    Labels are resized (nearest) to the working size; ``Y`` holds each class's share of a cell's known pixels and
    ``valid`` the known fraction of the cell (padding is unknown).
    """
    with torch.inference_mode():
        size = (work[1], work[0])
        lab = torch.from_numpy(cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST)).to(device)
        mask = None
        if known is not None:
            mask = torch.from_numpy(cv2.resize(known.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST))
            mask = mask.to(device)[None]
        Y, valid = targets(lab[None], num_classes, padded_size(*work), STRIDE, mask)
        return Y[0], valid[0]


def grid_statistics(
    X: Tensor,
    Y: Tensor,
    valid: Tensor,
    blocks: int,
    balance: bool = True,
    weight: float = 1.0,
    stride: int = 1,
    cap: float | None = None,
) -> Stats:
    """``X[N,C], Y[N,K+1], valid[N] -> Stats``: class-balanced (every class present weighs as much in total),
    times ``weight``. ``stride > 1`` sums only every stride-th cell of an ``[h, w]`` grid in each direction,
    weighted ``stride^2`` (the balance is still computed over all cells); pass ``X`` as ``[h, w, C]`` then.
    ``cap`` bounds the balance (``solver.balanced_weights``)."""
    with torch.inference_mode():
        grid = X.shape[:-1] if X.dim() == 3 else None
        X, Y, valid = X.reshape(-1, X.shape[-1]), Y.reshape(-1, Y.shape[-1]), valid.reshape(-1)
        w = solver.balanced_weights(Y, valid, cap=cap) if balance else valid
        if stride > 1 and grid is not None:
            h, wd = grid
            X, Y, w = (t.view(h, wd, -1)[::stride, ::stride].reshape(-1, t.shape[-1]) for t in (X, Y, w[:, None]))
            w = w[:, 0] * (stride * stride)
        return solver.statistics(X, Y, w * weight, blocks)


def widen(stats: Stats, num_classes: int) -> Stats:
    """``stats`` with zero columns appended up to ``num_classes``: objects that enter later were absent (Y = 0)
    from every pixel these statistics saw, so nothing is recomputed."""
    extra = num_classes - stats.B.shape[-1]
    if extra < 0:
        raise ValueError(f"cannot narrow statistics of {stats.B.shape[-1]} classes to {num_classes}")
    if extra == 0:
        return stats
    return Stats(stats.A, F.pad(stats.B, (0, extra)))


# ------------------------------------------------------------------------------------------ the timeline
@dataclass(frozen=True)
class Mark:
    """An annotation file the user gives: ``frame`` index (0 = first frame), its path, mask or scribble."""

    frame: int
    path: Path
    scribble: bool = False

    @property
    def option(self) -> str:
        """How the user wrote it, for messages: ``--mask 120:fix.png``."""
        return f"--{'scribble' if self.scribble else 'mask'} {self.frame}:{self.path}"


def parse_mark(text: str, scribble: bool = False) -> Mark:
    """``"FILE"`` (frame 0) or ``"N:FILE"`` -> ``Mark``. A path that exists as written wins, so a file named
    ``12:30.png`` is still a file; a negative index, or no file at all, is refused (``ValueError``)."""
    if not text.strip():
        raise ValueError(f"--{'scribble' if scribble else 'mask'} is given an empty name; give FILE or N:FILE")
    path = Path(text)
    match = re.fullmatch(r"(-?\d+):(.+)", text)
    if match is None or (path.exists() and not Path(match.group(2)).exists()):
        return Mark(0, path, scribble)
    index = int(match.group(1))
    if index < 0:
        raise ValueError(f"frame index {index} in {text!r} is negative; frames count from 0")
    return Mark(index, Path(match.group(2)), scribble)


def marks_in(folder: Path, frame_names: Sequence[str] | None = None) -> list[Mark]:
    """The masks of a folder named by frame (``00000.png``, ``00120.png``: the DAVIS / YouTube-VOS layout).

    With ``frame_names`` (the stems of a frame folder's files, in order) a mask named like a frame belongs to
    that frame (YouTube-VOS numbers every fifth frame); otherwise the number in the name is the frame index.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MaskError(f"--masks {folder} is not a folder; pass a folder of NNNNN.png masks named by frame")
    position = {name: i for i, name in enumerate(frame_names or ())}
    marks = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() != ".png" or path.name.startswith("."):
            continue
        if path.stem in position:
            marks.append(Mark(position[path.stem], path))
        elif path.stem.isdigit():
            marks.append(Mark(int(path.stem), path))
    if not marks:
        raise MaskError(f"--masks {folder} holds no masks named by frame (00000.png, ...); add at least one")
    return marks


@dataclass(frozen=True)
class Timeline:
    """All of a video's annotations with one set of dense object labels: ``annotations[frame]`` and the
    ``MaskFormat`` that maps labels 1..K back to the user's ids (objects numbered by first appearance)."""

    annotations: dict[int, Annotation]
    format: MaskFormat
    marks: tuple[Mark, ...]
    notes: tuple[str, ...] = ()

    @property
    def first(self) -> int:
        """The earliest annotated frame: propagation starts there, forwards and backwards."""
        return min(self.annotations)

    def first_seen(self, label: int) -> int:
        """The frame where object ``label`` is first annotated."""
        return min(t for t, a in self.annotations.items() if label in a.objects)


def load_timeline(
    marks: Sequence[Mark],
    size: tuple[int, int],
    frames: int | None = None,
    *,
    resize: bool = False,
    kind: MaskKind = "auto",
) -> Timeline:
    """Read every annotation file and check it against the video (``size`` = (H, W), ``frames`` its exact frame
    count if known). Raises ``MaskError`` naming the file and what to do; nothing is read half."""
    if not marks:
        raise MaskError("no annotation given; pass --mask FILE (the first frame's mask), --masks DIR or --scribble")
    marks = sorted(marks, key=lambda m: m.frame)
    for a, b in itertools.pairwise(marks):
        if a.frame == b.frame:
            raise MaskError(
                f"two annotations for frame {a.frame} ({a.path} and {b.path}); give one file per frame "
                "(merge the objects into one mask)"
            )
    if frames is not None and marks[-1].frame >= frames:
        last = marks[-1]
        raise MaskError(
            f"{last.option}: frame {last.frame} is past the end of the video ({frames} frames, 0..{frames - 1}); "
            "check the frame index"
        )
    raws = [read_raw(m.path, scribble=m.scribble, kind=kind) for m in marks]
    notes = [note for raw in raws for note in raw.notes]
    ids = _object_ids(raws)
    for mark, raw, file_ids in zip(marks, raws, ids, strict=True):
        if raw.colour:
            named = ", ".join(f"{file_ids[key]} {_rgb(key)}" for key in sorted(raw.keys, key=file_ids.__getitem__))
            notes.append(f"{mark.path.name}: {len(raw.keys)} colours mapped to object ids ({named})")
    # dense labels: objects in order of their first annotated frame, then of their id
    order: list[int] = []
    for file_ids in ids:
        order.extend(sorted(i for i in set(file_ids.values()) if i not in order))
    label_of = {object_id: label for label, object_id in enumerate(order, start=1)}
    if len(order) > MAX_OBJECTS:
        raise MaskError(f"the annotations name {len(order)} objects; vosrr takes at most {MAX_OBJECTS}")
    annotations: dict[int, Annotation] = {}
    for mark, raw, file_ids in zip(marks, raws, ids, strict=True):
        labels = np.zeros(raw.values.shape, np.uint8)
        for key, object_id in file_ids.items():
            labels[raw.values == key] = label_of[object_id]
        known = raw.known
        if labels.shape != size:
            labels, known = _fit(mark, labels, known, size, resize, notes)
        annotations[mark.frame] = Annotation(labels, known, mark.scribble)
    first = annotations[marks[0].frame]
    if not first.objects:
        raise MaskError(f"{marks[0].option} marks no object; the first annotation must mark the objects to track")
    if not first.has_background:
        what = "a background stroke (opaque black, or value 0)" if first.scribble else "some background (0)"
        raise MaskError(f"{marks[0].option} marks no background; add {what} so that objects can be told apart")
    return Timeline(annotations, _format(raws, ids, order), tuple(marks), tuple(notes))


def _object_ids(raws: Sequence[RawMask]) -> list[dict[int, int]]:
    """Per file, ``{key: object id}``: grey and palette values are ids; colours get their DAVIS palette index when
    every colour of every file is a DAVIS colour, else the next free ids in order of first appearance."""
    taken = {key for raw in raws if not raw.colour for key in raw.keys}
    colours = list(dict.fromkeys(key for raw in raws if raw.colour for key in raw.keys))
    davis = {(r << 16) | (g << 8) | b: i for i, (r, g, b) in enumerate(davis_palette())}
    if all(colour in davis for colour in colours):
        assigned = {colour: davis[colour] for colour in colours}
    else:
        free = (i for i in itertools.count(1) if i not in taken)
        assigned = {colour: next(free) for colour in colours}
    return [{key: (assigned[key] if raw.colour else key) for key in raw.keys} for raw in raws]


def _format(raws: Sequence[RawMask], ids: Sequence[dict[int, int]], order: Sequence[int]) -> MaskFormat:
    """The output format: each object's id and colour (its colour in a colour file, else its palette's)."""
    colour_of: dict[int, tuple[int, int, int]] = {}
    for raw, file_ids in zip(raws, ids, strict=True):
        for key, object_id in file_ids.items():
            if object_id in colour_of:
                continue
            if raw.colour:
                colour_of[object_id] = _rgb(key)
            else:
                colour_of[object_id] = format_for([key], False, raw.palette).palette[1]
    return MaskFormat((0, *order), ((0, 0, 0), *(colour_of[i] for i in order)))


def _rgb(value: int) -> tuple[int, int, int]:
    return (value >> 16) & 255, (value >> 8) & 255, value & 255


def _fit(
    mark: Mark,
    labels: np.ndarray,
    known: np.ndarray | None,
    size: tuple[int, int],
    resize: bool,
    notes: list[str],
) -> tuple[np.ndarray, np.ndarray | None]:
    """An annotation of another size: refused, or scaled (nearest neighbour) under ``--resize-mask``."""
    height, width = size
    what = "scribble" if mark.scribble else "mask"
    if not resize:
        fix = "pass --resize-mask to scale it (nearest neighbour)"
        if labels.shape == (width, height):
            fix = "it looks rotated: rotate it to the video's displayed orientation (--resize-mask would distort it)"
        raise MaskError(
            f"{what} {mark.path} is {labels.shape[1]}x{labels.shape[0]} but the video is {width}x{height}; {fix}"
        )
    had_objects = bool(labels.max())
    labels = cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)
    if known is not None:
        known = cv2.resize(known.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)
    notes.append(f"{mark.path.name}: {what} resized to {width}x{height}")
    if had_objects and not mark.scribble and labels.max() == 0:
        raise MaskError(
            f"mask {mark.path} has no object left after resizing to {width}x{height}; draw it at the video's size"
        )
    return labels, known
