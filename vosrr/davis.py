"""The DAVIS 2016 layout.

``JPEGImages/480p/<seq>/*.jpg``, ``Annotations/480p/<seq>/*.png``, ``ImageSets/480p/<split>.txt``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["DavisError", "Sequence", "sequences"]


class DavisError(ValueError):
    """The DAVIS folder is missing, incomplete or laid out differently; the message says what is wrong."""


@dataclass(frozen=True)
class Sequence:
    name: str
    frames: tuple[Path, ...]
    masks: tuple[Path, ...]


def sequences(root: Path, split: str, resolution: str = "480p") -> list[Sequence]:
    """The sequences of ``split`` (``train``, ``val``, or ``trainval``), each with matching frames and masks."""
    root = Path(root)
    if not root.is_dir():
        raise DavisError(f"DAVIS folder not found: {root}")
    names: list[str] = []
    for part in ("train", "val") if split == "trainval" else (split,):
        listing = root / "ImageSets" / resolution / f"{part}.txt"
        if not listing.is_file():
            raise DavisError(f"split file missing: {listing} (is {root} a DAVIS 2016 folder?)")
        for line in listing.read_text().split("\n"):
            if line.strip():
                name = line.split()[0].strip("/").split("/")[-2]
                if name not in names:
                    names.append(name)
    if not names:
        raise DavisError(f"split {split!r} of {root} lists no sequences")
    found = []
    for name in names:
        image_dir = root / "JPEGImages" / resolution / name
        mask_dir = root / "Annotations" / resolution / name
        if not image_dir.is_dir():
            continue  # listed but not present (a subset of DAVIS)
        frames = tuple(sorted(image_dir.glob("*.jpg")))
        masks = tuple(mask_dir / (f.stem + ".png") for f in frames)
        missing = [m.name for m in masks if not m.is_file()]
        if missing:
            raise DavisError(f"sequence {name}: {len(missing)} annotation(s) missing in {mask_dir}, first {missing[0]}")
        found.append(Sequence(name, frames, masks))
    if not found:
        raise DavisError(f"none of the {len(names)} sequences of split {split!r} are in {root / 'JPEGImages'}")
    return found
