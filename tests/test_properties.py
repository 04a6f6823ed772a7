"""Property-based tests (hypothesis): the mask reader on random label maps, the solver on random problems."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from vosrr import solver
from vosrr.mask_reader import read_mask
from vosrr.masks import davis_palette, write_mask

FAST = settings(max_examples=25, deadline=None)


# ---------------------------------------------------------------------------------------------- masks
@st.composite
def label_maps(draw: st.DrawFn) -> tuple[np.ndarray, list[int]]:
    """A label map of solid 3x3 cells (so every id has an interior, as real masks do) and its id values."""
    rows, cols = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    count = draw(st.integers(1, 6))
    # 255 beside small ids (1..32) is DAVIS's void, not an id: test_masks covers it
    ids = draw(st.lists(st.integers(1, 254), min_size=count, max_size=count, unique=True))
    cells = np.asarray(draw(st.lists(st.integers(0, count), min_size=rows * cols, max_size=rows * cols)))
    cells = cells.reshape(rows, cols)
    if not cells.any():
        cells[draw(st.integers(0, rows - 1)), draw(st.integers(0, cols - 1))] = 1  # at least one object
    values = np.asarray([0, *ids], np.uint8)[cells]
    return np.kron(values, np.ones((3, 3), np.uint8)), ids


@FAST
@given(case=label_maps(), kind=st.sampled_from(["palette", "grey"]))
def test_palette_and_grey_masks_read_back_identically(case: tuple[np.ndarray, list[int]], kind: str) -> None:
    values, _ = case
    with tempfile.TemporaryDirectory() as folder:
        path, again = Path(folder) / "mask.png", Path(folder) / "again.png"
        image = Image.fromarray(values, mode="P" if kind == "palette" else "L")
        if kind == "palette":
            image.putpalette([c for rgb in davis_palette() for c in rgb])
        image.save(path)
        labels, fmt = read_mask(path)
        present = sorted(int(v) for v in np.unique(values) if v)
        assert fmt.ids == (0, *present)
        assert fmt.notes == ()  # nothing to snap: every value fills whole cells
        np.testing.assert_array_equal(np.asarray(fmt.ids)[labels], values)  # dense labels map back exactly
        assert labels.max() == len(present)
        write_mask(again, labels, fmt)
        with Image.open(again) as written:
            np.testing.assert_array_equal(np.asarray(written), values)  # the file holds the user's ids


@FAST
@given(case=label_maps(), seed=st.integers(0, 2**32 - 1))
def test_colour_masks_map_each_colour_to_one_id(case: tuple[np.ndarray, list[int]], seed: int) -> None:
    values, ids = case
    rng = np.random.default_rng(seed)
    colours = {0: (0, 0, 0)}
    while len(colours) <= len(ids):  # distinct colours that are not grey (grey RGB is read as a grey mask)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if colour not in colours.values() and len(set(colour)) > 1:
            colours[ids[len(colours) - 1]] = colour
    picture = np.zeros((*values.shape, 3), np.uint8)
    for value, colour in colours.items():
        picture[values == value] = colour
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "mask.png"
        Image.fromarray(picture).save(path)
        labels, fmt = read_mask(path)
    np.testing.assert_array_equal(np.asarray(fmt.palette, np.uint8)[labels], picture)
    assert fmt.num_objects == len(np.unique(values[values > 0]))


# ---------------------------------------------------------------------------------------------- solver
def reference(X: np.ndarray, Y: np.ndarray, lam: float, w: np.ndarray | None, blocks: int) -> np.ndarray:
    """W from the normal equations with a block-diagonal A, in float64: (A_bd + lam I)^-1 X^T D Y."""
    n, channels = X.shape
    D = np.diag(np.ones(n) if w is None else w)
    A = X.T @ D @ X
    size = channels // blocks
    group = np.arange(channels) // size
    A_bd = np.where(group[:, None] == group[None, :], A, 0.0)
    return np.linalg.solve(A_bd + lam * np.eye(channels), X.T @ D @ Y)


@st.composite
def problems(draw: st.DrawFn) -> dict:
    blocks = draw(st.sampled_from([1, 2, 3, 4, 8]))
    channels = blocks * draw(st.integers(1, 6))
    n, k, batch = draw(st.integers(1, 40)), draw(st.integers(1, 4)), draw(st.integers(0, 2))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = (batch,) if batch else ()
    weights = None
    if draw(st.booleans()):
        weights = rng.uniform(0, 2, (*shape, n)) * (rng.random((*shape, n)) > 0.2)  # some pixels unknown
    return {
        "X": rng.standard_normal((*shape, n, channels)),
        "Y": rng.standard_normal((*shape, n, k)),
        "weights": weights,
        "lam": draw(st.floats(0.05, 10.0)),
        "blocks": blocks,
    }


@FAST
@given(p=problems())
def test_fit_equals_block_diagonal_normal_equations(p: dict) -> None:
    X, Y, w, lam, blocks = p["X"], p["Y"], p["weights"], p["lam"], p["blocks"]
    tX, tY = torch.from_numpy(X), torch.from_numpy(Y)
    tw = None if w is None else torch.from_numpy(w)
    W = solver.fit(tX, tY, lam, tw, blocks).numpy()
    if X.ndim == 2:
        expected = reference(X, Y, lam, w, blocks)
    else:
        expected = np.stack([reference(X[b], Y[b], lam, None if w is None else w[b], blocks) for b in range(len(X))])
    assert W.shape == expected.shape
    np.testing.assert_allclose(W, expected, rtol=1e-7, atol=1e-9)


@FAST
@given(p=problems())
def test_primal_equals_dual(p: dict) -> None:
    X, Y = torch.from_numpy(p["X"]), torch.from_numpy(p["Y"])
    w = None if p["weights"] is None else torch.from_numpy(p["weights"])
    primal = solver.solve(solver.statistics(X, Y, w, p["blocks"]), p["lam"])
    dual = solver.fit_dual(X, Y, p["lam"], w, p["blocks"])
    torch.testing.assert_close(primal, dual, rtol=1e-7, atol=1e-9)


@FAST
@given(p=problems(), cut=st.floats(0, 1))
def test_statistics_add_over_pixels(p: dict, cut: float) -> None:
    X, Y = torch.from_numpy(p["X"]), torch.from_numpy(p["Y"])
    w = None if p["weights"] is None else torch.from_numpy(p["weights"])
    m = int(cut * X.shape[-2])
    whole = solver.statistics(X, Y, w, p["blocks"])
    parts = [
        solver.statistics(X[..., s, :], Y[..., s, :], None if w is None else w[..., s], p["blocks"])
        for s in (slice(0, m), slice(m, None))
    ]
    total = parts[0] + parts[1]
    torch.testing.assert_close(total.A, whole.A)
    torch.testing.assert_close(total.B, whole.B)
