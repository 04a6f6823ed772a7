"""Meta-training of phi through the ridge solve (``vosrr train``), shaped like torchvision's reference scripts.

An episode is two frames of one training video: W is solved from the reference frame's features and
mask, the query frame is predicted with it, and BCEWithLogits on the query back-propagates through the
solve into phi. On a CPU the frozen part of the trunk is computed once and cached (``FeatureCache``);
the trainable part (the head, and optionally the last one or two trunk stages) runs on the cached
levels of several views of each frame (scale and colour augmented), with flips and random crops.
Under ``torchrun`` the same loop runs data-parallel (DDP).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from vosrr import solver
from vosrr.backbone import IMAGENET_MEAN, TRUNKS
from vosrr.checkpoint import WeightsError, load_checkpoint, save_checkpoint
from vosrr.davis import DavisError, Sequence, sequences
from vosrr.embedding import STRIDE, Embedder, ModelConfig, padded_size
from vosrr.masks import targets
from vosrr.video import OutputError

__all__ = ["FeatureCache", "TrainConfig", "evaluate_episodes", "train", "train_one_epoch"]


@dataclass(frozen=True)
class TrainConfig:
    davis: Path
    out: Path = Path("runs/train")
    channels: int = 256
    width: int = 192
    lam: float = 5.0
    trunk: str = "mobilenet_v2"
    """ImageNet trunk of phi: one of ``backbone.TRUNKS``"""
    blocks: int = 1
    train_stages: int = 1
    """trunk stages trained with the head: 0 (head only), 1 (+ stride-32 stage), 2 (+ stride-16 stage)"""
    epochs: int = 10
    steps: int = 100
    """optimizer steps per epoch"""
    batch: int = 8
    """episodes per step"""
    refs: int = 1
    """reference frames per episode (their statistics add up)"""
    multi: Path | None = None
    """a DAVIS-layout folder of multi-object videos (split ``train``; palette masks, ids 1..K), e.g. composites
    of the training sequences (``benchmarks/composite.py --split train --exclude <held-out>``): their episodes
    solve W for all K objects at once"""
    multi_rate: float = 0.5
    """share of the episodes drawn from ``multi``"""
    multi_views: int = 2
    """cached views of each ``multi`` frame (as ``views``)"""
    init: Path | None = None
    """start from these weights (fine-tuning: a new optimizer and schedule; the trunk must match)"""
    optimizer: str = "adamw"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    max_gap: int = 30
    crop: tuple[int, int] = (12, 20)
    """crop of the cached feature maps, in stride-32 cells (12 x 20 = 384 x 640 pixels)"""
    views: int = 4
    """cached views of each frame: the frame itself and views-1 scale-and-colour augmented copies"""
    scale: tuple[float, float] = (0.7, 1.4)
    """scale augmentation: the range of the resize factor (log-uniform)"""
    colour: float = 0.3
    """colour augmentation: brightness, contrast and saturation by up to this factor, hue by a tenth of it"""
    holdout: int = 3
    """training sequences held out for validation"""
    seed: int = 0
    device: str = "cpu"
    cache: Path = Path("cache")
    resume: Path | None = None
    force: bool = False
    """start over in an ``out`` that holds an earlier run's ``last.pt`` (it is replaced)"""
    log_every: int = 10
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        numbers = {"--lam": self.lam, "--lr": self.lr, "--weight-decay": self.weight_decay, "--colour": self.colour}
        numbers |= {"momentum": self.momentum, "--scale": self.scale[0], "--scale max": self.scale[1]}
        for option, value in numbers.items():  # nan passes every comparison below, so refuse it first
            if not math.isfinite(value):
                raise ValueError(f"{option} must be a finite number, got {value}")
        at_least = {"--epochs": 1, "--steps": 1, "--batch": 1, "--refs": 1, "--views": 1, "--max-gap": 1}
        at_least |= {"--multi-views": 1}
        at_least |= {"--channels": 2, "--width": 1, "--holdout": 0}
        for option, least in at_least.items():
            value = getattr(self, option[2:].replace("-", "_"))
            if value < least:
                raise ValueError(f"{option} must be at least {least}, got {value}")
        if not 1e-3 <= self.lam <= 1e4:
            raise ValueError(f"--lam must be between 0.001 and 10000 (the learned value is about 5), got {self.lam}")
        if not 0 < self.lr <= 1:
            raise ValueError(f"--lr must be above 0 and at most 1, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"--weight-decay must be at least 0, got {self.weight_decay}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.trunk not in TRUNKS:
            raise ValueError(f"--trunk must be one of {', '.join(TRUNKS)}, got {self.trunk!r}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"--optimizer must be sgd or adamw, got {self.optimizer!r}")
        if self.train_stages not in (0, 1, 2):
            raise ValueError(f"--train-stages must be 0, 1 or 2, got {self.train_stages}")
        if self.channels % self.blocks:
            raise ValueError(f"--blocks {self.blocks} must divide --channels {self.channels}")
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"--scale must be 0 < min <= max, got {self.scale}")
        if not 0 <= self.colour < 1:
            raise ValueError(f"--colour must be in [0, 1), got {self.colour}")
        if not 0 <= self.multi_rate <= 1 or not math.isfinite(self.multi_rate):
            raise ValueError(f"--multi-rate must be in [0, 1], got {self.multi_rate}")
        if self.resume is not None and self.init is not None:
            raise ValueError("--init starts a new run from weights and --resume goes on with one; pass one of them")


# ------------------------------------------------------------------------------------------ data
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


# ------------------------------------------------------------------------------------------ model pieces
def trainable_levels(model: Embedder, levels: list[Tensor], stages: int) -> tuple[Tensor, Tensor, Tensor]:
    """Recompute the trained trunk stages from the cached inputs below them (with gradients)."""
    f8, f16, f32 = levels
    if stages >= 2:
        f16 = model.trunk.level16(f8)
    if stages >= 1:
        f32 = model.trunk.level32(f16)
    return f8, f16, f32


def episode_loss(
    model: Embedder, levels: list[Tensor], Y: Tensor, valid: Tensor, config: TrainConfig
) -> tuple[Tensor, Tensor]:
    """BCEWithLogits of the query predicted through the solve; returns ``(loss, IoU per episode)``.

    ``Y [B, refs+1, N, K+1]``: W is solved for all K objects at once. Only the classes seen in the reference
    frames count (an empty column, or an object cropped out of the references, cannot be predicted): the loss
    is the mean over them, and the IoU the mean over the objects among them (the query's labels being the
    argmax over them; an episode with none scores 1).
    """
    b, frames = Y.shape[:2]
    X = model.embed(trainable_levels(model, levels, config.train_stages))  # [b*frames, C, h, w]
    X = X.flatten(2).transpose(1, 2).unflatten(0, (b, frames))  # [b, frames, N, C]
    ref_X, ref_Y, ref_v = X[:, :-1].flatten(1, 2), Y[:, :-1].flatten(1, 2), valid[:, :-1].flatten(1, 2)
    weights = solver.balanced_weights(ref_Y, ref_v)
    W = solver.fit(ref_X, ref_Y, model.lam, weights, config.blocks)  # [b, C, 2]
    logits = model.logits(solver.predict(X[:, -1], W))  # [b, N, K+1]
    q_Y, q_v = Y[:, -1], valid[:, -1]
    seen = ((ref_Y * ref_v.unsqueeze(-1)).sum(1) > 0).to(logits.dtype)  # [b, K+1]
    bce = F.binary_cross_entropy_with_logits(logits, q_Y, reduction="none")
    bce = (bce * seen.unsqueeze(1)).sum(-1) / seen.sum(-1, keepdim=True).clamp_min(1)
    loss = (bce * q_v).sum() / q_v.sum().clamp_min(1)
    with torch.no_grad():
        label = logits.masked_fill(seen.unsqueeze(1) == 0, -math.inf).argmax(-1)  # [b, N]
        k = torch.arange(logits.shape[-1], device=logits.device)
        pred = (label.unsqueeze(-1) == k).float()  # [b, N, K+1]
        gt = (q_Y == q_Y.amax(-1, keepdim=True)).float() * (q_Y > 0.5).float()
        inter = (pred * gt * q_v.unsqueeze(-1)).sum(1)  # [b, K+1]
        union = ((pred + gt).clamp(max=1) * q_v.unsqueeze(-1)).sum(1)
        per_object = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))[:, 1:]
        objects = seen[:, 1:]
        iou = torch.where(objects.sum(-1) > 0, (per_object * objects).sum(-1) / objects.sum(-1).clamp_min(1), 1.0)
    return loss, iou


def train_one_epoch(
    model: Embedder,
    optimizer: torch.optim.Optimizer,
    cache: FeatureCache,
    videos: Videos,
    config: TrainConfig,
    rng: random.Random,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    progress: Any = None,
    device: torch.device | None = None,
    multi: tuple[FeatureCache, Videos] | None = None,
) -> dict[str, float]:
    device = device or torch.device("cpu")
    model.train()
    task = progress.add_task("epoch", total=config.steps) if progress else None
    losses, ious = [], []
    for step in range(config.steps):
        levels, Y, valid = sample_batch(cache, videos, config, rng, multi)
        levels = [x.to(device) for x in levels]
        loss, iou = episode_loss(model, levels, Y.to(device), valid.to(device), config)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {step}; lower --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if dist.is_available() and dist.is_initialized():
            world = dist.get_world_size()
            for p in model.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= world
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.item())
        ious.append(iou.mean().item())
        if progress:
            progress.update(
                task,
                advance=1,
                description=f"loss {np.mean(losses[-20:]):.4f} "
                f"IoU {np.mean(ious[-20:]):.3f} lam {model.lam.item():.2f}",
            )
    if progress:
        progress.remove_task(task)
    return {"loss": float(np.mean(losses)), "iou": float(np.mean(ious))}


def evaluate_episodes(
    model: Embedder,
    cache: FeatureCache,
    videos: Videos,
    config: TrainConfig,
    every: int = 5,
    device: torch.device | None = None,
) -> dict[str, float]:
    """Held-out check: W from each video's first frame, mean IoU (stride-8 grid) on every ``every``-th frame."""
    device = device or torch.device("cpu")
    model.eval()
    ious = []
    with torch.no_grad():
        for _, start, count in videos:
            if count < 2:  # a single frame: nothing to propagate to
                continue
            step = min(every, count - 1)  # a short video is still checked on a later frame
            rows = [start, *range(start + step, start + count, step)]
            view = cache.views[0]
            levels = [lv[rows].float().to(device) for lv in view.levels]
            Y = view.Y[rows].float().to(device)
            valid = view.valid[rows].float().to(device)
            X = model.embed(trainable_levels(model, levels, config.train_stages)).flatten(2).transpose(1, 2)
            W = solver.fit(X[0], Y[0], model.lam, solver.balanced_weights(Y[0], valid[0]), config.blocks)
            P = solver.predict(X[1:], W)
            pred = (P[..., 1] > P[..., 0]).float()
            gt = (Y[1:, :, 1] > 0.5).float()
            v = valid[1:]
            inter, union = (pred * gt * v).sum(-1), ((pred + gt).clamp(max=1) * v).sum(-1)
            ious.append(torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union)).mean().item())
    return {"val_iou": float(np.mean(ious))} if ious else {}


# ------------------------------------------------------------------------------------------ driver
def _parameters(model: Embedder, stages: int) -> list[nn.Parameter]:
    params = [*model.head.parameters(), model.log_lam, model.scale, model.offset]
    if stages >= 1:
        params += list(model.trunk.level32.parameters())
    if stages >= 2:
        params += list(model.trunk.level16.parameters())
    return params


def check_out(config: TrainConfig) -> None:
    """Refuse an ``out`` that cannot hold checkpoints, or that holds an earlier run's (unless resumed or forced),
    a ``cache`` that cannot be made, and a ``resume`` that is not a file: before the feature cache is built."""
    out = config.out
    parent = out if out.exists() else next((p for p in out.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise OutputError(f"cannot write checkpoints to {out}: {parent} is a file; choose another --out")
    if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write checkpoints to {out}: {parent} is not writable; choose another --out")
    cache = config.cache
    above = cache if cache.exists() else next((p for p in cache.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise OutputError(f"cannot build the feature cache in {cache}: {above} is a file; choose another --cache")
    if (
        above is not None and above != cache and not os.access(above, os.W_OK | os.X_OK)
    ):  # a built cache may be read-only
        raise OutputError(f"cannot build the feature cache in {cache}: {above} is not writable; choose another --cache")
    if config.resume is not None and not config.resume.is_file():
        what = "is a folder" if config.resume.is_dir() else "not found"
        raise WeightsError(f"--resume {config.resume}: {what}; pass the last.pt of the run to go on with")
    if config.init is not None and not config.init.is_file():
        what = "is a folder" if config.init.is_dir() else "not found"
        raise WeightsError(f"--init {config.init}: {what}; pass a checkpoint file (e.g. weights/vosrr_mnv2.pt)")
    if config.multi is not None and not (config.multi / "ImageSets").is_dir():
        raise DavisError(f"--multi {config.multi}: no ImageSets/ folder; pass a DAVIS-layout folder (split train)")
    last = out / "last.pt"
    if last.exists() and config.resume is None and not config.force:
        raise OutputError(
            f"{out} holds an earlier run ({last.name}); pass --resume {last} to go on with it, --force to start "
            "over (its checkpoints are replaced), or another --out"
        )


def train(config: TrainConfig, progress: Any = None, log: Any = print) -> Path:
    """Train (or resume) and write ``<out>/last.pt`` every epoch and ``<out>/best.pt`` on validation gains."""
    device = torch.device(config.device)
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if world > 1:  # launched by torchrun: one process per GPU (or CPU worker), gradients averaged
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if rank != 0:
        progress, log = None, _silent
    rng = random.Random(config.seed + rank)
    torch.manual_seed(config.seed + rank)
    seqs = sequences(config.davis, "train", choose=False)  # train has no --split
    names = sorted(s.name for s in seqs)
    check_out(config)  # before the feature cache (many minutes) is built
    if config.holdout >= len(names):
        raise DavisError(
            f"--holdout {config.holdout} holds out all {len(names)} training sequences, leaving none to train on; "
            f"pass a smaller --holdout (0 to {len(names) - 1})"
        )
    held = names[:: max(1, len(names) // config.holdout)][: config.holdout] if config.holdout else []
    model = Embedder(ModelConfig(config.channels, config.width, config.lam, config.trunk))
    try:
        model.trunk.load_imagenet()
    except FileNotFoundError as error:
        raise WeightsError(str(error)) from error
    start_epoch, best, history = 0, -1.0, []
    optimizer_state = scheduler_state = None
    if config.resume is not None:
        payload = load_checkpoint(config.resume)
        model = Embedder(ModelConfig(**payload["config"]))
        model.load_state_dict(payload["model"])
        start_epoch, best = payload["epoch"] + 1, payload.get("best", -1.0)
        history = payload.get("history", [])
        optimizer_state, scheduler_state = payload.get("optimizer"), payload.get("scheduler")
        rng.setstate(_rng_state(payload.get("rng")))
        log(f"resuming {config.resume} at epoch {start_epoch}")
    elif config.init is not None:
        payload = load_checkpoint(config.init)
        model = Embedder(ModelConfig(**payload["config"]))
        if model.trunk.name != config.trunk:
            raise WeightsError(f"--init {config.init} has a {model.trunk.name} trunk, not --trunk {config.trunk}")
        model.load_state_dict(payload["model"])
        log(f"starting from the weights of {config.init}")
    if world > 1:  # every rank starts from rank 0's weights (their random inits differ)
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, 0)
    views = dict(views=config.views, scale=config.scale, colour=config.colour, seed=config.seed)
    cache = _shared_cache(model, seqs, config.cache, progress, rank, world, **views)
    multi = None
    if config.multi is not None:
        multi_seqs = sequences(config.multi, "train", choose=False)
        objects = count_objects(multi_seqs)
        views |= {"views": config.multi_views, "objects": objects}
        multi_cache = _shared_cache(model, multi_seqs, config.cache, progress, rank, world, **views)
        multi = (multi_cache, multi_cache.index)
        log(f"multi-object episodes: {len(multi_seqs)} videos of up to {objects} objects, rate {config.multi_rate}")
    model.to(device)
    train_videos = [v for v in cache.index if v[0] not in held]
    val_videos = [v for v in cache.index if v[0] in held]
    for p in model.parameters():
        p.requires_grad_(False)
    params = _parameters(model, config.train_stages)
    for p in params:
        p.requires_grad_(True)
    if config.optimizer == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    elif config.optimizer == "adamw":
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    else:
        raise ValueError(f"optimizer must be sgd or adamw, got {config.optimizer!r}")
    total = config.epochs * config.steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    if scheduler_state is not None:
        scheduler.load_state_dict(scheduler_state)
    config.out.mkdir(parents=True, exist_ok=True)
    log(f"train {len(train_videos)} videos, held out {held}; {sum(p.numel() for p in params):,} trained parameters")
    for epoch in range(start_epoch, config.epochs):
        tic = time.perf_counter()
        stats = train_one_epoch(model, optimizer, cache, train_videos, config, rng, scheduler, progress, device, multi)
        if rank != 0:
            continue
        stats.update(evaluate_episodes(model, cache, val_videos, config, device=device) if val_videos else {})
        stats.update(epoch=epoch, seconds=time.perf_counter() - tic, lam=model.lam.item())
        history.append(stats)
        log(json.dumps(stats))
        score = stats.get("val_iou", -stats["loss"])
        extra = {
            "epoch": epoch,
            "best": max(best, score),
            "history": history,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": _rng_payload(rng),
            "train_config": _plain(asdict(config)),
        }
        save_checkpoint(config.out / "last.pt", model, **extra)
        if score > best or not (config.out / "best.pt").exists():
            best = max(best, score)
            save_checkpoint(config.out / "best.pt", model, **extra)
    return config.out / "best.pt"


def _shared_cache(
    model: Embedder, seqs: list[Sequence], folder: Path, progress: Any, rank: int, world: int, **options: Any
) -> FeatureCache:
    """``FeatureCache.build`` by rank 0 first; the other ranks (under torchrun) then load what it wrote."""
    if rank == 0:
        cache = FeatureCache.build(model, seqs, folder, progress=progress, **options)
    if world > 1:
        dist.barrier()
    if rank != 0:
        cache = FeatureCache.build(model, seqs, folder, **options)
    return cache


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _rng_payload(rng: random.Random) -> list[Any]:
    version, state, gauss = rng.getstate()
    return [version, list(state), gauss]


def _rng_state(payload: list[Any] | None) -> tuple[Any, ...]:
    if payload is None:
        return random.Random(0).getstate()
    return (payload[0], tuple(payload[1]), payload[2])


def _silent(message: str) -> None:
    del message
