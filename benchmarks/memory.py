"""Is memory flat in the video's length? Peak RSS of ``vosrr segment`` on a short and a 10x longer video.

    python benchmarks/memory.py                      # 50 and 500 frames at 854x480, the shipped weights
    python benchmarks/memory.py --weights w.pt --short 50 --long 500 --device cpu --out runs/memory.json
    python benchmarks/memory.py --export objects,cutout,alpha,coco   # with every export as well

Both videos are generated (``samples/make_sample.py``'s ``make_clip``; the long one plays the short one
forwards and backwards) into a temporary folder. Each run is a fresh ``vosrr segment`` subprocess writing
masks and the overlay; its peak RSS is the kernel's high-water mark (``getrusage`` in the child, and
``wait4`` for the whole process tree: vosrr plus its ffmpeg decoder and encoder). Prints the ratio
long / short; the target is <= 1.1 (exit status 1 above it).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from vosrr.encode import OverlayWriter
from vosrr.masks import MaskFormat, write_mask

ROOT = Path(__file__).resolve().parent.parent
TARGET = 1.1

# runs the real CLI in the child and reports the child's own peak RSS (KiB on Linux) as it exits
_PROBE = """
import atexit, resource, sys
atexit.register(lambda: print(f"VOSRR_PEAK_RSS={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", file=sys.stderr))
from vosrr.cli import main
sys.argv = ["vosrr", *sys.argv[1:]]
main()
"""


def _make_clip_module():
    spec = importlib.util.spec_from_file_location("make_sample", ROOT / "samples" / "make_sample.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_videos(folder: Path, short: int, long: int, height: int, width: int) -> tuple[Path, Path, Path]:
    """``short.mp4`` (``short`` frames), ``long.mp4`` (``long`` frames, the short clip ping-ponged), the mask."""
    images, labels = _make_clip_module().make_clip(short, height, width)
    order = list(range(short)) + list(range(short - 2, 0, -1)) or [0]
    paths = []
    for name, count in (("short", short), ("long", long)):
        path = folder / f"{name}.mp4"
        with OverlayWriter(path, width, height, 24, quality=8) as writer:
            for index in range(count):
                writer.write(images[order[index % len(order)]])
        paths.append(path)
    mask = folder / "mask.png"
    write_mask(mask, labels[0], MaskFormat.dense(int(labels[0].max())))
    return paths[0], paths[1], mask


def _rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def measure(video: Path, mask: Path, out: Path, extra: list[str]) -> dict[str, object]:
    """Run ``vosrr segment`` in a subprocess; its peak RSS and RSS samples over time (MiB)."""
    command = [
        sys.executable,
        "-c",
        _PROBE,
        "segment",
        str(video),
        "--mask",
        str(mask),
        "--out",
        str(out),
        "--force",
        *extra,
    ]
    tic = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.25):
            rss = _rss_kib(process.pid)
            if rss is not None:
                samples.append((time.perf_counter() - tic, rss / 1024))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    assert process.stderr is not None
    err = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"vosrr segment failed ({process.returncode}):\n{err}")
    own = next((int(line.split("=")[1]) for line in err.splitlines() if line.startswith("VOSRR_PEAK_RSS=")), None)
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024
    return {
        "video": str(video),
        "seconds": time.perf_counter() - tic,
        "peak_rss_mib": own / scale if own is not None else None,
        "tree_peak_rss_mib": usage.ru_maxrss / scale,
        "rss_samples_mib": [round(rss, 1) for _, rss in samples],
        "summary": next((line for line in err.splitlines() if "s/frame" in line), "").strip(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=None, help="checkpoint (default: the shipped one)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--short", type=int, default=50)
    parser.add_argument("--long", type=int, default=500)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=854)
    parser.add_argument("--folder", type=Path, default=None, help="where the videos go (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON here")
    parser.add_argument("--export", default="", help="passed to vosrr segment --export (e.g. objects,coco)")
    args = parser.parse_args()
    extra = ["--device", args.device] + (["--weights", str(args.weights)] if args.weights else [])
    extra += ["--export", args.export] if args.export else []
    with tempfile.TemporaryDirectory(prefix="vosrr-memory-") as tmp:
        folder = args.folder or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        print(f"writing {args.short}- and {args.long}-frame {args.width}x{args.height} videos to {folder}")
        short, long, mask = write_videos(folder, args.short, args.long, args.height, args.width)
        results = {}
        for name, video in (("short", short), ("long", long)):
            result = measure(video, mask, Path(tmp) / f"out_{name}", extra)
            results[name] = result
            samples = result["rss_samples_mib"]
            print(
                f"{name:5s} {video.name}: peak RSS {result['peak_rss_mib']:.0f} MiB "
                f"(process tree {result['tree_peak_rss_mib']:.0f} MiB), "
                f"RSS samples {min(samples, default=0):.0f}..{max(samples, default=0):.0f} MiB, "
                f"{result['seconds']:.0f} s; {result['summary']}"
            )
    ratio = results["long"]["peak_rss_mib"] / results["short"]["peak_rss_mib"]
    verdict = "ok" if ratio <= TARGET else "ABOVE TARGET"
    print(f"peak RSS {args.long} frames / {args.short} frames: {ratio:.3f} (target <= {TARGET}) {verdict}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"ratio": ratio, "target": TARGET, **results}, indent=2) + "\n")
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
