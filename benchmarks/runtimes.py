"""The same phi (the shipped weights, batch norms folded) under each CPU runtime, on the same frames, in one run.

    python benchmarks/runtimes.py                            # 854x480 (padded to 864x480), 2 frames a call = 1
    python benchmarks/runtimes.py --frames 20 --rounds 5 --out runs/runtimes.json
    python benchmarks/runtimes.py --skip torch.compile       # it compiles for minutes on 2 cores

Runtimes: torch eager (channels-last, what vosrr ran before), ``torch.compile`` (inductor), ONNX Runtime (when
``onnxruntime`` is installed; it is not a vosrr dependency) and OpenVINO in float32 and in its default precision
(bfloat16 where the CPU supports it). Each round times every runtime once over the same ``--frames`` frames, in
turn, so drift on a shared machine hits them alike; the table gives medians and each runtime's speed-up over
torch eager taken within each round. Agreement: the largest and mean absolute difference of ``X`` from torch
eager's, on the sample clip's frames.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from vosrr.checkpoint import load_model
from vosrr.feed import Feed
from vosrr.runtime import network
from vosrr.segmenter import SegmentConfig
from vosrr.video import open_video

ROOT = Path(__file__).resolve().parent.parent
Run = Callable[[torch.Tensor], torch.Tensor]


def _onnxruntime(model: torch.nn.Module, folder: Path) -> Run | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    path = folder / "phi.onnx"
    example = torch.zeros(1, 3, 64, 64)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.to(memory_format=torch.contiguous_format), (example,), str(path), input_names=["image"],
            output_names=["X"], dynamic_axes={"image": {0: "b", 2: "h", 3: "w"}}, opset_version=17, dynamo=False,
        )  # fmt: skip
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda images: torch.from_numpy(session.run(None, {"image": images.contiguous().numpy()})[0])


def _runtimes(feed: Feed, skip: set[str], folder: Path) -> dict[str, Run]:
    model = feed.model.eval()
    runs: dict[str, Run] = {}

    def eager(images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(images.contiguous(memory_format=torch.channels_last))

    runs["torch eager"] = eager
    if "torch.compile" not in skip:
        compiled = torch.compile(model)

        def inductor(images: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return compiled(images.contiguous(memory_format=torch.channels_last))

        runs["torch.compile"] = inductor
    if "onnxruntime" not in skip and (ort := _onnxruntime(model, folder)) is not None:
        runs["onnxruntime"] = ort
    for name in ("openvino-f32", "openvino"):
        if name not in skip:
            run, label = network(model, name, torch.device("cpu"))  # type: ignore[arg-type]
            runs[label] = run
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", type=Path, default=ROOT / "samples" / "clip.mp4")
    parser.add_argument("--frames", type=int, default=10, help="frames per timing (one network call each)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip", default="", help="comma-separated runtimes to leave out")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    model, _ = load_model(None)
    feed = Feed(model, SegmentConfig(runtime="torch"))
    info, decoded = open_video(args.video)
    frames = [frame for _, frame in zip(range(args.frames), decoded, strict=False)]
    work = feed.work_size(info.height, info.width)
    images = [feed.image(frame, work) for frame in frames]
    skip = {name.strip() for name in args.skip.split(",") if name.strip()}
    with tempfile.TemporaryDirectory() as tmp:
        runs = _runtimes(feed, skip, Path(tmp))
        reference = [runs["torch eager"](image) for image in images]
        agreement = {}
        for name, run in runs.items():  # also the warm-up (torch.compile compiles here)
            tic = time.perf_counter()
            out = [run(image) for image in images]
            first = time.perf_counter() - tic
            diffs = [(a.float() - b.float()).abs() for a, b in zip(out, reference, strict=True)]
            agreement[name] = {
                "max_abs": float(max(d.max() for d in diffs)),
                "mean_abs": float(np.mean([float(d.mean()) for d in diffs])),
                "first_pass_s": first,
            }
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, run in runs.items():
                tic = time.perf_counter()
                for image in images:
                    run(image)
                times[name].append((time.perf_counter() - tic) / len(images))
    base = times["torch eager"]
    print(f"phi at {work[1]}x{work[0]} (padded to a multiple of 32), {torch.get_num_threads()} threads, "
          f"{args.frames} frames x {args.rounds} rounds")  # fmt: skip
    print(f"{'runtime':<16} {'ms/frame':>9} {'speed-up':>9} {'max |dX|':>10} {'mean |dX|':>10}")
    result = {"work_size": list(work), "threads": torch.get_num_threads(), "runtimes": {}}
    for name, values in times.items():
        speedup = statistics.median(b / v for b, v in zip(base, values, strict=True))
        ms = 1e3 * statistics.median(values)
        a = agreement[name]
        print(f"{name:<16} {ms:>9.1f} {speedup:>8.2f}x {a['max_abs']:>10.2e} {a['mean_abs']:>10.2e}")
        result["runtimes"][name] = {"ms_per_frame": ms, "speedup_vs_eager": speedup, "runs_s": values, **a}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
