#!/usr/bin/env bash
# The GPU figures of the throughput work, in one call on a machine with a CUDA GPU (run from the repository root).
#
#   bash benchmarks/gpu_check.sh prepare DAVIS/JPEGImages/480p/bear DAVIS/Annotations/480p/bear/00000.png
#       (here: copies the frames, the mask and imageio-ffmpeg's Python code without its ffmpeg binary into
#       gpu_data/, which git ignores; carry gpu_data to the GPU machine)
#   bash benchmarks/gpu_check.sh run            (there: prints every figure; DEVICE=cpu tries it on a CPU)
#
# What it measures: the frame loop under CUDA's sync check (no host sync per frame), the masks against the CPU's,
# then `vosrr segment FOLDER --no-overlay` end to end (a 246-frame JPEG folder: the frames looped), default and
# --accurate, 3 runs each, and `vosrr bench`'s stage table. No ffmpeg there: frame folders, --no-overlay.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
prepare)
    frames=$2 mask=$3
    rm -rf gpu_data && mkdir -p gpu_data/frames gpu_data/pylib
    i=0
    for round in 1 2 3; do
        for f in "$frames"/*.jpg; do cp "$f" "gpu_data/frames/$(printf %05d $i).jpg"; i=$((i + 1)); done
    done
    find gpu_data/frames -name '*.jpg' | sort | tail -n +247 | xargs -r rm
    cp "$mask" gpu_data/mask.png
    package=$(python -c "import imageio_ffmpeg, os; print(os.path.dirname(imageio_ffmpeg.__file__))")
    mkdir gpu_data/pylib/imageio_ffmpeg && cp "$package"/*.py gpu_data/pylib/imageio_ffmpeg/
    du -sh gpu_data
    ;;
run)
    device=${DEVICE:-cuda}
    export PYTHONPATH=$PWD:$PWD/gpu_data/pylib
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
    python - "$device" <<'PY'
import sys, time
import numpy as np, torch
from PIL import Image
from pathlib import Path
from vosrr.annotations import Annotation
from vosrr.checkpoint import DEFAULT_WEIGHTS, load_model
from vosrr.propagate import segment_frames
from vosrr.segmenter import SegmentConfig, Segmenter
device = sys.argv[1]
model, _ = load_model(DEFAULT_WEIGHTS)
files = sorted(Path("gpu_data/frames").glob("*.jpg"))[:40]
frames = [np.asarray(Image.open(f).convert("RGB")) for f in files]
mask = (np.asarray(Image.open("gpu_data/mask.png")) > 0).astype(np.uint8)
seg = Segmenter(model, SegmentConfig(), device=device)
state, _ = seg.start(frames[0], mask)
X = seg.feed.batch(frames[1:17], state.work_size)
if device.startswith("cuda"):
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
try:
    for x in X:
        state, _ = seg.advance_scores(state, x)
    print("frame loop: no host sync in 16 frames (scores, window, online update, solve)")
finally:
    if device.startswith("cuda"):
        torch.cuda.set_sync_debug_mode("default")
on_cpu = Segmenter(model, SegmentConfig(runtime="torch"))
cpu = [t.labels for t in segment_frames(on_cpu, frames, {0: Annotation(mask)})]
tic = time.perf_counter()
out = [t.labels for t in segment_frames(seg, frames, {0: Annotation(mask)})]
print(f"masks on {device} vs cpu: {np.mean([np.mean(a == b) for a, b in zip(out, cpu)]):.5f} of pixels agree")
PY
    for mode in "" "--accurate"; do
        for run in 1 2 3; do
            python -m vosrr.entry segment gpu_data/frames --mask gpu_data/mask.png --device "$device" --no-overlay \
                --force -o "${OUT:-/tmp}/gpu_seg" $mode 2>&1 | tail -n 1
        done
    done
    python -m vosrr.entry bench gpu_data/frames --mask gpu_data/mask.png --device "$device" --frames 120 --runs 3 \
        --out "${OUT:-/tmp}/bench_gpu.json" 2>&1 | tail -n 40
    ;;
*)
    echo "usage: bash benchmarks/gpu_check.sh prepare FRAMES MASK | run" >&2
    exit 2
    ;;
esac
