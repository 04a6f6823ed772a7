"""Reading and writing frames: counts, sizes and frame rates survive; errors reach the reader; nothing partial."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from conftest import iou, make_sample, write_frames, write_palette_mask, write_video
from PIL import Image

from vosrr.encode import OverlayWriter
from vosrr.video import DEFAULT_FPS, TICKS, OutputError, VideoError, open_video, prefetch


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    frames, _ = make_sample.make_clip(7, 64, 96, 2, seed=11)
    return frames


def write_overlay(path: Path, frames: list[np.ndarray], fps: float) -> Path:
    height, width = frames[0].shape[:2]
    with OverlayWriter(path, width, height, fps) as writer:
        for frame in frames:
            writer.write(frame)
    return path


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_mp4_round_trip_keeps_count_size_and_fps(images, tmp_path: Path) -> None:
    video = write_overlay(tmp_path / "out.mp4", images, fps=12.5)
    info, frames = open_video(video)
    assert (info.width, info.height, info.fps) == (96, 64, pytest.approx(12.5))
    decoded = list(frames)
    assert len(decoded) == len(images)
    assert info.frames is not None and abs(info.frames - len(images)) <= 1  # an estimate from the header
    assert all(f.shape == (64, 96, 3) and f.dtype == np.uint8 for f in decoded)
    error = np.mean([np.abs(a.astype(float) - b).mean() for a, b in zip(decoded, images, strict=True)])
    assert error < 6  # lossy, but the same pictures in the same order
    assert hidden(tmp_path) == []


def test_fps_option_overrides_the_stream(images, tmp_path: Path) -> None:
    video = write_video(tmp_path / "in.mp4", images, fps=10)
    assert open_video(video)[0].fps == pytest.approx(10)
    assert open_video(video, fps=30)[0].fps == 30


def test_frame_folder_round_trip(images, tmp_path: Path) -> None:
    folder = write_frames(tmp_path / "frames", images)
    (folder / "notes.txt").write_text("ignored")
    (folder / ".hidden.png").write_bytes(b"ignored too")
    info, frames = open_video(folder)
    assert (info.width, info.height, info.fps, info.frames) == (96, 64, DEFAULT_FPS, 7)
    decoded = list(frames)
    assert len(decoded) == 7
    for a, b in zip(decoded, images, strict=True):
        np.testing.assert_array_equal(a, b)  # PNG is lossless: exactly the frames
    assert open_video(folder, fps=5)[0].fps == 5


def test_single_image_is_a_one_frame_video(images, tmp_path: Path) -> None:
    path = tmp_path / "still.png"
    Image.fromarray(images[0]).save(path)
    info, frames = open_video(path)
    assert info.frames == 1
    (only,) = list(frames)
    np.testing.assert_array_equal(only, images[0])


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "I;16"])
def test_grey_alpha_and_16_bit_frames_become_rgb(images, tmp_path: Path, mode: str) -> None:
    grey = np.asarray(Image.fromarray(images[0]).convert("L"))
    if mode == "I;16":
        image = Image.fromarray(grey.astype(np.uint16) * 257)  # 16-bit PNG, full range
    else:
        image = Image.fromarray(images[0]).convert(mode)
    image.save(tmp_path / "00000.png")
    _, frames = open_video(tmp_path)
    (frame,) = list(frames)
    assert frame.shape == (64, 96, 3) and frame.dtype == np.uint8
    expected = images[0] if mode == "RGBA" else np.repeat(grey[:, :, None], 3, axis=2)
    np.testing.assert_allclose(frame, expected, atol=1)


def test_frames_of_different_sizes_are_an_error(images, tmp_path: Path) -> None:
    Image.fromarray(images[0]).save(tmp_path / "00000.png")
    Image.fromarray(images[1][:32]).save(tmp_path / "00001.png")
    _, frames = open_video(tmp_path)
    next(frames)
    with pytest.raises(VideoError, match=r"00001\.png is 96x32"):
        next(frames)


def test_truncated_file_raises_after_the_frames_that_decode(images, tmp_path: Path) -> None:
    whole = write_video(tmp_path / "whole.mkv", images * 2)
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 6 // 10])
    _, frames = open_video(cut)
    got = []
    with pytest.raises(VideoError, match=r"decoding stopped after \d+ frames") as error:
        for frame in frames:
            got.append(frame)
    assert 0 < len(got) < 14
    assert f"after {len(got)} frames" in str(error.value)


def test_odd_sizes_are_padded_to_even_for_h264(images, tmp_path: Path) -> None:
    odd = [f[:63, :95] for f in images[:3]]
    video = write_overlay(tmp_path / "odd.mp4", odd, fps=24)
    info, frames = open_video(video)
    assert (info.width, info.height) == (96, 64)
    decoded = list(frames)
    assert len(decoded) == 3
    assert np.abs(decoded[0][:63, :95].astype(float) - odd[0]).mean() < 6


def test_writer_keeps_a_playable_video_when_the_run_stops(images, tmp_path: Path) -> None:
    path = tmp_path / "overlay.mp4"
    with pytest.raises(RuntimeError, match="stop"), OverlayWriter(path, 96, 64, 24) as writer:
        for frame in images[:4]:
            writer.write(lambda frame=frame: frame)  # a callable is evaluated in the encoder thread
        raise RuntimeError("stop")
    assert sum(1 for _ in open_video(path)[1]) == 4
    assert hidden(tmp_path) == []


def test_writer_with_no_frames_writes_nothing(tmp_path: Path) -> None:
    with OverlayWriter(tmp_path / "overlay.mp4", 96, 64, 24):
        pass
    assert list(tmp_path.iterdir()) == []


def test_writer_failure_is_an_output_error_and_leaves_nothing(images, tmp_path: Path) -> None:
    path = tmp_path / "overlay.mp4"
    with pytest.raises(OutputError, match=r"writing .*overlay\.mp4 failed"), OverlayWriter(path, 96, 64, 24) as writer:
        writer.write(images[0])
        writer.write(np.zeros((128, 128, 3), np.uint8))  # larger than 96x64: the encoder thread fails
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # later writes report the failure (or leaving the block does)
            writer.write(images[0])
            time.sleep(0.01)
    assert not path.exists() and hidden(tmp_path) == []


def _source(items: list[object], closed: list[bool]) -> Iterator[np.ndarray]:
    try:
        for item in items:
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        closed.append(True)


def test_prefetch_keeps_order_and_propagates_errors(images) -> None:
    closed: list[bool] = []
    frames = prefetch(_source([images[0], images[1], VideoError("broken at 2")], closed), depth=1)
    assert next(frames) is images[0]
    assert next(frames) is images[1]
    with pytest.raises(VideoError, match="broken at 2"):
        next(frames)
    assert closed == [True]


def test_prefetch_propagates_interrupts(images) -> None:
    frames = prefetch(_source([images[0], KeyboardInterrupt()], []))
    assert next(frames) is images[0]
    with pytest.raises(KeyboardInterrupt):
        next(frames)


def test_prefetch_stops_its_thread_when_the_reader_stops(images) -> None:
    closed: list[bool] = []
    frames = prefetch(_source(images * 20, closed), depth=2)
    next(frames)
    frames.close()  # the consumer gives up early: the producer must end and close its source
    assert closed == [True]


def test_prefetch_of_a_real_video_stops_the_decoder(images, tmp_path: Path) -> None:
    video = write_video(tmp_path / "v.mp4", images)
    _, decoded = open_video(video)
    frames = prefetch(decoded, depth=1)
    assert next(frames).shape == (64, 96, 3)
    frames.close()
    assert decoded.gi_frame is None  # the decoding generator finished: its ffmpeg process is gone


def test_a_rotated_video_is_read_upright_and_quietly(tmp_path: Path) -> None:
    """A phone video with a rotation in its metadata: frames and masks in the displayed orientation, and no
    line of the reader's own on the terminal."""
    images, labels = make_sample.make_clip(6, 96, 160, 1, seed=2)
    coded = write_video(tmp_path / "coded.mp4", images)
    video = tmp_path / "phone.mp4"
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    command = [ffmpeg, "-v", "error", "-y", "-display_rotation", "90", "-i", str(coded), "-c", "copy", str(video)]
    subprocess.run(command, check=True)
    info, frames = open_video(video)
    first = next(frames)
    assert (info.width, info.height) == (96, 160) and first.shape == (160, 96, 3)
    k = min((1, -1), key=lambda k: np.abs(np.rot90(images[0], k).astype(int) - first).mean())
    assert np.abs(np.rot90(images[0], k).astype(int) - first).mean() < 8  # the picture, turned upright
    upright = [np.ascontiguousarray(np.rot90(label, k)) for label in labels]
    mask = write_palette_mask(tmp_path / "mask.png", upright[0])
    # a process of its own: pytest's log capture would hide a reader's line that a terminal shows
    command = [sys.executable, "-m", "vosrr.cli", "segment", str(video), "-m", str(mask), "-o", str(tmp_path / "out")]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("6 frames, 1 object(s)"), lines  # the summary alone
    last = np.asarray(Image.open(tmp_path / "out" / "masks" / "00005.png"))
    assert last.shape == (160, 96) and iou(last, upright[5], 1) > 0.6


def _vfr_clip(tmp_path: Path, tone: bool = False) -> tuple[Path, list[np.ndarray], list[np.ndarray]]:
    """12 frames, 25 fps for 6 then 2 fps (a time base of 1/1000 s), optionally with 3.5 s of a tone."""
    images, labels = make_sample.make_clip(12, 96, 160, 1, seed=3)
    steady = write_video(tmp_path / "steady.mp4", images)
    video = tmp_path / "vfr.mp4"
    timing = "setpts='if(lt(N,6),N*0.04,0.24+(N-6)*0.5)/TB'"  # 25 fps, then 2 fps
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-i", str(steady)]
    command += ["-f", "lavfi", "-i", "sine=frequency=440:duration=3.5", "-c:a", "aac"] if tone else []
    command += ["-vf", timing, "-fps_mode", "passthrough", "-enc_time_base", "1/1000", "-video_track_timescale", "1000"]
    subprocess.run([*command, "-c:v", "libx264", str(video)], check=True)
    return video, images, labels


def frame_times(video: Path) -> list[Fraction]:
    """The presentation times of a video file's frames in seconds, as its container stores them (ffmpeg's own
    packet listing: no decoding, none of vosrr's code)."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(video), "-map", "0:v:0", "-c", "copy"]
    listing = subprocess.run([*command, "-f", "framecrc", "-"], capture_output=True, text=True, check=True).stdout
    base = Fraction(re.search(r"^#tb 0: (\d+/\d+)$", listing, re.MULTILINE)[1])
    rows = [line.split(",") for line in listing.splitlines() if not line.startswith("#")]
    return sorted(int(row[2]) * base for row in rows)


def test_a_variable_frame_rate_video_gives_each_coded_frame_once(tmp_path: Path) -> None:
    """Phone videos have variable frame rates: 12 coded frames are 12 frames (not copies up to a fixed rate)."""
    video, images, _ = _vfr_clip(tmp_path)
    info, frames = open_video(video)
    decoded = list(frames)
    assert len(decoded) == 12
    assert all(np.abs(a.astype(int) - b).mean() < 8 for a, b in zip(decoded, images, strict=True))  # in order
    assert info.times is not None and [Fraction(info.times.at(i), TICKS) for i in range(12)] == frame_times(video)


def test_the_overlay_of_a_variable_frame_rate_video_keeps_its_frame_times(tmp_path: Path) -> None:
    """The overlay (and alpha.mov) shows each frame when the source does, so the sound stays in step: frame
    times equal to the source's within one of its ticks (1 ms), every frame once, the sound kept."""
    video, _, labels = _vfr_clip(tmp_path, tone=True)
    source = frame_times(video)
    assert len(source) == 12 and source[7] - source[6] == Fraction(1, 2)  # the clip is variable-rate
    mask = write_palette_mask(tmp_path / "mask.png", labels[0])
    out = tmp_path / "out"
    command = [sys.executable, "-m", "vosrr.cli", "segment", str(video), "-m", str(mask), "-o", str(out)]
    result = subprocess.run([*command, "--export", "alpha"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    for made in (out / "overlay.mp4", out / "alpha.mov"):
        times = frame_times(made)
        assert len(times) == 12, (made.name, times)
        assert max(abs(a - b) for a, b in zip(times, source, strict=True)) <= Fraction(1, 1000), (made.name, times)
        _, frames = open_video(made)
        assert sum(1 for _ in frames) == 12
    listing = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(out / "overlay.mp4")],
        capture_output=True,
        text=True,
        check=False,
    ).stderr
    assert re.search(r"Stream #0:\d.*: Audio: aac", listing), listing


def test_a_constant_rate_overlay_keeps_its_rate_and_fps_sets_one(images, tmp_path: Path) -> None:
    """A constant-rate source gives a constant-rate overlay at its rate; --fps replaces the rate (frames 1/fps
    apart, whatever the source's times)."""
    source = write_overlay(tmp_path / "steady.mp4", images, fps=12.5)
    info, frames = open_video(source)
    again = tmp_path / "again.mp4"
    with OverlayWriter(again, info.width, info.height, info.fps, times=info.times) as writer:
        for frame in frames:
            writer.write(frame)
    assert frame_times(again) == frame_times(source) == [Fraction(2 * i, 25) for i in range(len(images))]
    info, frames = open_video(source, fps=5)
    assert info.times is None
    with OverlayWriter(again, info.width, info.height, info.fps, times=info.times) as writer:
        for frame in frames:
            writer.write(frame)
    assert frame_times(again) == [Fraction(i, 5) for i in range(len(images))]


def test_a_frame_folder_is_read_ahead_in_order(tmp_path: Path) -> None:
    """Frames decode on several threads, and come out in file order; stopping early leaves nothing running."""
    import threading

    import cv2

    from vosrr.video import READ_WORKERS, open_video

    frames = [np.full((24, 32, 3), 10 * i, np.uint8) for i in range(4 * READ_WORKERS + 3)]
    for i, frame in enumerate(frames):
        cv2.imwrite(str(tmp_path / f"{i:05d}.png"), frame)
    info, decoded = open_video(tmp_path)
    assert info.frames == len(frames)
    assert [int(f[0, 0, 0]) for f in decoded] == [10 * i for i in range(len(frames))]
    _, decoded = open_video(tmp_path)
    assert int(next(decoded)[0, 0, 0]) == 0 and int(next(decoded)[0, 0, 0]) == 10
    decoded.close()  # type: ignore[attr-defined]
    assert not [t for t in threading.enumerate() if t.name.startswith("vosrr-read")]
