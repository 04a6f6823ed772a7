"""``vosrr.load``: the shipped (or any) checkpoint as a ready ``Segmenter`` in one call."""

from __future__ import annotations

from pathlib import Path

import torch

from vosrr.checkpoint import ACCURATE_WEIGHTS, load_model
from vosrr.segmenter import Segmenter
from vosrr.state import SegmentConfig

__all__ = ["load", "resolve_device"]


def resolve_device(device: torch.device | str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when present, else the CPU; any other name as torch spells it (``cpu``, ``cuda:1``).

    Raises ``ValueError`` for a CUDA or MPS device that is not available, naming the one to use instead.
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    chosen = torch.device(device)
    if chosen.type == "cuda" and (not torch.cuda.is_available() or (chosen.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"device {chosen} is not available ({torch.cuda.device_count()} CUDA GPU(s)); use 'cpu'")
    if chosen.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device mps is not available; use 'cpu'")
    return chosen


def load(
    weights: Path | str | None = None,
    device: torch.device | str = "auto",
    config: SegmentConfig | None = None,
    *,
    accurate: bool = False,
) -> Segmenter:
    """A ``Segmenter`` ready to use, as ``vosrr segment`` builds it.

    ``weights``: a checkpoint (default: the shipped ``weights/vosrr_mnv2.pt``); ``accurate=True`` is the CLI's
    ``--accurate``: the shipped ensemble with mirrored frames (``SegmentConfig(flip=True)`` unless ``config``
    says otherwise). ``device``: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda:N"``. ``config``: the
    options (default: ``SegmentConfig()``, the CLI's defaults). Raises ``WeightsError`` for a missing or
    unusable checkpoint and ``ValueError`` for an absent device or ``weights`` together with ``accurate``.
    """
    if accurate and weights is not None:
        raise ValueError("accurate=True chooses the shipped ensemble; pass weights or accurate, not both")
    chosen = resolve_device(device)
    path = ACCURATE_WEIGHTS if accurate else Path(weights) if weights is not None else None
    model, _ = load_model(path, chosen)
    return Segmenter(model, config or SegmentConfig(flip=accurate), chosen)
