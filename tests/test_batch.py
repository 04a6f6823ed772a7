"""Many videos in one `vosrr segment`: one model, one summary table, failures per video, sharding over ranks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, make_sample, write_frames, write_palette_mask, write_video
from PIL import Image
from typer.testing import CliRunner

import vosrr.cli
import vosrr.cli_batch
from vosrr.annotations import Mark
from vosrr.batch import BatchOptions, Result, Shard, format_table, run_jobs
from vosrr.checkpoint import load_model
from vosrr.cli import app
from vosrr.jobs import BatchError, Job, ManifestError, is_video_folder, jobs_from_manifest, jobs_from_paths
from vosrr.masks import MaskError
from vosrr.segmenter import SegmentConfig, Segmenter

runner = CliRunner()
FRAMES, HEIGHT, WIDTH = 6, 64, 96
RANK_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def _one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts as a plain process (no torchrun variables from the environment that runs the tests)."""
    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def make_videos(folder: Path, names: list[str], mask_folder: Path | None = None) -> dict[str, np.ndarray]:
    """Tiny clips ``folder/<name>.mp4`` (6 frames, 64x96, 2 objects) with ``<name>_mask.png`` beside them (or
    ``mask_folder/<name>.png``); returns each clip's first-frame labels ``[H,W]`` uint8."""
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for seed, name in enumerate(names):
        images, labels = make_sample.make_clip(FRAMES, HEIGHT, WIDTH, 2, seed=seed)
        write_video(folder / f"{name}.mp4", images)
        masks = mask_folder or folder
        masks.mkdir(parents=True, exist_ok=True)
        write_palette_mask(masks / (f"{name}.png" if mask_folder else f"{name}_mask.png"), labels[0])
        truth[name] = labels[0]
    return truth


def mask_files(output: Path) -> list[str]:
    return sorted(p.name for p in (output / "masks").glob("*.png"))


def table_rows(stdout: str) -> dict[str, list[str]]:
    """The summary table's rows by the video's file name: [frames, objects, s/frame, status, output]."""
    rows = {}
    for line in stdout.splitlines()[1:]:
        cells = line.split()
        if cells[0] != "total":
            rows[Path(cells[0]).name] = cells[1:]
    return rows


@pytest.fixture
def count_loads(monkeypatch: pytest.MonkeyPatch) -> list[Path | None]:
    """Every checkpoint `vosrr segment` loads, in order."""
    loaded: list[Path | None] = []

    def counting(path: Path | None, device: object = "cpu") -> object:
        loaded.append(path)
        return load_model(path, device)

    monkeypatch.setattr(vosrr.cli, "load_model", counting)  # one video
    monkeypatch.setattr(vosrr.cli_batch, "load_model", counting)  # several
    return loaded


def test_several_videos_load_the_model_once_and_get_one_table(
    tmp_path: Path, tiny_weights: Path, count_loads: list[Path | None]
) -> None:
    truth = make_videos(tmp_path / "in", ["a", "b", "c"])
    videos = [str(tmp_path / "in" / f"{n}.mp4") for n in truth]
    args = ["segment", *videos, "--weights", str(tiny_weights), "--device", "cpu", "--no-overlay"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert count_loads == [tiny_weights]  # one model for the three videos
    for name, labels in truth.items():
        output = tmp_path / "in" / f"{name}_vosrr"  # the single-video default, for each
        assert mask_files(output) == [f"{i:05d}.png" for i in range(FRAMES)]
        np.testing.assert_array_equal(np.asarray(Image.open(output / "masks" / "00000.png")), labels)
        assert f"{name}.mp4: {FRAMES} frames, 2 object(s), cpu" in result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["video", "frames", "objects", "s/frame", "status", "output"]
    rows = table_rows(result.stdout)
    assert list(rows) == ["a.mp4", "b.mp4", "c.mp4"]  # the order given
    for name, cells in rows.items():
        assert cells[0:2] == [str(FRAMES), "2"] and cells[3] == "ok", cells
        assert float(cells[2]) > 0 and cells[4] == str(tmp_path / "in" / f"{Path(name).stem}_vosrr")
    total = lines[-1].split()
    assert total[:5] == ["total", "(3", "videos)", str(3 * FRAMES), "6"] and total[-2:] == ["3", "ok"], total


def test_a_broken_video_is_one_error_line_and_the_others_are_written(tmp_path: Path, tiny_weights: Path) -> None:
    folder = tmp_path / "videos"
    make_videos(folder, ["a", "c"])
    (folder / "b.mp4").write_bytes(b"this is no video")
    (folder / "b_mask.png").write_bytes((folder / "a_mask.png").read_bytes())
    result = runner.invoke(app, ["segment", str(folder), "--weights", str(tiny_weights), "--device", "cpu"])
    assert result.exit_code == vosrr.cli.ExitCode.PARTIAL == 8, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(folder / "b.mp4") in errors[0], result.stderr
    assert "cannot read" in errors[0]
    for name in ("a", "c"):
        assert mask_files(folder / f"{name}_vosrr") == [f"{i:05d}.png" for i in range(FRAMES)]
        assert (folder / f"{name}_vosrr" / "overlay.mp4").is_file()
    assert not (folder / "b_vosrr").exists()  # nothing written for the broken one
    rows = table_rows(result.stdout)
    assert [rows[n][3] for n in ("a.mp4", "b.mp4", "c.mp4")] == ["ok", "failed", "ok"]
    assert result.stdout.splitlines()[-1].split()[-4:] == ["2", "ok,", "1", "failed"]


def test_a_missing_mask_fails_that_video_alone(tmp_path: Path, tiny_weights: Path) -> None:
    make_videos(tmp_path, ["a", "b"])
    (tmp_path / "b_mask.png").unlink()
    videos = [str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4")]
    result = runner.invoke(app, ["segment", *videos, "--weights", str(tiny_weights), "--device", "cpu"])
    assert result.exit_code == 8, result.output
    assert f"error: no annotation for {tmp_path / 'b.mp4'}: {tmp_path / 'b_mask.png'} is missing" in result.stderr
    assert len(mask_files(tmp_path / "a_vosrr")) == FRAMES


def test_manifest_paths_are_relative_to_its_folder(
    tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    truth = make_videos(project / "clips", ["a", "b"], mask_folder=project / "labels")
    images, labels = make_sample.make_clip(FRAMES, HEIGHT, WIDTH, 1, seed=7)
    frames = write_frames(project / "clips" / "frames_c", images)
    first = labels[0]
    (project / "labels" / "c").mkdir()
    write_palette_mask(project / "labels" / "c" / "00000.png", first)  # a folder of masks named by frame
    manifest = project / "jobs.csv"
    manifest.write_text(
        "video,mask,output\n"
        "clips/a.mp4,labels/a.png,results/first\n"
        "\n"  # blank lines are skipped
        "clips/b.mp4,labels/b.png,\n"  # no output: <stem>_vosrr beside the video
        f"{frames.relative_to(project)},labels/c,results/c\n"
    )
    monkeypatch.chdir(tmp_path)  # not the manifest's folder
    result = runner.invoke(
        app, ["segment", "--manifest", str(manifest), "--weights", str(tiny_weights), "--device", "cpu", "--no-overlay"]
    )
    assert result.exit_code == 0, result.output
    outputs = {"a": project / "results" / "first", "b": project / "clips" / "b_vosrr", "c": project / "results" / "c"}
    for name, output in outputs.items():
        assert mask_files(output) == [f"{i:05d}.png" for i in range(FRAMES)], name
    for name, labels in truth.items():
        np.testing.assert_array_equal(np.asarray(Image.open(outputs[name] / "masks" / "00000.png")), labels)
    assert list(table_rows(result.stdout)) == ["a.mp4", "b.mp4", "frames_c"]


def test_masks_dir_and_out_with_several_videos(tmp_path: Path) -> None:
    make_videos(tmp_path / "v", ["a", "b"], mask_folder=tmp_path / "m")
    jobs = jobs_from_paths([tmp_path / "v"], masks=tmp_path / "m", out=tmp_path / "o")
    assert jobs == [
        Job(tmp_path / "v" / "a.mp4", tmp_path / "m" / "a.png", tmp_path / "o" / "a"),
        Job(tmp_path / "v" / "b.mp4", tmp_path / "m" / "b.png", tmp_path / "o" / "b"),
    ]
    (tmp_path / "m" / "b.png").unlink()
    (tmp_path / "m" / "b").mkdir()  # DAVIS's Annotations/480p/<sequence>/ layout
    assert jobs_from_paths([tmp_path / "v" / "b.mp4"], masks=tmp_path / "m")[0].annotation == tmp_path / "m" / "b"
    with pytest.raises(BatchError, match="would both write to"):
        jobs_from_paths([tmp_path / "v" / "a.mp4", tmp_path / "v" / "a.mp4"])


def test_a_folder_of_frames_is_one_video_and_a_folder_of_videos_is_many(tmp_path: Path) -> None:
    make_videos(tmp_path / "videos", ["a"])
    frames = write_frames(tmp_path / "frames", make_sample.make_clip(2, 32, 32, 1)[0])
    assert is_video_folder(tmp_path / "videos") and not is_video_folder(frames)
    assert not is_video_folder(tmp_path / "videos" / "a.mp4")


def test_sharding_gives_each_video_to_exactly_one_rank(
    tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = ["a", "b", "c"]
    make_videos(tmp_path, names)
    videos = [str(tmp_path / f"{n}.mp4") for n in names]
    done: dict[int, set[str]] = {}
    for rank in (0, 1):  # two ranks run one after the other, as two machines would (no rendezvous)
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        before = {n for n in names if (tmp_path / f"{n}_vosrr").exists()}
        args = ["segment", *videos, "--weights", str(tiny_weights), "--device", "cpu", "--no-overlay"]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        done[rank] = {n for n in names if (tmp_path / f"{n}_vosrr").exists()} - before
        assert {Path(v).stem for v in table_rows(result.stdout)} == done[rank]  # each rank's table: its own share
        assert f"[rank {rank}] " in result.stderr
    assert done == {0: {"a", "c"}, 1: {"b"}}  # video i to rank i % 2: disjoint, and all of them


def test_shard_take_is_a_partition() -> None:
    jobs = [Job(Path(f"{i}.mp4"), Path(f"{i}.png"), Path(f"{i}")) for i in range(11)]
    shares = [Shard(rank, 3).take(jobs) for rank in range(3)]
    assert sorted(i for share in shares for i, _ in share) == list(range(11))
    assert [i for i, _ in shares[1]] == [1, 4, 7, 10]
    env = {"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0", "MASTER_ADDR": "h", "MASTER_PORT": "1"}
    assert Shard.from_env(env) == Shard(2, 4, 0, rendezvous=True)
    assert Shard.from_env({}) == Shard(0, 1, 0, rendezvous=False)
    with pytest.raises(BatchError, match="RANK=4 WORLD_SIZE=4"):
        Shard.from_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(BatchError, match="WORLD_SIZE='two'"):
        Shard.from_env({"WORLD_SIZE": "two"})


def test_shard_device_is_the_local_rank_gpu_or_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert Shard(1, 2, 1).device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        Shard().device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a machine with two GPUs, as torchrun sees it
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [Shard(r, 4, r % 2).device("auto") for r in range(4)] == [torch.device("cuda", i) for i in (0, 1, 0, 1)]
    assert Shard(1, 2, 1).device("cuda") == torch.device("cuda", 1)
    assert Shard(1, 2, 1).device("cpu") == torch.device("cpu")  # --device cpu keeps every rank on the CPU
    with pytest.raises(ValueError, match=r"LOCAL_RANK 2 has no GPU of its own.*--nproc_per_node 2"):
        Shard(2, 3, 2).device("auto")


def test_torchrun_gathers_every_rank_into_one_table(tmp_path: Path, tiny_weights: Path) -> None:
    """The real scale-out path: torchrun, 2 processes on the CPU, a gloo group for the summary."""
    make_videos(tmp_path, ["a", "b", "c"])
    (tmp_path / "d.mp4").write_bytes(b"broken")  # rank 1's second video
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "vosrr.entry", "segment", str(tmp_path), "--weights", str(tiny_weights), "--device", "cpu"]
    env = {k: v for k, v in os.environ.items() if k not in RANK_VARIABLES}
    done = subprocess.run(
        [*command, "--no-overlay"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 1, done.stderr  # torchrun's own code when a rank failed: rank 0 exits 8
    assert "exitcode  : 8" in done.stderr and "rank      : 0" in done.stderr
    rows = table_rows(done.stdout)  # printed once, by rank 0, with both ranks' videos
    assert done.stdout.count("total (4 videos)") == 1, done.stdout
    assert {name: cells[3] for name, cells in rows.items()} == {
        "a.mp4": "ok",
        "b.mp4": "ok",
        "c.mp4": "ok",
        "d.mp4": "failed",
    }
    assert "[rank 1] " in done.stderr and "[rank 0] " in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "[rank 1]" in errors[0] and str(tmp_path / "d.mp4") in errors[0]
    for name in "abc":
        assert len(mask_files(tmp_path / f"{name}_vosrr")) == FRAMES


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["a.mp4", "b.mp4", "--mask", "m.png"], "--mask is one video's annotation and 2 videos were given"),
        (["a.mp4", "b.mp4", "--scribble", "s.png"], "--scribble is one video's annotation"),
        (["a.mp4", "--manifest", "jobs.csv"], "--manifest lists the videos with their masks and outputs; drop VIDEO"),
        (["--manifest", "jobs.csv", "--out", "o"], "drop --out or drop --manifest"),
        ([], "Missing argument 'video': pass VIDEO (a video file or a folder of frames), several, or --manifest"),
        (["x/a.mp4", "y/a.mp4", "--out", "o"], "x/a.mp4 and y/a.mp4 would both write to o/a"),
    ],
)
def test_ambiguous_combinations_are_one_usage_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "jobs.csv").write_text("video\na.mp4\n")
    result = runner.invoke(app, ["segment", *args])
    assert result.exit_code == 2, result.output
    assert result.stderr.count("error:") == 1 and message in result.stderr, result.stderr
    assert result.stdout == ""


def test_a_bad_manifest_names_its_line(tmp_path: Path) -> None:
    manifest = tmp_path / "jobs.csv"
    manifest.write_text("video,masks\na.mp4,m.png\n")
    result = runner.invoke(app, ["segment", "--manifest", str(manifest)])
    assert result.exit_code == 3 and "unknown column 'masks'" in result.stderr, result.output
    manifest.write_text("video,mask\na.mp4,a.png\n,b.png\n")
    with pytest.raises(ManifestError, match="line 3: no video"):
        jobs_from_manifest(manifest)
    manifest.write_text("video,mask,output\n")
    with pytest.raises(ManifestError, match="lists no videos"):
        jobs_from_manifest(manifest)
    with pytest.raises(ManifestError, match="cannot read manifest"):
        jobs_from_manifest(tmp_path / "absent.csv")


def test_unusable_weights_stop_the_batch_with_their_own_code(tmp_path: Path) -> None:
    make_videos(tmp_path, ["a", "b"])
    videos = [str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4")]
    result = runner.invoke(app, ["segment", *videos, "--weights", str(tmp_path / "none.pt"), "--device", "cpu"])
    assert result.exit_code == 4, result.output
    assert result.stderr.count("error:") == 1


def test_a_single_video_is_segmented_as_before(clip, tmp_path: Path, tiny_weights: Path) -> None:
    video, mask, _ = clip(frames=4, height=HEIGHT, width=WIDTH)
    out = tmp_path / "one"
    args = ["segment", str(video), "--mask", str(mask), "--out", str(out), "--weights", str(tiny_weights)]
    result = runner.invoke(app, [*args, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""  # no table: the single job's one line, as always
    assert "4 frames, 2 object(s), cpu" in result.stderr and len(mask_files(out)) == 4


def test_one_video_with_a_masks_dir_of_the_several_videos_layout(tmp_path: Path, tiny_weights: Path) -> None:
    """``videos/*.mp4 --masks DIR`` that matches one video finds ``DIR/<stem>.png`` as it would for several."""
    truth = make_videos(tmp_path / "v", ["a"], mask_folder=tmp_path / "m")
    args = ["segment", str(tmp_path / "v" / "a.mp4"), "--masks", str(tmp_path / "m"), "--weights", str(tiny_weights)]
    result = runner.invoke(app, [*args, "--device", "cpu", "--no-overlay"])
    assert result.exit_code == 0, result.output
    first = np.asarray(Image.open(tmp_path / "v" / "a_vosrr" / "masks" / "00000.png"))
    np.testing.assert_array_equal(first, truth["a"])
    (tmp_path / "m" / "a.png").rename(tmp_path / "m" / "b.png")  # neither layout: the one-video error, as before
    result = runner.invoke(app, [*args, "--device", "cpu", "--force"])
    assert result.exit_code == 3 and "holds no masks named by frame" in result.stderr, result.output


def test_library_run_jobs_with_a_factory_called_once(tmp_path: Path, tiny_weights: Path) -> None:
    make_videos(tmp_path, ["a", "b"])
    built: list[Segmenter] = []

    def factory() -> Segmenter:
        built.append(Segmenter(load_model(tiny_weights)[0], SegmentConfig()))
        return built[-1]

    jobs = jobs_from_paths([tmp_path / "a.mp4", tmp_path / "b.mp4"], out=tmp_path / "out")
    jobs.insert(1, Job(tmp_path / "b.mp4", (Mark(0, tmp_path / "b_mask.png"),), tmp_path / "out" / "marks"))
    seen: list[Result] = []
    results = run_jobs(factory, jobs, BatchOptions(overlay=False), on_result=seen.append)
    assert len(built) == 1 and seen == results
    assert [(r.index, r.status, r.frames, r.objects) for r in results] == [(i, "ok", FRAMES, 2) for i in range(3)]
    table = format_table(results)
    assert table.splitlines()[-1].split()[:5] == ["total", "(3", "videos)", str(3 * FRAMES), "6"]


def test_nothing_is_loaded_when_every_video_fails_its_checks(tmp_path: Path) -> None:
    def factory() -> Segmenter:
        raise AssertionError("the model was loaded for videos that cannot run")

    jobs = [Job(tmp_path / "none.mp4", tmp_path / "none.png", tmp_path / "o")]
    (result,) = run_jobs(factory, jobs)
    assert result.status == "failed" and result.error == f"video not found: {tmp_path / 'none.mp4'}; check the path"
    with pytest.raises(MaskError, match="no annotation"):
        Job(tmp_path / "a.mp4", tmp_path / "absent.png", tmp_path / "o").marks()


def test_an_interruption_ends_the_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import vosrr.batch
    from vosrr.pipeline import Summary

    calls: list[Path] = []

    def fake(segmenter: object, video: Path, *args: object, **kwargs: object) -> Summary:
        calls.append(video)
        return Summary(frames=3, objects=1, seconds=0.3, interrupted=len(calls) == 2)

    monkeypatch.setattr(vosrr.batch, "segment_video", fake)
    jobs = [Job(tmp_path / f"{n}.mp4", (Mark(0, tmp_path / "m.png"),), tmp_path / n) for n in "abcd"]
    statuses = [(r.status, r.error) for r in run_jobs(lambda: None, jobs)]  # type: ignore[arg-type, return-value]
    assert statuses == [
        ("ok", ""),
        ("interrupted", "interrupted after 3 frames; those are written"),
        ("not run", ""),
        ("not run", ""),
    ]
    assert len(calls) == 2
