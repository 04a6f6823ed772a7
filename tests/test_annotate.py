"""``vosrr annotate`` without a browser: the frame source, the session's files, the server's guard and routes,
interrupted runs (a stopped job, Ctrl-C on the command), resuming from the output folder."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from annotate_tools import background_paths, object_path, served
from conftest import ROOT, make_sample, write_video
from PIL import Image
from starlette.testclient import TestClient

from vosrr.annotate.frames import FrameSource
from vosrr.annotate.server import MAX_BODY, make_app
from vosrr.annotate.session import Session
from vosrr.annotate.strokes import MAX_POINTS, Stroke, StrokeError, parse_strokes
from vosrr.checkpoint import load_model
from vosrr.segmenter import SegmentConfig, Segmenter
from vosrr.video import open_video

TOKEN = "test-token-0123456789"
RADIUS = 3


@pytest.fixture
def tiny_segmenter(tiny_weights: Path) -> Segmenter:
    model, _ = load_model(tiny_weights)
    return Segmenter(model, SegmentConfig(between="forward"))  # as vosrr annotate builds it


@pytest.fixture
def small_clip(tmp_path: Path) -> tuple[Path, list[np.ndarray]]:
    images, truth = make_sample.make_clip(12, 96, 160, 2, 1)
    return write_video(tmp_path / "clip.mp4", images), truth


def _strokes(labels: np.ndarray) -> list[Stroke]:
    paths = [(0, p) for p in background_paths(labels, RADIUS)]
    paths += [(k, object_path(labels, k, RADIUS)) for k in range(1, int(labels.max()) + 1)]
    return [Stroke(label, RADIUS, np.asarray(path, float)) for label, path in paths]


def _json(strokes: list[Stroke]) -> dict:
    return {"strokes": [{"label": s.label, "radius": s.radius, "points": s.points.tolist()} for s in strokes]}


def _masks(folder: Path) -> dict[int, np.ndarray]:
    out = {}
    for path in sorted((folder / "masks").glob("*.png")):
        with Image.open(path) as image:
            out[int(path.stem)] = np.asarray(image).copy()
    return out


# ---------------------------------------------------------------------- frames
def test_frame_source_matches_the_decoder_in_any_order(small_clip, tmp_path: Path) -> None:
    video, _ = small_clip
    decoded = list(open_video(video)[1])
    source = FrameSource(video, cache_bytes=3 * decoded[0].nbytes)
    try:
        assert source.wait_indexed(30) and len(source) == len(decoded)
        assert source.capacity == 3
        for index in (7, 2, 11, 0, 5, 6, 1):  # seeks backwards and forwards, reads ahead
            assert np.array_equal(source[index], decoded[index]), index
        assert [i for i, _ in source.backward(5)] == [5, 4, 3, 2, 1, 0]
        assert all(np.array_equal(f, decoded[i]) for i, f in source.backward(11, 3))
        assert all(np.array_equal(f, decoded[i]) for i, f in source.forward(9))
        with pytest.raises(IndexError):
            source[len(decoded)]
    finally:
        source.close()
    folder = tmp_path / "frames"
    folder.mkdir()
    for index, frame in enumerate(decoded):
        cv2.imwrite(str(folder / f"{index:05d}.png"), frame[:, :, ::-1])
    frames = FrameSource(folder)
    assert frames.exact and len(frames) == len(decoded)
    assert np.array_equal(frames[4], decoded[4]) and [i for i, _ in frames.backward(2)] == [2, 1, 0]


def test_a_seek_that_lands_elsewhere_falls_back_to_reading_in_order(small_clip) -> None:
    video, _ = small_clip
    decoded = list(open_video(video)[1])
    source = FrameSource(video)
    try:
        source.wait_indexed(30)
        source._digests[6] = b"\0" * 8  # pretend the seek to frame 6 lands on another frame
        assert np.array_equal(source[6], decoded[6])
        assert not source._seek_ok
        assert np.array_equal(source[3], decoded[3]) and np.array_equal(source[9], decoded[9])
    finally:
        source.close()


# ---------------------------------------------------------------------- strokes
def test_strokes_are_checked() -> None:
    size = (100, 200)
    good = {"strokes": [{"label": 1, "radius": 4, "points": [[10, 10], [50, 20]]}]}
    (stroke,) = parse_strokes(good, size)
    assert stroke.label == 1 and stroke.points.shape == (2, 2)
    bad = [
        [],
        {"strokes": []},
        {"strokes": [{"label": 40, "radius": 4, "points": [[1, 1]]}]},
        {"strokes": [{"label": True, "radius": 4, "points": [[1, 1]]}]},
        {"strokes": [{"label": 1, "radius": 0, "points": [[1, 1]]}]},
        {"strokes": [{"label": 1, "radius": 4, "points": []}]},
        {"strokes": [{"label": 1, "radius": 4, "points": [[1, "x"]]}]},
        {"strokes": [{"label": 1, "radius": 4, "points": [[1, 2, 3]]}]},
        {"strokes": [{"label": 1, "radius": 4, "points": [[float("nan"), 2]]}]},
        {"strokes": [{"label": 1, "radius": 4, "points": [[1, 1]] * (MAX_POINTS + 1)}]},
    ]
    for payload in bad:
        with pytest.raises(StrokeError):
            parse_strokes(payload, size)
    far = parse_strokes({"strokes": [{"label": 0, "radius": 2, "points": [[-1e9, 1e9]]}]}, size)[0]
    assert far.points.max() <= 200 + 256 and far.points.min() >= -256


# ---------------------------------------------------------------------- session
def test_session_writes_strokes_masks_and_the_command(small_clip, tiny_segmenter, tmp_path: Path) -> None:
    video, truth = small_clip
    out = tmp_path / "out"
    session = Session(tiny_segmenter, FrameSource(video), out, segment_options=["--max-side", "640"])
    try:
        result = session.paint(0, [s for s in _strokes(truth[0]) if s.label])  # objects only: no background yet
        assert "background" in result["message"] and not result["mask"]
        assert (out / "strokes" / "00000.png").is_file() and not (out / "masks" / "00000.png").exists()
        session.paint(0, [s for s in _strokes(truth[0]) if not s.label])
        assert _masks(out).keys() == {0}
        with Image.open(out / "strokes" / "00000.png") as image:
            layer = np.asarray(image)
        assert set(np.unique(layer)) == {0, 1, 2, 255}
        command = (out / "command.txt").read_text().split()
        assert command[:3] == ["vosrr", "segment", str(video)]
        assert "--scribble" in command and f"0:{out / 'strokes' / '00000.png'}" in command
        assert command[-2:] == ["--max-side", "640"]

        session.propagate()
        assert session.wait(120)["state"] == "done"
        assert _masks(out).keys() == set(range(12))
        # a correction at frame 6 makes 7.. stale; frames 0..5 stay
        session.paint(6, _strokes(truth[6]))
        assert _masks(out).keys() == set(range(7))
        session.undo(6)  # its last stroke; the frame keeps the others
        assert session.annotations().keys() == {0, 6}
        session.clear(6)
        assert session.annotations().keys() == {0} and not (out / "strokes" / "00006.png").exists()
        assert _masks(out).keys() == set(range(6))
        session.paint(3, _strokes(truth[3]))  # a correction: frames 0..2 stay
        assert _masks(out).keys() == set(range(4))
        # when the earliest annotation goes, everything is stale: frames before 3 are now propagated from it
        session.clear(0)
        assert _masks(out).keys() == {3}
        session.propagate()
        assert session.wait(120)["state"] == "done"
        assert _masks(out).keys() == set(range(12))
    finally:
        session.close()


def test_stopped_and_resumed_propagation_equals_one_run(small_clip, tiny_segmenter, tmp_path: Path) -> None:
    video, truth = small_clip
    strokes = _strokes(truth[4])  # a middle frame: forwards to the end, then backwards to 0
    whole = Session(tiny_segmenter, FrameSource(video), tmp_path / "whole")
    whole.paint(4, strokes)
    whole.propagate()
    assert whole.wait(120)["state"] == "done"
    whole.close()
    expected = _masks(tmp_path / "whole")
    assert expected.keys() == set(range(12))

    out = tmp_path / "parts"
    session = Session(tiny_segmenter, FrameSource(video), out)
    try:
        session.paint(4, strokes)
        seen: list[int] = []

        def stop_after_three(event: dict) -> None:
            if event["type"] == "progress":
                seen.append(int(event["frame"]))
                if len(seen) == 3:
                    session.jobs.cancel.set()  # what the page's "stop" does, from inside the job's thread

        session.notify = stop_after_three
        session.propagate()
        assert session.wait(120)["state"] == "stopped"
        done = _masks(out)
        assert done.keys() == {4, 5, 6, 7}  # complete PNGs for the frames done, nothing for the rest
        assert not list((out / "masks").glob(".*"))  # no temporary file left
        session.notify = lambda event: None
        session.propagate()  # goes on from frame 8 with the state it stopped with
        assert session.wait(120)["state"] == "done"
    finally:
        session.close()
    got = _masks(out)
    assert got.keys() == expected.keys()
    assert all(np.array_equal(got[i], expected[i]) for i in expected)

    # reopening the folder resumes: strokes read back, masks kept, the same result again
    again = Session(tiny_segmenter, FrameSource(video), out)
    try:
        assert again.annotations().keys() == {4} and again.status()["done"] == 12
        again.paint(10, _strokes(truth[10]))
        assert _masks(out).keys() == set(range(11))
    finally:
        again.close()


def test_export_is_the_command_lines_job(small_clip, tiny_segmenter, tiny_weights: Path, tmp_path: Path) -> None:
    """The page's masks, the export's and those of the command in command.txt are the same masks."""
    video, truth = small_clip
    out = tmp_path / "out"
    options = ["--weights", str(tiny_weights), "--device", "cpu"]
    session = Session(tiny_segmenter, FrameSource(video), out, segment_options=options)
    try:
        session.paint(4, _strokes(truth[4]))  # a middle frame: backwards to 0, forwards to the end
        session.paint(8, _strokes(truth[8]))  # a correction on the way
        session.propagate()
        assert session.wait(120)["state"] == "done"
        page = _masks(out)
        assert page.keys() == set(range(12))
        session.export()
        job = session.wait(120)
        assert job["state"] == "done", job
        assert (out / "overlay.mp4").stat().st_size > 0
        assert session.status()["done"] == 12
    finally:
        session.close()
    exported = _masks(out)
    assert all(np.array_equal(exported[i], page[i]) for i in page), "the export differs from the page"
    command = (out / "command.txt").read_text().split()
    assert command[:2] == ["vosrr", "segment"]
    again = tmp_path / "again"
    command[command.index("--out") + 1] = str(again)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "vosrr.cli", *command[1:]], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    rerun = _masks(again)
    assert rerun.keys() == page.keys() and all(np.array_equal(rerun[i], page[i]) for i in page)


def test_an_occupied_folder_is_refused_without_force(small_clip, tiny_segmenter, tmp_path: Path) -> None:
    from vosrr.video import OutputError

    video, _ = small_clip
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not empty"):
        Session(tiny_segmenter, FrameSource(video, index=False), out)
    Session(tiny_segmenter, FrameSource(video, index=False), out, force=True).close()
    assert (out / "notes.txt").read_text() == "mine"
    # a folder an earlier session made (nothing painted) reopens without --force
    Session(tiny_segmenter, FrameSource(video, index=False), tmp_path / "fresh").close()
    Session(tiny_segmenter, FrameSource(video, index=False), tmp_path / "fresh").close()


# ---------------------------------------------------------------------- server
@pytest.fixture
def client(small_clip, tiny_segmenter, tmp_path: Path):
    video, truth = small_clip
    session = Session(tiny_segmenter, FrameSource(video), tmp_path / "out")
    with TestClient(make_app(session, TOKEN), base_url="http://127.0.0.1:8000") as test_client:
        yield test_client, session, truth
    session.close()


ROUTES = [
    ("GET", "/"),
    ("GET", "/static/app.js"),
    ("GET", "/api/status"),
    ("GET", "/api/frame/0"),
    ("GET", "/api/mask/0"),
    ("GET", "/api/strokes/0"),
    ("POST", "/api/strokes/0"),
    ("DELETE", "/api/strokes/0"),
    ("POST", "/api/propagate"),
    ("POST", "/api/export"),
    ("GET", "/api/events"),
    ("GET", "/nothing/here"),
]


def test_every_request_needs_the_token(client) -> None:
    test_client, session, _ = client
    for method, path in ROUTES:
        for params in ({}, {"token": "wrong"}, {"token": TOKEN[:-1]}):
            response = test_client.request(method, path, params=params)
            assert response.status_code == 403, (method, path, params)
            assert "token" in response.text
    assert session.annotations() == {} and session.job is None  # nothing ran
    page = test_client.get("/", params={"token": TOKEN})
    assert page.status_code == 200 and f'content="{TOKEN}"' in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["referrer-policy"] == "no-referrer"
    assert test_client.get("/api/status", headers={"X-Vosrr-Token": TOKEN}).status_code == 200
    other = test_client.get("/api/status", params={"token": TOKEN}, headers={"host": "evil.example:8000"})
    assert other.status_code == 403  # DNS rebinding: only 127.0.0.1 and localhost


def test_paths_are_frame_numbers_only(client) -> None:
    test_client, _, _ = client
    token = {"token": TOKEN}
    frame = test_client.get("/api/frame/3", params=token)
    assert frame.status_code == 200 and frame.headers["content-type"] == "image/jpeg"
    assert cv2.imdecode(np.frombuffer(frame.content, np.uint8), cv2.IMREAD_COLOR).shape == (96, 160, 3)
    for path in (
        "/api/frame/12",
        "/api/frame/-1",
        "/api/frame/1.5",
        "/api/frame/..%2F..%2Fetc%2Fpasswd",
        "/api/frame/0/../../pipeline.py",
        "/static/index.html",
        "/static/..%2Fserver.py",
        "/static/../server.py",
        "/static/%2e%2e/session.py",
        "/api/mask/0",  # no mask yet
        "/api/strokes/0",
    ):
        assert test_client.get(path, params=token).status_code == 404, path
    assert test_client.get("/static/style.css", params=token).headers["content-type"].startswith("text/css")


def test_uploads_are_bounded_and_checked(client) -> None:
    test_client, session, truth = client
    token = {"token": TOKEN}
    huge = b'{"strokes": [' + b" " * MAX_BODY + b"]}"
    assert test_client.post("/api/strokes/0", params=token, content=huge).status_code == 413

    def chunks():
        for _ in range(MAX_BODY // 4096 + 2):
            yield b" " * 4096

    assert test_client.post("/api/strokes/0", params=token, content=chunks()).status_code == 413
    assert test_client.post("/api/strokes/0", params=token, content=b"not json").status_code == 400
    many = {"strokes": [{"label": 1, "radius": 2, "points": [[1, 1]] * (MAX_POINTS + 1)}]}
    assert test_client.post("/api/strokes/0", params=token, json=many).status_code == 422
    assert test_client.post("/api/strokes/0", params=token, json={"strokes": [{"label": 99}]}).status_code == 422
    assert test_client.post("/api/strokes/99", params=token, json=_json(_strokes(truth[0]))).status_code == 404
    assert session.annotations() == {}
    painted = test_client.post("/api/strokes/0", params=token, json=_json(_strokes(truth[0])))
    assert painted.status_code == 200 and painted.json()["mask"] is True
    mask = test_client.get("/api/mask/0", params=token)
    rgba = cv2.imdecode(np.frombuffer(mask.content, np.uint8), cv2.IMREAD_UNCHANGED)
    assert rgba.shape == (96, 160, 4) and set(np.unique(rgba[..., 3])) <= {0, 255}
    assert test_client.get("/api/strokes/0", params=token).status_code == 200
    status = test_client.get("/api/status", params=token).json()
    assert status["annotated"] == [0] and status["objects"] == 2 and status["ranges"] == [[0, 1]]
    assert test_client.post("/api/propagate", params=token).status_code == 200
    session.wait(120)
    assert test_client.get("/api/status", params=token).json()["ranges"] == [[0, 12]]


def test_the_live_server_streams_events(small_clip, tiny_segmenter, tmp_path: Path) -> None:
    video, truth = small_clip
    session = Session(tiny_segmenter, FrameSource(video), tmp_path / "out")
    with served(session, TOKEN) as url:
        base = url.split("?")[0]
        assert url.startswith("http://127.0.0.1:") and f"token={TOKEN}" in url
        events = urllib.request.urlopen(f"{base}api/events?token={TOKEN}", timeout=30)
        first = json.loads(events.readline().decode().removeprefix("data: "))
        assert first["type"] == "info" and first["frames"] == 12
        body = json.dumps(_json(_strokes(truth[0]))).encode()
        request = urllib.request.Request(f"{base}api/strokes/0?token={TOKEN}", body, method="POST")
        assert json.load(urllib.request.urlopen(request, timeout=60))["mask"]
        urllib.request.urlopen(urllib.request.Request(f"{base}api/propagate?token={TOKEN}", b"", method="POST"))
        progress = []
        while len(progress) < 11:
            line = events.readline().decode()
            if line.startswith("data: "):
                event = json.loads(line[6:])
                if event["type"] == "progress":
                    progress.append(event["frame"])
        assert progress == list(range(1, 12))
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}api/events", timeout=10)
        assert refused.value.code == 403
        events.close()


def test_ctrl_c_stops_the_command_with_complete_outputs(small_clip, tiny_weights: Path, tmp_path: Path) -> None:
    images, truth = make_sample.make_clip(60, 96, 160, 2, 1)
    video = write_video(tmp_path / "long.mp4", images)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "vosrr.cli", "annotate", str(video), "--out", str(out), "--no-open"]
    command += ["--weights", str(tiny_weights), "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in process.stderr], daemon=True).start()
        url = None
        while url is None:
            line = lines.get(timeout=120)
            if line.startswith("open "):
                url = line.split()[1]
        assert url is not None and url.startswith("http://127.0.0.1:")
        base, token = url.split("?")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(base + "api/status", timeout=10)
        assert refused.value.code == 403
        body = json.dumps(_json(_strokes(truth[0]))).encode()
        urllib.request.urlopen(urllib.request.Request(f"{base}api/strokes/0?{token}", body, method="POST"), timeout=60)
        urllib.request.urlopen(urllib.request.Request(f"{base}api/propagate?{token}", b"", method="POST"), timeout=30)
        while len(list((out / "masks").glob("*.png"))) < 5:
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    masks = _masks(out)  # every file is a complete PNG
    assert len(masks) >= 5 and masks.keys() == set(range(len(masks)))
    assert not [p for p in out.rglob(".*") if p.is_file()]  # no temporary file left behind
    assert (out / "strokes" / "00000.png").is_file() and (out / "command.txt").is_file()
