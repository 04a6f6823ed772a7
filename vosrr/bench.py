"""``vosrr bench``: where the time and the memory of one video go.

Every stage of the per-frame path is timed in isolation over the same frames (medians over runs):

    decode -> preprocess -> network (on its runtime) -> predict (X W) -> upsample + argmax
           -> mask PNG -> overlay blend + encode

then the real pipeline end to end (``segment_video``: decode, PNG and encoder threads overlapping with the
network, masks and overlay written), its ratio to the network and to torchvision's plain MobileNetV2 ``features``
on the same frames (a yardstick that does not move with vosrr's own choices), the peak memory, the network under
torch eager (trunk and head) for comparison with the runtime chosen, the chunked pipeline (several frames per
network call) against one frame per call, and the time from the command to its first mask on a 5-frame clip.
Last, the paper's Table 2: the one solve a video needs, at C = 800 and N = 60 x 107 pixels, for k = 1, 2, 4, 8
diagonal blocks.

This module times the stages and prints the report; the benchmark's input and the whole-command timings are in
``vosrr.bench_pipeline``, the solve's table in ``vosrr.solve_bench``.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

import vosrr
from vosrr.bench_pipeline import (
    MIB,
    bench_input,
    chunked,
    end_to_end,
    first_frames,
    first_mask,
    merge_end_to_end,
    rss_peak_mib,
)
from vosrr.checkpoint import load_model
from vosrr.encode import OverlayWriter
from vosrr.feed import GPU_CHUNK
from vosrr.masks import MaskError, davis_palette, overlay, write_mask
from vosrr.pipeline import load_reference
from vosrr.segmenter import SegmentConfig, Segmenter
from vosrr.solve_bench import (
    TABLE2_BLOCKS,
    TABLE2_CHANNELS,
    TABLE2_PIXELS,
    median,
    per_call,
    print_solve,
    solve_table,
    sync,
)
from vosrr.video import open_video

__all__ = ["REFERENCES", "STAGES", "TABLE2_BLOCKS", "TABLE2_CHANNELS", "TABLE2_PIXELS", "run_bench", "solve_table"]

#: the per-frame stages, in the order a frame goes through them
STAGES = (
    "decode",
    "preprocess",
    "network",
    "predict",
    "window",
    "upsample_argmax",
    "online",
    "mask_png",
    "overlay_encode",
)
#: timed beside the stages, as yardsticks: phi's trunk and head under torch eager, torchvision's plain MobileNetV2
REFERENCES = ("torch_trunk", "torch_head", "mobilenet_v2")
_STAGE_NAMES = {
    "decode": "decode",
    "preprocess": "preprocessing",
    "network": "network (trunk + head, on the runtime chosen)",
    "predict": "predict (X W)",
    "window": "window prior",
    "upsample_argmax": "upsampling + decision (margin, refinement and part filter when on)",
    "online": "online update (statistics + solve)",
    "mask_png": "mask PNG writing",
    "overlay_encode": "overlay blend + encode",
}
_SAMPLES = Path(vosrr.__file__).resolve().parent.parent / "samples"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version() -> str | None:
    try:
        return importlib.metadata.version("vosrr")
    except importlib.metadata.PackageNotFoundError:
        return None


# ----------------------------------------------------------------------------------------- stages
def _plain_mobilenet_v2(model: torch.nn.Module, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """torchvision's MobileNetV2 ``features``, eval mode, float32 NCHW, as a user of torchvision would run it (on a
    GPU under the same autocast as phi). Its first 18 layers take the weights of phi's own MobileNetV2 trunk (the
    first one of an ensemble), so that its activations are those of real weights: freshly initialised weights
    shrink them to denormal floats, which a CPU computes several times slower. The last 1x1 layer stays seeded."""
    from torchvision.models import mobilenet_v2

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        plain = mobilenet_v2(weights=None).features.eval()
    members = list(getattr(model, "members", [model]))
    trunk = next((m.trunk for m in members if getattr(m.trunk, "name", "") == "mobilenet_v2"), None)
    if trunk is not None:
        for level in (trunk.level8, trunk.level16, trunk.level32):
            for name, layer in level.named_children():  # the same names and shapes as torchvision's (tested)
                plain[int(name)].load_state_dict(layer.state_dict(), strict=False)
    return plain.to(device)


def _time_stages(
    segmenter: Segmenter,
    plain: Callable[[torch.Tensor], torch.Tensor],
    source: Path,
    mask: Path,
    frames: int,
    runs: int,
    scratch: Path,
    log: Callable[[str], None],
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Each stage alone over ``frames`` frames (cycling through a few decoded ones), ``runs`` times."""
    device = segmenter.device
    model = segmenter.model
    info, cache = first_frames(source, min(frames, 8))
    labels, fmt = load_reference(mask, info, resize=False)
    if cache[0].shape[:2] != labels.shape:
        raise MaskError(f"mask {mask} is {labels.shape[1]}x{labels.shape[0]}, the video {info.width}x{info.height}")
    n = len(cache)
    reference: list[float] = []
    for _ in range(runs + 1):  # the first start() also warms the network up
        sync(device)
        tic = time.perf_counter()
        state = segmenter.start(cache[0], labels)[0]
        sync(device)
        reference.append(time.perf_counter() - tic)
    reference = reference[1:]
    work = state.work_size

    with torch.inference_mode():
        images = [segmenter.feed.image(frame, work) for frame in cache]
        with segmenter.feed.autocast():
            levels = [model.trunk(image) for image in images]
        features = [segmenter.feed.batch([frame], work)[0] for frame in cache]
        scores = [segmenter.scores(state, X) for X in features]
    outs = [segmenter.labels(state, P) for P in scores]
    colours = np.asarray(davis_palette(fmt.num_objects + 1), dtype=np.uint8)
    masks_dir = scratch / "stage_masks"
    masks_dir.mkdir(exist_ok=True)

    def preprocess(i: int) -> None:
        segmenter.feed.image(cache[i % n], work)

    def network(i: int) -> None:
        with torch.inference_mode(), segmenter.feed.autocast():
            segmenter.feed.network(images[i % n])

    def torch_trunk(i: int) -> None:
        with torch.inference_mode(), segmenter.feed.autocast():
            model.trunk(images[i % n])

    def torch_head(i: int) -> None:
        with torch.inference_mode():
            with segmenter.feed.autocast():
                X = model.embed(levels[i % n])
            X.flatten(2).transpose(1, 2)[0].float()

    def mobilenet_v2(i: int) -> None:
        with torch.inference_mode(), segmenter.feed.autocast():
            plain(images[i % n].contiguous())

    def predict(i: int) -> None:
        with torch.inference_mode():
            segmenter.scores(state, features[i % n])

    def window(i: int) -> None:
        if segmenter.config.window > 0 and state.previous is not None:
            with torch.inference_mode():
                segmenter.window(scores[i % n], state.previous)

    def upsample(i: int) -> None:
        segmenter.labels(state, scores[i % n], cache[i % n])

    def online(i: int) -> None:
        if segmenter.config.online > 0:
            segmenter._online(state, features[i % n], scores[i % n])

    def png(i: int) -> None:
        write_mask(masks_dir / f"{i:05d}.png", outs[i % n], fmt)

    timed: dict[str, Callable[[int], None]] = {
        "preprocess": preprocess,
        "network": network,
        "torch_trunk": torch_trunk,
        "torch_head": torch_head,
        "mobilenet_v2": mobilenet_v2,
        "predict": predict,
        "window": window,
        "upsample_argmax": upsample,
        "online": online,
        "mask_png": png,
    }
    results: dict[str, list[float]] = {stage: [] for stage in (*STAGES, *REFERENCES)}
    for run in range(runs):
        log(f"stages: run {run + 1}/{runs}")
        # decode: the whole stream, as the pipeline's decode thread sees it (process start included)
        tic = time.perf_counter()
        _, decoded = open_video(source)
        count = sum(1 for _ in decoded)
        results["decode"].append((time.perf_counter() - tic) / max(1, count))
        for stage, fn in timed.items():
            if run == 0:
                for i in range(min(2, frames)):  # warm-up (allocator, oneDNN / cuDNN kernel choice)
                    fn(i)
            results[stage].append(per_call(fn, frames, device))
        # overlay: blending in the encoder thread as in the pipeline; until the file is closed
        path = scratch / f"overlay_{run}.mp4"
        tic = time.perf_counter()
        with OverlayWriter(path, info.width, info.height, info.fps) as writer:
            for i in range(frames):
                frame, out = cache[i % n], outs[i % n]
                writer.write(lambda frame=frame, out=out: overlay(frame, out, colours))
        results["overlay_encode"].append((time.perf_counter() - tic) / frames)
        path.unlink(missing_ok=True)
    shutil.rmtree(masks_dir, ignore_errors=True)
    meta = {
        "size": list(state.size),
        "work_size": list(state.work_size),
        "objects": fmt.num_objects,
        "fps_in": info.fps,
        "reference_s": median(reference),
    }
    return results, meta


def _quiet(message: str) -> None:
    del message


# ----------------------------------------------------------------------------------------- reporting
def _print_stages(console: Console, result: dict[str, Any]) -> None:
    stages = result["stages_s_per_frame"]
    e2e = result["end_to_end"]["s_per_frame"]
    h, w = result["size"]
    table = Table(
        title=(
            f"per frame, {w}x{h}, {result['device']} ({result['device_name']}, {result['threads']} threads), "
            f"{result['frames']} frames, median of {result['runs']}"
        )
    )
    table.add_column("stage")
    table.add_column("ms/frame", justify="right")
    table.add_column("frames/s", justify="right")
    table.add_column("of end to end", justify="right")
    for stage in STAGES:
        s = stages[stage]
        table.add_row(_STAGE_NAMES[stage], f"{1e3 * s:.2f}", f"{1 / max(s, 1e-12):.1f}", f"{100 * s / e2e:.0f}%")
    table.add_section()
    references = result["references_s_per_frame"]
    rows = (
        ("network under torch eager (trunk + head)", references["torch_trunk"] + references["torch_head"]),
        ("torchvision MobileNetV2 features (plain, float32)", references["mobilenet_v2"]),
    )
    for name, s in rows:
        table.add_row(name, f"{1e3 * s:.2f}", f"{1 / max(s, 1e-12):.1f}", "")
    table.add_row(
        "end to end (segment_video)",
        f"{1e3 * e2e:.2f}",
        f"{result['end_to_end']['fps']:.1f}",
        "100%",
        style="bold",
    )
    console.print(table)
    memory = result["memory"]
    chunked = result["chunked"]
    first = result["first_mask"]
    lines = [
        f"runtime: [bold]{result['runtime']}[/]",
        f"end to end / network: [bold]{result['end_to_end_over_backbone']:.2f}x[/] "
        f"(median of each run's ratio: {', '.join(f'{r:.2f}' for r in result['end_to_end_over_backbone_runs'])})",
        f"end to end / torchvision MobileNetV2 features: [bold]{result['end_to_end_over_mobilenet_v2']:.2f}x[/] "
        f"(each run: {', '.join(f'{r:.2f}' for r in result['end_to_end_over_mobilenet_v2_runs'])})",
        f"chunked pipeline, no overlay: {1e3 * chunked['s_per_frame_1']:.1f} ms/frame with 1 frame per network call, "
        f"{1e3 * chunked['s_per_frame_chunk']:.1f} with {chunked['chunk']}; masks "
        + ("identical" if chunked["identical_masks"] else "[bold red]differ[/]"),
        f"first mask of a 5-frame clip (a new `vosrr segment` process, --no-overlay): [bold]"
        f"{first['first_mask_s']:.2f} s[/], all 5 frames and exit {first['five_frames_s']:.2f} s",
        f"reference frame (features + statistics + solve, once per video): {1e3 * result['reference_s']:.1f} ms",
        f"peak RSS: {memory['peak_rss_mib']:.0f} MiB for the whole benchmark"
        + (
            f", {memory['end_to_end_peak_rss_mib']:.0f} MiB during the end-to-end runs"
            if memory.get("end_to_end_peak_rss_mib")
            else ""
        ),
    ]
    if memory.get("cuda_peak_allocated_mib") is not None:
        lines.append(
            f"CUDA peak allocated: {memory['cuda_peak_allocated_mib']:.0f} MiB "
            f"({memory['cuda_end_to_end_peak_allocated_mib']:.0f} MiB end to end)"
        )
    for line in lines:
        console.print(line)


# ----------------------------------------------------------------------------------------- entry point
def run_bench(
    video: Path | None,
    mask: Path | None,
    frames: int,
    runs: int,
    out: Path,
    weights: Path | None,
    device: torch.device,
    solve_only: bool,
    console: Console,
    *,
    config: SegmentConfig | None = None,
) -> dict[str, Any]:
    """Run the benchmark, print its tables, write ``out`` (JSON) and return the same dict.

    ``config`` sets the segmenter's options (default ``SegmentConfig()``: one exact solve, no online
    updates, full resolution).
    """
    if frames < 1 or runs < 1:
        raise ValueError(f"frames ({frames}) and runs ({runs}) must be at least 1")
    device = torch.device(device)
    if video is None:
        video = _SAMPLES / "clip.mp4"
        mask = mask or _SAMPLES / "clip_mask.png"
    elif mask is None:
        raise MaskError("--mask is needed with a video: the first-frame mask of the objects to segment")
    result: dict[str, Any] = {
        "vosrr": _version(),
        "torch": torch.__version__,
        "device": device.type,
        "device_name": _device_name(device),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "frames": frames,
        "runs": runs,
    }

    def log(message: str) -> None:
        console.print(f"[dim]{message}[/]", highlight=False)

    if not solve_only:
        model, _ = load_model(weights, device)
        segmenter = Segmenter(model, config or SegmentConfig(), device)
        plain = _plain_mobilenet_v2(model, device)  # the checkpoint's own trunk weights, batch norms unfolded
        del model
        result.update(
            video=str(video),
            mask=str(mask),
            weights=str(weights) if weights else "default",
            channels=segmenter.model.config.channels,
            blocks=segmenter.blocks,
            max_side=segmenter.config.max_side,
            scale=segmenter.config.scale,
            flip=segmenter.config.flip,  # the stage timings are of one pass; end to end includes the mirror's
            online=segmenter.config.online,
            amp_dtype=str(segmenter.feed.amp_dtype).removeprefix("torch.") if segmenter.feed.amp_dtype else None,
            runtime=segmenter.feed.runtime,
        )
        with tempfile.TemporaryDirectory(prefix="vosrr-bench-") as tmp:
            scratch = Path(tmp)
            log(f"preparing {frames} frames of {video.name}")
            source = bench_input(Path(video), frames, scratch)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            # stage timings and end-to-end runs alternate, and the ratio is taken within each pair: on a shared
            # machine the speed drifts between runs by more than the overheads being measured
            per_run: dict[str, list[float]] = {}
            e2e_runs: list[dict[str, Any]] = []
            ratios: list[float] = []
            yardstick: list[float] = []
            meta: dict[str, Any] = {}
            for run in range(runs):
                log(f"run {run + 1}/{runs}: stages, then end to end")
                one, meta = _time_stages(segmenter, plain, source, Path(mask), frames, 1, scratch, _quiet)
                for stage, values in one.items():
                    per_run.setdefault(stage, []).extend(values)
                e2e_runs.append(end_to_end(segmenter, source, Path(mask), 1, scratch, _quiet))
                ratios.append(e2e_runs[-1]["s_per_frame"] / max(one["network"][0], 1e-12))
                yardstick.append(e2e_runs[-1]["s_per_frame"] / max(one["mobilenet_v2"][0], 1e-12))
            result.update(meta)
            medians = {stage: median(values) for stage, values in per_run.items()}
            result["stages_s_per_frame"] = {stage: medians[stage] for stage in STAGES}
            result["references_s_per_frame"] = {stage: medians[stage] for stage in REFERENCES}
            result["stage_runs"] = per_run
            result["backbone_forward_s_per_frame"] = medians["network"]
            cuda_stage_peak = torch.cuda.max_memory_allocated(device) / MIB if device.type == "cuda" else None
            e2e = merge_end_to_end(e2e_runs)
            log("chunked pipeline, then the first mask of a 5-frame clip")
            result["chunked"] = chunked(segmenter, source, Path(mask), runs, scratch, GPU_CHUNK)
            _, cache = first_frames(source, 5)
            result["first_mask"] = first_mask(cache, Path(mask), runs, scratch, weights, segmenter.config, device)
        result["end_to_end"] = e2e
        result["end_to_end_over_backbone"] = median(ratios)
        result["end_to_end_over_backbone_runs"] = ratios
        result["end_to_end_over_mobilenet_v2"] = median(yardstick)
        result["end_to_end_over_mobilenet_v2_runs"] = yardstick
        result["memory"] = {
            "peak_rss_mib": rss_peak_mib(),
            "end_to_end_peak_rss_mib": e2e.get("peak_rss_mib"),
            "cuda_peak_allocated_mib": (
                max(cuda_stage_peak or 0.0, e2e["cuda_peak_allocated_mib"]) if device.type == "cuda" else None
            ),
            "cuda_end_to_end_peak_allocated_mib": e2e.get("cuda_peak_allocated_mib"),
        }
        _print_stages(console, result)
    log("k-block solve (Table 2)")
    result["solve_table"] = solve_table(device, runs=max(runs, 3))
    print_solve(console, result["solve_table"], device.type)
    if solve_only:
        result["memory"] = {"peak_rss_mib": rss_peak_mib()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"results: {out}", highlight=False)
    return result
