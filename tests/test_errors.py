"""Bad input, faults and safe loading: every failure is one line, a documented exit code, and no damage.

Each case runs the real CLI (``typer.testing.CliRunner``; one through a subprocess) on tiny generated
videos with a small untrained checkpoint, and checks the exit code, the message and what is left on disk.
"""

from __future__ import annotations

import errno
import hashlib
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np
import pytest
import torch
from conftest import make_sample, write_frames, write_palette_mask, write_video
from PIL import Image
from typer.testing import CliRunner, Result

from vosrr import cli, pipeline
from vosrr.checkpoint import WeightsError, load_checkpoint
from vosrr.cli import ExitCode, app
from vosrr.masks import MAX_OBJECTS
from vosrr.segmenter import Segmenter
from vosrr.video import open_video

runner = CliRunner()
H, W = 64, 96


# ---------------------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Frames this small gain nothing from threads, and on a busy machine threads make them far slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def weights(tiny_weights: Path) -> Path:
    """The small untrained checkpoint: these tests are about errors, not accuracy."""
    return tiny_weights


@pytest.fixture
def clip(tmp_path: Path) -> tuple[Path, Path, list[np.ndarray]]:
    """A 4-frame 64x96 mp4, its first-frame palette mask (ids 1, 2) and the ground-truth labels."""
    images, labels = make_sample.make_clip(4, H, W, 2, seed=1)
    video = write_video(tmp_path / "clip.mp4", images)
    return video, write_palette_mask(tmp_path / "mask.png", labels[0]), labels


@pytest.fixture
def segment(weights: Path) -> Callable[..., Result]:
    def run(*args: object) -> Result:
        return runner.invoke(app, ["segment", *map(str, args), "--weights", str(weights), "--device", "cpu"])

    return run


def fails(result: Result, code: ExitCode, *words: str) -> str:
    """Assert a clean failure: the exit code, one ``error:`` line naming ``words``, no traceback."""
    assert result.exit_code == int(code), result.output
    assert isinstance(result.exception, SystemExit), result.exception  # a handled exit, not an escaped error
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def succeeds(result: Result) -> None:
    assert result.exit_code == 0, result.output
    assert "error:" not in result.output


def leftovers(folder: Path) -> list[Path]:
    """Temporary or partial files (vosrr's are hidden: ``.name.xxxx.tmp``, ``.overlay.partial.mp4``)."""
    if not folder.exists():
        return []
    return [p for p in folder.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp" or "partial" in p.name]


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        image.load()
        return np.asarray(image)


def count_frames(video: Path) -> int:
    _, frames = open_video(video)
    return sum(1 for _ in frames)


# ---------------------------------------------------------------------------------------------- video
def test_missing_video(segment, clip, tmp_path: Path) -> None:
    _, mask, _ = clip
    fails(segment(tmp_path / "nope.mp4", "-m", mask, "-o", tmp_path / "out"), ExitCode.INPUT, "video not found")
    assert not (tmp_path / "out").exists()


def test_folder_without_frames(segment, clip, tmp_path: Path) -> None:
    _, mask, _ = clip
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no frames here")
    fails(segment(tmp_path / "empty", "-m", mask, "-o", tmp_path / "out"), ExitCode.INPUT, "holds no frames")
    assert not (tmp_path / "out").exists()


def test_not_a_video(segment, clip, tmp_path: Path) -> None:
    _, mask, _ = clip
    fake = tmp_path / "fake.mp4"
    fake.write_text("this is not a video\n" * 100)
    fails(segment(fake, "-m", mask, "-o", tmp_path / "out"), ExitCode.INPUT, "cannot read", "as a video")
    assert not (tmp_path / "out").exists()


def test_unreadable_frame_in_folder(segment, tmp_path: Path) -> None:
    images, labels = make_sample.make_clip(3, H, W, 1, seed=2)
    folder = write_frames(tmp_path / "frames", images)
    (folder / "00000.png").write_bytes(b"not a png")
    mask = write_palette_mask(tmp_path / "mask.png", labels[0])
    fails(segment(folder, "-m", mask, "-o", tmp_path / "out"), ExitCode.INPUT, "cannot decode frame", "00000.png")
    assert not (tmp_path / "out").exists()


def test_truncated_stream_keeps_the_frames_that_decode(segment, tmp_path: Path) -> None:
    images, labels = make_sample.make_clip(12, H, W, 2, seed=3)
    whole = write_video(tmp_path / "whole.mkv", images)
    broken = tmp_path / "broken.mkv"
    broken.write_bytes(whole.read_bytes()[: whole.stat().st_size * 6 // 10])
    mask = write_palette_mask(tmp_path / "mask.png", labels[0])
    out = tmp_path / "out"
    line = fails(segment(broken, "-m", mask, "-o", out), ExitCode.INPUT, "decoding stopped after", "truncated")
    written = int(line.split("decoding stopped after ")[1].split()[0])
    assert 0 < written < 12
    pngs = sorted((out / "masks").glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:05d}.png" for i in range(written)]
    assert all(read_png(p).shape == (H, W) for p in pngs)
    assert count_frames(out / "overlay.mp4") == written
    assert f"the {written} frames before are written" in line
    assert leftovers(out) == []


def test_video_with_no_frames(segment, clip, tmp_path: Path) -> None:
    _, mask, _ = clip
    images, _ = make_sample.make_clip(10, H, W, 1, seed=4)
    whole = write_video(tmp_path / "whole.mkv", images)
    data = whole.read_bytes()
    header_only = tmp_path / "empty.mkv"
    header_only.write_bytes(data[: data.index(b"\x1f\x43\xb6\x75") + 8])  # up to the first Matroska cluster
    fails(segment(header_only, "-m", mask, "-o", tmp_path / "out"), ExitCode.INPUT, "no video frames")
    audio = tmp_path / "audio.mp4"  # a file with no video stream at all
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    subprocess.run([ffmpeg, "-v", "error", "-f", "lavfi", "-i", "anullsrc", "-t", "0.2", str(audio)], check=True)
    fails(segment(audio, "-m", mask, "-o", tmp_path / "out"), ExitCode.INPUT, "no video frames")
    assert not (tmp_path / "out").exists()


def test_one_frame_video_writes_one_mask(segment, tmp_path: Path) -> None:
    images, labels = make_sample.make_clip(1, H, W, 2, seed=5)
    video = write_video(tmp_path / "one.mp4", images)
    mask = write_palette_mask(tmp_path / "mask.png", labels[0])
    out = tmp_path / "out"
    succeeds(segment(video, "-m", mask, "-o", out))
    assert [p.name for p in (out / "masks").iterdir()] == ["00000.png"]
    np.testing.assert_array_equal(read_png(out / "masks" / "00000.png"), labels[0])
    assert count_frames(out / "overlay.mp4") == 1


@pytest.mark.parametrize("source", ["folder", "video"])
def test_odd_frame_size(segment, tmp_path: Path, source: str) -> None:
    images, labels = make_sample.make_clip(3, 73, 95, 1, seed=6)
    if source == "folder":
        video = write_frames(tmp_path / "frames", images)
    else:  # 4:4:4 H.264 allows odd sizes
        video = tmp_path / "odd.mkv"
        writer = imageio_ffmpeg.write_frames(
            str(video), (95, 73), codec="libx264", pix_fmt_out="yuv444p", macro_block_size=1, ffmpeg_log_level="error"
        )
        writer.send(None)
        for image in images:
            writer.send(np.ascontiguousarray(image))
        writer.close()
    mask = write_palette_mask(tmp_path / "mask.png", labels[0])
    out = tmp_path / "out"
    succeeds(segment(video, "-m", mask, "-o", out))
    assert [read_png(p).shape for p in sorted((out / "masks").glob("*.png"))] == [(73, 95)] * 3
    info, frames = open_video(out / "overlay.mp4")
    assert (info.width, info.height) == (96, 74)  # H.264 4:2:0 needs even sizes: padded by one pixel
    assert sum(1 for _ in frames) == 3


@pytest.mark.parametrize("mode", ["L", "RGBA", "LA"])
def test_grey_and_alpha_frames(segment, tmp_path: Path, mode: str) -> None:
    images, labels = make_sample.make_clip(2, H, W, 1, seed=7)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).convert(mode).save(folder / f"{i:05d}.png")
    mask = write_palette_mask(tmp_path / "mask.png", labels[0])
    out = tmp_path / "out"
    succeeds(segment(folder, "-m", mask, "-o", out, "--no-overlay"))
    assert len(list((out / "masks").glob("*.png"))) == 2


def test_very_large_frames_suggest_max_side(segment, tmp_path: Path) -> None:
    side = pipeline.MAX_FULL_SIDE + 4
    folder = tmp_path / "frames"
    folder.mkdir()
    Image.new("RGB", (side, 40), (90, 120, 60)).save(folder / "00000.png")
    labels = np.zeros((40, side), np.uint8)
    labels[10:30, 100:300] = 1
    mask = write_palette_mask(tmp_path / "mask.png", labels)
    out = tmp_path / "out"
    fails(segment(folder, "-m", mask, "-o", out), ExitCode.INPUT, f"{side}x40", "--max-side")
    assert not out.exists()
    succeeds(segment(folder, "-m", mask, "-o", out, "--max-side", "512"))
    assert read_png(out / "masks" / "00000.png").shape == (40, side)  # written at full size


# ---------------------------------------------------------------------------------------------- mask
def test_missing_mask(segment, clip, tmp_path: Path) -> None:
    video, _, _ = clip
    fails(segment(video, "-m", tmp_path / "nope.png", "-o", tmp_path / "out"), ExitCode.INPUT, "mask not found")
    assert not (tmp_path / "out").exists()


def test_mask_not_an_image(segment, clip, tmp_path: Path) -> None:
    video, _, _ = clip
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    fails(segment(video, "-m", bad, "-o", tmp_path / "out"), ExitCode.INPUT, "not an image")
    assert not (tmp_path / "out").exists()


def test_empty_mask(segment, clip, tmp_path: Path) -> None:
    video, _, _ = clip
    empty = write_palette_mask(tmp_path / "empty.png", np.zeros((H, W), np.uint8))
    fails(segment(video, "-m", empty, "-o", tmp_path / "out"), ExitCode.INPUT, "empty", "no object")
    assert not (tmp_path / "out").exists()


@pytest.fixture
def still(tmp_path: Path) -> tuple[Path, Path, list[np.ndarray]]:
    """A one-frame 64x96 frame folder (for the mask cases, where only the first frame matters)."""
    images, labels = make_sample.make_clip(1, H, W, 2, seed=1)
    return write_frames(tmp_path / "still", images), write_palette_mask(tmp_path / "mask.png", labels[0]), labels


def test_mask_of_another_size(segment, still, tmp_path: Path) -> None:
    video, _, labels = still
    big = np.kron(labels[0], np.ones((2, 2), np.uint8))  # 192x128, same picture
    mask = write_palette_mask(tmp_path / "big.png", big)
    out = tmp_path / "out"
    fails(segment(video, "-m", mask, "-o", out), ExitCode.INPUT, "192x128", "96x64", "--resize-mask")
    assert not out.exists()
    result = segment(video, "-m", mask, "-o", out, "--resize-mask")
    succeeds(result)
    assert "note:" in result.stderr and "resized" in result.stderr
    np.testing.assert_array_equal(read_png(out / "masks" / "00000.png"), labels[0])


def test_anti_aliased_mask_is_one_object_with_a_note(segment, still, tmp_path: Path) -> None:
    video, _, labels = still
    binary = (labels[0] > 0).astype(np.uint8) * 255
    soft = cv2.GaussianBlur(binary, (5, 5), 1.0)
    assert len(np.unique(soft)) > 2
    mask = tmp_path / "soft.png"
    Image.fromarray(soft, mode="L").save(mask)
    out = tmp_path / "out"
    result = segment(video, "-m", mask, "-o", out, "--no-overlay")
    succeeds(result)
    assert "note:" in result.stderr and "one soft-edged object" in result.stderr
    first = read_png(out / "masks" / "00000.png")
    assert set(np.unique(first)) == {0, 255}  # the user's ids, no edge values
    assert np.mean(first == binary) > 0.97


def test_rgb_colour_mask(segment, still, tmp_path: Path) -> None:
    video, _, labels = still
    colours = np.array([[0, 0, 0], [255, 200, 0], [0, 160, 255]], np.uint8)
    mask = tmp_path / "colours.png"
    Image.fromarray(colours[labels[0]]).save(mask)
    out = tmp_path / "out"
    result = segment(video, "-m", mask, "-o", out, "--no-overlay")
    succeeds(result)
    assert "2 colours mapped to object ids" in result.stderr
    with Image.open(out / "masks" / "00000.png") as written:
        assert written.mode == "P"
        ids = np.asarray(written)
        palette = np.asarray(written.getpalette()[:768], np.uint8).reshape(-1, 3)
    np.testing.assert_array_equal(palette[ids], colours[labels[0]])  # the user's colours come back


def test_too_many_objects(segment, clip, tmp_path: Path) -> None:
    video, _, _ = clip
    labels = np.zeros((H, W), np.uint8)
    for i in range(MAX_OBJECTS + 1):
        y, x = divmod(i, 8)
        labels[y * 8 : y * 8 + 6, x * 12 : x * 12 + 10] = i + 1
    mask = write_palette_mask(tmp_path / "many.png", labels)
    fails(segment(video, "-m", mask, "-o", tmp_path / "out"), ExitCode.INPUT, f"{MAX_OBJECTS + 1} object ids")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- weights
def test_missing_weights(clip, tmp_path: Path) -> None:
    video, mask, _ = clip
    args = ["segment", str(video), "-m", str(mask), "-o", str(tmp_path / "out"), "--device", "cpu"]
    result = runner.invoke(app, [*args, "--weights", str(tmp_path / "nope.pt")])
    fails(result, ExitCode.WEIGHTS, "weights file not found", "--weights")
    assert not (tmp_path / "out").exists()


def _copy(source: Path, target: Path, data: bytes | None = None, sidecar: bool = True) -> Path:
    target.write_bytes(source.read_bytes() if data is None else data)
    if sidecar:
        (target.parent / (target.name + ".sha256")).write_text(
            (source.parent / (source.name + ".sha256")).read_text().replace(source.name, target.name)
        )
    return target


def test_truncated_weights(weights: Path, tmp_path: Path) -> None:
    data = weights.read_bytes()[: weights.stat().st_size // 2]
    checked = _copy(weights, tmp_path / "checked.pt", data)
    with pytest.raises(WeightsError, match="checksum mismatch"):
        load_checkpoint(checked)
    unchecked = _copy(weights, tmp_path / "unchecked.pt", data, sidecar=False)
    with pytest.raises(WeightsError, match="corrupt"):
        load_checkpoint(unchecked)


def test_truncated_weights_cli(clip, weights: Path, tmp_path: Path) -> None:
    video, mask, _ = clip
    bad = _copy(weights, tmp_path / "bad.pt", weights.read_bytes()[:1000], sidecar=False)
    args = ["segment", str(video), "-m", str(mask), "-o", str(tmp_path / "out"), "--device", "cpu"]
    fails(runner.invoke(app, [*args, "--weights", str(bad)]), ExitCode.WEIGHTS, "cannot load weights", "corrupt")
    assert not (tmp_path / "out").exists()


def test_checksum_mismatch(clip, weights: Path, tmp_path: Path) -> None:
    video, mask, _ = clip
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle
    altered = _copy(weights, tmp_path / "altered.pt", bytes(data))
    args = ["segment", str(video), "-m", str(mask), "-o", str(tmp_path / "out"), "--device", "cpu"]
    fails(runner.invoke(app, [*args, "--weights", str(altered)]), ExitCode.WEIGHTS, "checksum mismatch", "restore")


def test_wrong_architecture(clip, weights: Path, tmp_path: Path) -> None:
    video, mask, _ = clip
    payload = torch.load(weights, weights_only=True)
    payload["config"]["channels"] = 64  # the tensors are for C = 32
    other = tmp_path / "other.pt"
    torch.save(payload, other)
    args = ["segment", str(video), "-m", str(mask), "-o", str(tmp_path / "out"), "--device", "cpu"]
    fails(runner.invoke(app, [*args, "--weights", str(other)]), ExitCode.WEIGHTS, "does not match the vosrr")
    plain = tmp_path / "plain.pt"
    torch.save(payload["model"], plain)  # a bare state dict, e.g. some other project's
    fails(runner.invoke(app, [*args, "--weights", str(plain)]), ExitCode.WEIGHTS, "not a vosrr checkpoint")


class _Payload:
    """Unpickling this calls ``os.mkdir(marker)``: a stand-in for arbitrary code in a crafted checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, ...]:
        return (os.mkdir, (self.marker,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickle_is_refused_and_not_run(clip, weights: Path, tmp_path: Path, monkeypatch) -> None:
    video, mask, _ = clip
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(_Payload(proof)))  # the payload is real: plain unpickling runs it
    assert proof.is_dir()

    marker = tmp_path / "executed"
    config = torch.load(weights, weights_only=True)["config"]
    crafted = tmp_path / "crafted.pt"
    torch.save({"format": "vosrr-1", "config": config, "model": _Payload(marker)}, crafted)
    (tmp_path / "crafted.pt.sha256").write_text(hashlib.sha256(crafted.read_bytes()).hexdigest() + "  crafted.pt\n")
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps({"format": "vosrr-1", "model": _Payload(marker)}))
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # cannot switch the safe loader off
    args = ["segment", str(video), "-m", str(mask), "-o", str(tmp_path / "out"), "--device", "cpu"]
    for path in (crafted, raw):
        fails(runner.invoke(app, [*args, "--weights", str(path)]), ExitCode.WEIGHTS, "cannot load weights")
        with pytest.raises(WeightsError, match=r"refused|corrupt"):
            load_checkpoint(path)
        assert not marker.exists(), f"loading {path.name} ran its payload"
    assert "refused" in fails(runner.invoke(app, [*args, "--weights", str(crafted)]), ExitCode.WEIGHTS)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- output
def test_non_empty_output_folder_needs_force(segment, clip, tmp_path: Path) -> None:
    video, mask, _ = clip
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    fails(segment(video, "-m", mask, "-o", out), ExitCode.OUTPUT, "not empty", "--force")
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    succeeds(segment(video, "-m", mask, "-o", out, "--force"))
    assert (out / "mine.txt").read_text() == "keep me"
    assert len(list((out / "masks").glob("*.png"))) == 4
    assert (out / "overlay.mp4").is_file() and leftovers(out) == []


def test_a_second_run_into_a_folder_being_written_is_refused(segment, clip, weights: Path, tmp_path: Path) -> None:
    """Two runs without --force that both found the folder empty: the one that claims it first writes; the other
    is told another run is writing there, and touches nothing."""
    from vosrr.checkpoint import load_model
    from vosrr.pipeline import CLAIM, Outputs, segment_video

    video, mask, _ = clip
    out = tmp_path / "out"
    seen: list[str] = []

    def second(index: int) -> None:
        if index == 0:  # the first run has written its first frame and holds the folder
            seen.append(fails(segment(video, "-m", mask, "-o", out), ExitCode.OUTPUT, "another vosrr run", "--out"))

    segmenter = Segmenter(load_model(weights)[0])
    summary = segment_video(segmenter, video, mask, Outputs(out), on_frame=second)
    assert summary.frames == 4 and len(seen) == 1
    assert len(list((out / "masks").glob("*.png"))) == 4 and not (out / CLAIM).exists() and leftovers(out) == []
    out.joinpath(CLAIM).write_text("")  # a run that was killed left its claim: the message says what to do
    fails(segment(video, "-m", mask, "-o", out), ExitCode.OUTPUT, "another vosrr run", "remove that file")


def test_output_path_is_a_file(segment, clip, tmp_path: Path) -> None:
    video, mask, _ = clip
    target = tmp_path / "taken"
    target.write_text("a file")
    fails(segment(video, "-m", mask, "-o", target), ExitCode.OUTPUT, "not a folder", "--out")
    assert target.read_text() == "a file"


@pytest.mark.parametrize("clash", ["masks", "overlay.mp4"])
def test_name_clash_inside_output_folder(segment, clip, tmp_path: Path, clash: str) -> None:
    video, mask, _ = clip
    out = tmp_path / "out"
    out.mkdir()
    if clash == "masks":
        (out / "masks").write_text("a file named masks")
    else:
        (out / "overlay.mp4").mkdir()
    fails(segment(video, "-m", mask, "-o", out, "--force"), ExitCode.OUTPUT, clash)
    assert sorted(p.name for p in out.iterdir()) == [clash]


def test_unwritable_output_folder(segment, clip, tmp_path: Path) -> None:
    video, mask, _ = clip
    parent = tmp_path / "a-file"
    parent.write_text("not a folder")  # works for root too, which chmod cannot stop
    fails(segment(video, "-m", mask, "-o", parent / "out"), ExitCode.OUTPUT, "cannot write to", "--out")
    assert parent.read_text() == "not a folder"


def test_read_only_output_folder(segment, clip, tmp_path: Path, monkeypatch) -> None:
    video, mask, _ = clip
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.access(locked, os.W_OK):  # root ignores permissions: make mkdir fail as it would for a user
        mkdir = Path.mkdir

        def refuse(self: Path, *args: object, **kwargs: object) -> None:
            if locked in self.parents:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
            mkdir(self, *args, **kwargs)

        monkeypatch.setattr(Path, "mkdir", refuse)
    try:
        fails(segment(video, "-m", mask, "-o", locked / "out"), ExitCode.OUTPUT, "cannot write to", "Permission denied")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def test_disk_full_mid_run(segment, clip, tmp_path: Path, monkeypatch) -> None:
    video, mask, _ = clip
    save = Image.Image.save
    calls = []

    def save_until_the_disk_is_full(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        calls.append(fp)
        if len(calls) == 3:
            Path(str(fp)).write_bytes(b"half a png")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save_until_the_disk_is_full)
    out = tmp_path / "out"
    line = fails(segment(video, "-m", mask, "-o", out), ExitCode.OUTPUT, "No space left on device", "00002.png")
    assert ".tmp" not in line  # the file the user knows, not a temporary name
    monkeypatch.undo()
    assert leftovers(out) == []
    names = sorted(p.name for p in (out / "masks").iterdir())
    assert names[:2] == ["00000.png", "00001.png"] and "00002.png" not in names and len(names) <= 3
    assert all(read_png(p).shape == (H, W) for p in (out / "masks").glob("*.png"))
    if (out / "overlay.mp4").exists():  # the encoder may have stopped before or after a third frame
        assert count_frames(out / "overlay.mp4") >= 2


# ---------------------------------------------------------------------------------------------- Ctrl-C
def test_ctrl_c_keeps_complete_frames(segment, clip, tmp_path: Path, monkeypatch) -> None:
    video, mask, _ = clip
    advance = Segmenter.advance_scores  # the frame loop's step after the network
    calls = []

    def interrupted_advance(self, state, X, **options):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return advance(self, state, X, **options)

    monkeypatch.setattr(Segmenter, "advance_scores", interrupted_advance)
    out = tmp_path / "out"
    fails(segment(video, "-m", mask, "-o", out), ExitCode.INTERRUPTED, "interrupted after 3 frames", str(out))
    pngs = sorted((out / "masks").iterdir())
    assert [p.name for p in pngs] == ["00000.png", "00001.png", "00002.png"]
    assert all(read_png(p).shape == (H, W) for p in pngs)
    assert count_frames(out / "overlay.mp4") == 3
    assert leftovers(out) == []


def test_ctrl_c_before_the_first_frame_leaves_nothing(segment, clip, tmp_path: Path, monkeypatch) -> None:
    video, mask, _ = clip

    def interrupted_start(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(Segmenter, "start", interrupted_start)
    out = tmp_path / "out"
    fails(segment(video, "-m", mask, "-o", out), ExitCode.INTERRUPTED, "nothing was written")
    assert not out.exists()


# ---------------------------------------------------------------------------------------------- DAVIS
def _davis(root: Path, drop_mask: bool = False, drop_split: bool = False) -> Path:
    images, labels = make_sample.make_clip(3, H, W, 1, seed=8)
    frames = root / "JPEGImages" / "480p" / "toy"
    annotations = root / "Annotations" / "480p" / "toy"
    frames.mkdir(parents=True)
    annotations.mkdir(parents=True)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        Image.fromarray(image).save(frames / f"{i:05d}.jpg")
        if not (drop_mask and i == 1):
            Image.fromarray(label * 255).save(annotations / f"{i:05d}.png")
    sets = root / "ImageSets" / "480p"
    sets.mkdir(parents=True)
    for split in ("train", "val"):
        if not (drop_split and split == "train"):
            (sets / f"{split}.txt").write_text(
                "".join(f"/JPEGImages/480p/toy/{i:05d}.jpg /Annotations/480p/toy/{i:05d}.png\n" for i in range(3))
            )
    return root


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("missing", ("DAVIS folder not found", "--davis")),
        ("no split", ("split file missing", "train.txt")),
        ("no mask", ("annotation(s) missing", "00001.png")),
    ],
)
def test_train_with_a_bad_davis_folder(tmp_path: Path, case: str, words: tuple[str, ...]) -> None:
    root = tmp_path / "davis"
    if case != "missing":
        _davis(root, drop_mask=case == "no mask", drop_split=case == "no split")
    args = ["train", "--davis", str(root), "--out", str(tmp_path / "run"), "--cache", str(tmp_path / "cache")]
    line = fails(runner.invoke(app, [*args, "--device", "cpu"]), ExitCode.DATASET, *words)
    assert "--split" not in line  # train has no --split option to suggest
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("missing", ("DAVIS folder not found",)),
        ("no split", ("split file missing", "test.txt", "use --split train or val")),
        ("no mask", ("annotation(s) missing",)),
        ("unknown sequence", ("not in val", "nope")),
    ],
)
def test_eval_with_a_bad_davis_folder(weights: Path, tmp_path: Path, case: str, words: tuple[str, ...]) -> None:
    root = tmp_path / "davis"
    if case != "missing":
        _davis(root, drop_mask=case == "no mask")
    args = ["eval", "--davis", str(root), "--out", str(tmp_path / "res"), "--weights", str(weights), "--device", "cpu"]
    args += ["--split", "test"] if case == "no split" else []
    args += ["--sequences", "nope"] if case == "unknown sequence" else []
    fails(runner.invoke(app, args), ExitCode.DATASET, *words)
    assert not (tmp_path / "res").exists()


@pytest.mark.parametrize("value", [",", " , ,"])
def test_eval_sequences_that_name_nothing(weights: Path, tmp_path: Path, value: str) -> None:
    root = tmp_path / "davis"
    _davis(root)
    args = ["eval", "--davis", str(root), "--out", str(tmp_path / "res"), "--weights", str(weights)]
    fails(runner.invoke(app, [*args, "--sequences", value]), ExitCode.USAGE, "names no sequence", "bear,blackswan")
    assert not (tmp_path / "res").exists()


# ---------------------------------------------------------------------------------------------- device, CLI
@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
def test_cuda_without_a_gpu(clip, weights: Path, tmp_path: Path) -> None:
    video, mask, _ = clip
    args = ["segment", str(video), "-m", str(mask), "-o", str(tmp_path / "out"), "--weights", str(weights)]
    fails(runner.invoke(app, [*args, "--device", "cuda"]), ExitCode.DEVICE, "no CUDA GPU", "--device cpu")
    assert not (tmp_path / "out").exists()


def test_unknown_device_is_a_usage_error(clip, weights: Path, tmp_path: Path) -> None:
    video, mask, _ = clip
    args = ["segment", str(video), "-m", str(mask), "-o", str(tmp_path / "out"), "--weights", str(weights)]
    fails(runner.invoke(app, [*args, "--device", "tpu"]), ExitCode.USAGE, "device")


@pytest.mark.parametrize(
    ("option", "value", "words"),
    [
        ("--min-part", "2", "must be in [0, 1]"),
        ("--lam", "nan", "finite"),
        ("--lam", "inf", "finite"),
        ("--lam", "1e-30", "between 0.001 and 10000"),
        ("--window", "nan", "finite"),
        ("--online", "nan", "finite"),
        ("--online", "-1", "between 0 and 10"),
        ("--scale", "0", "[0.25, 4]"),
        ("--max-side", "3", "at least 32"),
        ("--blocks", "3", "1, 2, 4, 8 or 16"),
    ],
)
def test_a_bad_option_value_is_named_as_the_option(clip, weights: Path, tmp_path: Path, option, value, words) -> None:
    """Checked before any work (exit 2, nothing written), and said as the option typed, not as a field name."""
    video, mask, _ = clip
    args = ["segment", str(video), "-m", str(mask), "-o", str(tmp_path / "out"), "--weights", str(weights)]
    line = fails(runner.invoke(app, [*args, option, value]), ExitCode.USAGE, f"error: {option} ", words)
    assert f"leave {option} out" in line
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback(segment, clip, tmp_path: Path) -> None:
    _, mask, _ = clip
    result = segment(tmp_path / "nope.mp4", "-m", mask, "--debug")
    assert result.exit_code != 0
    assert type(result.exception).__name__ == "VideoError"  # raised through, not turned into a line


def test_messages_with_brackets_are_printed_verbatim(segment, clip, tmp_path: Path) -> None:
    _, mask, _ = clip
    fails(segment(tmp_path / "[bold]x[/bold].mp4", "-m", mask), ExitCode.INPUT, "[bold]x[/bold].mp4")


def test_error_stays_one_line_in_a_narrow_terminal(segment, clip, tmp_path: Path, monkeypatch) -> None:
    _, mask, _ = clip
    monkeypatch.setattr(cli.console, "width", 30)
    fails(segment(tmp_path / "a-long-name-for-a-video-that-is-not-there.mp4", "-m", mask), ExitCode.INPUT)


def test_main_turns_ctrl_c_into_exit_130(monkeypatch, capsys) -> None:
    def interrupted(**options: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "app", interrupted)
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == int(ExitCode.INTERRUPTED)
    assert capsys.readouterr().err.strip() == "error: interrupted"


# ------------------------------------------------------------------------------ paths and options (hostile)
def test_colons_in_file_names_are_paths_not_protocols(segment, clip, tmp_path: Path) -> None:
    video, mask, _ = clip
    odd = tmp_path / "take:1.mp4"
    odd.write_bytes(video.read_bytes())
    out = tmp_path / "run:1"
    succeeds(segment(odd, "-m", mask, "-o", out, "--export", "alpha"))
    assert len(list((out / "masks").iterdir())) == 4
    assert count_frames(out / "overlay.mp4") == 4 and (out / "alpha.mov").is_file()
    assert leftovers(out) == []


@pytest.mark.parametrize("fps", ["0", "-5", "nan", "inf", "5000"])
def test_a_bad_frame_rate_is_refused_before_any_work(segment, clip, tmp_path: Path, fps: str) -> None:
    video, mask, _ = clip
    out = tmp_path / "out"
    fails(segment(video, "-m", mask, "-o", out, "--fps", fps), ExitCode.USAGE, "--fps")
    assert not out.exists()


def test_nothing_to_write_is_refused(segment, clip, tmp_path: Path) -> None:
    video, mask, _ = clip
    out = tmp_path / "out"
    fails(segment(video, "-m", mask, "-o", out, "--no-masks", "--no-overlay"), ExitCode.USAGE, "nothing to write")
    assert not out.exists()


def test_a_scale_past_the_size_guard_is_refused(segment, tmp_path: Path) -> None:
    images, labels = make_sample.make_clip(2, 64, 1100, 1, seed=1)
    folder = write_frames(tmp_path / "frames", images)
    mask = write_palette_mask(tmp_path / "mask.png", labels[0])
    out = tmp_path / "out"
    fails(segment(folder, "-m", mask, "-o", out, "--scale", "4"), ExitCode.INPUT, "--scale 4.0", "--max-side")
    assert not out.exists()


def test_a_higher_overlay_rate_is_not_called_truncation(segment, clip, tmp_path: Path) -> None:
    video, mask, _ = clip  # 10 fps
    result = segment(video, "-m", mask, "-o", tmp_path / "out", "--fps", "60")
    succeeds(result)
    assert "truncated" not in result.output


def test_two_overlay_writers_for_one_file_never_share_a_temporary_file(tmp_path: Path) -> None:
    from vosrr.encode import OverlayWriter

    a, b = (OverlayWriter(tmp_path / "overlay.mp4", 32, 32, 10.0) for _ in range(2))
    assert a.tmp != b.tmp and a.tmp.parent == b.tmp.parent == tmp_path


def _command(*args: object, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The installed command's entry (``vosrr.entry``) in a process of its own."""
    command = [sys.executable, "-m", "vosrr.entry", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def test_option_parser_errors_are_one_line(clip, tmp_path: Path) -> None:
    video, mask, _ = clip
    dash = tmp_path / "-clip.mp4"
    dash.write_bytes(video.read_bytes())
    cases = [
        (["segment", video, "-m", mask, "--bogus"], "No such option: --bogus"),
        (["segment", "-m", mask], "Missing argument 'video'"),
        (["segment", video, "-m", mask, "--blocks", "x"], "--blocks"),
        (["segment", dash.name, "-m", mask], "put -- before names that start with '-'"),
    ]
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the name starting with '-' is given relative, as a user types it
    try:
        for args, words in cases:
            result = _command(*args)
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            assert result.returncode == int(ExitCode.USAGE), result.stderr
            assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], lines
            assert "--help" in lines[0]
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["segment", "", "-m", "mask.png"], "argument 2 is empty"),  # "$VIDEO" unset: not the current folder
        (["segment", "clip.mp4", "-m", "mask.png", "-o", ""], "the value of -o is empty"),
        (["eval", "--davis=", "--out", "res"], "the value of --davis is empty"),
        (["segment", "clip.mp4", "-m", " "], "the value of -m is empty"),
    ],
)
def test_an_empty_argument_is_refused_at_once(clip, tmp_path: Path, args: list[str], words: str) -> None:
    video, mask, _ = clip
    video.rename(tmp_path / "clip.mp4")
    mask.rename(tmp_path / "mask.png")
    before = sorted(tmp_path.iterdir())
    result = subprocess.run(
        [sys.executable, "-m", "vosrr.entry", *args], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == int(ExitCode.USAGE) and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and words in lines[0] and "unset shell variable" in lines[0], lines
    assert sorted(tmp_path.iterdir()) == before  # nothing written, the folder not taken as a video


@pytest.mark.parametrize(("stop", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_keeps_complete_frames_like_ctrl_c(weights: Path, tmp_path: Path, stop: int, code: int) -> None:
    """SIGTERM (kill, timeout, a container stopping) and SIGHUP (the terminal or SSH session closed) stop a run
    as a Ctrl-C does: complete masks, a playable overlay of as many frames, no hidden file; exit 128 + signal."""
    # long enough that the run is still going when the signal comes, however late a loaded machine sends it
    images, labels = make_sample.make_clip(600, 120, 200, 2, seed=1)
    video = write_video(tmp_path / "long.mp4", images)
    mask = write_palette_mask(tmp_path / "mask.png", labels[0])
    out = tmp_path / "out"
    command = [sys.executable, "-m", "vosrr.entry", "segment", str(video), "-m", str(mask), "-o", str(out)]
    process = subprocess.Popen([*command, "--weights", str(weights)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "masks" / "00003.png").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr
    assert "Traceback" not in stderr and "interrupted after" in stderr
    written = sorted(p.name for p in (out / "masks").iterdir())
    assert 4 <= len(written) < 600 and written == [f"{i:05d}.png" for i in range(len(written))]
    assert count_frames(out / "overlay.mp4") == len(written)
    assert leftovers(out) == []


def test_a_hangup_that_nohup_ignores_stays_ignored(monkeypatch) -> None:
    from vosrr import entry

    monkeypatch.setattr(signal, "getsignal", lambda signum: signal.SIG_DFL)
    assert entry._stops() == [signal.SIGTERM, signal.SIGHUP]
    monkeypatch.setattr(signal, "getsignal", lambda signum: signal.SIG_IGN if signum == signal.SIGHUP else None)
    assert entry._stops() == [signal.SIGTERM]  # under nohup a closed terminal does not stop the run


def test_ctrl_c_while_starting_is_one_line(tmp_path: Path) -> None:
    """A Ctrl-C while torch is still importing (the first second or two) is one line, not a traceback."""
    command = [sys.executable, "-m", "vosrr.entry", "segment", str(tmp_path / "v.mp4"), "-m", "m.png"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert process.returncode == 130 and len(lines) == 1 and lines[0].startswith("error: interrupted"), stderr


# ------------------------------------------------------------------------------------------ eval (hostile)
def _eval(weights: Path, root: Path, out: Path, *extra: str) -> Result:
    args = ["eval", "--davis", str(root), "--out", str(out), "--weights", str(weights), "--device", "cpu"]
    return runner.invoke(app, [*args, *extra])


def test_eval_never_writes_into_the_dataset(weights: Path, tmp_path: Path) -> None:
    root = _davis(tmp_path / "davis")
    truth = root / "Annotations" / "480p"
    before = {p: p.read_bytes() for p in truth.rglob("*.png")}
    for out in (truth, root, root / "runs"):
        fails(_eval(weights, root, out, "--force"), ExitCode.USAGE, "inside", "DAVIS folder")
    assert {p: p.read_bytes() for p in truth.rglob("*.png")} == before  # the ground truth is untouched
    assert not (root / "runs").exists()


def test_eval_refuses_a_non_empty_out_without_force(weights: Path, tmp_path: Path) -> None:
    root = _davis(tmp_path / "davis")
    out = tmp_path / "res"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    fails(_eval(weights, root, out), ExitCode.OUTPUT, "not empty", "--force")
    succeeds(_eval(weights, root, out, "--force"))
    assert (out / "mine.txt").read_text() == "keep" and (out / "results.json").is_file()


def test_eval_names_the_listed_sequences_that_are_missing(weights: Path, tmp_path: Path) -> None:
    root = _davis(tmp_path / "davis")
    listing = root / "ImageSets" / "480p" / "val.txt"
    listing.write_text(listing.read_text() + "/JPEGImages/480p/gone/00000.jpg /Annotations/480p/gone/00000.png\n")
    result = _eval(weights, root, tmp_path / "res")
    succeeds(result)
    assert "1 of the 2 sequences val.txt lists are not in" in result.output and "gone" in result.output


def test_a_frame_folder_holding_its_mask_never_takes_it_as_a_frame(segment, tmp_path: Path) -> None:
    images, labels = make_sample.make_clip(3, H, W, 2, seed=1)
    folder = write_frames(tmp_path / "frames", images)
    mask = write_palette_mask(folder / "zz_mask.png", labels[0])  # sorts after the frames
    (folder / "notes.txt").write_text("not a frame")
    out = tmp_path / "out"
    result = segment(folder, "-m", mask, "-o", out)
    succeeds(result)
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["00000.png", "00001.png", "00002.png"]
    assert "2 file(s) not taken as frames (notes.txt, zz_mask.png)" in " ".join(result.output.split())


@pytest.mark.parametrize(("case", "words"), [("folder", ("is a folder", "tiny.pt")), ("checksum", ("checksum file",))])
def test_weights_that_are_not_a_checkpoint_file(segment, clip, weights: Path, tmp_path: Path, case, words) -> None:
    video, mask, _ = clip
    own = tmp_path / "weights" / weights.name  # a copy: the shared checkpoint's folder stays as it is
    own.parent.mkdir()
    own.write_bytes(weights.read_bytes())
    target = own.parent if case == "folder" else own.with_name(own.name + ".sha256")
    if case == "checksum":
        target.write_text(hashlib.sha256(own.read_bytes()).hexdigest())
    args = ["segment", str(video), "-m", str(mask), "-o", str(tmp_path / "out"), "--weights", str(target)]
    line = fails(runner.invoke(app, [*args, "--device", "cpu"]), ExitCode.WEIGHTS, *words)
    assert "could run code" not in line and "not found" not in line


def test_an_encoder_file_without_its_index_is_never_kept(clip, tmp_path: Path) -> None:
    from vosrr.video import check_complete

    video, _, _ = clip
    check_complete(video)  # a whole mp4
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(video.read_bytes()[: video.stat().st_size // 2])  # what a full disk leaves: no moov atom
    with pytest.raises(OSError, match="incomplete"):
        check_complete(cut)


@pytest.mark.parametrize("made", ["overlay.mp4", "alpha.mov"])
def test_a_full_disk_leaves_no_corrupt_overlay(segment, tmp_path: Path, made: str) -> None:
    """A small tmpfs fills up while the overlay (or alpha.mov) is written: one error line naming the file and
    the full disk, exit 5, no file under its name."""
    images, labels = make_sample.make_clip(40, 240, 320, 2, seed=4)
    video = write_video(tmp_path / "long.mp4", images)
    mask = write_palette_mask(tmp_path / "mask.png", labels[0])
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root in a machine that allows mounts)")
    try:
        out = small / "out"
        only = ["--no-masks"] if made == "overlay.mp4" else ["--no-masks", "--no-overlay", "--export", "alpha"]
        fails(segment(video, "-m", mask, "-o", out, *only), ExitCode.OUTPUT, made, "no space left")
        assert not (out / made).exists() and leftovers(out) == []
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_a_black_first_frame_is_warned_about(tmp_path: Path) -> None:
    """A frame that cannot support a solve (all black) gets a note saying what to do; a normal one does not."""
    images, labels = make_sample.make_clip(3, 96, 160, 1, seed=2)
    mask = write_palette_mask(tmp_path / "mask.png", labels[0])
    notes = {}
    for name, first in (("normal", images[0]), ("black", np.zeros_like(images[0]))):
        folder = write_frames(tmp_path / name, [first, *images[1:]])
        args = ["segment", str(folder), "-m", str(mask), "-o", str(tmp_path / f"{name}_out"), "--device", "cpu"]
        result = runner.invoke(app, args)  # the shipped network: a random one cannot tell anything apart
        succeeds(result)
        notes[name] = " ".join(result.output.split())
    assert "cannot tell the objects from the background" not in notes["normal"]
    assert "cannot tell the objects from the background" in notes["black"] and "--mask N:FILE" in notes["black"]


def test_a_rotated_video_with_a_mask_at_its_coded_size_is_told_to_rotate_it(segment, tmp_path: Path) -> None:
    """A phone video stored 160x96 and shown 96x160 (rotation metadata), with a mask drawn on the stored frame:
    rotating the mask is the fix, not --resize-mask (which would squash it); nothing is written."""
    images, labels = make_sample.make_clip(4, 96, 160, 1, seed=2)
    coded = write_video(tmp_path / "coded.mp4", images)
    video = tmp_path / "phone.mp4"
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    command = [ffmpeg, "-v", "error", "-y", "-display_rotation", "90", "-i", str(coded), "-c", "copy", str(video)]
    subprocess.run(command, check=True)
    mask = write_palette_mask(tmp_path / "coded_mask.png", labels[0])  # 160x96: the stored frame's size
    out = tmp_path / "out"
    line = fails(segment(video, "-m", mask, "-o", out), ExitCode.INPUT, "160x96", "96x160", "rotate it")
    assert "pass --resize-mask" not in line and "would distort" in line
    assert not out.exists()
    upright = write_palette_mask(tmp_path / "upright.png", np.ascontiguousarray(np.rot90(labels[0])))
    succeeds(segment(video, "-m", upright, "-o", out, "--no-overlay"))  # the rotated mask is taken
    assert read_png(out / "masks" / "00000.png").shape == (160, 96)


def test_an_empty_mask_name_is_a_usage_error(segment, clip, tmp_path: Path) -> None:
    """Through the Python API's CLI (no entry point): an empty --mask is refused, not read as the folder '.'."""
    video, _, _ = clip
    out = tmp_path / "out"
    fails(segment(video, "-m", "", "-o", out), ExitCode.USAGE, "--mask is given an empty name")
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "code", "words"),
    [
        (["--lr", "nan"], ExitCode.USAGE, "--lr must be a finite number"),
        (["--lr", "-1"], ExitCode.USAGE, "--lr must be above 0"),
        (["--weight-decay", "-1"], ExitCode.USAGE, "--weight-decay must be at least 0"),
        (["--lam", "nan"], ExitCode.USAGE, "--lam must be a finite number"),
        (["--channels", "0"], ExitCode.USAGE, "--channels must be at least 2"),
        (["--holdout", "-1"], ExitCode.USAGE, "--holdout must be at least 0"),
        (["--max-gap", "0"], ExitCode.USAGE, "--max-gap must be at least 1"),
        (["--epochs", "0"], ExitCode.USAGE, "--epochs must be at least 1, got 0"),
        (["--resume", "nope.pt"], ExitCode.WEIGHTS, "--resume nope.pt: not found"),
        (["--cache", "FILE"], ExitCode.OUTPUT, "choose another --cache"),
    ],
)
def test_train_values_are_checked_before_the_feature_cache(tmp_path: Path, extra: list[str], code, words) -> None:
    """Each bad value is one line naming its option, before minutes of caching (it used to be exit 1 with
    torch's 'Invalid learning rate' or a _LinAlgError, once the cache was built)."""
    root = _davis(tmp_path / "davis")
    cache = tmp_path / "cache"
    if "FILE" in extra:
        (tmp_path / "taken").write_text("a file")
        extra = ["--cache", str(tmp_path / "taken")]
    args = ["train", "--davis", str(root), "--out", str(tmp_path / "run"), "--device", "cpu", "--holdout", "0"]
    fails(runner.invoke(app, [*args, "--cache", str(cache), *extra]), code, words)
    assert not (tmp_path / "run").exists() and not cache.exists()
