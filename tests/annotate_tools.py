"""Helpers shared by the annotation page's tests: a served session, and stroke paths drawn from exact ground truth."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import cv2
import numpy as np

from vosrr.annotate.server import make_server
from vosrr.annotate.session import Session
from vosrr.annotate.strokes import ERASE, Stroke


@contextlib.contextmanager
def served(session: Session, token: str | None = None) -> Iterator[str]:
    """Serve ``session`` on a free loopback port in a thread -> its URL (with the token); stopped on exit."""
    server, sock, url = make_server(session, 0, token)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
        session.close()
        assert not thread.is_alive(), "the server did not stop"


def _fits(points: list[tuple[float, float]], radius: int, region: np.ndarray) -> bool:
    layer = np.full(region.shape, ERASE, np.uint8)
    Stroke(1, radius, np.asarray(points, float)).draw(layer)
    painted = layer == 1
    return bool(painted.any() and region[painted].all())


def object_path(labels: np.ndarray, label: int, radius: int) -> list[tuple[float, float]]:
    """A cross through object ``label`` (along its middle row, then its middle column) that stays inside it."""
    inside = labels == label
    depth = cv2.distanceTransform(inside.astype(np.uint8), cv2.DIST_L2, 5)
    ys, xs = np.nonzero(depth > radius + 2)
    assert ys.size, f"object {label} is too thin for a brush of radius {radius}"
    cy, cx = int(np.median(ys)), int(np.median(xs))
    row, col = xs[ys == cy], ys[xs == cx]
    cross = [(row.min(), cy), (row.max(), cy), (cx, cy), (cx, col.min()), (cx, col.max())]
    path = [(float(x), float(y)) for x, y in cross]
    if _fits(path, radius, inside):
        return path
    path = path[:2]
    assert _fits(path, radius, inside), f"no straight stroke fits inside object {label}"
    return path


def background_paths(labels: np.ndarray, radius: int) -> list[list[tuple[float, float]]]:
    """Strokes over the background only: a loop just inside the frame's border, else long background rows."""
    height, width = labels.shape
    background = labels == 0
    m = radius + 3
    loop = [(m, m), (width - 1 - m, m), (width - 1 - m, height - 1 - m), (m, height - 1 - m), (m, m)]
    loop = [(float(x), float(y)) for x, y in loop]
    if _fits(loop, radius, background):
        return [loop]
    depth = cv2.distanceTransform(background.astype(np.uint8), cv2.DIST_L2, 5)
    paths = []
    for y in (height // 8, height // 2, 7 * height // 8):
        xs = np.flatnonzero(depth[y] > radius + 3)
        for run in np.split(xs, np.flatnonzero(np.diff(xs) > 1) + 1):
            if len(run) > 4 * radius:
                paths.append([(float(run[0]), float(y)), (float(run[-1]), float(y))])
    assert paths, "no background stroke fits"
    return paths


def mean_iou(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Mean over the objects of the truth of their IoU."""
    scores = []
    for label in range(1, int(truth.max()) + 1):
        a, b = prediction == label, truth == label
        union = (a | b).sum()
        scores.append(float((a & b).sum() / union) if union else 1.0)
    return float(np.mean(scores))
