"""End to end: `vosrr segment` on generated videos with the shipped weights, and the segmenter's API."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import iou, make_sample, write_frames, write_palette_mask
from PIL import Image
from typer.testing import CliRunner

from vosrr.annotations import Annotation
from vosrr.cli import app
from vosrr.segmenter import SegmentConfig, Segmenter
from vosrr.video import open_video

runner = CliRunner()


def test_segment_writes_one_mask_per_frame_and_an_overlay(clip, tmp_path: Path) -> None:
    video, mask, truth = clip(frames=8, height=240, width=432)
    out = tmp_path / "out"
    result = runner.invoke(app, ["segment", str(video), "--mask", str(mask), "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "8 frames, 2 object(s), cpu" in result.output
    pngs = sorted((out / "masks").glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:05d}.png" for i in range(8)]
    first = np.asarray(Image.open(pngs[0]))
    np.testing.assert_array_equal(first, truth[0])  # frame 0 is the given mask, ids preserved
    scores = [iou(np.asarray(Image.open(p)), truth[i], k) for i, p in enumerate(pngs[1:], 1) for k in (1, 2)]
    assert np.mean(scores) > 0.75, scores
    info, frames = open_video(out / "overlay.mp4")
    assert (info.width, info.height) == (432, 240)
    assert info.fps == pytest.approx(10.0)
    assert sum(1 for _ in frames) == 8


def test_segment_keeps_user_ids_and_honours_no_overlay(tmp_path: Path) -> None:
    images, labels = make_sample.make_clip(5, 192, 320, 1, seed=3)
    folder = write_frames(tmp_path / "frames", images, ".jpg")
    grey = tmp_path / "first.png"
    Image.fromarray((labels[0] > 0).astype(np.uint8) * 255).save(grey)  # DAVIS 2016 style 0/255
    out = tmp_path / "res"
    result = runner.invoke(
        app,
        ["segment", str(folder), "-m", str(grey), "-o", str(out), "--no-overlay", "--blocks", "4", "--device", "cpu"],
    )
    assert result.exit_code == 0, result.output
    assert not (out / "overlay.mp4").exists()
    last = np.asarray(Image.open(out / "masks" / "00004.png"))
    assert set(np.unique(last)) <= {0, 255}
    assert iou(last, labels[4] * 255, 255) > 0.7


def test_more_annotations_and_online_updates_go_through_the_same_statistics(shipped_model) -> None:
    images, labels = make_sample.make_clip(6, 256, 448, 2, seed=5)
    base = Segmenter(shipped_model, SegmentConfig())
    state = base.start(images[0], labels[0])[0]
    more, out = base.add_annotation(state, images[3], labels[3])
    torch_diff = (more.reference.A - state.reference.A).abs().sum().item()
    assert torch_diff > 0 and more.W.shape == state.W.shape
    np.testing.assert_array_equal(out, labels[3])  # an annotated frame's output is its mask
    # a correction whose pixels are all unknown adds nothing (its frame is then predicted)
    unknown = Annotation(labels[3], known=np.zeros(labels[3].shape, bool))
    same, _ = base.add_annotation(state, images[3], unknown)
    np.testing.assert_allclose(same.W.numpy(), state.W.numpy(), atol=1e-5)
    online = Segmenter(shipped_model, SegmentConfig(online=1.0))
    s = online.start(images[0], labels[0])[0]
    outs = list(online.propagate(s, images[1:]))
    assert len(outs) == 5 and all(o.shape == labels[0].shape for o in outs)
    assert np.mean([iou(o, t, k) for o, t in zip(outs, labels[1:], strict=True) for k in (1, 2)]) > 0.75


def test_online_stride_samples_the_grid_and_reweights(shipped_model) -> None:
    """On a frame whose features and scores are constant over 2x2 cells, stride 2 gives stride 1's statistics."""
    images, labels = make_sample.make_clip(2, 512, 512, 2, seed=5)  # 64 x 64 = 4096 cells: stride 2 applies
    full = Segmenter(shipped_model, SegmentConfig(online=0.5, online_stride=1))  # balanced: weights from all cells
    half = Segmenter(shipped_model, SegmentConfig(online=0.5, online_stride=2))
    state = full.start(images[0], labels[0])[0]
    X = full.features(images[1], state.work_size)  # [h*w, C]
    h, w = 512 // 8, 512 // 8
    coarse = X.view(h, w, -1)[::2, ::2]
    X2 = coarse.repeat_interleave(2, 0).repeat_interleave(2, 1).reshape(h * w, -1).contiguous()
    P = full.scores(state, X2)
    a, b = full._online(state, X2, P), half._online(state, X2, P)
    assert a.memory is not None and b.memory is not None
    torch.testing.assert_close(b.memory.A, a.memory.A, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(b.memory.B, a.memory.B, rtol=1e-4, atol=1e-3)
    # on the real (not 2x2-constant) features the sampled sums differ, but only a little
    c, d = full._online(state, X, full.scores(state, X)), half._online(state, X, full.scores(state, X))
    assert c.memory is not None and d.memory is not None
    assert not torch.equal(c.memory.A, d.memory.A)
    assert float((c.memory.A - d.memory.A).norm() / c.memory.A.norm()) < 0.05
    with pytest.raises(ValueError, match="online_stride"):
        SegmentConfig(online_stride=0)


def test_online_stride_uses_every_cell_on_small_frames(shipped_model) -> None:
    images, labels = make_sample.make_clip(2, 128, 224, 2, seed=5)  # 16 x 28 = 448 cells: too few to sample
    full = Segmenter(shipped_model, SegmentConfig(online=0.5, online_stride=1))
    half = Segmenter(shipped_model, SegmentConfig(online=0.5, online_stride=2))
    state = full.start(images[0], labels[0])[0]
    X = full.features(images[1], state.work_size)
    P = full.scores(state, X)
    a, b = full._online(state, X, P), half._online(state, X, P)
    assert a.memory is not None and b.memory is not None
    torch.testing.assert_close(b.memory.A, a.memory.A, rtol=0, atol=0)


def test_max_side_processes_small_and_writes_full_size(shipped_model) -> None:
    images, labels = make_sample.make_clip(3, 480, 800, 1, seed=1)
    seg = Segmenter(shipped_model, SegmentConfig(max_side=400, window=0.0))  # this clip jumps half a frame
    state = seg.start(images[0], labels[0])[0]
    assert state.work_size == (240, 400)
    _, out = seg.step(state, images[1])
    assert out.shape == (480, 800)
    assert iou(out, labels[1], 1) > 0.85


def test_palette_mask_with_gaps_in_ids(tmp_path: Path, clip) -> None:
    video, _, truth = clip(frames=3, objects=2)
    remapped = np.choose(truth[0], [0, 3, 7]).astype(np.uint8)  # ids 3 and 7
    mask = write_palette_mask(tmp_path / "ids.png", remapped)
    out = tmp_path / "o"
    result = runner.invoke(app, ["segment", str(video), "-m", str(mask), "-o", str(out), "--no-overlay"])
    assert result.exit_code == 0, result.output
    values = set(np.unique(np.asarray(Image.open(out / "masks" / "00002.png"))).tolist())
    assert values <= {0, 3, 7} and {3, 7} <= values


def test_window_suppresses_far_distractors_but_follows_an_object_that_jumped(shipped_model) -> None:
    import torch

    seg = Segmenter(shipped_model, SegmentConfig(window=1.0))
    previous = torch.zeros(30, 40, dtype=torch.long)
    previous[5:10, 5:10] = 1  # the object was top left (25 cells)
    P = torch.zeros(2, 30, 40)
    P[0] = 0.5
    P[1, 5:10, 6:11] = 1.0  # it is still there, moved one cell ...
    P[1, 20:25, 30:35] = 1.0  # ... and a look-alike appears far away
    kept = seg.window(P, previous).argmax(0)
    assert kept[5:10, 6:11].all() and not kept[20:25, 30:35].any()
    P[1, 5:10, 6:11] = 0.0  # now only the far copy exists: the object jumped, the window lets it go
    assert seg.window(P, previous).argmax(0)[20:25, 30:35].all()


def _window_reference(P: torch.Tensor, previous: torch.Tensor, factor: float) -> torch.Tensor:
    """The window as first written: one object at a time, a square max-pool, areas read back as Python floats."""
    out = P.clone()
    floor = P.min() - 1.0
    areas = {}
    for k in range(1, P.shape[0]):
        region = (previous == k).float()
        area = float(region.sum())
        if area == 0:
            continue
        areas[k] = area
        r = max(2, round(factor * area**0.5))
        grown = torch.nn.functional.max_pool2d(region[None, None], 2 * r + 1, stride=1, padding=r)[0, 0]
        out[k] = torch.where(grown > 0, P[k], floor)
    winners = out.argmax(0)
    for k, area in areas.items():
        if float((winners == k).sum()) < area / 3:
            out[k] = P[k]
    return out


@pytest.mark.parametrize("seed", range(6))
def test_the_vectorised_window_equals_the_object_by_object_one(seed: int) -> None:
    from vosrr.decide import window

    g = torch.Generator().manual_seed(seed)
    objects = 1 + seed % 4
    h, w = (60, 107) if seed % 2 else (17, 9)
    previous = torch.zeros(h, w, dtype=torch.long)
    for k in range(1, objects + 1):  # blobs of random size, some touching the border, one object sometimes lost
        if seed == 4 and k == 2:
            continue
        y, x = (int(torch.randint(0, n, (1,), generator=g)) for n in (h, w))
        size = int(torch.randint(1, 12, (1,), generator=g))
        previous[max(0, y - size) : y + size, max(0, x - size) : x + size] = k
    P = torch.randn(objects + 1, h, w, generator=g)
    for factor in (0.0, 0.3, 1.0, 2.5, 100.0):
        assert torch.equal(window(P, previous, factor), _window_reference(P, previous, factor)), factor


def test_mirrored_reference_adds_the_mirrored_frames_statistics(shipped_model) -> None:
    images, labels = make_sample.make_clip(2, 256, 448, 2, seed=7)
    plain = Segmenter(shipped_model, SegmentConfig(mirror_reference=False))
    both = Segmenter(shipped_model, SegmentConfig(mirror_reference=True))
    state = both.start(images[0], labels[0])[0]
    work = state.work_size
    mirrored = plain.statistics(
        plain.features(np.ascontiguousarray(images[0][:, ::-1]), work),
        Annotation(np.ascontiguousarray(labels[0][:, ::-1])),
        3,
        work,
    )
    expected = plain.start(images[0], labels[0])[0].reference + mirrored
    torch.testing.assert_close(state.reference.A, expected.A, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(state.reference.B, expected.B, rtol=1e-5, atol=1e-4)
    _, out = both.step(state, images[1])
    assert np.mean([iou(out, labels[1], k) for k in (1, 2)]) > 0.75


def test_no_mirror_reference_option(clip, tmp_path: Path) -> None:
    video, mask, truth = clip(frames=4, height=240, width=432)
    lasts = []
    for option in ("--no-mirror-reference", "--mirror-reference"):
        out = tmp_path / option
        args = ["segment", str(video), "--mask", str(mask), "--out", str(out), "--device", "cpu", "--no-overlay"]
        result = runner.invoke(app, [*args, option])
        assert result.exit_code == 0, result.output
        lasts.append(np.asarray(Image.open(out / "masks" / "00003.png")))
        assert np.mean([iou(lasts[-1], truth[3], k) for k in (1, 2)]) > 0.7, option
    assert not np.array_equal(*lasts)  # the mirrored reference's statistics change the solve


def test_flipped_features_are_mirror_equivariant(shipped_model) -> None:
    images, labels = make_sample.make_clip(2, 192, 320, 1, seed=3)  # 320 = 10 x 32: the padded image is the image
    plain = Segmenter(shipped_model, SegmentConfig(flip=False))
    flip = Segmenter(shipped_model, SegmentConfig(flip=True))
    work = (192, 320)
    grid = (192 // 8, 320 // 8, -1)
    X = flip.features(images[0], work).view(grid)
    X_mirror = flip.features(np.ascontiguousarray(images[0][:, ::-1]), work).view(grid)
    torch.testing.assert_close(X_mirror, X.flip(1), rtol=1e-4, atol=1e-5)
    X_plain = plain.features(images[0], work).view(grid)
    assert not torch.allclose(X_plain, X_plain.flip(1), atol=1e-3)  # the network alone is not symmetric
    state = flip.start(images[0], labels[0])[0]
    _, out = flip.step(state, images[1])
    assert iou(out, labels[1], 1) > 0.8  # a 24 x 40 grid: the margin trims about 0.01 of IoU here


def test_scale_processes_larger_and_max_side_still_caps_it(shipped_model) -> None:
    images, labels = make_sample.make_clip(2, 240, 400, 1, seed=4)
    seg = Segmenter(shipped_model, SegmentConfig(scale=1.5))
    state = seg.start(images[0], labels[0])[0]
    assert state.work_size == (360, 600)
    _, out = seg.step(state, images[1])
    assert out.shape == (240, 400)
    assert iou(out, labels[1], 1) > 0.85
    assert Segmenter(shipped_model, SegmentConfig(scale=1.5, max_side=500)).work_size(240, 400) == (300, 500)
    with pytest.raises(ValueError, match="scale"):
        SegmentConfig(scale=0.0)


def test_min_part_drops_stray_parts_of_the_upsampled_labels(shipped_model) -> None:
    """A stray high-score cell far from the object survives the argmax; ``min_part`` removes it, nothing else."""
    from vosrr.segmenter import VideoState

    keep_all = Segmenter(shipped_model, SegmentConfig(refine=False))
    cleaned = Segmenter(shipped_model, SegmentConfig(refine=False, min_part=0.25))
    P = torch.zeros(2, 8, 12)
    P[0] = 1.0
    P[1, 2:6, 2:6] = 3.0  # the object: 4 x 4 cells
    P[1, 6, 10] = 3.0  # a stray cell
    state = VideoState(2, (64, 96), (64, 96), None, None, torch.zeros(1))  # type: ignore[arg-type]
    before, after = keep_all.labels(state, P), cleaned.labels(state, P)
    stray = before[44:60, 76:92]
    assert stray.any() and not after[44:60, 76:92].any()
    np.testing.assert_array_equal(after[:40, :60], before[:40, :60])
    assert after.sum() == before.sum() - stray.sum()
    with pytest.raises(ValueError, match="min_part"):
        SegmentConfig(min_part=1.5)


def test_margin_shrinks_objects_towards_their_confident_core(shipped_model) -> None:
    """A larger margin labels a subset of the pixels a smaller one does; margin 0 is the plain argmax."""
    from vosrr.segmenter import VideoState

    P = torch.randn(3, 8, 12, generator=torch.Generator().manual_seed(1))
    state = VideoState(3, (64, 96), (64, 96), None, None, torch.zeros(1))  # type: ignore[arg-type]
    argmax = Segmenter(shipped_model, SegmentConfig(margin=0.0)).labels(state, P)
    import torch.nn.functional as F

    up = F.interpolate(P[None], size=(64, 96), mode="bicubic", align_corners=False)[0]
    assert (argmax == up.argmax(0).numpy()).mean() > 0.99
    previous = argmax
    for margin in (0.2, 0.5, 1.0):
        labels = Segmenter(shipped_model, SegmentConfig(margin=margin)).labels(state, P)
        assert np.all((labels == 0) | (labels == previous)), "objects only lose pixels, to the background"
        assert (labels > 0).sum() < (previous > 0).sum()
        previous = labels
    with pytest.raises(ValueError, match="margin"):
        SegmentConfig(margin=2.0)


@pytest.mark.parametrize("runtime", ["torch", "openvino-f32", "openvino"])
def test_chunk_option_writes_the_same_masks_with_a_correction_between(tmp_path: Path, runtime: str) -> None:
    images, labels = make_sample.make_clip(9, 128, 224, 2, seed=4)
    folder = write_frames(tmp_path / "frames", images)
    first = write_palette_mask(tmp_path / "m0.png", labels[0])
    fix = write_palette_mask(tmp_path / "m6.png", labels[6])
    written = []
    for chunk in ("1", "4"):
        out = tmp_path / f"c{chunk}"
        args = ["segment", str(folder), "--mask", str(first), "--mask", f"6:{fix}", "--chunk", chunk]
        result = runner.invoke(app, [*args, "--runtime", runtime, "--no-overlay", "-o", str(out)])
        assert result.exit_code == 0, result.output
        written.append([p.read_bytes() for p in sorted((out / "masks").glob("*.png"))])
    assert len(written[0]) == 9 and written[0] == written[1]
