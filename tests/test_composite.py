"""benchmarks/composite.py: multi-object composites with exact ground truth, and their scoring by `vosrr eval`.

Built from tiny generated sequences in the DAVIS 2016 layout (48x64, a few frames, one moving shape each), so
the ground truth of the composites can be recomputed independently from the source masks.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vosrr.cli import app
from vosrr.davis import sequences
from vosrr.evaluate import score_objects

ROOT = Path(__file__).resolve().parent.parent


def _load_composite():  # benchmarks/ is not a package; load the builder by path
    spec = importlib.util.spec_from_file_location("composite", ROOT / "benchmarks" / "composite.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("composite", module)
    spec.loader.exec_module(module)
    return module


composite = _load_composite()
H, W = 48, 64
#: name, frames, colour, shape size (h, w), start corner and motion per frame
SOURCES = [
    ("ant", 6, (220, 40, 40), (12, 14), (8, 6), (1, 2)),
    ("bee", 4, (40, 200, 60), (10, 10), (20, 30), (-1, 1)),
    ("cat", 5, (40, 60, 220), (14, 9), (24, 44), (0, -2)),
]


def _fake_davis(root: Path) -> Path:
    """Three sequences of different lengths, each a textured background and one moving rectangle with an
    ellipse cut out (a non-rectangular mask), as JPEG frames and 0/255 masks, all listed in val.txt."""
    rng = np.random.default_rng(7)
    lines = []
    for name, frames, colour, (h, w), (y0, x0), (vy, vx) in SOURCES:
        background = rng.integers(0, 120, (H, W, 3), dtype=np.uint8)
        images, masks = root / "JPEGImages" / "480p" / name, root / "Annotations" / "480p" / name
        images.mkdir(parents=True)
        masks.mkdir(parents=True)
        for t in range(frames):
            y, x = y0 + vy * t, x0 + vx * t
            mask = np.zeros((H, W), bool)
            mask[y : y + h, x : x + w] = True
            mask[y, x] = mask[y, x + w - 1] = False  # corners off: not a plain box
            frame = background.copy()
            frame[mask] = np.asarray(colour) + rng.integers(0, 30, (int(mask.sum()), 3))
            Image.fromarray(frame).save(images / f"{t:05d}.jpg", quality=95)
            Image.fromarray(mask.astype(np.uint8) * 255).save(masks / f"{t:05d}.png")
            lines.append(f"/JPEGImages/480p/{name}/{t:05d}.jpg /Annotations/480p/{name}/{t:05d}.png")
    (root / "ImageSets" / "480p").mkdir(parents=True)
    (root / "ImageSets" / "480p" / "val.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def davis(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _fake_davis(tmp_path_factory.mktemp("davis"))


#: scale 1 (pixels copied, not resampled) and looser rules for 48x64 frames
CONFIG = composite.BuildConfig(fixed_scale=1.0, tries=200, lookalike_every=2)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _source_mask(davis: Path, name: str, index: int) -> np.ndarray:
    return np.asarray(Image.open(davis / "Annotations" / "480p" / name / f"{index:05d}.png")) >= 128


def _shifted(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``mask`` moved by ``(dy, dx)``, what leaves the frame dropped."""
    out = np.zeros_like(mask)
    ys, xs = np.nonzero(mask)
    ys, xs = ys + dy, xs + dx
    keep = (ys >= 0) & (ys < mask.shape[0]) & (xs >= 0) & (xs < mask.shape[1])
    out[ys[keep], xs[keep]] = True
    return out


def test_source_index_plays_back_and_forth() -> None:
    assert [composite.source_index(t, 0, 4) for t in range(10)] == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]
    assert [composite.source_index(t, 2, 4) for t in range(5)] == [2, 3, 2, 1, 0]
    assert [composite.source_index(t, 0, 1) for t in range(3)] == [0, 0, 0]


def test_build_is_deterministic_and_the_seed_matters(davis: Path, tmp_path: Path) -> None:
    first = composite.build(davis, tmp_path / "a", CONFIG)
    composite.build(davis, tmp_path / "b", CONFIG)
    files = _files(tmp_path / "a")
    assert files == _files(tmp_path / "b")
    assert sum(name.endswith(".jpg") for name in files) == sum(v.frames for v in first) == 6 + 4 + 5
    other = composite.build(davis, tmp_path / "c", replace(CONFIG, seed=1))
    assert [v.pastes for v in other] != [v.pastes for v in first]
    with pytest.raises(FileExistsError, match="--force"):
        composite.build(davis, tmp_path / "a", CONFIG)
    composite.build(davis, tmp_path / "a", CONFIG, force=True)
    assert _files(tmp_path / "a") == files


def test_ground_truth_is_exact_and_later_pastes_occlude_earlier_ones(davis: Path) -> None:
    pool = sequences(davis, "val")
    lengths = {s.name: len(s.frames) for s in pool}
    occluded = 0  # pixels of an object covered by a later paste
    for index, host in enumerate(pool):
        video, host_masks, per_frame = composite.plan_video(index, host, pool, CONFIG)
        assert 2 <= video.objects <= 4 and all(p.source != host.name for p in video.pastes)
        assert [p.id for p in video.pastes] == list(range(2, video.objects + 1))
        assert video.frames == len(host.frames)
        for t in range(video.frames):
            frame = np.asarray(Image.open(host.frames[t]).convert("RGB"))
            rgb, labels = composite.render(frame, host_masks[t], per_frame[t])
            # the labels, recomputed from the source masks: host, then each paste over what came before
            expected = _source_mask(davis, host.name, t).astype(np.uint8)
            for paste in video.pastes:
                i = composite.source_index(t, paste.start, lengths[paste.source])
                pasted = _shifted(_source_mask(davis, paste.source, i), paste.dy, paste.dx)
                occluded += int((expected[pasted] > 0).sum())
                expected[pasted] = paste.id
            np.testing.assert_array_equal(labels, expected)
            # the pixels: the source's own under each pasted object, the host's elsewhere
            unchanged = labels <= 1
            np.testing.assert_array_equal(rgb[unchanged], frame[unchanged])
            for paste in video.pastes:
                i = composite.source_index(t, paste.start, lengths[paste.source])
                source = np.asarray(Image.open(davis / "JPEGImages" / "480p" / paste.source / f"{i:05d}.jpg"))
                ys, xs = np.nonzero(labels == paste.id)
                np.testing.assert_array_equal(rgb[ys, xs], source[ys - paste.dy, xs - paste.dx])
    assert occluded > 0, "no paste covered another object: the order was not tested"


def test_written_files_match_the_composition(davis: Path, tmp_path: Path) -> None:
    videos = composite.build(davis, tmp_path / "out", CONFIG)
    pool = sequences(davis, "val")
    listed = (tmp_path / "out" / "ImageSets" / "480p" / "composite.txt").read_text().split()
    assert listed == [v.name for v in videos]
    assert [s.name for s in sequences(tmp_path / "out", "composite")] == listed
    for index, (video, host) in enumerate(zip(videos, pool, strict=True)):
        _, host_masks, per_frame = composite.plan_video(index, host, pool, CONFIG)
        for t in range(video.frames):
            frame = np.asarray(Image.open(host.frames[t]).convert("RGB"))
            rgb, labels = composite.render(frame, host_masks[t], per_frame[t])
            written = Image.open(tmp_path / "out" / "Annotations" / "480p" / video.name / f"{t:05d}.png")
            assert written.mode == "P"
            np.testing.assert_array_equal(np.asarray(written), labels)
            jpeg = np.asarray(Image.open(tmp_path / "out" / "JPEGImages" / "480p" / video.name / f"{t:05d}.jpg"))
            assert np.abs(jpeg.astype(int) - rgb).mean() < 3.0  # quality 95: close, not exact
    manifest = json.loads((tmp_path / "out" / "composite.json").read_text())
    assert [v["name"] for v in manifest["videos"]] == listed


def test_frame_zero_shows_every_object(davis: Path) -> None:
    pool = sequences(davis, "val")
    for index, host in enumerate(pool):
        video, host_masks, per_frame = composite.plan_video(index, host, pool, CONFIG)
        _, labels = composite.render(np.zeros((H, W, 3), np.uint8), host_masks[0], per_frame[0])
        counts = np.bincount(labels.ravel(), minlength=video.objects + 1)
        own = [int(host_masks[0].sum()), *[cut.pixels for cut, _, _ in per_frame[0]]]
        assert len(own) == video.objects and counts.size == video.objects + 1
        for k in range(1, video.objects + 1):
            assert counts[k] >= CONFIG.visible_first * own[k - 1] > 0, (video.name, k, counts)


def test_lookalike_pairs(davis: Path) -> None:
    pool = sequences(davis, "val")
    every = replace(CONFIG, lookalike_every=1)
    for index, host in enumerate(pool):
        video, host_masks, per_frame = composite.plan_video(index, host, pool, every)
        twins = [p for p in video.pastes if p.twin is not None]
        assert len(twins) == 2, video
        a, b = twins
        assert (a.twin, b.twin) == (b.id, a.id) and a.source == b.source and a.scale == b.scale
        _, labels = composite.render(np.zeros((H, W, 3), np.uint8), host_masks[0], per_frame[0])
        centres = [np.argwhere(labels == p.id).mean(axis=0) for p in (a, b)]
        assert np.abs(centres[0] - centres[1]).max() >= 1.0, "the twins sit at one place"
    never = replace(CONFIG, lookalike_every=0)
    for index, host in enumerate(pool):
        video, _, _ = composite.plan_video(index, host, pool, never)
        assert all(p.twin is None for p in video.pastes)


def test_scaled_build_keeps_the_rules(davis: Path) -> None:
    """The default (resampled) path: scales differ from 1, frame 0 still shows every object."""
    pool = sequences(davis, "val")
    config = replace(composite.BuildConfig(), tries=200)
    for index, host in enumerate(pool):
        video, host_masks, per_frame = composite.plan_video(index, host, pool, config)
        assert all(p.scale != 1.0 for p in video.pastes)
        _, labels = composite.render(np.zeros((H, W, 3), np.uint8), host_masks[0], per_frame[0])
        assert set(np.unique(labels)) >= set(range(1, video.objects + 1))


def _copy_as_prediction(built: Path, out: Path, swap: dict[str, tuple[int, int]] | None = None) -> Path:
    """The ground truth as a prediction folder, optionally with two ids exchanged in every frame
    (``swap``: per video)."""
    for folder in (built / "Annotations" / "480p").iterdir():
        target = out / folder.name
        target.mkdir(parents=True)
        for png in folder.glob("*.png"):
            if swap is None:
                shutil.copy(png, target / png.name)
                continue
            image = Image.open(png)
            labels = np.asarray(image).copy()
            a, b = swap[folder.name]
            labels[np.asarray(image) == a], labels[np.asarray(image) == b] = b, a
            swapped = Image.fromarray(labels, mode="P")
            swapped.putpalette(image.getpalette())
            swapped.save(target / png.name)
    return out


def test_scores_per_object_perfect_and_swapped(davis: Path, tmp_path: Path) -> None:
    built = tmp_path / "built"
    videos = composite.build(davis, built, replace(CONFIG, lookalike_every=1))
    gt = built / "Annotations" / "480p"
    perfect = _copy_as_prediction(built, tmp_path / "perfect")
    twins: dict[str, tuple[int, int]] = {}
    for video in videos:
        a, b = (p.id for p in video.pastes if p.twin is not None)
        twins[video.name] = (a, b)
    swapped = _copy_as_prediction(built, tmp_path / "swapped", swap=twins)
    for video in videos:
        scores = score_objects(gt, perfect, video.name)
        assert sorted(scores) == list(range(1, video.objects + 1))
        assert all(j == 100.0 and f == 100.0 for j, f in scores.values()), scores
        wrong = score_objects(gt, swapped, video.name)
        a, b = twins[video.name]
        assert all(wrong[k] == (100.0, 100.0) for k in wrong if k not in (a, b))
        assert wrong[a][0] < 50.0 and wrong[b][0] < 50.0, wrong
    # the swap check: none in the perfect prediction, exactly the twins swapped in the other
    assert not any(row["swapped"] or row["frames"] for row in composite.check_swaps(built, perfect))
    rows = composite.check_swaps(built, swapped, run=2)
    flagged = {(row["video"], row["a"], row["b"]) for row in rows if row["swapped"]}
    pairs = {(name, a, b) for name, (a, b) in twins.items()}
    assert flagged == pairs | {(name, b, a) for name, a, b in pairs}
    assert all(row["twins"] == ((row["video"], row["a"], row["b"]) in flagged) for row in rows)
    # a run must be long enough: these videos score at most 4 frames (first and last skipped)
    assert not any(row["swapped"] for row in composite.check_swaps(built, swapped, run=5))


def test_vosrr_eval_scores_the_composites_per_object(davis: Path, tmp_path: Path, tiny_weights: Path) -> None:
    built = tmp_path / "built"
    videos = composite.build(davis, built, CONFIG)
    out = tmp_path / "eval"
    args = ["eval", "--davis", str(built), "--split", "composite", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--weights", str(tiny_weights), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    scores = json.loads((out / "results.json").read_text())
    assert list(scores["sequences"]) == [v.name for v in videos]
    objects = []
    for video in videos:
        row = scores["sequences"][video.name]
        assert sorted(row["objects"], key=int) == [str(k) for k in range(1, video.objects + 1)]
        assert row["J"] == pytest.approx(np.mean([o["J"] for o in row["objects"].values()]))
        objects += row["objects"].values()
        assert "#2" in result.output
    assert scores["mean"]["objects"] == len(objects) == sum(v.objects for v in videos)
    assert scores["mean"]["J"] == pytest.approx(np.mean([o["J"] for o in objects]))
    assert f"mean of {len(objects)} objects" in result.output


def test_breakdown_groups_objects_by_role(davis: Path, tmp_path: Path) -> None:
    built = tmp_path / "built"
    videos = composite.build(davis, built, CONFIG)
    perfect = _copy_as_prediction(built, tmp_path / "perfect")
    gt = built / "Annotations" / "480p"
    rows = {}
    for video in videos:
        scores = score_objects(gt, perfect, video.name)
        rows[video.name] = {"objects": {str(k): {"J": j, "F": f, "JF": (j + f) / 2} for k, (j, f) in scores.items()}}
    single = {"sequences": {"ant": {"JF": 50.0}, "bee": {"JF": 60.0}, "cat": {"JF": 70.0}}}
    table = composite.breakdown(built, {"sequences": rows}, single)
    assert table["all objects"]["n"] == sum(v.objects for v in videos)
    assert table["all objects"]["JF"] == 100.0
    assert table["host objects"]["n"] == len(videos) == 3
    assert table["host objects"]["single"] == pytest.approx(60.0)  # each sequence hosts once
    pasted = [p.source for v in videos for p in v.pastes]
    assert table["pasted objects"]["n"] == len(pasted)
    assert table["pasted objects"]["single"] == pytest.approx(np.mean([single["sequences"][s]["JF"] for s in pasted]))
    twins = sum(p.twin is not None for v in videos for p in v.pastes)
    assert table["pasted, look-alike twins"]["n"] == twins == 2  # one pair, in the second video
    assert sum(row["n"] for name, row in table.items() if name.startswith("videos of")) == len(pasted) + 3


def test_segment_alone_scores_every_object_on_its_own(davis: Path, tmp_path: Path, tiny_weights: Path) -> None:
    built = tmp_path / "built"
    videos = composite.build(davis, built, CONFIG)
    video = videos[0]
    table = composite.segment_alone(built, [video.name], tmp_path / "alone", tiny_weights)
    assert list(table) == [video.name]
    assert list(table[video.name]) == [str(k) for k in range(1, video.objects + 1)]
    for key, row in table[video.name].items():
        assert 0.0 <= row["J"] <= 100.0 and row["JF"] == pytest.approx((row["J"] + row["F"]) / 2)
        masks = sorted((tmp_path / "alone" / video.name / key / "masks").glob("*.png"))
        assert len(masks) == video.frames
        reference = np.asarray(Image.open(tmp_path / "alone" / video.name / key / "reference.png")) > 0
        first = np.asarray(Image.open(built / "Annotations" / "480p" / video.name / "00000.png"))
        np.testing.assert_array_equal(reference, first == int(key))  # that object only
    with pytest.raises(FileNotFoundError, match="no annotations"):
        composite.segment_alone(built, ["nonesuch"], tmp_path / "alone", tiny_weights)


def test_only_exclude_and_rounds_choose_the_hosts_and_sources(davis: Path, tmp_path: Path) -> None:
    videos = composite.build(davis, tmp_path / "x", replace(CONFIG, exclude=("cat",), rounds=2, lookalike_every=0))
    assert [v.name.rsplit("@", 1)[1] for v in videos] == ["0", "0", "1", "1"]  # two rounds of the two hosts
    assert all("cat" not in v.name and all(p.source != "cat" for p in v.pastes) for v in videos)
    listed = (tmp_path / "x" / "ImageSets" / "480p" / "composite.txt").read_text().split()
    assert listed == [v.name for v in videos] and sorted(
        p.name for p in (tmp_path / "x" / "JPEGImages" / "480p").iterdir()
    ) == sorted(listed)
    only = composite.build(davis, tmp_path / "y", replace(CONFIG, only=("ant", "bee"), lookalike_every=0))
    assert sorted(v.host for v in only) == ["ant", "bee"] and all("cat" not in v.name for v in only)
    with pytest.raises(ValueError, match="not sequences of split val: dog"):
        composite.build(davis, tmp_path / "z", replace(CONFIG, exclude=("dog",)))
    with pytest.raises(ValueError, match="a host and a source"):
        composite.build(davis, tmp_path / "z", replace(CONFIG, only=("ant",)))
