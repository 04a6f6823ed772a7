"""Checkpoints: one ``.pt`` file holding everything inference needs, with its sha256 beside it.

Loading never unpickles arbitrary objects (``torch.load(weights_only=True)``) and, when a ``.sha256``
file stands beside the checkpoint, verifies it first.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from vosrr.embedding import Embedder, Ensemble, EnsembleConfig, ModelConfig, Phi

__all__ = [
    "ACCURATE_WEIGHTS",
    "DEFAULT_WEIGHTS",
    "WeightsError",
    "ensemble_checkpoint",
    "export_checkpoint",
    "load_checkpoint",
    "load_model",
    "save_checkpoint",
    "sha256",
]

FORMAT = "vosrr-1"
#: the checkpoint shipped in the repository's weights/ folder
DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "vosrr_mnv2.pt"
#: the shipped ensemble (MobileNetV2 and EfficientNet-Lite0 networks, one solve): more accurate, slower
ACCURATE_WEIGHTS = DEFAULT_WEIGHTS.with_name("vosrr_ensemble.pt")


class WeightsError(RuntimeError):
    """A checkpoint is missing, corrupt, of the wrong kind or fails its checksum."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _one_line(error: BaseException, limit: int = 160) -> str:
    """An exception as one short line (torch's messages run over many lines and advise unsafe loading)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    unsafe = [line for line in lines if "nsupported" in line]
    text = unsafe[0] if unsafe else " ".join(lines[:2]) if lines else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` beside ``path``, then rename over it: ``path`` is never half-written."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _config_dict(model: Phi) -> dict[str, Any]:
    if isinstance(model, Ensemble):
        return {"members": [asdict(member) for member in model.config.members]}
    return asdict(model.config)


def _build(config: dict[str, Any]) -> Phi:
    """The (untrained) network a checkpoint's ``config`` describes: an ``Embedder`` or an ``Ensemble``."""
    if "members" in config:
        return Ensemble(EnsembleConfig(tuple(ModelConfig(**member) for member in config["members"])))
    return Embedder(ModelConfig(**config))


def save_checkpoint(path: Path, model: Phi, **extra: Any) -> str:
    """Write ``{"format", "config", "model", **extra}`` atomically, then ``<path>.sha256``; returns the digest.

    ``extra`` may hold only tensors and plain Python values (dicts, lists, numbers, strings), so that
    the file loads with ``weights_only=True``. The old checksum goes first, so an interrupted save
    never leaves a checksum that does not match its checkpoint.
    """
    path = Path(path)
    payload = {"format": FORMAT, "config": _config_dict(model), "model": model.state_dict(), **extra}
    path.parent.mkdir(parents=True, exist_ok=True)
    check = _checksum_path(path)
    check.unlink(missing_ok=True)
    _atomic(path, lambda tmp: torch.save(payload, tmp))
    digest = sha256(path)
    _atomic(check, lambda tmp: tmp.write_text(f"{digest}  {path.name}\n"))
    return digest


def load_checkpoint(path: Path, verify: bool = True) -> dict[str, Any]:
    """Read a checkpoint dict safely; raise ``WeightsError`` with a clear message on any problem.

    Only tensors and plain containers are ever unpickled (``weights_only=True``): a file crafted to run
    code when unpickled is refused, not executed.
    """
    path = Path(path)
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.pt"))
        fix = f"pass one of its checkpoints ({', '.join(found[:3])})" if found else "pass a checkpoint file (.pt)"
        raise WeightsError(f"--weights {path} is a folder; {fix}")
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}; pass an existing checkpoint with --weights")
    if path.suffix == ".sha256":
        raise WeightsError(
            f"{path} is a checksum file, not weights; pass the checkpoint beside it ({path.with_suffix('')})"
        )
    check = _checksum_path(path)
    if verify and check.is_file():
        words = check.read_text(errors="replace").split()
        expected, actual = (words[0].lower() if words else ""), sha256(path)
        if expected != actual:
            raise WeightsError(
                f"checksum mismatch for {path}: {check.name} says {expected[:12] or 'nothing'}, the file is "
                f"{actual[:12]}; the file is truncated or altered: restore it (e.g. `git checkout -- weights/`)"
            )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or unsafe files
        reason = (
            "refused: it holds objects other than tensors, which could run code when loaded"
            if "nsupported" in str(error)
            else "the file is corrupt or not a PyTorch checkpoint"
        )
        raise WeightsError(
            f"cannot load weights {path}: {reason} ({_one_line(error)}); use a checkpoint written by vosrr"
        ) from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise WeightsError(
            f"{path} is not a vosrr checkpoint (expected format {FORMAT!r}); use one written by `vosrr train`"
        )
    if not isinstance(payload.get("config"), dict) or not isinstance(payload.get("model"), dict):
        raise WeightsError(f"{path} is an incomplete vosrr checkpoint (no config or model); use another one")
    return payload


def load_model(path: Path | None = None, device: torch.device | str = "cpu") -> tuple[Phi, dict[str, Any]]:
    """Build phi (an ``Embedder`` or an ``Ensemble``) from a checkpoint (the shipped one by default), in eval
    mode on ``device``."""
    path = Path(path or DEFAULT_WEIGHTS)
    payload = load_checkpoint(path)
    try:
        model = _build(payload["config"])
        model.load_state_dict(payload["model"], strict=True)
    except (TypeError, KeyError, RuntimeError, ValueError) as error:
        raise WeightsError(
            f"{path} does not match the vosrr architecture ({_one_line(error)}); "
            "use a checkpoint from this version of vosrr"
        ) from error
    return model.to(device).eval(), payload


#: what a training checkpoint holds beyond what inference needs
TRAINING_ONLY = ("optimizer", "scheduler", "rng")


def export_checkpoint(source: Path, target: Path) -> str:
    """Write the inference part of a training checkpoint (model, config, training log) to ``target``."""
    model, payload = load_model(source)
    return save_checkpoint(target, model, **_log(payload))


def _log(payload: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's record (epochs, history, training configuration) without the model or optimizer state."""
    return {k: v for k, v in payload.items() if k not in (*TRAINING_ONLY, "format", "config", "model")}


def ensemble_checkpoint(sources: list[Path], target: Path) -> str:
    """Write one inference checkpoint holding the networks of several single-network checkpoints (an ``Ensemble``);
    each member's training record is kept under ``members``."""
    if len(sources) < 2:
        raise WeightsError(f"an ensemble needs at least two checkpoints, got {len(sources)}")
    members: list[Embedder] = []
    logs: list[dict[str, Any]] = []
    for source in sources:
        model, payload = load_model(source)
        if not isinstance(model, Embedder):
            raise WeightsError(f"{source} is already an ensemble; list the single-network checkpoints instead")
        members.append(model)
        logs.append({"source": Path(source).name, **_log(payload)})
    return save_checkpoint(target, Ensemble.of(*members), members=logs)
