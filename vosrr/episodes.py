"""Training data for ``vosrr train``: the cached frozen trunk levels of every frame, and episodes drawn from them.

``FeatureCache`` holds, per view of the training frames (the frames, and scale-and-colour augmented copies),
the frozen part of the trunk and the feature-grid targets (background and K objects). ``sample_batch`` draws a
batch of episodes (reference frames and a query of one video, each from a random view, cropped and mirrored),
from the single-object cache and, at ``TrainConfig.multi_rate``, from a multi-object one.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from vosrr.backbone import IMAGENET_MEAN
from vosrr.davis import Sequence
from vosrr.embedding import STRIDE, Embedder, padded_size
from vosrr.masks import targets
from vosrr.train_config import TrainConfig

__all__ = [
    "CachedView",
    "FeatureCache",
    "Videos",
    "augment_frame",
    "count_objects",
    "mask_ids",
    "sample_batch",
]


def augment_frame(
    image: Tensor, labels: Tensor, rng: random.Random, scale: tuple[float, float], colour: float
) -> tuple[Tensor, Tensor, Tensor]:
    """One scale-and-colour augmented copy of a frame, on a canvas of the same size.

    ``augment_frame(image[H,W,3] uint8, labels[H,W], rng, (min, max) scale, colour jitter)
    -> (image[H,W,3] uint8, labels[H,W], known[H,W] float)``. The frame is resized by a log-uniform factor,
    then cropped at a random place (zoom in) or placed at a random place on a mean-grey canvas (zoom out,
    the border unknown: ``known`` 0). Brightness, contrast and saturation change by up to ``colour``, hue
    by up to ``colour / 10``.
    """
    h, w = labels.shape
    s = math.exp(rng.uniform(math.log(scale[0]), math.log(scale[1])))
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    img = TF.resize(image.permute(2, 0, 1), [nh, nw], antialias=True)
    lab = TF.resize(labels[None], [nh, nw], interpolation=InterpolationMode.NEAREST)[0]
    if colour > 0:
        img = TF.adjust_brightness(img, 1 + rng.uniform(-colour, colour))
        img = TF.adjust_contrast(img, 1 + rng.uniform(-colour, colour))
        img = TF.adjust_saturation(img, 1 + rng.uniform(-colour, colour))
        img = TF.adjust_hue(img, rng.uniform(-colour / 10, colour / 10))
    dy = rng.randint(min(0, h - nh), max(0, h - nh))  # negative: crop; positive: margin
    dx = rng.randint(min(0, w - nw), max(0, w - nw))
    y0, x0, sy, sx = max(dy, 0), max(dx, 0), max(-dy, 0), max(-dx, 0)
    ch, cw = min(h - y0, nh - sy), min(w - x0, nw - sx)
    grey = torch.tensor(IMAGENET_MEAN).mul(255).round().to(torch.uint8)
    out = grey.view(3, 1, 1).repeat(1, h, w)
    out_labels = torch.zeros_like(labels)
    known = torch.zeros(h, w)
    out[:, y0 : y0 + ch, x0 : x0 + cw] = img[:, sy : sy + ch, sx : sx + cw]
    out_labels[y0 : y0 + ch, x0 : x0 + cw] = lab[sy : sy + ch, sx : sx + cw]
    known[y0 : y0 + ch, x0 : x0 + cw] = 1
    return out.permute(1, 2, 0).contiguous(), out_labels, known


@dataclass
class CachedView:
    """One view of every training frame: trunk ``levels[i]`` ``[frames, C_i, h_i, w_i]`` (float16),
    soft targets ``Y[frames, h*w, K+1]`` (background and K objects; K = 1 for DAVIS 2016) and known fractions
    ``valid[frames, h*w]`` at stride 8."""

    levels: list[Tensor]
    Y: Tensor
    valid: Tensor


class FeatureCache:
    """Frozen trunk levels and feature-grid targets of every training frame, in several views.

    View 0 is the frames as they are; views 1.. are scale-and-colour augmented copies (``augment_frame``,
    seeded per view and frame, so a cache is reproducible). Each view is computed once and saved beside
    the others; a later run loads it memory-mapped (``index``: (sequence, first row, frame count)).
    """

    def __init__(self, views: list[CachedView], index: list[tuple[str, int, int]]):
        self.views, self.index = views, index

    @classmethod
    def build(
        cls,
        model: Embedder,
        seqs: list[Sequence],
        folder: Path,
        views: int = 1,
        scale: tuple[float, float] = (1.0, 1.0),
        colour: float = 0.0,
        seed: int = 0,
        progress: Any = None,
        objects: int = 1,
    ) -> FeatureCache:
        """``objects`` 1: each mask is one object (grey above 127, DAVIS 2016); more: masks hold ids 0..objects
        (palette or grey), and the cache's files are named after the sequences' masks (``multi_<digest>``)."""
        index, row = [], 0
        for seq in seqs:
            index.append((seq.name, row, len(seq.frames)))
            row += len(seq.frames)
        built = []
        for view in range(views):
            augment = None if view == 0 else {"scale": list(scale), "colour": colour, "seed": seed, "view": view}
            stem = "davis2016_train" if objects == 1 else f"multi_{_digest(seqs)}"
            stem += "" if model.trunk.name == "mobilenet_v2" else f"_{model.trunk.name}"
            name = f"{stem}.pt" if view == 0 else f"{stem}_aug{view}.pt"
            built.append(_cached_view(model, seqs, folder / name, augment, progress, objects))
        return cls(built, index)


def _digest(seqs: list[Sequence]) -> str:
    """A short digest of the sequences' names and first and last masks: a rebuilt folder gets a new cache."""
    h = hashlib.sha1()
    for seq in seqs:
        h.update(seq.name.encode())
        for mask in (seq.masks[0], seq.masks[-1]):
            h.update(mask.read_bytes())
    return h.hexdigest()[:12]


def mask_ids(path: Path) -> np.ndarray:
    """Object ids ``[H,W]`` uint8 of a multi-object mask: a palette PNG's indices, or a grey PNG's values."""
    image = Image.open(path)
    return np.asarray(image if image.mode in ("P", "L") else image.convert("L"))


def count_objects(seqs: list[Sequence]) -> int:
    """The largest object id in the sequences' masks (at least 1)."""
    return max(1, *(int(mask_ids(m).max()) for seq in seqs for m in seq.masks))


def _cached_view(
    model: Embedder,
    seqs: list[Sequence],
    path: Path,
    augment: dict[str, Any] | None,
    progress: Any,
    objects: int = 1,
) -> CachedView:
    names = [s.name for s in seqs]
    if path.is_file():
        data = torch.load(path, weights_only=True, mmap=True)
        if data["names"] == names and data.get("augment") == augment:
            return CachedView(data["levels"], data["Y"], data["valid"])
    total = sum(len(s.frames) for s in seqs)
    first = np.asarray(Image.open(seqs[0].frames[0]).convert("RGB"))
    h, w = first.shape[:2]
    ph, pw = padded_size(h, w)
    c8, c16, c32 = model.trunk.spec.channels
    shapes = [(c8, ph // 8, pw // 8), (c16, ph // 16, pw // 16), (c32, ph // 32, pw // 32)]
    levels = [torch.empty(total, *s, dtype=torch.float16) for s in shapes]
    Y = torch.empty(total, (ph // 8) * (pw // 8), objects + 1, dtype=torch.float16)
    valid = torch.empty(total, (ph // 8) * (pw // 8), dtype=torch.float16)
    model = model.eval().to(memory_format=torch.channels_last)
    what = "trunk features" if augment is None else f"augmented view {augment['view']}"
    task = progress.add_task(f"caching {what}", total=total) if progress else None
    row = 0
    for seq in seqs:
        for frame, mask in zip(seq.frames, seq.masks, strict=True):
            image = torch.from_numpy(np.array(Image.open(frame).convert("RGB")))
            if objects == 1:
                labels = torch.from_numpy((np.asarray(Image.open(mask).convert("L")) > 127).astype(np.uint8))
            else:
                labels = torch.from_numpy(mask_ids(mask).copy())
                if int(labels.max()) > objects:
                    raise ValueError(f"{mask} holds object id {int(labels.max())}, more than the {objects} counted")
            if image.shape[:2] != (h, w):
                raise ValueError(f"{frame} is not {w}x{h}; the feature cache needs one frame size")
            known = None
            if augment is not None:
                rng = random.Random(f"{augment['seed']}:{augment['view']}:{row}")
                image, labels, known = augment_frame(image, labels, rng, augment["scale"], augment["colour"])
                known = known[None]
            with torch.inference_mode():
                out = model.trunk(model.preprocess(image[None]))
                y, v = targets(labels[None], objects + 1, (ph, pw), STRIDE, known)
            for store, value in zip(levels, out, strict=True):
                store[row] = value[0].half()
            Y[row], valid[row] = y[0].half(), v[0].half()
            row += 1
            if progress:
                progress.advance(task)
    if progress:
        progress.remove_task(task)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save({"names": names, "augment": augment, "levels": levels, "Y": Y, "valid": valid}, partial)
    os.replace(partial, path)
    return CachedView(levels, Y, valid)


def _crop_levels(
    view: CachedView, row: int, top: int, left: int, ch: int, cw: int, flip: bool
) -> tuple[list[Tensor], Tensor, Tensor]:
    """Crop (in stride-32 cells) and optionally mirror one cached frame: levels, Y[h*w,K+1], valid[h*w]."""
    out = []
    for level, factor in zip(view.levels, (4, 2, 1), strict=True):
        t, l_, s_h, s_w = top * factor, left * factor, ch * factor, cw * factor
        out.append(level[row, :, t : t + s_h, l_ : l_ + s_w])
    gh, gw = view.levels[0].shape[-2:]
    Y = view.Y[row].view(gh, gw, -1)[top * 4 : (top + ch) * 4, left * 4 : (left + cw) * 4]
    valid = view.valid[row].view(gh, gw)[top * 4 : (top + ch) * 4, left * 4 : (left + cw) * 4]
    if flip:
        out = [x.flip(-1) for x in out]
        Y, valid = Y.flip(1), valid.flip(1)
    return out, Y.reshape(-1, Y.shape[-1]), valid.reshape(-1)


Videos = list[tuple[str, int, int]]
"""a cache's videos: (name, first row, frame count)"""


def sample_batch(
    cache: FeatureCache,
    videos: Videos,
    config: TrainConfig,
    rng: random.Random,
    multi: tuple[FeatureCache, Videos] | None = None,
) -> tuple[list[Tensor], Tensor, Tensor]:
    """A batch of episodes: ``(levels [B*(refs+1), ...], Y [B, refs+1, N, K+1], valid [B, refs+1, N])``.

    Each frame of an episode comes from a random view of the cache, at a random crop, mirrored or not. With
    ``multi`` (its cache and videos), an episode is drawn from it with probability ``config.multi_rate``; K is
    then the larger of the two caches' object counts, and an episode with fewer objects has empty columns.
    """
    ch, cw = config.crop
    H, W = cache.views[0].levels[2].shape[-2:]
    ch, cw = min(ch, H), min(cw, W)
    columns = max(c.views[0].Y.shape[-1] for c in (cache, *(multi[:1] if multi else ())))
    levels: list[list[Tensor]] = [[], [], []]
    ys, vs = [], []
    for _ in range(config.batch):
        source, pool = multi if multi is not None and rng.random() < config.multi_rate else (cache, videos)
        if source.views[0].levels[2].shape[-2:] != (H, W):
            raise ValueError(f"--multi frames must be the size of the training frames ({W * 32}x{H * 32} padded)")
        _, start, count = rng.choice(pool)
        query = rng.randrange(count)
        lo, hi = max(0, query - config.max_gap), min(count - 1, query + config.max_gap)
        picks = [start + rng.randint(lo, hi) for _ in range(config.refs)] + [start + query]
        ey, ev = [], []
        for row in picks:
            view = source.views[rng.randrange(len(source.views))]
            top, left = rng.randint(0, H - ch), rng.randint(0, W - cw)
            lv, y, v = _crop_levels(view, row, top, left, ch, cw, rng.random() < 0.5)
            for store, x in zip(levels, lv, strict=True):
                store.append(x)
            ey.append(F.pad(y, (0, columns - y.shape[-1])))
            ev.append(v)
        ys.append(torch.stack(ey))
        vs.append(torch.stack(ev))
    return [torch.stack(s).float() for s in levels], torch.stack(ys).float(), torch.stack(vs).float()
