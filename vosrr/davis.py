"""The DAVIS 2016 layout.

``JPEGImages/480p/<seq>/*.jpg``, ``Annotations/480p/<seq>/*.png``, ``ImageSets/480p/<split>.txt``.
A list file names frames (DAVIS 2016: ``/JPEGImages/480p/bear/00000.jpg /Annotations/...``) or sequences, one a
line (DAVIS 2017, and the multi-object composites of ``benchmarks/composite.py``, whose annotations are palette
PNGs with ids 1..K).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["DavisError", "Sequence", "listed", "sequences"]


class DavisError(ValueError):
    """The DAVIS folder is missing, incomplete or laid out differently; the message says what is wrong."""


@dataclass(frozen=True)
class Sequence:
    name: str
    frames: tuple[Path, ...]
    masks: tuple[Path, ...]


def _sequence_name(line: str) -> str:
    """``/JPEGImages/480p/bear/00000.jpg /Annotations/...`` (DAVIS 2016) or ``bear`` (DAVIS 2017) -> ``bear``."""
    first = line.split()[0].strip("/")
    return first.split("/")[-2] if "/" in first else first


_HINT = "pass --davis pointing at the DAVIS 2016 root (with JPEGImages/, Annotations/ and ImageSets/)"


def listed(root: Path, split: str, resolution: str = "480p", choose: bool = True) -> list[str]:
    """The names of the sequences ``split``'s list file names (present on disk or not), in its order.
    ``choose``: the caller has a ``--split`` option (a missing list file then suggests the others)."""
    root = Path(root)
    if not root.is_dir():
        raise DavisError(f"DAVIS folder not found: {root}; {_HINT}")
    names: list[str] = []
    for part in ("train", "val") if split == "trainval" else (split,):
        listing = root / "ImageSets" / resolution / f"{part}.txt"
        if not listing.is_file():
            others = sorted(p.stem for p in listing.parent.glob("*.txt"))
            fix = f"use --split {' or '.join(others)}" if others and choose else _HINT
            if not choose:
                fix = f"restore {listing.name} from the DAVIS archive, or {_HINT}"
            raise DavisError(f"split file missing: {listing}; {fix}")
        for line in listing.read_text(errors="replace").splitlines():
            if line.strip() and (name := _sequence_name(line)) not in names:
                names.append(name)
    if not names:
        raise DavisError(f"split {split!r} of {root} lists no sequences; restore its ImageSets/{resolution}/ files")
    return names


def sequences(root: Path, split: str, resolution: str = "480p", choose: bool = True) -> list[Sequence]:
    """The sequences of ``split`` (``train``, ``val``, or ``trainval``) present on disk, each with matching frames
    and masks (a listed sequence without its frames folder is left out: ``listed`` names them all)."""
    root = Path(root)
    hint = _HINT
    names = listed(root, split, resolution, choose)
    found = []
    for name in names:
        image_dir = root / "JPEGImages" / resolution / name
        mask_dir = root / "Annotations" / resolution / name
        if not image_dir.is_dir():
            continue  # listed but not present (a subset of DAVIS)
        frames = tuple(sorted(image_dir.glob("*.jpg")))
        if not frames:
            raise DavisError(f"sequence {name}: no .jpg frames in {image_dir}; restore them or remove the folder")
        masks = tuple(mask_dir / (f.stem + ".png") for f in frames)
        missing = [m.name for m in masks if not m.is_file()]
        if missing:
            raise DavisError(
                f"sequence {name}: {len(missing)} annotation(s) missing in {mask_dir}, first {missing[0]}; "
                "restore them from the DAVIS archive"
            )
        found.append(Sequence(name, frames, masks))
    if not found:
        raise DavisError(
            f"none of the {len(names)} sequences of split {split!r} are in {root / 'JPEGImages' / resolution}; {hint}"
        )
    return found
