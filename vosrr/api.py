"""``vosrr.load``: the shipped (or any) checkpoint as a ready ``Segmenter`` in one call."""

from __future__ import annotations

from pathlib import Path

import torch

from vosrr.checkpoint import load_model
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
    weights: Path | str | None = None, device: torch.device | str = "auto", config: SegmentConfig | None = None
) -> Segmenter:
    """A ``Segmenter`` ready to use: ``weights`` (default: the shipped ``weights/vosrr_mnv2.pt``; the ensemble
    behind ``--accurate`` is ``vosrr.checkpoint.ACCURATE_WEIGHTS``) on ``device`` with ``config`` (default:
    ``SegmentConfig()``, the CLI's defaults). Raises ``WeightsError`` for a missing or unusable checkpoint."""
    chosen = resolve_device(device)
    model, _ = load_model(Path(weights) if weights is not None else None, chosen)
    return Segmenter(model, config or SegmentConfig(), chosen)
