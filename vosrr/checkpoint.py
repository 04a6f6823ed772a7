"""Checkpoints: one ``.pt`` file holding everything inference needs, with its sha256 beside it.

Loading never unpickles arbitrary objects (``torch.load(weights_only=True)``) and, when a ``.sha256``
file stands beside the checkpoint, verifies it first.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from vosrr.embedding import Embedder, ModelConfig

__all__ = ["DEFAULT_WEIGHTS", "WeightsError", "load_checkpoint", "load_model", "save_checkpoint", "sha256"]

FORMAT = "vosrr-1"
#: the checkpoint shipped in the repository's weights/ folder
DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "vosrr_mnv2.pt"


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


def save_checkpoint(path: Path, model: Embedder, **extra: Any) -> str:
    """Write ``{"format", "config", "model", **extra}`` atomically, then ``<path>.sha256``; returns the digest.

    ``extra`` may hold only tensors and plain Python values (dicts, lists, numbers, strings), so that
    the file loads with ``weights_only=True``.
    """
    payload = {"format": FORMAT, "config": asdict(model.config), "model": model.state_dict(), **extra}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    digest = sha256(path)
    _checksum_path(path).write_text(f"{digest}  {path.name}\n")
    return digest


def load_checkpoint(path: Path, verify: bool = True) -> dict[str, Any]:
    """Read a checkpoint dict safely; raise ``WeightsError`` with a clear message on any problem."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    check = _checksum_path(path)
    if verify and check.is_file():
        expected = check.read_text().split()[0] if check.read_text().strip() else ""
        actual = sha256(path)
        if expected != actual:
            raise WeightsError(
                f"checksum mismatch for {path}: expected {expected[:12]}..., got {actual[:12]}... "
                "(the file is truncated or altered; restore it, e.g. with `git checkout -- weights/`)"
            )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or unsafe files
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise WeightsError(f"cannot load weights {path}: not a safe vosrr checkpoint ({first})") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise WeightsError(f"{path} is not a vosrr checkpoint (expected format {FORMAT!r})")
    return payload


def load_model(path: Path | None = None, device: torch.device | str = "cpu") -> tuple[Embedder, dict[str, Any]]:
    """Build phi from a checkpoint (the shipped one by default), in eval mode on ``device``."""
    payload = load_checkpoint(path or DEFAULT_WEIGHTS)
    try:
        model = Embedder(ModelConfig(**payload["config"]))
        model.load_state_dict(payload["model"], strict=True)
    except (TypeError, KeyError, RuntimeError, ValueError) as error:
        raise WeightsError(f"{path or DEFAULT_WEIGHTS} does not match the vosrr architecture: {error}") from error
    return model.to(device).eval(), payload
