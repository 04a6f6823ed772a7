"""``vosrr bench``'s input and whole-command timings: the benchmark video (the given one looped to a frame count),
the real pipeline end to end, the chunked pipeline against one frame per network call, and the time from starting
``vosrr segment`` to its first mask; with the process's peak memory.

(``vosrr.bench`` times each stage alone, runs these, and prints the report.)
"""

from __future__ import annotations

import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from vosrr.encode import OverlayWriter
from vosrr.pipeline import Outputs, segment_video
from vosrr.segmenter import SegmentConfig, Segmenter
from vosrr.solve_bench import median
from vosrr.video import FRAME_SUFFIXES, VideoError, VideoInfo, open_video

__all__ = [
    "MIB",
    "bench_input",
    "chunked",
    "end_to_end",
    "first_frames",
    "first_mask",
    "hwm_mib",
    "merge_end_to_end",
    "reset_rss_peak",
    "rss_peak_mib",
]

MIB = 1024 * 1024


def rss_peak_mib() -> float:
    """The process's resident-set high-water mark (``getrusage``; KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024


def reset_rss_peak() -> bool:
    """Reset the high-water mark to the current RSS (Linux >= 4.0), so a phase's own peak can be read."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def hwm_mib() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def bench_input(video: Path, frames: int, folder: Path) -> Path:
    """A copy of ``video`` with exactly ``frames`` frames (looping if shorter), so every run does the same work.

    Frame folders (and single images) become folders of links, so their decode cost stays that of their own
    files; video files are re-encoded (H.264, high quality) as they stream, never held in memory.
    """
    if video.is_dir() or video.suffix.lower() in FRAME_SUFFIXES:
        files = (
            sorted(p for p in video.iterdir() if p.suffix.lower() in FRAME_SUFFIXES and not p.name.startswith("."))
            if video.is_dir()
            else [video]
        )
        if not files:  # open_video says why
            open_video(video)
        target = folder / "input"
        target.mkdir()
        for index in range(frames):
            source = files[index % len(files)].resolve()
            link = target / f"{index:05d}{source.suffix.lower()}"
            try:
                link.symlink_to(source)
            except OSError:
                shutil.copyfile(source, link)
        return target
    info, _ = open_video(video)
    target = folder / "input.mp4"
    written = 0
    with OverlayWriter(target, info.width, info.height, info.fps, quality=9) as writer:
        while written < frames:
            _, decoded = open_video(video)
            before = written
            try:
                for frame in decoded:
                    writer.write(frame)
                    written += 1
                    if written == frames:
                        break
            finally:
                close = getattr(decoded, "close", None)
                if close is not None:
                    close()
            if written == before:
                raise VideoError(f"{video} holds no frames to benchmark")
    return target


def first_frames(video: Path, count: int) -> tuple[VideoInfo, list[np.ndarray]]:
    """The first ``count`` frames of ``video`` (fewer if it is shorter), decoded, and its ``VideoInfo``."""
    info, decoded = open_video(video)
    kept: list[np.ndarray] = []
    try:
        for frame in decoded:
            kept.append(frame)
            if len(kept) == count:
                break
    finally:
        close = getattr(decoded, "close", None)
        if close is not None:
            close()
    return info, kept


def end_to_end(
    segmenter: Segmenter, source: Path, mask: Path, runs: int, scratch: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    """The real pipeline (masks and overlay written), ``runs`` times; its own peak memory."""
    device = segmenter.device
    seconds: list[float] = []
    walls: list[float] = []
    frames = 0
    reset = reset_rss_peak()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for run in range(runs):
        log(f"end to end: run {run + 1}/{runs}")
        outputs = Outputs(scratch / f"e2e_{run}", masks=True, overlay=True)
        tic = time.perf_counter()
        summary = segment_video(segmenter, source, mask, outputs)
        walls.append(time.perf_counter() - tic)
        seconds.append(summary.seconds_per_frame)
        frames = summary.frames
        if summary.stopped_at:
            raise RuntimeError(f"the benchmark video stopped early: {summary.stopped_at}")
        shutil.rmtree(outputs.folder, ignore_errors=True)
    s_per_frame = median(seconds)
    result: dict[str, Any] = {
        "s_per_frame": s_per_frame,
        "fps": 1.0 / max(s_per_frame, 1e-12),
        "runs": seconds,
        "frames": frames,
        "wall_s": walls,
        "peak_rss_mib": hwm_mib() if reset else None,
    }
    if device.type == "cuda":
        result["cuda_peak_allocated_mib"] = torch.cuda.max_memory_allocated(device) / MIB
    return result


def chunked(segmenter: Segmenter, source: Path, mask: Path, runs: int, scratch: Path, chunk: int) -> dict[str, Any]:
    """The pipeline (masks written, no overlay) with one frame per network call and with ``chunk``, paired in each
    run; whether the two give the same masks, byte for byte."""
    # the inference copy again (folding is idempotent, so the runtime's cached conversion is found)
    chunked = Segmenter(segmenter.model, replace(segmenter.config, chunk=chunk), segmenter.device)
    single = Segmenter(segmenter.model, replace(segmenter.config, chunk=1), segmenter.device)
    seconds: dict[int, list[float]] = {1: [], chunk: []}
    same = True
    for run in range(runs):
        folders = {}
        for size, seg in ((1, single), (chunk, chunked)):
            folders[size] = scratch / f"chunk_{size}_{run}"
            summary = segment_video(seg, source, mask, Outputs(folders[size], overlay=False))
            seconds[size].append(summary.seconds_per_frame)
        names = sorted(p.name for p in (folders[1] / "masks").iterdir())
        same = same and all(
            (folders[1] / "masks" / name).read_bytes() == (folders[chunk] / "masks" / name).read_bytes()
            for name in names
        )
        for folder in folders.values():
            shutil.rmtree(folder, ignore_errors=True)
    return {
        "chunk": chunk,
        "s_per_frame_1": median(seconds[1]),
        "s_per_frame_chunk": median(seconds[chunk]),
        "runs_1": seconds[1],
        "runs_chunk": seconds[chunk],
        "identical_masks": same,
    }


def first_mask(
    cache: list[np.ndarray],
    mask: Path,
    runs: int,
    scratch: Path,
    weights: Path | None,
    config: SegmentConfig,
    device: torch.device,
) -> dict[str, Any]:
    """Seconds from starting ``vosrr segment`` (a new process) on a 5-frame PNG clip, ``--no-overlay``, to its
    first mask file and to its exit: what a user waits for on a short clip (imports, weights, runtime, solve)."""
    clip = scratch / "five_frames"
    clip.mkdir(exist_ok=True)
    for index in range(5):
        cv2.imwrite(str(clip / f"{index:05d}.png"), cv2.cvtColor(cache[index % len(cache)], cv2.COLOR_RGB2BGR))
    command = [sys.executable, "-m", "vosrr.entry", "segment", str(clip), "--mask", str(mask), "--no-overlay"]
    command += ["--device", str(device), "--runtime", config.runtime, "--max-side", str(config.max_side or 4096)]
    command += ["--weights", str(weights)] if weights is not None else []
    first: list[float] = []
    total: list[float] = []
    for run in range(runs):
        out = scratch / f"first_mask_{run}"
        target = out / "masks" / "00000.png"
        tic = time.perf_counter()
        process = subprocess.Popen([*command, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        seen = None
        while process.poll() is None:
            if seen is None and target.exists():
                seen = time.perf_counter() - tic
            time.sleep(0.002)
        total.append(time.perf_counter() - tic)
        if process.returncode != 0:
            error = process.stderr.read().decode(errors="replace").strip() if process.stderr else ""
            raise RuntimeError(f"vosrr segment on the 5-frame clip failed ({process.returncode}): {error}")
        first.append(seen if seen is not None else total[-1])
        shutil.rmtree(out, ignore_errors=True)
    return {"first_mask_s": median(first), "five_frames_s": median(total), "runs_first": first, "runs_total": total}


def merge_end_to_end(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One ``end_to_end`` record from several single-run ones: median s/frame, every run, the highest peaks."""
    seconds = [r["s_per_frame"] for r in runs]
    s_per_frame = median(seconds)
    merged: dict[str, Any] = {
        "s_per_frame": s_per_frame,
        "fps": 1.0 / max(s_per_frame, 1e-12),
        "runs": seconds,
        "frames": runs[-1]["frames"],
        "wall_s": [w for r in runs for w in r["wall_s"]],
        "peak_rss_mib": max((r["peak_rss_mib"] for r in runs if r["peak_rss_mib"] is not None), default=None),
    }
    if "cuda_peak_allocated_mib" in runs[-1]:
        merged["cuda_peak_allocated_mib"] = max(r["cuda_peak_allocated_mib"] for r in runs)
    return merged
