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
from vosrr.mask_reader import read_mask
from vosrr.masks import (
    MAX_OBJECTS,
    MaskError,
    contour_width,
    davis_palette,
    drop_small_parts,
    overlay,
    parts_with_strokes,
    targets,
    write_mask,
)


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


def test_anti_aliased_binary_mask_is_one_soft_object(tmp_path: Path) -> None:
    binary = (blocks() > 0).astype(np.uint8) * 255
    soft = cv2.GaussianBlur(binary, (5, 5), 1.2)
    assert len(np.unique(soft)) > 10
    Image.fromarray(soft, mode="L").save(tmp_path / "soft.png")
    labels, fmt = read_mask(tmp_path / "soft.png")
    assert fmt.ids == (0, 255)
    np.testing.assert_array_equal(labels, (soft > 127).astype(np.uint8))  # at or above half of 255
    assert any("one soft-edged object" in note for note in fmt.notes)


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


# ------------------------------------------------------------------------------------ what the reader decides
def big_and_small(small_value: int, big_value: int, shape: tuple[int, int] = (60, 80)) -> np.ndarray:
    """A big object, a 2x2 object touching it and a 2-pixel line touching it, each with its own value."""
    values = np.zeros(shape, np.uint8)
    values[10:40, 10:40] = big_value
    values[20:22, 40:42] = small_value  # 2x2, against the big object's right side
    values[40:42, 15:35] = small_value  # a 2-pixel line under it
    return values


@pytest.mark.parametrize(("small", "big"), [(2, 1), (1, 2), (128, 255), (255, 128)])
def test_small_objects_next_to_a_big_one_stay_objects(tmp_path: Path, small: int, big: int) -> None:
    values = big_and_small(small, big)
    Image.fromarray(values, mode="L").save(tmp_path / "m.png")
    labels, fmt = read_mask(tmp_path / "m.png")
    assert sorted(fmt.ids) == [0, *sorted({small, big})] and fmt.num_objects == 2
    np.testing.assert_array_equal(np.asarray(fmt.ids)[labels], values)
    assert not any("snapped" in note or "soft" in note for note in fmt.notes)


def test_small_colour_object_next_to_a_big_one_stays_an_object(tmp_path: Path) -> None:
    values = big_and_small(2, 1)
    colours = np.asarray([[0, 0, 0], [220, 30, 30], [30, 30, 220]], np.uint8)
    Image.fromarray(colours[values]).save(tmp_path / "m.png")
    labels, fmt = read_mask(tmp_path / "m.png")
    assert fmt.num_objects == 2
    np.testing.assert_array_equal(np.asarray(fmt.palette, np.uint8)[labels], colours[values])


def feathered(shape: tuple[int, int] = (96, 128), top: int = 254) -> np.ndarray:
    """One round object whose edge ramps smoothly from 0 to ``top`` over 12 pixels (a matting tool's mask)."""
    y, x = np.mgrid[: shape[0], : shape[1]]
    distance = np.hypot(y - 47.3, x - 63.6) - 30.0  # signed distance to a circle, negative inside
    return np.clip(top * (0.5 - distance / 12), 0, top).round().astype(np.uint8)


def test_feathered_mask_is_one_object_thresholded_at_half_its_maximum(tmp_path: Path) -> None:
    values = feathered()
    assert len(np.unique(values)) > 100 and values.max() == 254
    Image.fromarray(values, mode="L").save(tmp_path / "f.png")
    labels, fmt = read_mask(tmp_path / "f.png")
    assert fmt.ids == (0, 255)
    np.testing.assert_array_equal(labels, (values >= 127).astype(np.uint8))
    (note,) = fmt.notes
    assert "one soft-edged object" in note and "127" in note and f"{int((values >= 127).sum())} px" in note


def test_a_few_ramp_levels_around_one_level_are_one_object(tmp_path: Path) -> None:
    """The issue's example: a 0/255 mask whose edge pixels hold 1, 2, 253 and 254 (four 'objects' before)."""
    values = np.zeros((40, 60), np.uint8)
    values[10:30, 10:40] = 255
    values[9, 10:40], values[8, 10:40] = 254, 253  # a two-step ramp above the object ...
    values[30, 10:40], values[31, 10:40] = 2, 1  # ... and one fading out below it
    Image.fromarray(values, mode="L").save(tmp_path / "r.png")
    labels, fmt = read_mask(tmp_path / "r.png")
    assert fmt.num_objects == 1
    np.testing.assert_array_equal(labels, (values >= 128).astype(np.uint8))


def test_anti_aliased_edges_between_several_ids_are_snapped_and_named(tmp_path: Path) -> None:
    values = np.zeros((40, 90), np.uint8)
    values[5:35, 5:40], values[5:35, 50:85] = 100, 200
    values[5:35, 4], values[5:35, 40] = 50, 50  # 1-pixel ramps between 0 and 100
    values[5:35, 49], values[5:35, 85] = 90, 110  # ramps between 0 and 200, nearer 100 than 200
    values[4, 50:85] = 130
    Image.fromarray(values, mode="L").save(tmp_path / "a.png")
    labels, fmt = read_mask(tmp_path / "a.png")
    assert fmt.ids == (0, 100, 200)
    (note,) = fmt.notes
    assert "snapped" in note and "50: 60 px" in note and "130: 35 px" in note
    assert labels[20, 4] in (0, 1) and labels[4, 60] == 1  # 130 is nearest 100 (snapping is by value)


def test_16_bit_ids_stay_distinct_objects_and_are_written_back(tmp_path: Path) -> None:
    values = np.zeros((30, 40), np.uint16)
    values[2:12, 2:12], values[15:28, 20:38] = 256, 512
    Image.fromarray(values).save(tmp_path / "wide.png")  # uint16: a 16-bit grey PNG
    labels, fmt = read_mask(tmp_path / "wide.png")
    assert fmt.ids == (0, 256, 512)
    write_mask(tmp_path / "out.png", labels, fmt)
    with Image.open(tmp_path / "out.png") as image:
        np.testing.assert_array_equal(np.asarray(image), values)


def test_255_beside_small_ids_is_void(tmp_path: Path) -> None:
    from vosrr.mask_reader import read_raw

    values = blocks()
    values[0:4, :] = 255  # DAVIS void along the top
    save_palette(tmp_path / "void.png", values)
    raw = read_raw(tmp_path / "void.png")
    assert raw.keys == [1, 2, 3] and raw.known is not None
    np.testing.assert_array_equal(raw.known, values != 255)
    labels, fmt = read_mask(tmp_path / "void.png")
    assert fmt.ids == (0, 1, 2, 3) and labels[0:4].max() == 0
    assert any("256 pixels" in note and "void" in note for note in fmt.notes)  # 4 rows x 64 pixels, counted


def test_binary_0_255_is_not_void(tmp_path: Path) -> None:
    from vosrr.mask_reader import read_raw

    binary = (blocks() > 0).astype(np.uint8) * 255
    Image.fromarray(binary, mode="L").save(tmp_path / "b.png")
    raw = read_raw(tmp_path / "b.png")
    assert raw.known is None and raw.keys == [255]


@pytest.mark.parametrize(("kind", "objects"), [("auto", 1), ("ids", None), ("binary", 1), ("soft", 1)])
def test_mask_kind_overrides_the_guess(tmp_path: Path, kind: str, objects: int | None) -> None:
    values = feathered(top=200)
    Image.fromarray(values, mode="L").save(tmp_path / "f.png")
    if objects is None:  # ids: every level is an object; far more than allowed
        with pytest.raises(MaskError, match=r"object ids.*--mask-kind soft"):
            read_mask(tmp_path / "f.png", kind)
        return
    labels, fmt = read_mask(tmp_path / "f.png", kind)
    assert fmt.num_objects == objects
    expected = values > 0 if kind == "binary" else values >= 100
    np.testing.assert_array_equal(labels, expected.astype(np.uint8))


def test_ids_kind_keeps_small_objects_and_edges_exactly(tmp_path: Path) -> None:
    values = np.zeros((40, 60), np.uint8)
    values[10:30, 10:40] = 200
    values[9, 10:40] = 100  # would be a ramp under auto
    Image.fromarray(values, mode="L").save(tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png")[1].num_objects == 1
    assert read_mask(tmp_path / "m.png", "ids")[1].ids == (0, 100, 200)


def test_alpha_matte_is_one_soft_object(tmp_path: Path) -> None:
    rgba = np.zeros((96, 128, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[..., 3] = feathered(top=255)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "matte.png")
    labels, fmt = read_mask(tmp_path / "matte.png")
    assert fmt.num_objects == 1
    np.testing.assert_array_equal(labels, (rgba[..., 3] >= 127.5).astype(np.uint8))


def test_rgba_scribble_convention(tmp_path: Path) -> None:
    from vosrr.mask_reader import read_raw

    rgba = np.zeros((40, 60, 4), np.uint8)  # transparent: unknown
    rgba[5, 5:50] = (0, 0, 0, 255)  # an opaque black stroke: background
    rgba[20, 10:30] = (255, 0, 0, 255)  # red: one object
    rgba[30, 10:30] = (0, 200, 0, 255)  # green: another
    rgba[31, 10:30] = (0, 200, 0, 60)  # a faint brush edge: still unknown
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "s.png")
    raw = read_raw(tmp_path / "s.png", scribble=True)
    assert raw.colour and len(raw.keys) == 2 and raw.known is not None
    assert raw.known.sum() == 45 + 20 + 20
    assert raw.values[5, 5] == 0 and raw.known[5, 5]  # known background
    assert raw.values[20, 15] == 0xFF0000 and raw.values[30, 15] == 0x00C800


def test_palette_scribble_convention(tmp_path: Path) -> None:
    from vosrr.mask_reader import read_raw

    values = np.full((40, 60), 255, np.uint8)  # 255: unknown
    values[5, :] = 0
    values[20, 10:30] = 1
    values[30, 10:30] = 3
    save_palette(tmp_path / "s.png", values)
    raw = read_raw(tmp_path / "s.png", scribble=True)
    assert raw.keys == [1, 3] and not raw.colour
    np.testing.assert_array_equal(raw.known, values != 255)
    with pytest.raises(MaskError, match="marks no pixel"):
        save_palette(tmp_path / "blank.png", np.full((8, 8), 255, np.uint8))
        read_raw(tmp_path / "blank.png", scribble=True)


def _two_objects(height: int = 120, width: int = 200) -> np.ndarray:
    labels = np.zeros((height, width), dtype=np.uint8)
    cv2.circle(labels, (60, 60), 35, 1, -1)
    labels[30:90, 95:170] = 2  # touches object 1: a boundary between two objects too
    labels[0:20, 180:200] = 1  # a part at the frame's corner: no outline along the frame's edge
    return labels


def test_contour_overlay_draws_only_boundaries() -> None:
    labels = _two_objects()
    frame = np.random.default_rng(0).integers(0, 256, (*labels.shape, 3), dtype=np.uint8)
    colours = np.asarray(davis_palette(3), dtype=np.uint8)
    out = overlay(frame, labels, colours, style="contour")
    changed = np.any(out != frame, axis=-1)
    width = contour_width(*labels.shape)
    assert width == 1  # 120 px high
    # a boundary pixel: an object pixel with another label among its 8 neighbours (width 1), frame edge excluded
    padded = np.pad(labels, 1, mode="edge")
    neighbours = [
        padded[1 + dy : 1 + dy + labels.shape[0], 1 + dx : 1 + dx + labels.shape[1]]
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
    ]
    boundary = (labels > 0) & np.any([n != labels for n in neighbours], axis=0)
    np.testing.assert_array_equal(changed, boundary)  # interiors and background are the frame as it was
    assert (out[boundary] == np.array([[255, 0, 0], [0, 255, 0]])[labels[boundary] - 1]).all()  # bright colours
    assert not changed[0, 181:].any() and not changed[:19, -1].any()  # no line along the frame's edge


def test_contour_width_grows_with_the_frame_and_fill_stays_as_it_was() -> None:
    assert [contour_width(h, w) for h, w in ((120, 200), (480, 854), (1080, 1920))] == [1, 3, 7]
    labels = _two_objects(480, 854)
    frame = np.full((*labels.shape, 3), 100, dtype=np.uint8)
    colours = np.asarray(davis_palette(3), dtype=np.uint8)
    contour = overlay(frame, labels, colours, style="contour")
    inner = cv2.erode((labels == 1).astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)  # 3 px inside
    assert not np.any(contour[inner] != 100)
    fill = overlay(frame, labels, colours)
    np.testing.assert_array_equal(fill[labels == 1], np.array([[114, 50, 50]] * int((labels == 1).sum())))
    with pytest.raises(ValueError, match="unknown overlay style 'dots'; choose from fill, contour"):
        overlay(frame, labels, colours, style="dots")


def test_parts_with_strokes_keeps_only_the_stroked_parts_of_each_object() -> None:
    labels = np.zeros((40, 60), np.uint8)
    labels[2:12, 2:12] = 1  # object 1, stroked
    labels[25:35, 40:50] = 1  # object 1 again, far away and never stroked: it goes
    labels[2:12, 40:50] = 2  # object 2, stroked
    labels[25:35, 2:12] = 2  # a second part of object 2, stroked too: it stays
    labels[30:38, 20:30] = 3  # object 3 has no stroke at all: kept whole
    strokes = np.zeros_like(labels)
    known = np.zeros(labels.shape, bool)
    for y, x, k in [(6, 6, 1), (6, 44, 2), (30, 6, 2), (20, 20, 0)]:
        strokes[y, x], known[y, x] = k, True
    out = parts_with_strokes(labels, strokes, known)
    expected = labels.copy()
    expected[25:35, 40:50] = 0
    np.testing.assert_array_equal(out, expected)
    # a stroke pixel that is not known (a blank of the scribble file) marks nothing
    known[30, 6] = False
    assert parts_with_strokes(labels, strokes, known)[30, 6] == 0
