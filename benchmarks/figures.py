"""Remake every picture of the README and docs/ from recorded results and the generated sample.

    pip install -e ".[figures]"      # matplotlib
    python benchmarks/figures.py     # writes docs/images/*.png

- ``sample_strip.png``: overlay frames of the generated sample (``samples/clip.mp4``, never dataset frames),
  segmented with the shipped weights and drawn by ``vosrr.masks.overlay`` as ``overlay.mp4`` has them;
- ``exports.png``: one sample frame as ``--overlay-style contour`` draws it and as ``--export cutout`` cuts it out;
- ``speed_accuracy.png`` (the paper's Figure 1): J against seconds per frame on DAVIS 2016 val, vosrr's two
  modes from ``weights/vosrr_mnv2.json`` and ``weights/vosrr_ensemble.json``, the published methods' numbers
  as the results table in docs/RESULTS.md gives them (``PUBLISHED`` below), each with its hardware;
- ``per_sequence_j.png`` (the paper's Figure 6): J of every DAVIS 2016 val sequence, from the same records.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no backend, no display, nothing global
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
RECORDS = {"vosrr": ROOT / "weights" / "vosrr_mnv2.json", "vosrr --accurate": ROOT / "weights" / "vosrr_ensemble.json"}
#: DAVIS 2016 val J and seconds per frame as the paper (Liu et al., IROS 2020, Table 1) reports them;
#: OSVOS fine-tunes on every video and takes seconds a frame (no exact figure given): drawn at the right edge
PUBLISHED = [
    ("Liu et al. (paper)", 75.8, 0.145, "GTX 1080"),
    ("PML", 75.5, 0.28, "GPU"),
    ("OSNM", 72.2, 0.14, "GPU"),
    ("OSVOS", 79.8, None, "GPU"),
]
STRIP_FRAMES = (0, 16, 32, 47)
_PNG = {"metadata": {"Software": None}}  # no matplotlib version in the file: remade pictures differ only in pixels


def _records() -> dict[str, dict]:
    return {name: json.loads(path.read_text())["davis2016_val"] for name, path in RECORDS.items()}


def speed_accuracy(out: Path) -> None:
    records = _records()
    fig = Figure(figsize=(6.4, 3.8), dpi=100)
    ax = fig.subplots()
    right = 1.0
    for (name, record), colour in zip(records.items(), ("tab:blue", "tab:red"), strict=True):
        j, s = record["mean"]["J"], record["mean"]["s_per_frame"]
        ax.scatter([s], [j], s=70, color=colour, zorder=3, label=f"{name}: 2 CPU cores")
        ax.annotate(f"{name}\nJ {j:.1f}, {s:.2f} s", (s, j), xytext=(8, -4), textcoords="offset points", fontsize=8)
    for name, j, s, hardware in PUBLISHED:
        if s is None:
            ax.scatter([right], [j], marker=">", s=70, facecolor="white", edgecolor="grey", zorder=3, clip_on=False)
            ax.annotate(
                f"{name} ({hardware}): seconds a frame →",
                (right, j),
                xytext=(-6, 6),
                textcoords="offset points",
                fontsize=8,
                ha="right",
            )
            continue
        ax.scatter([s], [j], s=60, facecolor="white", edgecolor="black", zorder=3)
        below = name.startswith("Liu")  # its neighbour PML sits to the right
        ax.annotate(
            f"{name} ({hardware})",
            (s, j),
            xytext=(0, -14) if below else (7, -3),
            textcoords="offset points",
            fontsize=8,
            ha="center" if below else "left",
        )
    ax.scatter([], [], s=60, facecolor="white", edgecolor="black", label="published, GPU (as the paper reports)")
    ax.set_xscale("log")
    fastest = min(r["mean"]["s_per_frame"] for r in records.values())
    ax.set_xlim(min(0.08, 0.8 * fastest), right)
    ax.set_ylim(70, 83)
    ticks = [t for t in (0.05, 0.1, 0.2, 0.5, 1.0) if t >= ax.get_xlim()[0]]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.set_xlabel("seconds per frame (log scale; lower is faster)")
    ax.set_ylabel("J (region similarity, %)")
    ax.set_title("DAVIS 2016 val: accuracy against speed", fontsize=11)
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(out, **_PNG)


def per_sequence(out: Path) -> None:
    records = _records()
    default, accurate = records["vosrr"]["sequences"], records["vosrr --accurate"]["sequences"]
    names = sorted(default, key=lambda n: default[n]["J"])
    y = np.arange(len(names))
    fig = Figure(figsize=(6.4, 5.4), dpi=100)
    ax = fig.subplots()
    for offset, record, colour, label in (
        (0.2, default, "tab:blue", "vosrr (defaults)"),
        (-0.2, accurate, "tab:red", "vosrr --accurate"),
    ):
        values = [record[n]["J"] for n in names]
        ax.barh(y + offset, values, 0.4, color=colour, label=f"{label}: mean J {np.mean(values):.1f}")
    ax.set_yticks(y, names, fontsize=8)
    ax.set_ylim(-0.7, len(names) - 0.1)
    ax.set_xlim(0, 100)
    ax.set_xlabel("J (region similarity, %)")
    ax.set_title("DAVIS 2016 val, per sequence (2 CPU cores)", fontsize=11)
    ax.legend(loc="upper center", bbox_to_anchor=(0.45, -0.1), ncol=2, fontsize=8, frameon=False)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, **_PNG)


def _sample_labels(folder: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The sample's frames and vosrr's labels for them (the shipped weights, the CLI's defaults, on the CPU)."""
    import vosrr
    from vosrr.video import open_video

    video, mask = ROOT / "samples" / "clip.mp4", ROOT / "samples" / "clip_mask.png"
    vosrr.segment_video(vosrr.load(device="cpu"), video, mask, vosrr.Outputs(folder, overlay=False))
    frames = list(open_video(video)[1])
    labels = [vosrr.read_mask(path)[0] for path in sorted((folder / "masks").glob("*.png"))]
    return frames, labels


def _small(image: np.ndarray, width: int) -> Image.Image:
    picture = Image.fromarray(image)
    return picture.resize((width, round(picture.height * width / picture.width)), Image.Resampling.LANCZOS)


def _save_small(picture: Image.Image, out: Path) -> None:
    """A palette PNG (256 colours): a fraction of the size of an RGB one for these pictures."""
    picture.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        out, optimize=True
    )


def _row(pictures: list[Image.Image], gap: int = 4) -> Image.Image:
    row = Image.new("RGB", (sum(p.width for p in pictures) + gap * (len(pictures) - 1), pictures[0].height), "white")
    x = 0
    for picture in pictures:
        row.paste(picture, (x, 0))
        x += picture.width + gap
    return row


def sample_pictures(strip: Path, exports: Path) -> None:
    from vosrr.exports import cutout
    from vosrr.masks import davis_palette, overlay

    with tempfile.TemporaryDirectory(prefix="vosrr-figures-") as tmp:
        frames, labels = _sample_labels(Path(tmp))
    colours = np.asarray(davis_palette(int(max(lab.max() for lab in labels)) + 1), dtype=np.uint8)
    _save_small(_row([_small(overlay(frames[i], labels[i], colours), 256) for i in STRIP_FRAMES]), strip)
    i = STRIP_FRAMES[2]
    rgba = cutout(frames[i], labels[i])
    checks = (((np.indices(labels[i].shape) // 16).sum(0) % 2) * 60 + 160).astype(np.uint8)[..., None]
    board = np.where(rgba[..., 3:] > 0, rgba[..., :3], np.repeat(checks, 3, -1))  # transparency as a checkerboard
    _save_small(
        _row([_small(overlay(frames[i], labels[i], colours, style="contour"), 384), _small(board, 384)]), exports
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images", help="folder for the PNGs")
    parser.add_argument("--no-sample", action="store_true", help="only the plots (no segmentation of the sample)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    speed_accuracy(args.out / "speed_accuracy.png")
    per_sequence(args.out / "per_sequence_j.png")
    if not args.no_sample:
        sample_pictures(args.out / "sample_strip.png", args.out / "exports.png")
    for path in sorted(args.out.glob("*.png")):
        print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} {path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
