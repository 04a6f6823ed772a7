"""`vosrr bench`: the JSON it writes has every number, and each is a positive one (no timing assertions)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from vosrr.bench import REFERENCES, STAGES, TABLE2_BLOCKS, run_bench, solve_table
from vosrr.segmenter import Segmenter


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_run_bench_writes_every_number(tiny_weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    returned = run_bench(None, None, 3, 1, out, tiny_weights, torch.device("cpu"), False, Console(quiet=True))
    result = json.loads(out.read_text())
    assert result == json.loads(json.dumps(returned))
    assert result["device"] == "cpu" and result["frames"] == 3 and result["runs"] == 1
    assert result["size"] == [480, 854] and result["work_size"] == [480, 854]
    assert result["objects"] == 2 and result["channels"] == 32
    assert set(result["stages_s_per_frame"]) == set(STAGES)
    for stage in STAGES:
        assert _positive(result["stages_s_per_frame"][stage]), stage
        assert len(result["stage_runs"][stage]) == 1
    assert len(result["end_to_end_over_backbone_runs"]) == result["runs"]
    for key in ("backbone_forward_s_per_frame", "end_to_end_over_backbone", "reference_s"):
        assert _positive(result[key]), key
    assert _positive(result["end_to_end_over_mobilenet_v2"]) and len(result["end_to_end_over_mobilenet_v2_runs"]) == 1
    assert all(_positive(result["references_s_per_frame"][name]) for name in REFERENCES)
    assert result["runtime"] in ("torch", "openvino bf16", "openvino f32")
    chunked = result["chunked"]
    assert chunked["identical_masks"] is True and chunked["chunk"] > 1
    assert _positive(chunked["s_per_frame_1"]) and _positive(chunked["s_per_frame_chunk"])
    first = result["first_mask"]
    assert 0 < first["first_mask_s"] <= first["five_frames_s"]
    e2e = result["end_to_end"]
    assert e2e["frames"] == 3 and _positive(e2e["s_per_frame"]) and _positive(e2e["fps"])
    assert _positive(result["memory"]["peak_rss_mib"])
    assert result["memory"]["cuda_peak_allocated_mib"] is None
    table = result["solve_table"]
    assert table["channels"] == 800 and table["pixels"] == 60 * 107
    assert [row["blocks"] for row in table["rows"]] == list(TABLE2_BLOCKS)
    for row in table["rows"]:
        for key in ("statistics_ms", "solve_ms", "total_ms", "a_mib", "factor_mib", "memory_mib"):
            assert _positive(row[key]), (row["blocks"], key)
    # memory is counted: k blocks of (C/k)^2 floats, for A and again for its factor
    memory = [row["memory_mib"] for row in table["rows"]]
    assert memory[0] == pytest.approx(2 * 800 * 800 * 4 / 2**20)
    assert memory == pytest.approx([memory[0] / k for k in TABLE2_BLOCKS])


def test_solve_only_skips_the_video(tmp_path: Path) -> None:
    out = tmp_path / "solve.json"
    run_bench(None, None, 1, 1, out, tmp_path / "missing.pt", torch.device("cpu"), True, Console(quiet=True))
    result = json.loads(out.read_text())
    assert "stages_s_per_frame" not in result and "end_to_end" not in result
    assert len(result["solve_table"]["rows"]) == len(TABLE2_BLOCKS)


def test_solve_table_small() -> None:
    table = solve_table(torch.device("cpu"), runs=1, channels=16, pixels=40, blocks=(1, 2))
    assert [row["block_size"] for row in table["rows"]] == [16, 8]


def test_fast_cpu_path_matches_the_reference_ops(tiny_weights: Path) -> None:
    """The OpenCV preprocessing and upsampling + argmax give what the plain torch ops give."""
    import torch.nn.functional as F

    from vosrr.checkpoint import load_model
    from vosrr.decide import labels_torch as _labels_torch
    from vosrr.embedding import padded_size
    from vosrr.segmenter import SegmentConfig, VideoState

    model, _ = load_model(tiny_weights)
    segmenter = Segmenter(model)
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    frame[0, :, :] = np.arange(70)[:, None] * 3  # every uint8 value in each channel somewhere
    frame[1, :, :] = np.arange(70)[:, None] * 3 + 1
    frame[2, :, :] = np.arange(70)[:, None] * 3 + 2
    frame[3, :46, :] = np.arange(210, 256)[:, None]
    reference = model.preprocess(torch.from_numpy(frame)[None])
    assert torch.equal(segmenter.feed.image(frame, (50, 70)), reference)

    for mode in ("bilinear", "bicubic"):
        for margin in (0.0, 0.3):
            seg = Segmenter(model, SegmentConfig(upsample=mode, margin=margin))
            for num_classes, work, size in ((2, (50, 70), (50, 70)), (4, (50, 70), (50, 70)), (3, (40, 56), (50, 70))):
                ph, pw = padded_size(*work)
                P = torch.randn(num_classes, ph // 8, pw // 8, generator=torch.Generator().manual_seed(num_classes))
                state = VideoState(num_classes, size, work, None, None, torch.zeros(1))  # type: ignore[arg-type]
                up = F.interpolate(P[None], size=(ph, pw), mode=mode, align_corners=False)[0][:, : work[0], : work[1]]
                if work != size:
                    up = F.interpolate(up[None], size=size, mode=mode, align_corners=False)[0]
                up[0] += margin  # the background's head start
                expected = up.argmax(0).to(torch.uint8).numpy()
                got = seg.labels(state, P)
                assert got.shape == size and got.dtype == np.uint8
                # OpenCV and torch differ only in how they extend the grid past its border (bicubic)
                assert (got == expected).mean() > 0.99, (mode, margin, num_classes)
                assert (got[4:-4, 4:-4] == expected[4:-4, 4:-4]).mean() > 0.999, (mode, margin, num_classes)
                np.testing.assert_array_equal(_labels_torch(P, work, size, mode, margin), expected)


def test_folded_batchnorm_keeps_the_function(tiny_weights: Path) -> None:
    from vosrr.checkpoint import load_model

    model, _ = load_model(tiny_weights)
    segmenter = Segmenter(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in segmenter.model.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the caller's model is untouched
    image = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        torch.testing.assert_close(
            segmenter.model(image.contiguous(memory_format=torch.channels_last)), model(image), atol=1e-4, rtol=1e-4
        )


def _tiny_clip() -> tuple[list[np.ndarray], np.ndarray]:
    from conftest import make_sample

    images, labels = make_sample.make_clip(4, 96, 160, 2, seed=3)
    return images, labels[0]


def test_autocast_path_keeps_x_and_w_float32(tiny_weights: Path) -> None:
    """The CUDA path's autocast, exercised on CPU: the network in low precision, X / the solve / W in float32."""
    from vosrr.checkpoint import load_model

    model, _ = load_model(tiny_weights)
    images, first = _tiny_clip()
    reference = Segmenter(model)
    amp = Segmenter(model)
    amp.feed.amp_dtype = torch.bfloat16
    state, amp_state = reference.start(images[0], first)[0], amp.start(images[0], first)[0]
    X = amp.features(images[1], amp_state.work_size)
    assert X.dtype == torch.float32 and amp_state.W.dtype == torch.float32
    _, expected = reference.step(state, images[1])
    _, got = amp.step(amp_state, images[1])
    assert (got == expected).mean() > 0.97


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_path_agrees_with_cpu(tiny_weights: Path) -> None:
    from vosrr.checkpoint import load_model

    images, first = _tiny_clip()
    cpu = Segmenter(load_model(tiny_weights)[0])
    gpu = Segmenter(load_model(tiny_weights, "cuda")[0], device="cuda")
    assert gpu.feed.amp_dtype is not None
    cpu_state, gpu_state = cpu.start(images[0], first)[0], gpu.start(images[0], first)[0]
    assert gpu_state.W.dtype == torch.float32
    for image in images[1:]:
        cpu_state, expected = cpu.step(cpu_state, image)
        gpu_state, got = gpu.step(gpu_state, image)
        assert got.shape == expected.shape and (got == expected).mean() > 0.97


def test_every_ablation_configuration_can_be_selected_by_name() -> None:
    """``benchmarks/ablation.py --configs`` splits on commas: every configuration name must survive that."""
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "ablation.py"
    spec = importlib.util.spec_from_file_location("ablation", path)
    assert spec is not None and spec.loader is not None
    ablation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablation)
    names = list(ablation.CONFIGS)
    selected = [n.strip() for n in ",".join(names).split(",")]
    assert selected == names
    assert ablation.CONFIGS["paper (k=1 balanced)"] == ablation.PAPER


def _load_benchmark(name: str):
    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_label_variants_score_stored_scores(tiny_weights: Path, tmp_path: Path) -> None:
    """``benchmarks/labels.py`` makes masks from stored scores with each variant and scores them as vos-benchmark
    does. Object-minus-background scores of +2 on the object's cells and -2 elsewhere give a near-perfect J with
    every variant (only a margin above 2 would lose the object)."""
    from PIL import Image

    from vosrr.davis import Sequence
    from vosrr.segmenter import SegmentConfig

    labels_py = _load_benchmark("labels")
    default = [n for n in labels_py.VARIANTS if "(default)" in n]
    assert len(default) == 1 and labels_py.VARIANTS[default[0]] == {}, "the row called default is the default"
    assert SegmentConfig(**{**labels_py.VARIANTS["bicubic, margin 0.2"]}).margin == 0.2
    frames_dir, masks_dir = tmp_path / "JPEGImages" / "s", tmp_path / "Annotations" / "s"
    frames_dir.mkdir(parents=True)
    masks_dir.mkdir(parents=True)
    truth = np.zeros((64, 96), np.uint8)
    truth[16:48, 24:64] = 255  # on the 8-pixel grid
    for i in range(4):
        Image.fromarray(np.full((64, 96, 3), 90 + 20 * i, np.uint8)).save(frames_dir / f"{i:05d}.jpg")
        Image.fromarray(truth).save(masks_dir / f"{i:05d}.png")
    P = np.full((3, 2, 8, 12), 1.0, np.float16)
    P[:, 1] = -1.0
    P[:, 1, 2:6, 3:8] = 3.0  # the object's cells beat the background's by 2
    np.savez(tmp_path / "s.npz", P=P, work=np.array([64, 96]), size=np.array([64, 96]))
    seq = Sequence("s", tuple(sorted(frames_dir.glob("*.jpg"))), tuple(sorted(masks_dir.glob("*.png"))))
    labels_py._start_worker(tiny_weights, False)
    name, rows = labels_py.score((seq, tmp_path / "s.npz"))
    assert name == "s" and set(rows) == set(labels_py.VARIANTS)
    for variant, (J, F) in rows.items():
        assert J > 95 and F > 90, (variant, J, F)  # the guided filter rounds corners on a flat image
    P[:, 1, 0, 0] = 3.0  # a stray cell: only the part filter removes it
    np.savez(tmp_path / "s.npz", P=P, work=np.array([64, 96]), size=np.array([64, 96]))
    _, rows = labels_py.score((seq, tmp_path / "s.npz"))
    assert rows["bicubic, margin 0.1, min part 0.1"][0] > rows["bicubic, margin 0.1 (default)"][0] + 1
