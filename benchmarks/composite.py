"""Multi-object composites with exact ground truth, built from DAVIS 2016 val (issue 15, item 1).

    python benchmarks/composite.py --davis /work/davis/DAVIS --out /tmp/composite [--seed 0] [--force]
    vosrr eval --davis /tmp/composite --split composite --out runs/composite
    python benchmarks/composite.py --swaps runs/composite --composite /tmp/composite [--single weights/vosrr_mnv2.json]
    python benchmarks/composite.py --alone runs/alone --composite /tmp/composite --videos A,B [--swaps runs/composite]
    # training episodes (vosrr train --multi) and their held-out check, from DAVIS 2016 train:
    python benchmarks/composite.py --davis DAVIS --split train --exclude bear,flamingo,paragliding --rounds 2 --out M
    python benchmarks/composite.py --davis DAVIS --split train --only bear,flamingo,paragliding --rounds 4 --out H

**Building.** Every sequence of the split (val; ``--only`` / ``--exclude`` choose among them) hosts one
composite video of the host's length (``--rounds`` of them, each drawn anew). Its object 1
is the host's own object; objects 2..K (K = 2..4) are objects of *other* sequences of the same split, cut out
frame by frame with their ground-truth masks and pasted over the host frames in order, so each keeps its own
motion and shape changes, occludes what lies under it (the host object included) and is occluded by later
pastes. A pasted object is scaled once per video (its median bounding-box height becomes 30-50 % of the frame
height, never more than 1.5x and never wider than 60 % of the frame) and shifted by one offset; its motion is
scaled with it. Every second video (``lookalike_every``) holds a look-alike pair: one source object pasted twice,
at different places and half a clip apart in time (the second copy starts at a later source frame), so the two
copies look alike but do not move in step.

Lengths: a source shorter (or, for the later-starting twin, with fewer frames left) than the host plays back and
forth (frames 0, 1, ..., L-1, L-2, ..., 0, 1, ...), so it never stops or jumps.

Placement is by rejection: random offsets (and, failing those, smaller scales) until every object of the video,
after all pastes, shows at least 60 % of its own pixels at frame 0 (and at least 0.2 % of the frame) and on
average at least 50 % of them over the video (pixels outside the frame count as hidden). Frame 0 therefore
shows every object, which matters because frame 0's mask is the annotation the segmenter starts from.

The ground truth is exact: ``Annotations/480p/<name>/NNNNN.png`` is a palette PNG with, per pixel, the id of
the object whose pixels were written there last (0 = host background). Frames are JPEGs at quality 95 (4:4:4),
as DAVIS's own frames are JPEGs; the labels are exact with respect to the composed pixels before encoding.
The layout is DAVIS's (``JPEGImages/480p``, ``Annotations/480p``, ``ImageSets/480p/composite.txt`` and
``val.txt``, one name a line), plus ``composite.json`` recording every paste (source, scale, offset, first
source frame, twin). One seed gives the same bytes on every run; nothing random depends on the clock.

**Swap check.** ``--swaps MASKS`` reads ``vosrr eval``'s masks of the composites and, for every pair of objects
(a, b) of a video, counts the frames where the prediction of a overlaps b's ground truth more than a's own
(IoU >= 0.25 with b, and more than with a); a run of ``--run`` (5) or more such consecutive frames is a swap.
Twins (look-alike pairs) are listed first. The first and last frames are skipped, as in the scoring.

**Alone.** ``--alone DIR --videos ...`` segments every object of the named composites on its own (its frame-0
mask only, the other objects background) and scores it, beside the joint run's score of the same object: is an
object lost because several are solved together, or because it is hard (occluded, enlarged, among look-alikes)?
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vosrr.davis import Sequence, sequences
from vosrr.masks import davis_palette

__all__ = [
    "BuildConfig",
    "Cut",
    "Paste",
    "Video",
    "breakdown",
    "build",
    "check_swaps",
    "plan_video",
    "render",
    "segment_alone",
    "source_index",
    "swap_runs",
]

#: split lists written into ``ImageSets/480p`` (and the split built from: ``train`` for training composites)
LISTS = ("composite", "val")


@dataclass(frozen=True)
class BuildConfig:
    """What the builder draws. The defaults built the numbers in docs/RESULTS.md."""

    seed: int = 0
    split: str = "val"
    #: only these sequences of the split are hosts and sources (empty: all of them)
    only: tuple[str, ...] = ()
    #: these sequences of the split are neither hosts nor sources (e.g. training's held-out sequences)
    exclude: tuple[str, ...] = ()
    #: composites per host, each drawn anew (more than 1: names end in ``@round``)
    rounds: int = 1
    #: objects per video, host included (inclusive range)
    objects: tuple[int, int] = (2, 4)
    #: every n-th video (the 2nd, 4th, ...) holds a look-alike pair; 1: all of them, 0: none
    lookalike_every: int = 2
    #: a pasted object's median bounding-box height, as a share of the frame height (drawn uniformly)
    height: tuple[float, float] = (0.3, 0.5)
    #: a fixed scale for every paste instead (tests use 1.0: pixels copied, not resampled)
    fixed_scale: float | None = None
    max_scale: float = 1.5
    #: a pasted object's median bounding-box width, at most this share of the frame width
    max_width: float = 0.6
    #: every object shows at least this share of its own pixels at frame 0 ...
    visible_first: float = 0.6
    #: ... and at least this share of the frame's pixels there ...
    min_pixels: float = 0.002
    #: ... and on average at least this share of its own pixels over the video
    visible_mean: float = 0.5
    #: random offsets tried per scale, and scales tried (each 0.8x the one before) per object
    tries: int = 60
    shrinks: int = 4
    #: JPEG quality of the frames
    quality: int = 95


@dataclass(frozen=True)
class Paste:
    """One pasted object: ``source`` sequence scaled by ``scale``, its scaled frame's origin at ``(dy, dx)``
    in the host frame, source frame ``start`` shown at host frame 0, ``twin`` the id of its look-alike."""

    id: int
    source: str
    scale: float
    dy: int
    dx: int
    start: int
    twin: int | None = None


@dataclass(frozen=True)
class Video:
    """One composite: the host sequence (object 1) and the pastes (objects 2..K, in paste order)."""

    name: str
    host: str
    pastes: tuple[Paste, ...]
    frames: int
    notes: tuple[str, ...] = field(default=())

    @property
    def objects(self) -> int:
        return 1 + len(self.pastes)


@dataclass(frozen=True)
class Cut:
    """An object cut out of one frame at one scale: its bounding box's corner ``(y, x)`` in the scaled frame,
    ``rgb[h,w,3]`` uint8 and ``mask[h,w]`` bool (``h = w = 0`` when the object is absent)."""

    y: int
    x: int
    rgb: np.ndarray
    mask: np.ndarray

    @property
    def pixels(self) -> int:
        return int(self.mask.sum())


def source_index(t: int, start: int, length: int) -> int:
    """The source frame shown at host frame ``t``: from ``start`` on, back and forth over ``0..length-1``."""
    if length <= 1:
        return 0
    period = 2 * (length - 1)
    i = (start + t) % period
    return i if i < length else period - i


def _read_mask(path: Path) -> np.ndarray:
    """A DAVIS 2016 annotation as a bool ``[H,W]`` (the object is 255, or any value >= 128)."""
    return np.asarray(Image.open(path).convert("L")) >= 128


def _cut(frame: Path, mask_path: Path, scale: float) -> Cut:
    """The object of one DAVIS frame, scaled: bilinear (antialiased) for the pixels and for the mask, whose
    half-level is the edge. Scale 1 copies the pixels unchanged."""
    mask = _read_mask(mask_path)
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return Cut(0, 0, np.zeros((0, 0, 3), np.uint8), np.zeros((0, 0), bool))
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    image = Image.open(frame).convert("RGB")
    if scale == 1.0:
        rgb = np.asarray(image)[y0:y1, x0:x1].copy()
        return Cut(y0, x0, rgb, mask[y0:y1, x0:x1].copy())
    width, height = round(image.width * scale), round(image.height * scale)
    X0, Y0 = max(0, int(np.floor(x0 * scale)) - 1), max(0, int(np.floor(y0 * scale)) - 1)
    X1, Y1 = min(width, int(np.ceil(x1 * scale)) + 1), min(height, int(np.ceil(y1 * scale)) + 1)
    box = (X0 / scale, Y0 / scale, min(X1 / scale, image.width), min(Y1 / scale, image.height))
    size = (X1 - X0, Y1 - Y0)
    rgb = np.asarray(image.resize(size, Image.Resampling.BILINEAR, box=box))
    alpha = Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.BILINEAR, box=box)
    return Cut(Y0, X0, rgb, np.asarray(alpha) >= 128)


def _window(cut: Cut, dy: int, dx: int, height: int, width: int) -> tuple[slice, slice, slice, slice] | None:
    """Where ``cut`` shifted by ``(dy, dx)`` meets a ``height x width`` frame: (frame rows, frame cols, cut rows,
    cut cols), or None when it lies outside."""
    top, left = cut.y + dy, cut.x + dx
    h, w = cut.mask.shape
    r0, r1 = max(0, top), min(height, top + h)
    c0, c1 = max(0, left), min(width, left + w)
    if r0 >= r1 or c0 >= c1:
        return None
    return slice(r0, r1), slice(c0, c1), slice(r0 - top, r1 - top), slice(c0 - left, c1 - left)


def render(frame: np.ndarray, host_mask: np.ndarray, cuts: list[tuple[Cut, int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Compose one frame: ``frame[H,W,3]`` uint8 with ``host_mask[H,W]`` bool as object 1, then ``cuts`` (cut,
    dy, dx) pasted in order as objects 2, 3, ... Returns ``(rgb[H,W,3] uint8, labels[H,W] uint8)``."""
    rgb = frame.copy()
    labels = host_mask.astype(np.uint8)
    height, width = labels.shape
    for k, (cut, dy, dx) in enumerate(cuts):
        window = _window(cut, dy, dx, height, width)
        if window is None:
            continue
        rows, cols, crows, ccols = window
        inside = cut.mask[crows, ccols]
        rgb[rows, cols][inside] = cut.rgb[crows, ccols][inside]
        labels[rows, cols][inside] = k + 2
    return rgb, labels


def _visibility(
    host: list[np.ndarray], cuts: list[list[tuple[Cut, int, int]]], shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Per object (host first) and frame: pixels visible and the object's own pixels (``[K,T]`` int arrays).
    ``cuts[t]`` are frame t's pastes."""
    T, K = len(host), 1 + len(cuts[0])
    visible = np.zeros((K, T), np.int64)
    own = np.zeros((K, T), np.int64)
    height, width = shape
    for t in range(T):
        labels = host[t].astype(np.uint8)
        own[0, t] = int(host[t].sum())
        for k, (cut, dy, dx) in enumerate(cuts[t]):
            own[k + 1, t] = cut.pixels
            window = _window(cut, dy, dx, height, width)
            if window is not None:
                rows, cols, crows, ccols = window
                labels[rows, cols][cut.mask[crows, ccols]] = k + 2
        visible[:, t] = np.bincount(labels.ravel(), minlength=K + 1)[1 : K + 1]
    return visible, own


def _acceptable(visible: np.ndarray, own: np.ndarray, area: int, config: BuildConfig) -> bool:
    """The placement rules (module docstring) for every object."""
    if np.any(own[:, 0] == 0):
        return False
    first = visible[:, 0]
    if np.any(first < config.visible_first * own[:, 0]) or np.any(first < config.min_pixels * area):
        return False
    present = own > 0
    share = np.where(present, visible / np.maximum(own, 1), 0.0).sum(axis=1) / np.maximum(present.sum(axis=1), 1)
    return bool(np.all(share >= config.visible_mean))


def _box_sizes(seq: Sequence, indices: list[int]) -> tuple[float, float]:
    """Median bounding-box height and width of ``seq``'s object over the given frames."""
    heights, widths = [], []
    for i in indices:
        mask = _read_mask(seq.masks[i])
        ys, xs = np.nonzero(mask)
        if ys.size:
            heights.append(ys.max() - ys.min() + 1)
            widths.append(xs.max() - xs.min() + 1)
    if not heights:
        raise ValueError(f"{seq.name}: its object is absent from every frame used")
    return float(np.median(heights)), float(np.median(widths))


def plan_video(
    index: int, host: Sequence, pool: list[Sequence], config: BuildConfig
) -> tuple[Video, list[np.ndarray], list[list[tuple[Cut, int, int]]]]:
    """Draw video ``index``'s pastes (deterministic in ``config.seed`` and ``index``). Returns the plan, the host
    masks ``[H,W]`` bool per frame and the placed cuts per frame."""
    rng = np.random.default_rng([config.seed, index])
    T = len(host.frames)
    host_masks = [_read_mask(m) for m in host.masks]
    height, width = host_masks[0].shape
    area = height * width
    lookalike = config.lookalike_every > 0 and index % config.lookalike_every == config.lookalike_every - 1
    low, high = config.objects
    if lookalike:
        low = max(low, 3)
    others = [s for s in pool if s.name != host.name]
    high = min(high, 1 + len(others) + int(lookalike))  # each source once, a twin's twice
    if not 2 <= low <= high:
        raise ValueError(
            f"{host.name}: objects {config.objects} with {len(others)} other sequences: need 2 <= min <= max "
            "(a look-alike video needs 3)"
        )
    pasted = int(rng.integers(low, high + 1)) - 1
    sources = [others[i] for i in rng.permutation(len(others))]
    # the pair's first copy is paste number twin_at, its twin the next one
    twin_at = int(rng.integers(0, pasted - 1)) if lookalike else -2
    placed: list[Paste] = []
    per_frame: list[list[tuple[Cut, int, int]]] = [[] for _ in range(T)]
    notes: list[str] = []
    while len(placed) < pasted:
        k = len(placed)
        twin_of = placed[-1] if lookalike and k == twin_at + 1 else None
        # a twin: the same source and scale, three tries at a later start; else the sources in drawn order
        candidates = [next(s for s in pool if s.name == twin_of.source)] * 3 if twin_of else list(sources)
        done = False
        for source in candidates:
            if twin_of is None:
                sources.remove(source)
            L = len(source.frames)
            start = int(rng.integers(L // 4, max(L // 4 + 1, (3 * L) // 4))) if twin_of else 0
            indices = [source_index(t, start, L) for t in range(T)]
            box_h, box_w = _box_sizes(source, indices)
            if config.fixed_scale is not None:
                scale = config.fixed_scale
            elif twin_of is not None:
                scale = twin_of.scale
            else:
                scale = float(rng.uniform(*config.height)) * height / box_h
                scale = min(scale, config.max_scale, config.max_width * width / box_w)
            for _ in range(1 if config.fixed_scale is not None else config.shrinks):
                scale = round(scale, 4)
                cuts = [_cut(source.frames[i], source.masks[i], scale) for i in indices]
                if cuts[0].pixels == 0:
                    break
                found = [c for c in cuts if c.pixels]
                top = min(c.y for c in found)
                bottom = max(c.y + c.mask.shape[0] for c in found)
                left = min(c.x for c in found)
                right = max(c.x + c.mask.shape[1] for c in found)
                for _ in range(config.tries):
                    dy = int(rng.integers(min(-top, height - bottom), max(-top, height - bottom) + 1))
                    dx = int(rng.integers(min(-left, width - right), max(-left, width - right) + 1))
                    trial = [[*frame, (cuts[t], dy, dx)] for t, frame in enumerate(per_frame)]
                    visible, own = _visibility(host_masks, trial, (height, width))
                    if _acceptable(visible, own, area, config):
                        placed.append(Paste(k + 2, source.name, scale, dy, dx, start))
                        per_frame = trial
                        done = True
                        break
                if done:
                    break
                scale *= 0.8
            if done:
                break
            again = "another start" if twin_of else "another source"
            notes.append(f"object {k + 2}: no placement for {source.name} from frame {start}, {again} drawn")
        if not done:
            raise RuntimeError(
                f"{host.name}: no placement of object {k + 2} satisfies the visibility rules; "
                "lower visible_first / visible_mean or the objects per video"
            )
        if twin_of is not None:  # the pair knows each other
            first = placed[-2]
            placed[-2] = Paste(first.id, first.source, first.scale, first.dy, first.dx, first.start, k + 2)
            last = placed[-1]
            placed[-1] = Paste(last.id, last.source, last.scale, last.dy, last.dx, last.start, first.id)
    name = "+".join([host.name, *[p.source for p in placed]])
    return Video(name, host.name, tuple(placed), T, tuple(notes)), host_masks, per_frame


def build(davis: Path, out: Path, config: BuildConfig = BuildConfig(), force: bool = False) -> list[Video]:
    """Write every composite of ``config.split`` into ``out`` (DAVIS layout, see the module docstring)."""
    davis, out = Path(davis), Path(out)
    pool = sequences(davis, config.split, choose=False)
    names = {seq.name for seq in pool}
    unknown = sorted((set(config.only) | set(config.exclude)) - names)
    if unknown:
        raise ValueError(f"not sequences of split {config.split}: {', '.join(unknown)}")
    pool = [s for s in pool if (not config.only or s.name in config.only) and s.name not in config.exclude]
    if len(pool) < 2:
        raise ValueError(f"{len(pool)} sequence(s) left to build from; a composite needs a host and a source")
    if config.rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {config.rounds}")
    written = [out / part for part in ("JPEGImages", "Annotations", "ImageSets")] + [out / "composite.json"]
    if any(p.exists() for p in written):
        if not force:
            raise FileExistsError(f"{out} holds an earlier build; pass --force to replace it")
        for p in written:
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
    palette = [c for rgb in davis_palette() for c in rgb]
    videos = []
    for index in range(len(pool) * config.rounds):
        host = pool[index % len(pool)]
        video, host_masks, per_frame = plan_video(index, host, pool, config)
        if config.rounds > 1:
            video = replace(video, name=f"{video.name}@{index // len(pool)}")
        images = out / "JPEGImages" / "480p" / video.name
        masks = out / "Annotations" / "480p" / video.name
        images.mkdir(parents=True)
        masks.mkdir(parents=True)
        for t in range(video.frames):
            frame = np.asarray(Image.open(host.frames[t]).convert("RGB"))
            rgb, labels = render(frame, host_masks[t], per_frame[t])
            Image.fromarray(rgb).save(images / f"{t:05d}.jpg", quality=config.quality, subsampling=0)
            image = Image.fromarray(labels, mode="P")
            image.putpalette(palette)
            image.save(masks / f"{t:05d}.png")
        videos.append(video)
        print(f"{video.name}: {video.frames} frames, {video.objects} objects", file=sys.stderr)
    lists = out / "ImageSets" / "480p"
    lists.mkdir(parents=True)
    for name in dict.fromkeys((*LISTS, config.split)):
        (lists / f"{name}.txt").write_text("".join(f"{v.name}\n" for v in videos))
    manifest = {"config": asdict(config), "davis": davis.name, "videos": [asdict(v) for v in videos]}
    (out / "composite.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return videos


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int(np.logical_or(a, b).sum())
    return int(np.logical_and(a, b).sum()) / union if union else 0.0


def swap_runs(gt: list[np.ndarray], pred: list[np.ndarray], a: int, b: int, min_iou: float = 0.25) -> tuple[int, int]:
    """Frames where prediction ``a`` is object ``b`` rather than ``a`` (IoU with ``b``'s ground truth at least
    ``min_iou`` and above its IoU with ``a``'s); ``gt`` and ``pred`` are label maps ``[H,W]`` per frame.
    Returns ``(such frames, the longest run of consecutive ones)``."""
    count = longest = run = 0
    for g, p in zip(gt, pred, strict=True):
        mine = p == a
        other = _iou(mine, g == b)
        if other >= min_iou and other > _iou(mine, g == a):
            count += 1
            run += 1
            longest = max(longest, run)
        else:
            run = 0
    return count, longest


def check_swaps(composite: Path, masks: Path, run: int = 5) -> list[dict[str, Any]]:
    """The swap check over every video of ``composite.json`` found in ``masks`` (``vosrr eval --out``): one row
    per ordered pair of objects (twins first), first and last frames skipped."""
    manifest = json.loads((Path(composite) / "composite.json").read_text())
    rows = []
    for video in manifest["videos"]:
        pred_dir = Path(masks) / video["name"]
        gt_dir = Path(composite) / "Annotations" / "480p" / video["name"]
        if not pred_dir.is_dir():
            continue
        names = sorted(p.name for p in gt_dir.glob("*.png"))[1:-1]
        missing = [n for n in names if not (pred_dir / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{pred_dir}: {len(missing)} masks missing, first {missing[0]}")
        gt = [np.asarray(Image.open(gt_dir / n)) for n in names]
        pred = [np.asarray(Image.open(pred_dir / n)) for n in names]
        twins = {(p["id"], p["twin"]) for p in video["pastes"] if p["twin"] is not None}
        ids = [1, *[p["id"] for p in video["pastes"]]]
        pairs = sorted(((a, b) for a in ids for b in ids if a != b), key=lambda ab: (ab not in twins, ab))
        for a, b in pairs:
            frames, longest = swap_runs(gt, pred, a, b)
            rows.append(
                {
                    "video": video["name"],
                    "a": a,
                    "b": b,
                    "twins": (a, b) in twins,
                    "frames": frames,
                    "of": len(names),
                    "longest": longest,
                    "swapped": longest >= run,
                }
            )
    return rows


def segment_alone(
    composite: Path, names: list[str], out: Path, weights: Path | None = None
) -> dict[str, dict[str, dict[str, float]]]:
    """Each object of each named composite segmented on its own (the default options; its frame-0 mask alone,
    every other object background), to tell the joint solve from the objects' own difficulty. Masks go to
    ``out/<video>/<id>/``; returns ``{video: {id: {"J", "F", "JF"}}}`` (vos-benchmark, first and last frames
    skipped)."""
    import torch
    from vos_benchmark.evaluator import Evaluator

    from vosrr.checkpoint import load_model
    from vosrr.pipeline import Outputs, segment_video
    from vosrr.segmenter import SegmentConfig, Segmenter

    model, _ = load_model(weights, torch.device("cpu"))
    segmenter = Segmenter(model, SegmentConfig(), torch.device("cpu"))
    table: dict[str, dict[str, dict[str, float]]] = {}
    for name in names:
        gt_dir = Path(composite) / "Annotations" / "480p" / name
        frames = sorted(p.name for p in gt_dir.glob("*.png"))
        if not frames:
            raise FileNotFoundError(f"{gt_dir}: no annotations; is {name} one of the composites?")
        first = np.asarray(Image.open(gt_dir / frames[0]))
        table[name] = {}
        for k in (int(v) for v in np.unique(first) if v):
            folder = Path(out) / name / str(k)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray((first == k).astype(np.uint8) * 255).save(folder / "reference.png")
            outputs = Outputs(folder / "masks", masks=True, overlay=False, force=True, mask_subdir="")
            segment_video(segmenter, Path(composite) / "JPEGImages" / "480p" / name, folder / "reference.png", outputs)
            evaluator = Evaluator(name=name)
            for frame in frames[1:-1]:
                mine = np.asarray(Image.open(folder / "masks" / frame)) > 0
                gt = np.asarray(Image.open(gt_dir / frame)) == k
                evaluator.feed_frame(mine.astype(np.uint8), gt.astype(np.uint8))
            iou, boundary = evaluator.conclude()
            j, f = float(iou.get(1, 0.0)), float(boundary.get(1, 0.0))
            table[name][str(k)] = {"J": j, "F": f, "JF": (j + f) / 2}
    return table


def breakdown(composite: Path, results: dict[str, Any], single: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Where the composites' J&F comes from: ``vosrr eval``'s ``results`` on the composites against ``single``
    (its ``sequences`` rows: the same network's single-object DAVIS 2016 scores, e.g. ``weights/*.json``'s
    ``davis2016_val``). Rows: all objects; host objects and pasted ones, each beside the single-object J&F of
    the sequences they come from; twins and other pastes; videos of 2, 3 and 4 objects. Each row holds the
    number of objects ``n``, mean ``J``, ``F``, ``JF`` and ``single`` (the single-object J&F of the same
    objects' sequences)."""
    manifest = json.loads((Path(composite) / "composite.json").read_text())
    groups: dict[str, list[tuple[dict[str, float], str]]] = {}
    for video in manifest["videos"]:
        row = results["sequences"].get(video["name"])
        if row is None:
            continue
        sources = {1: video["host"], **{p["id"]: p["source"] for p in video["pastes"]}}
        twins = {p["id"] for p in video["pastes"] if p["twin"] is not None}
        for key, scores in row["objects"].items():
            k = int(key)
            names = ["all objects", "host objects" if k == 1 else "pasted objects"]
            if k != 1:
                names.append("pasted, look-alike twins" if k in twins else "pasted, no twin")
            names.append(f"videos of {len(sources)} objects")
            for name in names:
                groups.setdefault(name, []).append((scores, sources[k]))
    table = {}
    for name in sorted(groups, key=lambda n: (not n.startswith("all"), n.startswith("videos"), n)):
        members = groups[name]
        table[name] = {
            "n": float(len(members)),
            **{m: float(np.mean([scores[m] for scores, _ in members])) for m in ("J", "F", "JF")},
            "single": float(np.mean([single["sequences"][source]["JF"] for _, source in members])),
        }
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--davis", type=Path, help="DAVIS 2016 root (JPEGImages, Annotations, ImageSets)")
    parser.add_argument("--out", type=Path, help="folder for the composites (DAVIS layout)")
    parser.add_argument("--seed", type=int, default=BuildConfig.seed)
    parser.add_argument("--split", default=BuildConfig.split, help="split whose sequences are hosts and sources")
    parser.add_argument("--only", default="", help="comma-separated sequences: the only hosts and sources")
    parser.add_argument("--exclude", default="", help="comma-separated sequences that are neither hosts nor sources")
    parser.add_argument("--rounds", type=int, default=1, help="composites per host, each drawn anew")
    parser.add_argument("--force", action="store_true", help="replace an earlier build in --out")
    parser.add_argument("--swaps", type=Path, help="swap check: vosrr eval's --out folder of the composites")
    parser.add_argument("--composite", type=Path, help="swap check: the composites' folder")
    parser.add_argument("--run", type=int, default=5, help="swap check: consecutive frames that make a swap")
    parser.add_argument(
        "--single",
        type=Path,
        help="with --swaps: a weights/*.json record; also print where the J&F comes from against its "
        "single-object DAVIS 2016 val scores",
    )
    parser.add_argument(
        "--alone",
        type=Path,
        help="segment each object of --videos on its own into this folder (needs --composite), "
        "and compare with --swaps's joint results when given",
    )
    parser.add_argument("--videos", help="with --alone: comma-separated composite names")
    args = parser.parse_args(argv)
    if args.alone is not None:
        if args.composite is None or not args.videos:
            parser.error("--alone needs --composite and --videos")
        alone = segment_alone(args.composite, args.videos.split(","), args.alone)
        joint = json.loads((args.swaps / "results.json").read_text())["sequences"] if args.swaps else {}
        pairs = []
        for name, objects in alone.items():
            for key, row in objects.items():
                both = joint.get(name, {}).get("objects", {}).get(key)
                pairs.append((row["JF"], both["JF"] if both else float("nan")))
                print(
                    f"{name:<48} #{key}  alone J {row['J']:5.1f} F {row['F']:5.1f} J&F {row['JF']:5.1f}"
                    + (f"   jointly J&F {both['JF']:5.1f}" if both else "")
                )
        means = np.mean(pairs, axis=0)
        print(f"mean of {len(pairs)} objects: alone J&F {means[0]:.1f}, jointly {means[1]:.1f}")
        (args.alone / "alone.json").write_text(json.dumps(alone, indent=1) + "\n")
        return 0
    if args.swaps is not None:
        if args.composite is None:
            parser.error("--swaps needs --composite (the folder the builder wrote)")
        rows = check_swaps(args.composite, args.swaps, args.run)
        if not rows:
            parser.error(f"no masks of the composites in {args.swaps}")
        for row in rows:
            if row["twins"] or row["frames"]:
                flag = "SWAP" if row["swapped"] else "ok"
                kind = "twins" if row["twins"] else "other"
                print(
                    f"{row['video']:<48} {row['a']}->{row['b']} {kind:<5} frames {row['frames']:>3}/{row['of']:<3} "
                    f"longest run {row['longest']:>3}  {flag}"
                )
        twin_rows = [r for r in rows if r["twins"]]
        print(
            f"twin pairs: {len(twin_rows) // 2} in {len({r['video'] for r in twin_rows})} videos, "
            f"swapped (a run of >= {args.run} frames): {sum(r['swapped'] for r in twin_rows)} directions; "
            f"any pair: {sum(r['swapped'] for r in rows)} of {len(rows)} directions"
        )
        (args.swaps / "swaps.json").write_text(json.dumps(rows, indent=1) + "\n")
        if args.single is not None:
            results = json.loads((args.swaps / "results.json").read_text())
            single = json.loads(args.single.read_text())["davis2016_val"]
            print(f"\n{'objects':<28} {'n':>3} {'J':>5} {'F':>5} {'J&F':>5}  single-object J&F of their sequences")
            for name, row in breakdown(args.composite, results, single).items():
                print(
                    f"{name:<28} {row['n']:>3.0f} {row['J']:>5.1f} {row['F']:>5.1f} {row['JF']:>5.1f}  "
                    f"{row['single']:.1f}"
                )
        return 0
    if args.davis is None or args.out is None:
        parser.error("building needs --davis and --out")
    try:
        chosen = {k: tuple(n for n in getattr(args, k).split(",") if n) for k in ("only", "exclude")}
        config = BuildConfig(seed=args.seed, split=args.split, rounds=args.rounds, **chosen)
        videos = build(args.davis, args.out, config, args.force)
    except (FileExistsError, ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    counts = np.bincount([v.objects for v in videos])
    print(
        f"{len(videos)} videos, {sum(v.frames for v in videos)} frames, objects per video "
        + ", ".join(f"{k}: {n}" for k, n in enumerate(counts) if n)
        + f", {sum(any(p.twin for p in v.pastes) for v in videos)} with look-alikes -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
