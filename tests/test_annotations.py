"""User input at any frame: corrections, objects that enter later, backward propagation, scribbles, void pixels.

Generated clips with exact ground truth; the shipped network; the library API and the CLI on real mp4 files
and frame folders.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import iou, make_sample, write_frames, write_palette_mask, write_video
from PIL import Image
from typer.testing import CliRunner

from vosrr.annotations import Annotation, Mark, load_timeline, marks_in, parse_mark
from vosrr.cli import app
from vosrr.masks import MaskError
from vosrr.propagate import segment_frames
from vosrr.segmenter import AnnotationError, SegmentConfig, Segmenter

runner = CliRunner()
H, W = 256, 448


@pytest.fixture(scope="module")
def segmenter(shipped_model) -> Segmenter:
    return Segmenter(shipped_model, SegmentConfig())


def changing_clip(
    frames: int = 10, change: int = 5, seed: int = 5, enter: tuple[int, ...] = ()
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A clip whose first object changes its looks at frame ``change`` (its colours inverted from then on);
    ``enter``: the frames where objects first appear (``make_clip``)."""
    images, labels = make_sample.make_clip(frames, H, W, 2, seed, enter)
    for t in range(change, frames):
        inside = labels[t] == 1
        images[t][inside] = 255 - images[t][inside]
    return images, labels


def track(segmenter: Segmenter, images: list[np.ndarray], annotations: dict[int, Annotation]) -> list[np.ndarray]:
    """Every frame's labels, in the CLI's order (``segment_frames``)."""
    out = [t.labels for t in segment_frames(segmenter, images, annotations)]
    assert len(out) == len(images)
    return out


def mean_iou(out: np.ndarray, truth: np.ndarray, objects: tuple[int, ...] = (1, 2)) -> float:
    return float(np.mean([iou(out, truth, k) for k in objects]))


# ------------------------------------------------------------------------------------------ library
@pytest.mark.parametrize("between", ["forward", "both"])
def test_a_correction_makes_its_frame_exact_and_raises_later_iou(shipped_model, between: str) -> None:
    segmenter = Segmenter(shipped_model, SegmentConfig(between=between))  # type: ignore[arg-type]
    images, labels = changing_clip()
    plain = track(segmenter, images, {0: Annotation(labels[0])})
    corrected = track(segmenter, images, {0: Annotation(labels[0]), 5: Annotation(labels[5])})
    np.testing.assert_array_equal(corrected[5], labels[5])
    before = [mean_iou(plain[t], labels[t]) for t in range(6, 10)]
    after = [mean_iou(corrected[t], labels[t]) for t in range(6, 10)]
    assert np.mean(before) < 0.5  # the changed object is lost without the correction ...
    assert np.mean(after) > np.mean(before) + 0.2  # ... and found again with it
    assert all(a > b for a, b in zip(after, before, strict=True))
    if between == "forward":  # frames before the correction are not touched
        for t in range(5):
            np.testing.assert_array_equal(corrected[t], plain[t])


def test_frames_between_annotations_are_mended_from_both_sides(shipped_model) -> None:
    images, labels = changing_clip(frames=10, change=4)
    annotations = {0: Annotation(labels[0]), 8: Annotation(labels[8])}
    results = {}
    for between in ("forward", "both"):
        segmenter = Segmenter(shipped_model, SegmentConfig(between=between))  # type: ignore[arg-type]
        results[between] = track(segmenter, images, annotations)
    for t in (0, 8):
        np.testing.assert_array_equal(results["both"][t], labels[t])
    # frames 4..7 show the changed object: going forwards from frame 0 loses it, coming back from frame 8 finds it
    forward = np.mean([mean_iou(results["forward"][t], labels[t]) for t in range(5, 8)])
    both = np.mean([mean_iou(results["both"][t], labels[t]) for t in range(5, 8)])
    assert both > forward + 0.15
    for t in range(1, 3):  # near frame 0 the forward pass still dominates and is good
        assert mean_iou(results["both"][t], labels[t]) > 0.75


def test_a_correction_drops_the_online_memory_and_restarts_the_window(segmenter: Segmenter) -> None:
    images, labels = changing_clip()
    state, _ = segmenter.start(images[0], labels[0])
    for image in images[1:4]:
        state, _ = segmenter.step(state, image)
    assert state.memory is not None
    corrected, out = segmenter.add_annotation(state, images[4], labels[4])
    assert corrected.memory is None
    np.testing.assert_array_equal(out, labels[4])
    cells = corrected.previous
    assert cells is not None and set(torch.unique(cells).tolist()) == {0, 1, 2}


@pytest.mark.parametrize("between", ["forward", "both"])
def test_an_object_entering_later_is_absent_before_and_tracked_after(shipped_model, between: str) -> None:
    segmenter = Segmenter(shipped_model, SegmentConfig(between=between))  # type: ignore[arg-type]
    images, labels = make_sample.make_clip(9, H, W, 2, seed=3)
    only_first = np.where(labels[0] == 1, 1, 0).astype(np.uint8)
    entering = np.where(labels[4] == 2, 2, 0).astype(np.uint8)  # a mask naming only the new object
    state, out = segmenter.start(images[0], only_first)
    assert state.num_classes == 2 and out.max() == 1
    plain = track(segmenter, images, {0: Annotation(only_first)})
    outs = track(segmenter, images, {0: Annotation(only_first), 4: Annotation(entering)})
    assert all(2 not in o for o in outs[:4])  # absent before its first annotation, whichever way frames go
    # at frame 4 the new object is added over the prediction: the known object is not erased
    np.testing.assert_array_equal(outs[4], np.where(entering > 0, 2, plain[4]))
    for t in range(5, 9):
        assert iou(outs[t], labels[t], 2) > 0.7, t
    if between == "forward":
        for t in range(4):
            np.testing.assert_array_equal(outs[t], plain[t])


def test_new_objects_widen_the_statistics_without_recomputing_them(segmenter: Segmenter) -> None:
    images, labels = make_sample.make_clip(5, H, W, 2, seed=3)
    only_first = np.where(labels[0] == 1, 1, 0).astype(np.uint8)
    state, _ = segmenter.start(images[0], only_first)
    grown, _ = segmenter.add_annotation(state, images[2], labels[2])  # names object 1 (known) and 2 (new)
    assert grown.reference.B.shape[-1] == 3 and state.reference.B.shape[-1] == 2
    # the earlier statistics sit unchanged inside (the new column was 0 on every earlier pixel)
    own = segmenter.statistics(
        segmenter.features(images[2], grown.work_size), Annotation(labels[2]), 3, grown.work_size
    )
    mirror = segmenter.statistics(
        segmenter.features(np.ascontiguousarray(images[2][:, ::-1]), grown.work_size),
        Annotation(labels[2]).mirrored(),
        3,
        grown.work_size,
    )
    earlier = grown.reference.B - own.B - mirror.B
    torch.testing.assert_close(earlier[:, :2], state.reference.B, rtol=1e-4, atol=1e-3)
    assert float(earlier[:, 2].abs().max()) < 1e-3


def test_backward_propagation_from_a_middle_frame(segmenter: Segmenter) -> None:
    images, labels = make_sample.make_clip(9, H, W, 2, seed=4)
    outs = track(segmenter, images, {4: Annotation(labels[4])})
    np.testing.assert_array_equal(outs[4], labels[4])
    # backwards is the same frame loop as forwards, on the frames in reverse order
    backwards = [(i, images[i]) for i in range(4, -1, -1)]
    reverse = [t.labels for t in segmenter.track(backwards, {4: Annotation(labels[4])})]
    for t in range(4):
        np.testing.assert_array_equal(outs[t], reverse[4 - t])
    scores = [mean_iou(outs[t], labels[t]) for t in range(9)]
    # both ways tracked: the network fine-tuned with multi-object episodes is weaker on these small generated
    # clips (0.48 on frame 3, 0.67 on average; 0.74 and 0.77 before it) though better on DAVIS (docs/RESULTS.md)
    assert min(scores) > 0.4 and np.mean(scores) > 0.6, np.round(scores, 3)


def test_void_pixels_are_ignored(segmenter: Segmenter) -> None:
    images, labels = make_sample.make_clip(2, H, W, 2, seed=6)
    known = np.ones(labels[0].shape, bool)
    known[60:140, 100:300] = False  # a void band across the objects
    garbage_a, garbage_b = labels[0].copy(), labels[0].copy()
    garbage_a[~known], garbage_b[~known] = 2, 0  # whatever lies under the void
    a, out_a = segmenter.start(images[0], Annotation(garbage_a, known))
    b, out_b = segmenter.start(images[0], Annotation(garbage_b, known))
    torch.testing.assert_close(a.W, b.W)
    np.testing.assert_array_equal(out_a, out_b)
    np.testing.assert_array_equal(out_a[known], labels[0][known])  # known pixels as given
    assert mean_iou(out_a, labels[0]) > 0.85  # the void part predicted by the solve


def test_start_refuses_annotations_without_object_or_background(segmenter: Segmenter) -> None:
    images, labels = make_sample.make_clip(1, H, W, 1, seed=1)
    with pytest.raises(AnnotationError, match="no object"):
        segmenter.start(images[0], np.zeros_like(labels[0]))
    strokes = np.zeros_like(labels[0])
    strokes[labels[0] == 1] = 1
    with pytest.raises(AnnotationError, match="background stroke"):
        segmenter.start(images[0], Annotation(strokes, labels[0] == 1, scribble=True))


def scribble(labels: np.ndarray) -> Annotation:
    """Strokes a user might draw (``make_sample.strokes``): a few percent of the pixels."""
    strokes, known = make_sample.strokes(labels)
    return Annotation(strokes, known, scribble=True)


def test_scribbles_recover_a_generated_objects_mask(segmenter: Segmenter) -> None:
    images, labels = make_sample.make_clip(4, H, W, 2, seed=2)
    strokes = scribble(labels[0])
    assert strokes.known is not None and strokes.known.mean() < 0.06
    state, inferred = segmenter.start(images[0], strokes)
    for k in (1, 2):
        assert iou(inferred, labels[0], k) > 0.8, k
    np.testing.assert_array_equal(inferred[strokes.known], labels[0][strokes.known])  # strokes are kept
    full, _ = segmenter.start(images[0], labels[0])
    from_strokes, from_mask = [], []
    for t in range(1, 4):
        state, out = segmenter.step(state, images[t])
        full, out_full = segmenter.step(full, images[t])
        from_strokes.append(mean_iou(out, labels[t]))
        from_mask.append(mean_iou(out_full, labels[t]))
    # the video from a few strokes is nearly as good as from the full mask (on this small generated clip 93.5 % with
    # today's network; the goal, 95 %, is measured on DAVIS 2016 val: 96.6 %, docs/RESULTS.md)
    assert np.mean(from_strokes) > 0.9 * np.mean(from_mask), (from_strokes, from_mask)


def test_a_look_alike_that_no_stroke_reaches_stays_background(shipped_model) -> None:
    images, labels = make_sample.make_clip(1, H, W, 2, seed=2)
    frame, truth = images[0].copy(), labels[0]
    strokes = scribble(truth)
    assert strokes.known is not None
    ys, xs = np.nonzero(truth == 1)
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    shape = truth[box] == 1
    h, w = shape.shape
    # a copy of object 1 where there is no object and no stroke: the first such place, row by row
    spot = next(
        (y, x)
        for y in range(0, H - h, 16)
        for x in range(0, W - w, 16)
        if not truth[y : y + h, x : x + w].any() and not strokes.known[y : y + h, x : x + w].any()
    )
    copy = np.zeros_like(shape, shape=truth.shape)
    copy[spot[0] : spot[0] + h, spot[1] : spot[1] + w] = shape
    frame[copy] = images[0][box][shape]
    share = {}
    for parts in (False, True):
        _, inferred = Segmenter(shipped_model, SegmentConfig(stroke_parts=parts)).start(frame, strokes)
        share[parts] = float((inferred[copy] == 1).mean())
        assert iou(inferred, truth, 1) > 0.8 or not parts, parts  # the stroked object itself is kept
    assert share[False] > 0.3 and share[True] == 0.0, share  # the solve alone takes the copy for object 1


def test_correction_strokes_keep_the_parts_they_do_not_touch(shipped_model) -> None:
    images, labels = make_sample.make_clip(1, H, W, 2, seed=2)
    truth = labels[0].copy()
    ys, xs = np.nonzero(truth == 1)
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    shape = truth[box] == 1
    h, w = shape.shape
    y, x = next(
        (y, x) for y in range(0, H - h, 16) for x in range(0, W - w, 16) if not truth[y : y + h, x : x + w].any()
    )
    frame = images[0].copy()
    frame[y : y + h, x : x + w][shape] = images[0][box][shape]
    truth[y : y + h, x : x + w][shape] = 1  # object 1 in two parts, both annotated at frame 0
    copy = np.zeros(truth.shape, bool)
    copy[y : y + h, x : x + w] = shape
    segmenter = Segmenter(shipped_model, SegmentConfig(stroke_parts=True))
    state, _ = segmenter.start(frame, truth)
    # a correction (the state has seen frame 0): strokes on the first part and the background only
    strokes = scribble(labels[0])
    assert strokes.known is not None and not (strokes.known & copy).any()
    _, corrected = segmenter.add_annotation(state, frame, strokes)
    assert (corrected[copy] == 1).mean() > 0.5  # the untouched part is still object 1


def test_scribble_rounds_add_the_confident_cells(shipped_model) -> None:
    images, labels = make_sample.make_clip(1, H, W, 2, seed=2)
    strokes = scribble(labels[0])
    assert strokes.known is not None
    inferred = {}
    for rounds in (0, 3):  # 0 (the default, chosen on DAVIS train): the strokes' own solve decides
        _, inferred[rounds] = Segmenter(shipped_model, SegmentConfig(scribble_rounds=rounds)).start(images[0], strokes)
        np.testing.assert_array_equal(inferred[rounds][strokes.known], labels[0][strokes.known])
        assert mean_iou(inferred[rounds], labels[0]) > 0.8, rounds
    assert not np.array_equal(inferred[0], inferred[3])  # the rounds re-solve with more cells


def test_correction_strokes_on_a_later_frame(segmenter: Segmenter) -> None:
    images, labels = changing_clip()
    state, _ = segmenter.start(images[0], labels[0])
    for image in images[1:5]:
        state, _ = segmenter.step(state, image)
    _, lost = segmenter.step(state, images[5])
    corrected, fixed = segmenter.add_annotation(state, images[5], scribble(labels[5]))
    assert iou(fixed, labels[5], 1) > iou(lost, labels[5], 1) + 0.2
    assert corrected.memory is None


def test_chunked_feeding_gives_the_same_masks(shipped_model) -> None:
    images, labels = make_sample.make_clip(7, H, W, 2, seed=8)
    outs = []
    for chunk in (1, 4):
        seg = Segmenter(shipped_model, SegmentConfig(chunk=chunk))
        outs.append([t.labels for t in seg.track(list(enumerate(images)), {0: Annotation(labels[0])})])
    agree = np.mean([np.mean(a == b) for a, b in zip(*outs, strict=True)])
    assert agree > 0.9999


# ------------------------------------------------------------------------------------------ files
def test_parse_mark_forms(tmp_path: Path) -> None:
    assert parse_mark("first.png") == Mark(0, Path("first.png"))
    assert parse_mark("120:fix.png") == Mark(120, Path("fix.png"))
    assert parse_mark("3:s.png", scribble=True) == Mark(3, Path("s.png"), True)
    odd = tmp_path / "12:30.png"  # a file whose name looks like N:FILE is still that file
    odd.write_bytes(b"")
    assert parse_mark(str(odd)) == Mark(0, odd)
    with pytest.raises(ValueError, match="negative"):
        parse_mark("-1:x.png")


def test_timeline_numbers_objects_by_first_appearance_and_keeps_ids(tmp_path: Path) -> None:
    base = np.zeros((40, 60), np.uint8)
    first, later = base.copy(), base.copy()
    first[5:15, 5:15] = 7
    later[5:15, 5:15], later[20:30, 30:50] = 7, 3  # id 3 enters at frame 10
    marks = [
        Mark(10, write_palette_mask(tmp_path / "b.png", later)),
        Mark(0, write_palette_mask(tmp_path / "a.png", first)),
    ]
    timeline = load_timeline(marks, (40, 60), 20)
    assert timeline.first == 0 and timeline.format.ids == (0, 7, 3)
    assert timeline.annotations[0].objects == {1} and timeline.annotations[10].objects == {1, 2}
    assert timeline.first_seen(2) == 10


def test_timeline_refuses_bad_annotations(tmp_path: Path) -> None:
    mask = np.zeros((40, 60), np.uint8)
    mask[5:15, 5:15] = 1
    a = write_palette_mask(tmp_path / "a.png", mask)
    with pytest.raises(MaskError, match="two annotations for frame 3"):
        load_timeline([Mark(3, a), Mark(3, a)], (40, 60), 10)
    with pytest.raises(MaskError, match="frame 10 is past the end of the video \\(10 frames"):
        load_timeline([Mark(0, a), Mark(10, a)], (40, 60), 10)
    with pytest.raises(MaskError, match="60x40 but the video is 30x40"):
        load_timeline([Mark(0, a)], (40, 30), 10)
    with pytest.raises(MaskError, match="looks rotated"):
        load_timeline([Mark(0, a)], (60, 40), 10)
    rgba = np.zeros((40, 60, 4), np.uint8)
    rgba[10, 10:40] = (255, 0, 0, 255)  # an object stroke and no background stroke
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "s.png")
    with pytest.raises(MaskError, match="no background; add a background stroke"):
        load_timeline([Mark(0, tmp_path / "s.png", scribble=True)], (40, 60), 10)


def test_marks_in_a_folder_follow_frame_names(tmp_path: Path) -> None:
    folder = tmp_path / "masks"
    folder.mkdir()
    for name in ("00000.png", "00010.png", "notes.txt"):
        (folder / name).write_bytes(b"")
    assert marks_in(folder) == [Mark(0, folder / "00000.png"), Mark(10, folder / "00010.png")]
    frame_names = ["00000", "00005", "00010"]  # YouTube-VOS numbers every fifth frame
    assert marks_in(folder, frame_names) == [Mark(0, folder / "00000.png"), Mark(2, folder / "00010.png")]


# ------------------------------------------------------------------------------------------ the CLI
def read(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def test_cli_correction_and_late_object_on_an_mp4(tmp_path: Path) -> None:
    images, labels = changing_clip(frames=8, change=4, enter=(0, 4))  # object 2 enters at frame 4
    assert not (labels[0] == 2).any() and (labels[4] == 2).any()
    video = write_video(tmp_path / "clip.mp4", images)
    first = labels[0]  # object 1 only
    write_palette_mask(tmp_path / "first.png", first)
    write_palette_mask(tmp_path / "fix.png", labels[4])
    out = tmp_path / "out"
    args = ["segment", str(video), "--mask", f"0:{tmp_path / 'first.png'}", "--mask", f"4:{tmp_path / 'fix.png'}"]
    result = runner.invoke(app, [*args, "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    pngs = sorted((out / "masks").iterdir())
    assert [p.name for p in pngs] == [f"{i:05d}.png" for i in range(8)]
    assert all(2 not in read(p) for p in pngs[:4])
    np.testing.assert_array_equal(read(pngs[4]), labels[4])
    for k in (1, 2):  # the entering object is followed; the corrected one is found again
        assert np.mean([iou(read(pngs[t]), labels[t], k) for t in range(5, 8)]) > 0.55, k
    assert "8 frames, 2 object(s)" in result.stderr


def test_cli_middle_frame_start_on_a_frame_folder(tmp_path: Path) -> None:
    images, labels = make_sample.make_clip(7, H, W, 2, seed=4)
    folder = write_frames(tmp_path / "frames", images, ".jpg")
    masks = tmp_path / "annotations"
    masks.mkdir()
    write_palette_mask(masks / "00003.png", labels[3])
    out = tmp_path / "out"
    result = runner.invoke(app, ["segment", str(folder), "--masks", str(masks), "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    pngs = sorted((out / "masks").iterdir())
    assert len(pngs) == 7
    np.testing.assert_array_equal(read(pngs[3]), labels[3])
    scores = [mean_iou(read(pngs[t]), labels[t]) for t in range(7)]
    assert min(scores) > 0.5 and np.mean(scores) > 0.7, np.round(scores, 3)  # every frame, both ways from 3
    import imageio_ffmpeg

    frames = sum(1 for _ in imageio_ffmpeg.read_frames(str(out / "overlay.mp4")))
    assert frames == 1 + 7  # the metadata item, then every frame in order


def test_cli_scribble_writes_the_inferred_mask(tmp_path: Path) -> None:
    images, labels = make_sample.make_clip(4, H, W, 2, seed=2)
    video = write_video(tmp_path / "clip.mp4", images)
    strokes = scribble(labels[0])
    assert strokes.known is not None
    rgba = np.zeros((H, W, 4), np.uint8)  # drawn over the frame: transparent where nothing is drawn
    colours = {1: (255, 40, 40), 2: (40, 255, 40)}
    rgba[strokes.known] = (0, 0, 0, 255)
    for k, colour in colours.items():
        rgba[strokes.known & (strokes.labels == k)] = (*colour, 255)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "strokes.png")
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["segment", str(video), "--scribble", str(tmp_path / "strokes.png"), "--out", str(out), "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    with Image.open(out / "masks" / "00000.png") as written:
        values = np.asarray(written)
        palette = np.asarray(written.getpalette()[:768]).reshape(-1, 3)
    assert palette[values[strokes.known & (strokes.labels == 1)][0]].tolist() == list(colours[1])
    inferred = np.zeros_like(values)
    for k, colour in colours.items():
        inferred[(palette[values] == colour).all(-1)] = k
    assert mean_iou(inferred, labels[0]) > 0.8  # the inferred mask, not the strokes
    assert "colours mapped to object ids" in result.stderr


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--mask", "9:{mask}"], "frame 9 is past the end of the video"),
        (["--mask", "2:{mask}", "--mask", "2:{mask}"], "two annotations for frame 2"),
        (["--scribble", "1:{strokes}"], "marks no background; add a background stroke"),
        (["--mask", "1:{small}"], "--resize-mask"),
    ],
)
def test_cli_annotation_errors(tmp_path: Path, extra: list[str], message: str) -> None:
    images, labels = make_sample.make_clip(4, 64, 96, 1, seed=1)
    folder = write_frames(tmp_path / "frames", images)
    mask = write_palette_mask(tmp_path / "m.png", labels[0])
    small = write_palette_mask(tmp_path / "small.png", labels[0][:32])
    rgba = np.zeros((64, 96, 4), np.uint8)
    rgba[labels[1] == 1] = (255, 0, 0, 255)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "strokes.png")
    paths = {"mask": mask, "small": small, "strokes": tmp_path / "strokes.png"}
    out = tmp_path / "out"
    args = [a.format(**paths) for a in extra]
    result = runner.invoke(app, ["segment", str(folder), *args, "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 3, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert not out.exists()  # refused before anything is written


def test_cli_without_any_annotation_is_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["segment", str(tmp_path), "--device", "cpu"])
    assert result.exit_code == 2
    assert "no annotation given" in result.stderr
