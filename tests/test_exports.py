"""Every export read back: per-object PNGs, cut-outs, the alpha video (decoded by ffmpeg), COCO RLE."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from conftest import make_sample, write_palette_mask, write_video
from PIL import Image
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from typer.testing import CliRunner

from vosrr.cli import ExitCode, app
from vosrr.exports import ALPHA_VIDEO, COCO_JSON, open_exports, parse_exports
from vosrr.masks import MaskFormat
from vosrr.video import OutputError, VideoInfo

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools' own
runner = CliRunner()
IDS = MaskFormat((0, 3, 7), ((0, 0, 0), (255, 0, 0), (0, 0, 255)))  # the user's ids 3 and 7


def _clip(frames: int = 6, height: int = 90, width: int = 161) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Frames and label maps (odd sizes on purpose); object 2 leaves the picture in the last frame."""
    images, labels = make_sample.make_clip(frames, height, width, 2, 1)
    labels = [lab.copy() for lab in labels]
    labels[-1][labels[-1] == 2] = 0
    return images, labels


def _info(tmp_path: Path, images: list[np.ndarray]) -> VideoInfo:
    height, width = images[0].shape[:2]
    return VideoInfo(tmp_path / "in.mp4", width, height, 12.0, len(images))


def _export(tmp_path: Path, kinds: str, frames: int | None = None, complete: bool = True):
    images, labels = _clip()
    out = tmp_path / "out"
    out.mkdir()
    with open_exports(parse_exports(kinds), out, _info(tmp_path, images), IDS) as sinks:
        for index, (image, label) in enumerate(zip(images[:frames], labels[:frames], strict=True)):
            for sink in sinks:
                sink.write(index, image, label)
        sinks.complete = complete
    return out, images[:frames], labels[:frames]


def _no_temporaries(folder: Path) -> None:
    assert not [p for p in folder.rglob(".*")], "temporary files left behind"


def test_parse_exports() -> None:
    assert parse_exports(" objects, COCO,objects ,") == ("objects", "coco")
    assert parse_exports("") == ()
    with pytest.raises(ValueError, match="unknown export 'masks'; choose from objects, cutout, alpha, coco"):
        parse_exports("objects,masks")


def test_objects_are_binary_pngs_equal_to_the_labels_named_by_user_ids(tmp_path: Path) -> None:
    out, _, labels = _export(tmp_path, "objects")
    assert sorted(p.name for p in (out / "objects").iterdir()) == ["3", "7"]
    for user_id, label in ((3, 1), (7, 2)):
        files = sorted((out / "objects" / str(user_id)).iterdir())
        assert [f.name for f in files] == [f"{i:05d}.png" for i in range(len(labels))]  # absent objects too
        for file, truth in zip(files, labels, strict=True):
            with Image.open(file) as image:
                assert image.mode == "L"
                np.testing.assert_array_equal(np.asarray(image), np.where(truth == label, 255, 0))
    _no_temporaries(out)


def test_cutout_alpha_is_the_mask_and_colours_are_the_frame(tmp_path: Path) -> None:
    out, images, labels = _export(tmp_path, "cutout")
    files = sorted((out / "cutout").iterdir())
    assert len(files) == len(labels)
    for file, image, truth in zip(files, images, labels, strict=True):
        with Image.open(file) as png:
            assert png.mode == "RGBA"
            rgba = np.asarray(png)
        np.testing.assert_array_equal(rgba[..., 3], np.where(truth > 0, 255, 0))
        np.testing.assert_array_equal(rgba[..., :3][truth > 0], image[truth > 0])
        assert not rgba[..., :3][truth == 0].any()


def _decode_rgba(path: Path, width: int, height: int) -> np.ndarray:
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgba"]
    raw = subprocess.run([*command, "-"], capture_output=True, check=True).stdout
    return np.frombuffer(raw, dtype=np.uint8).reshape(-1, height, width, 4)


def test_alpha_video_is_prores_4444_and_ffmpeg_reads_its_alpha_back(tmp_path: Path) -> None:
    out, images, labels = _export(tmp_path, "alpha")
    video = out / ALPHA_VIDEO
    probe = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(video)], capture_output=True)
    stream = next(line for line in probe.stderr.decode().splitlines() if "Video:" in line)
    assert "prores" in stream and "4444" in stream and re.search(r"yuva444p", stream), stream
    height, width = labels[0].shape
    decoded = _decode_rgba(video, width, height)
    assert len(decoded) == len(labels)  # every frame
    for rgba, image, truth in zip(decoded, images, labels, strict=True):
        alpha_error = np.abs(rgba[..., 3].astype(int) - np.where(truth > 0, 255, 0))
        assert alpha_error.max() <= 2  # ProRes 4444 codes alpha losslessly; 2 levels of slack for the encoder
        inside = truth > 0
        colour_error = np.abs(rgba[..., :3].astype(int) - image)[inside]
        assert colour_error.mean() < 2.0, colour_error.mean()  # 10-bit 4:4:4: colours close to the frame
    _no_temporaries(out)


def test_coco_rle_decodes_to_the_masks_and_pycocotools_loads_the_file(tmp_path: Path) -> None:
    out, _, labels = _export(tmp_path, "coco")
    coco = COCO(str(out / COCO_JSON))
    assert sorted(coco.getCatIds()) == [3, 7]
    assert len(coco.getImgIds()) == len(labels)
    for index, truth in enumerate(labels):
        image_id = index + 1
        assert coco.imgs[image_id]["frame_index"] == index
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        present = {user_id for user_id, label in ((3, 1), (7, 2)) if (truth == label).any()}
        assert {a["object_id"] for a in annotations} == present  # an absent object has no annotation
        for annotation in annotations:
            expected = truth == {3: 1, 7: 2}[annotation["category_id"]]
            np.testing.assert_array_equal(coco.annToMask(annotation), expected)
            np.testing.assert_array_equal(coco_mask.decode(annotation["segmentation"]), expected)
            ys, xs = np.nonzero(expected)
            box = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert annotation["bbox"] == pytest.approx(box)
            assert annotation["area"] == expected.sum()
    assert len({a["id"] for a in coco.dataset["annotations"]}) == len(coco.dataset["annotations"])
    assert min(a["id"] for a in coco.dataset["annotations"]) == 1  # COCOeval takes id 0 for "unmatched"
    assert coco.dataset["info"]["complete"] is True
    assert coco.dataset["info"]["frames"] == len(labels)


def test_an_interrupted_run_keeps_complete_files_of_the_frames_written(tmp_path: Path) -> None:
    out, _, labels = _export(tmp_path, "objects,cutout,alpha,coco", frames=3, complete=False)
    assert len(list((out / "objects" / "3").iterdir())) == 3
    assert len(list((out / "cutout").iterdir())) == 3
    height, width = labels[0].shape
    assert len(_decode_rgba(out / ALPHA_VIDEO, width, height)) == 3  # shorter, playable
    about = json.loads((out / COCO_JSON).read_text())["info"]
    assert (about["complete"], about["frames"]) == (False, 3)
    _no_temporaries(out)


def test_no_frame_leaves_nothing(tmp_path: Path) -> None:
    out, _, _ = _export(tmp_path, "objects,cutout,alpha,coco", frames=0, complete=False)
    assert list(out.iterdir()) == []


def test_a_path_in_the_way_is_refused(tmp_path: Path) -> None:
    images, _ = _clip()
    (tmp_path / "objects").write_text("mine")
    with pytest.raises(OutputError, match="objects exists and is not a folder"):
        open_exports(["objects"], tmp_path, _info(tmp_path, images), IDS)
    (tmp_path / COCO_JSON).mkdir()
    with pytest.raises(OutputError, match=f"{COCO_JSON} is a folder"):
        open_exports(["cutout", "coco"], tmp_path, _info(tmp_path, images), IDS)
    assert not (tmp_path / "cutout").exists()  # the sinks opened first were closed and removed again


def test_a_failed_write_is_an_output_error(tmp_path: Path) -> None:
    images, labels = _clip()
    sinks = open_exports(["cutout"], tmp_path, _info(tmp_path, images), IDS)
    shutil.rmtree(tmp_path / "cutout")  # every later save fails
    with pytest.raises(OutputError, match=r"writing cut-outs \(--export cutout\) failed"):
        for index in range(len(images)):
            sinks[0].write(index, images[index], labels[index])
        sinks[0].close(complete=True)
    sinks[0].close(complete=False)  # closing again, as a failed run does, raises nothing


def test_segment_export_option_writes_every_kind(clip, tmp_path: Path) -> None:
    video, mask, _ = clip(frames=5, height=120, width=216)
    out = tmp_path / "out"
    args = ["segment", str(video), "--mask", str(mask), "--out", str(out), "--device", "cpu"]
    result = runner.invoke(app, [*args, "--export", "objects,cutout,alpha,coco", "--overlay-style", "contour"])
    assert result.exit_code == 0, result.output
    for name in ("objects/", "cutout/", ALPHA_VIDEO, COCO_JSON):
        assert f"{out / name.rstrip('/')}" in result.output
    masks = [np.asarray(Image.open(p)) for p in sorted((out / "masks").iterdir())]
    for user_id in (1, 2):
        objects = [np.asarray(Image.open(p)) for p in sorted((out / "objects" / str(user_id)).iterdir())]
        assert len(objects) == len(masks) == 5
        for binary, labels in zip(objects, masks, strict=True):
            np.testing.assert_array_equal(binary > 0, labels == user_id)
    coco = COCO(str(out / COCO_JSON))
    for annotation in coco.dataset["annotations"]:
        expected = masks[annotation["image_id"] - 1] == annotation["object_id"]
        np.testing.assert_array_equal(coco.annToMask(annotation), expected)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--export", "objects,png"], "--export: unknown export 'png'"),
        (["--overlay-style", "outline"], "unknown --overlay-style 'outline'; use fill or contour"),
    ],
)
def test_bad_export_options_are_usage_errors(clip, tmp_path: Path, option: list[str], message: str) -> None:
    video, mask, _ = clip(frames=2)
    result = runner.invoke(app, ["segment", str(video), "--mask", str(mask), "--out", str(tmp_path / "o"), *option])
    assert result.exit_code == ExitCode.USAGE, result.output
    assert message in result.output
    assert not (tmp_path / "o").exists()


def test_exports_come_in_frame_order_when_the_annotation_is_at_a_later_frame(tmp_path: Path) -> None:
    images, labels = make_sample.make_clip(6, 120, 216, 1, 2)
    video = write_video(tmp_path / "clip.mp4", images)
    mask = write_palette_mask(tmp_path / "frame3.png", labels[3])
    out = tmp_path / "out"
    args = ["segment", str(video), "--mask", f"3:{mask}", "--out", str(out), "--device", "cpu", "--no-overlay"]
    result = runner.invoke(app, [*args, "--export", "objects,alpha,coco"])
    assert result.exit_code == 0, result.output
    masks = [np.asarray(Image.open(p)) for p in sorted((out / "masks").iterdir())]
    alpha = _decode_rgba(out / ALPHA_VIDEO, 216, 120)[..., 3]  # a video: only frames in order come out right
    assert len(alpha) == 6
    for plane, frame_labels in zip(alpha, masks, strict=True):
        assert np.abs(plane.astype(int) - np.where(frame_labels > 0, 255, 0)).max() <= 2
    objects = [np.asarray(Image.open(p)) for p in sorted((out / "objects" / "1").iterdir())]
    assert len(masks) == len(objects) == 6
    for binary, frame_labels in zip(objects, masks, strict=True):  # frames 0-2 came backwards, yet in place
        np.testing.assert_array_equal(binary > 0, frame_labels == 1)
    np.testing.assert_array_equal(objects[3] > 0, labels[3] == 1)  # the annotated frame is the given mask
    coco = COCO(str(out / COCO_JSON))
    assert [coco.imgs[i + 1]["frame_index"] for i in range(6)] == list(range(6))
    for annotation in coco.dataset["annotations"]:
        np.testing.assert_array_equal(coco.annToMask(annotation), masks[annotation["image_id"] - 1] == 1)


def _streams(path: Path) -> str:
    """ffmpeg's listing of a file's streams."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)]
    return subprocess.run(command, capture_output=True, text=True, check=False).stderr


def test_the_overlay_keeps_the_input_audio(tmp_path: Path) -> None:
    images, labels = _clip(frames=12, width=160)  # even: the mp4 keeps the mask's size
    silent = write_video(tmp_path / "silent.mp4", images, fps=12.0)
    video = tmp_path / "with tone.mp4"  # a tone one second long, as long as the 12 frames at 12 fps
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    tone = ["-f", "lavfi", "-i", "sine=frequency=440:duration=1"]
    subprocess.run(
        [ffmpeg, "-v", "error", "-y", "-i", str(silent), *tone, "-c:v", "copy", "-c:a", "aac", str(video)], check=True
    )
    mask = write_palette_mask(tmp_path / "mask.png", labels[0])
    for source, out in ((video, tmp_path / "tone_out"), (silent, tmp_path / "silent_out")):
        result = runner.invoke(app, ["segment", str(source), "--mask", str(mask), "--out", str(out), "--device", "cpu"])
        assert result.exit_code == 0, result.output
    listing = _streams(tmp_path / "tone_out" / "overlay.mp4")
    assert re.search(r"Stream #0:\d.*: Audio: aac", listing), listing
    assert sum(1 for _ in imageio_ffmpeg.read_frames(str(tmp_path / "tone_out" / "overlay.mp4"))) == 1 + 12
    assert "Audio:" not in _streams(tmp_path / "silent_out" / "overlay.mp4")  # no sound where there was none
