"""vosrr: fast semi-supervised video object segmentation with a closed-form ridge solver.

    from pathlib import Path

    import vosrr

    segmenter = vosrr.load()  # the shipped weights, CUDA when present
    summary = vosrr.segment_video(segmenter, Path("clip.mp4"), Path("clip_mask.png"), vosrr.Outputs(Path("out")))

The names below are imported on first use, so ``import vosrr`` stays cheap (it does not import torch).
"""

import importlib
from typing import TYPE_CHECKING, Any

#: each public name and the module that defines it
_HOMES = {
    "Annotation": "vosrr.annotations",
    "Mark": "vosrr.annotations",
    "MaskFormat": "vosrr.masks",
    "Outputs": "vosrr.pipeline",
    "SegmentConfig": "vosrr.state",
    "Segmenter": "vosrr.segmenter",
    "Summary": "vosrr.pipeline",
    "load": "vosrr.api",
    "read_mask": "vosrr.mask_reader",
    "segment_video": "vosrr.pipeline",
    "write_mask": "vosrr.masks",
}

__all__ = [
    "Annotation",
    "Mark",
    "MaskFormat",
    "Outputs",
    "SegmentConfig",
    "Segmenter",
    "Summary",
    "load",
    "read_mask",
    "segment_video",
    "write_mask",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'vosrr' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # for type checkers and editors; at run time the names load lazily
    from vosrr.annotations import Annotation, Mark
    from vosrr.api import load
    from vosrr.mask_reader import read_mask
    from vosrr.masks import MaskFormat, write_mask
    from vosrr.pipeline import Outputs, Summary, segment_video
    from vosrr.segmenter import Segmenter
    from vosrr.state import SegmentConfig
