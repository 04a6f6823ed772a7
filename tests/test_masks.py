"""Masks: the user's ids survive a read and a write; colours map to ids; anti-aliasing snaps; targets add up."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from vosrr import masks
from vosrr.masks import MAX_OBJECTS, MaskError, davis_palette, drop_small_parts, read_mask, targets, write_mask


def blocks(shape: tuple[int, int] = (48, 64)) -> np.ndarray:
    """Dense labels 0..3 in solid rectangles (every id has an interior)."""
    labels = np.zeros(shape, np.uint8)
    labels[4:20, 6:30] = 1
    labels[24:44, 10:26] = 2
    labels[8:40, 36:60] = 3
    return labels


def save_palette(path: Path, values: np.ndarray, palette: list[tuple[int, int, int]] | None = None) -> Path:
    image = Image.fromarray(values.astype(np.uint8), mode="P")
    image.putpalette([c for rgb in (palette or davis_palette()) for c in rgb])
    image.save(path)
    return path


def raw(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "P"
        return np.asarray(image)


def round_trip(path: Path, tmp_path: Path) -> tuple[np.ndarray, masks.MaskFormat, np.ndarray]:
    """Read ``path``, write it back as vosrr does, and return (labels, format, written file's values)."""
    labels, fmt = read_mask(path)
    out = tmp_path / "written.png"
    write_mask(out, labels, fmt)
    again, fmt_again = read_mask(out)
    np.testing.assert_array_equal(again, labels)
    assert fmt_again.ids == fmt.ids
    return labels, fmt, raw(out)


def test_binary_grey_mask_keeps_0_and_255(tmp_path: Path) -> None:
    binary = (blocks() > 0).astype(np.uint8) * 255
    Image.fromarray(binary, mode="L").save(tmp_path / "grey.png")
    labels, fmt, written = round_trip(tmp_path / "grey.png", tmp_path)
    np.testing.assert_array_equal(labels, binary // 255)
    assert fmt.ids == (0, 255) and fmt.num_objects == 1 and fmt.notes == ()
    np.testing.assert_array_equal(written, binary)


def test_grey_mask_with_small_ids(tmp_path: Path) -> None:
    Image.fromarray(blocks(), mode="L").save(tmp_path / "ids.png")
    labels, fmt, written = round_trip(tmp_path / "ids.png", tmp_path)
    np.testing.assert_array_equal(labels, blocks())
    assert fmt.ids == (0, 1, 2, 3)
    np.testing.assert_array_equal(written, blocks())


def test_palette_ids_are_kept_even_when_sparse(tmp_path: Path) -> None:
    values = np.asarray([0, 2, 5, 17], np.uint8)[blocks()]
    labels, fmt, written = round_trip(save_palette(tmp_path / "p.png", values), tmp_path)
    np.testing.assert_array_equal(labels, blocks())  # dense labels 0..K inside vosrr
    assert fmt.ids == (0, 2, 5, 17)
    np.testing.assert_array_equal(written, values)  # the user's ids in the written file
    assert fmt.palette == tuple(davis_palette()[i] for i in (0, 2, 5, 17))


def test_custom_palette_colours_are_kept(tmp_path: Path) -> None:
    palette = [(0, 0, 0), (250, 10, 10), (10, 250, 10), (10, 10, 250)] + [(0, 0, 0)] * 252
    round_trip(save_palette(tmp_path / "p.png", blocks(), palette), tmp_path)
    with Image.open(tmp_path / "written.png") as image:
        colours = np.asarray(image.getpalette()[:12]).reshape(4, 3)
    np.testing.assert_array_equal(colours, palette[:4])


def test_palette_masks_are_never_snapped(tmp_path: Path) -> None:
    values = blocks()
    values[2, 2] = 7  # a one-pixel object: no interior, but palette indices are exact ids
    labels, fmt = read_mask(save_palette(tmp_path / "p.png", values))
    assert fmt.ids == (0, 1, 2, 3, 7) and fmt.notes == ()
    assert labels[2, 2] == 4


def test_rgb_davis_colours_get_their_davis_ids(tmp_path: Path) -> None:
    colours = np.asarray(davis_palette(4), np.uint8)
    Image.fromarray(colours[blocks()]).save(tmp_path / "rgb.png")
    labels, fmt, written = round_trip(tmp_path / "rgb.png", tmp_path)
    np.testing.assert_array_equal(labels, blocks())
    assert fmt.ids == (0, 1, 2, 3)
    np.testing.assert_array_equal(written, blocks())
    assert any("3 colours mapped to object ids (1 (128, 0, 0), 2 (0, 128, 0), 3" in note for note in fmt.notes)


def test_rgb_colours_map_to_ids_and_come_back(tmp_path: Path) -> None:
    colours = np.asarray([[0, 0, 0], [255, 255, 0], [0, 255, 255], [255, 0, 255]], np.uint8)
    Image.fromarray(colours[blocks()]).convert("RGBA").save(tmp_path / "rgba.png")
    labels, fmt, written = round_trip(tmp_path / "rgba.png", tmp_path)
    assert fmt.ids == (0, 1, 2, 3)
    assert len(np.unique(labels)) == 4
    for k in range(4):  # each colour is one id, and the id's colour is that colour
        assert len(np.unique(labels[blocks() == k])) == 1
        assert fmt.palette[labels[blocks() == k][0]] == tuple(colours[k])
    with Image.open(tmp_path / "written.png") as image:
        palette = np.asarray(image.getpalette()[:768], np.uint8).reshape(-1, 3)
    np.testing.assert_array_equal(palette[written], colours[blocks()])


def test_transparent_pixels_are_background(tmp_path: Path) -> None:
    rgba = np.zeros((*blocks().shape, 4), np.uint8)
    rgba[..., :3] = 200  # a grey picture ...
    rgba[..., 3] = np.where(blocks() == 1, 255, 0)  # ... visible only where object 1 is
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "alpha.png")
    labels, fmt = read_mask(tmp_path / "alpha.png")
    np.testing.assert_array_equal(labels, (blocks() == 1).astype(np.uint8))
    assert fmt.ids == (0, 200)


def test_anti_aliased_grey_edges_snap_to_the_nearest_id(tmp_path: Path) -> None:
    binary = (blocks() > 0).astype(np.uint8) * 255
    soft = cv2.GaussianBlur(binary, (5, 5), 1.2)
    assert len(np.unique(soft)) > 10
    Image.fromarray(soft, mode="L").save(tmp_path / "soft.png")
    labels, fmt = read_mask(tmp_path / "soft.png")
    assert fmt.ids == (0, 255)
    np.testing.assert_array_equal(labels, (soft > 127).astype(np.uint8))  # nearest of 0 and 255
    assert any("snapped" in note for note in fmt.notes)


def test_anti_aliased_colour_edges_snap_to_the_nearest_colour(tmp_path: Path) -> None:
    colours = np.asarray([[0, 0, 0], [220, 30, 30], [30, 30, 220], [30, 200, 30]], np.float32)
    picture = colours[blocks()]
    soft = cv2.GaussianBlur(picture, (5, 5), 1.2).round().astype(np.uint8)
    Image.fromarray(soft).save(tmp_path / "soft.png")
    labels, fmt = read_mask(tmp_path / "soft.png")
    assert fmt.num_objects == 3
    assert any("snapped" in note for note in fmt.notes)
    distance = ((soft[:, :, None, :].astype(np.float32) - colours[None, None]) ** 2).sum(-1)
    nearest = distance.argmin(-1)  # index of the nearest pure colour, per pixel
    for k in range(4):
        assert fmt.palette[labels[nearest == k][0]] == tuple(int(c) for c in colours[k])
        assert len(np.unique(labels[nearest == k])) == 1


def test_objects_touching_the_border_are_not_snapped(tmp_path: Path) -> None:
    values = np.zeros((30, 40), np.uint8)
    values[:, :2] = 128  # a two-pixel strip along the left edge: its interior is at the border
    values[10:20, 20:30] = 255
    Image.fromarray(values, mode="L").save(tmp_path / "edge.png")
    _, fmt = read_mask(tmp_path / "edge.png")
    assert fmt.ids == (0, 128, 255)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "mask not found"),
        (lambda p: p.mkdir(), "is a folder"),
        (lambda p: p.write_bytes(b"\x89PNG but not really"), "not an image"),
        (lambda p: save_palette(p, np.zeros((8, 8), np.uint8)), "is empty"),
        (lambda p: Image.new("RGB", (8, 8)).save(p), "is empty"),
    ],
)
def test_unusable_masks(tmp_path: Path, make, message: str) -> None:
    path = tmp_path / "mask.png"
    make(path)
    with pytest.raises(MaskError, match=message):
        read_mask(path)


def test_more_objects_than_supported(tmp_path: Path) -> None:
    values = np.zeros((24, 8 * (MAX_OBJECTS + 1)), np.uint8)
    for i in range(MAX_OBJECTS + 1):
        values[4:20, 8 * i + 2 : 8 * i + 7] = i + 1
    save_palette(tmp_path / "many.png", values)
    with pytest.raises(MaskError, match=f"{MAX_OBJECTS + 1} object ids.*at most {MAX_OBJECTS}"):
        read_mask(tmp_path / "many.png")
    save_palette(tmp_path / "enough.png", np.minimum(values, MAX_OBJECTS))
    assert read_mask(tmp_path / "enough.png")[1].num_objects == MAX_OBJECTS


def test_written_masks_have_ordinary_permissions_and_no_leftovers(tmp_path: Path) -> None:
    labels, fmt = blocks(), masks.MaskFormat((0, 1, 2, 3), tuple(davis_palette(4)))
    path = tmp_path / "00000.png"
    write_mask(path, labels, fmt)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["00000.png"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch) -> None:
    labels, fmt = blocks(), masks.MaskFormat((0, 1, 2, 3), tuple(davis_palette(4)))
    path = tmp_path / "00000.png"
    path.write_bytes(b"previous")

    def broken_save(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"half a png")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="No space left") as error:
        write_mask(path, labels, fmt)
    assert error.value.filename == str(path)  # named as the user knows it, not by its temporary name
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["00000.png"]


def test_targets_shape_and_values() -> None:
    labels = torch.zeros(1, 16, 24, dtype=torch.uint8)
    labels[0, 0:8, 0:8] = 1  # exactly cell (0, 0)
    labels[0, 8:16, 8:12] = 2  # half of cell (1, 1)
    Y, valid = targets(labels, 3, (32, 32), 8)
    assert Y.shape == (1, 16, 3) and valid.shape == (1, 16)
    grid_valid = valid.reshape(4, 4)
    expected_valid = torch.zeros(4, 4)
    expected_valid[:2, :3] = 1  # the frame covers 2x3 cells of the padded 4x4 grid
    torch.testing.assert_close(grid_valid, expected_valid)
    cells = Y.reshape(4, 4, 3)
    torch.testing.assert_close(cells[0, 0], torch.tensor([0.0, 1.0, 0.0]))
    torch.testing.assert_close(cells[1, 1], torch.tensor([0.5, 0.0, 0.5]))
    torch.testing.assert_close(cells[0, 2], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(Y[valid > 0].sum(-1), torch.ones(int((valid > 0).sum())))  # fractions add up
    assert torch.all(Y[valid == 0] == 0)  # padding carries no target


def test_targets_partial_cells_at_the_border() -> None:
    labels = torch.ones(2, 12, 12, dtype=torch.uint8)  # 12 = 8 + 4: the second cell is half inside
    Y, valid = targets(labels, 2, (32, 32), 8)
    grid = valid.reshape(2, 4, 4)
    torch.testing.assert_close(grid[:, 0, 0], torch.ones(2))
    torch.testing.assert_close(grid[:, 0, 1], torch.full((2,), 0.5))
    torch.testing.assert_close(grid[:, 1, 1], torch.full((2,), 0.25))
    inside = valid > 0
    torch.testing.assert_close(Y[inside], torch.tensor([0.0, 1.0]).expand(int(inside.sum()), 2))  # renormalised


def test_targets_unknown_pixels_carry_no_weight_and_no_target() -> None:
    labels = torch.zeros(1, 16, 16, dtype=torch.uint8)
    labels[0, :, 8:] = 1  # right column of cells is the object
    known = torch.ones(1, 16, 16)
    known[0, :8, :4] = 0  # left half of cell (0, 0) unknown
    known[0, 8:, 8:] = 0  # cell (1, 1) wholly unknown
    Y, valid = targets(labels, 2, (16, 16), 8, known)
    torch.testing.assert_close(valid.reshape(2, 2), torch.tensor([[0.5, 1.0], [1.0, 0.0]]))
    cells = Y.reshape(2, 2, 2)
    torch.testing.assert_close(cells[0, 0], torch.tensor([1.0, 0.0]))  # renormalised over the known half
    torch.testing.assert_close(cells[0, 1], torch.tensor([0.0, 1.0]))
    assert torch.all(cells[1, 1] == 0)
    with pytest.raises(ValueError, match="must match labels"):
        targets(labels, 2, (16, 16), 8, known[:, :8])


def test_drop_small_parts_judges_each_object_by_its_own_largest_part() -> None:
    labels = np.zeros((60, 80), np.uint8)
    labels[5:25, 5:25] = 1  # object 1: 400 px
    labels[40:45, 60:66] = 1  # object 1: a stray 30 px part (7.5 % of 400)
    labels[50:53, 5:8] = 2  # object 2: one 9 px part, smaller than object 1's stray but its only part
    kept = drop_small_parts(labels, 0.05)
    np.testing.assert_array_equal(kept, labels)
    cleaned = drop_small_parts(labels, 0.1)
    expected = labels.copy()
    expected[40:45, 60:66] = 0
    np.testing.assert_array_equal(cleaned, expected)
    assert labels[42, 62] == 1, "the input is left as it was"


def test_drop_small_parts_connects_diagonal_neighbours_and_keeps_equal_parts() -> None:
    labels = np.zeros((30, 30), np.uint8)
    labels[2:12, 2:12] = 1  # 100 px
    labels[12, 12] = labels[13, 13] = 1  # touches the square's corner diagonally: part of it
    labels[20:30, 20:30] = 1  # a second part of the same size (102 px with its diagonal tail)
    labels[19, 19] = labels[18, 18] = 1
    np.testing.assert_array_equal(drop_small_parts(labels, 1.0), labels)
    labels[0, 29] = 1  # a lone pixel goes at any fraction above 1 %
    assert drop_small_parts(labels, 0.02)[0, 29] == 0
    assert drop_small_parts(labels, 0.0)[0, 29] == 1


@pytest.mark.parametrize("fraction", [-0.1, 1.5])
def test_drop_small_parts_rejects_fractions_outside_0_1(fraction: float) -> None:
    with pytest.raises(ValueError, match="fraction must be in"):
        drop_small_parts(np.zeros((4, 4), np.uint8), fraction)
