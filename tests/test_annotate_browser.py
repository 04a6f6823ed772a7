"""The annotation page in a real browser (headless Chromium driven by Playwright) on a generated clip.

Strokes are painted with the mouse; masks are read from the output folder and scored against the clip's exact
ground truth. Skipped (with the reason) where Playwright or Chromium is missing; CI installs both.
``VOSRR_SCREENSHOT=docs/annotate.png`` also saves the page's screenshot there (the README's picture).
"""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from annotate_tools import background_paths, mean_iou, object_path, served
from conftest import make_sample, write_video
from PIL import Image

from vosrr.annotate.frames import FrameSource
from vosrr.annotate.session import Session
from vosrr.segmenter import SegmentConfig, Segmenter

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium; .ci/run installs it)"
)
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
RADIUS = 4
FRAMES = 10


@pytest.fixture
def page_on_clip(tmp_path: Path, shipped_model):
    """A served session on a generated clip with the shipped weights, and a browser page open on it."""
    images, truth = make_sample.make_clip(FRAMES, 240, 432, 2, 0)
    video = write_video(tmp_path / "clip.mp4", images)
    out = tmp_path / "clip_vosrr"
    session = Session(Segmenter(shipped_model, SegmentConfig(between="forward")), FrameSource(video), out)
    with served(session) as url, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)  # a fresh profile of its own
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 760})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(url)
            page.locator("body[data-ready='1']").wait_for(timeout=30_000)
            yield page, url, out, truth, errors
        finally:
            browser.close()


def _idle(page) -> None:
    page.locator("body[data-pending='0']").wait_for(timeout=180_000)


def _paint(page, path: list[tuple[float, float]], label: int, size: tuple[int, int]) -> None:
    """Drag the mouse along ``path`` (frame pixels) with brush ``label``; wait for the server's answer."""
    page.click(f"button.brush[data-label='{label}']")
    box = page.locator("#view").bounding_box()
    height, width = size

    def at(x: float, y: float) -> tuple[float, float]:
        return box["x"] + (x + 0.5) * box["width"] / width, box["y"] + (y + 0.5) * box["height"] / height

    answered = int(page.locator("body").get_attribute("data-answered") or 0)
    page.mouse.move(*at(*path[0]))
    page.mouse.down()
    for x, y in path[1:]:
        page.mouse.move(*at(x, y), steps=8)
    page.mouse.up()
    # this stroke's answer, not an earlier one's: pending can still read 0 before the page has sent the stroke
    page.locator(f"body[data-answered='{answered + 1}']").wait_for(timeout=180_000)
    _idle(page)


def _mask(out: Path, index: int) -> np.ndarray:
    with Image.open(out / "masks" / f"{index:05d}.png") as image:
        return np.asarray(image)


def _go(page, index: int) -> None:
    page.locator("#scrubber").fill(str(index))
    page.locator(f"body[data-shown='{index}']").wait_for(timeout=30_000)


def _strokes(page, labels: np.ndarray) -> None:
    """Background first (no solve is possible before an object exists), then one cross per object."""
    page.locator("#radius").fill(str(RADIUS))
    for path in background_paths(labels, RADIUS):
        _paint(page, path, 0, labels.shape)
    for label in range(1, int(labels.max()) + 1):
        _paint(page, object_path(labels, label, RADIUS), label, labels.shape)


def _propagate(page, job: int) -> None:
    """Start propagating (the session's job number ``job``) and wait until it has finished."""
    page.click("#propagate")
    page.locator(f"body[data-job='propagate:done:{job}']").wait_for(timeout=300_000)


def test_mark_propagate_correct(page_on_clip) -> None:
    page, url, out, truth, errors = page_on_clip
    page.click("#add-object")  # a brush for object 2
    _strokes(page, truth[0])
    first = mean_iou(_mask(out, 0), truth[0])
    print(f"frame 0 from strokes: IoU {first:.3f}")
    assert first > 0.75, f"the mask inferred from the strokes has IoU {first:.3f}"
    assert (out / "strokes" / "00000.png").is_file()

    _propagate(page, 1)
    scores = [mean_iou(_mask(out, i), truth[i]) for i in range(FRAMES)]
    assert min(scores) > 0.5 and np.mean(scores) > 0.7, f"propagated IoU per frame: {np.round(scores, 3)}"

    print("propagated IoU per frame:", np.round(scores, 3))
    worst = 1 + int(np.argmin(scores[1:]))
    _go(page, worst)
    _strokes(page, truth[worst])
    corrected = mean_iou(_mask(out, worst), truth[worst])
    print(f"frame {worst} corrected: IoU {scores[worst]:.3f} -> {corrected:.3f}")
    assert corrected > scores[worst] + 0.02, f"frame {worst}: IoU {scores[worst]:.3f} -> {corrected:.3f}"
    assert not any((out / "masks" / f"{i:05d}.png").exists() for i in range(worst + 1, FRAMES)), "stale masks kept"

    _propagate(page, 2)
    assert all((out / "masks" / f"{i:05d}.png").is_file() for i in range(FRAMES))
    assert mean_iou(_mask(out, worst), truth[worst]) == corrected  # the annotated frame keeps its inferred mask
    assert page.locator("#size").inner_text().endswith(f"{FRAMES} with masks")

    before = {i: _mask(out, i) for i in range(FRAMES)}
    page.click("#export")  # vosrr segment's job on the stroke files: the same masks, and the overlay
    page.locator("body[data-job='export:done:3']").wait_for(timeout=300_000)
    assert (out / "overlay.mp4").is_file() and (out / "command.txt").is_file()
    assert all(np.array_equal(_mask(out, i), before[i]) for i in range(FRAMES))

    _go(page, worst)  # the corrected frame: its strokes over its mask
    target = os.environ.get("VOSRR_SCREENSHOT")
    shot = out.parent / "annotate.png"
    page.screenshot(path=str(shot))
    if target:
        with Image.open(shot) as image:  # a palette PNG: a small file for the README
            image.convert("RGB").quantize(128).save(target, optimize=True)

    base = url.split("?")[0]
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(base + "api/status", timeout=10)
    assert refused.value.code == 403
    with pytest.raises(urllib.error.HTTPError) as wrong:
        urllib.request.urlopen(base + "?token=not-the-token", timeout=10)
    assert wrong.value.code == 403
    assert page.evaluate("fetch('api/status').then(r => r.status)") == 403  # the page's own origin, no token
    assert errors == [], f"errors in the page: {errors}"
