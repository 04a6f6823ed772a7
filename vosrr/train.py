"""Meta-training of phi through the ridge solve (``vosrr train``), shaped like torchvision's reference scripts.

An episode is two frames of one training video: W is solved from the reference frame's features and
mask, the query frame is predicted with it, and BCEWithLogits on the query back-propagates through the
solve into phi. On a CPU the frozen part of the trunk is computed once and cached (``FeatureCache``);
the trainable part (the head, and optionally the last one or two trunk stages) runs on the cached
levels of several views of each frame (scale and colour augmented), with flips and random crops.
Under ``torchrun`` the same loop runs data-parallel (DDP).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from vosrr import solver
from vosrr.checkpoint import WeightsError, load_checkpoint, save_checkpoint
from vosrr.davis import DavisError, Sequence, sequences
from vosrr.embedding import Embedder, ModelConfig
from vosrr.episodes import FeatureCache, Videos, count_objects, sample_batch
from vosrr.train_config import TrainConfig
from vosrr.video import OutputError

__all__ = ["check_out", "episode_loss", "evaluate_episodes", "train", "train_one_epoch", "trainable_levels"]


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
