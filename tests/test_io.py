"""Image reading, Zarr helpers, splits and atomic outputs (unetpipe.io)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from unetpipe.io import (
    atomic_path,
    create_array,
    make_splits,
    open_data,
    read_image,
    read_splits,
    read_stack,
    slice_chunks,
    write_array,
)


def test_read_tiff_stack_and_png(tmp_path):
    stack = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack")
    Image.fromarray(stack[1]).save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_stack(tmp_path / "s.tif"), stack)
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), stack[1])
    assert read_stack(tmp_path / "p.png").shape == (1, 4, 5)
    with pytest.raises(ValueError, match="unsupported"):
        read_image(tmp_path / "x.jpg")


def test_read_slice_folder_in_numeric_order(tmp_path):
    for i in (10, 2, 0, 1):
        Image.fromarray(np.full((3, 3), i, np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    stack = read_stack(tmp_path)
    assert stack[:, 0, 0].tolist() == [0, 1, 2, 10]
    Image.fromarray(np.zeros((4, 3), np.uint8)).save(tmp_path / "11.png")
    with pytest.raises(ValueError, match="differ in shape"):
        read_stack(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_stack(tmp_path / "missing")


def test_slice_chunks():
    assert slice_chunks((30, 512, 512)) == (1, 512, 512)
    assert slice_chunks((2, 5000, 700)) == (1, 1024, 700)
    assert slice_chunks((2, 3, 2048, 2048)) == (1, 1, 1024, 1024)
    with pytest.raises(ValueError):
        slice_chunks((5,))


def test_zarr_helpers_round_trip(tmp_path):
    group = zarr.open_group(tmp_path / "d.zarr", mode="w")
    group.attrs["splits"] = {"train": [0, 1], "val": [2]}
    data = np.random.default_rng(0).integers(0, 9, (3, 1100, 40)).astype(np.uint32)
    write_array(group, "labels", data, {"made_by": "test"})
    create_array(group, "weights", (3, 1100, 40), np.float32)
    opened = open_data(tmp_path / "d.zarr")
    np.testing.assert_array_equal(opened["labels"][:], data)
    assert opened["labels"].chunks == (1, 1024, 40)
    assert opened["labels"].attrs["made_by"] == "test"
    assert opened["weights"].dtype == np.float32
    assert read_splits(tmp_path / "d.zarr") == {"train": [0, 1], "val": [2]}
    with pytest.raises(FileNotFoundError, match="not a Zarr"):
        open_data(tmp_path)


def test_make_splits():
    assert make_splits(10) == {"train": list(range(8)), "val": [8, 9]}
    assert make_splits(30)["val"] == list(range(24, 30))
    assert make_splits(2) == {"train": [0], "val": [1]}
    assert make_splits(1) == {"train": [0], "val": []}
    assert make_splits(5, [3, 0, 3]) == {"train": [1, 2, 4], "val": [0, 3]}
    with pytest.raises(ValueError, match="out of range"):
        make_splits(5, [5])
    with pytest.raises(ValueError, match="no training slice"):
        make_splits(2, [0, 1])


def test_atomic_path_renames_only_on_success(tmp_path):
    final = tmp_path / "out" / "group"
    with pytest.raises(RuntimeError, match="boom"), atomic_path(final) as tmp:
        tmp.mkdir()
        (tmp / "partial").write_text("x")
        raise RuntimeError("boom")
    assert not final.exists() and list((tmp_path / "out").iterdir()) == []
    final.mkdir()
    (final / "stale").write_text("old")
    with atomic_path(final) as tmp:
        tmp.mkdir()
        (tmp / "new").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["new"]
    assert sorted(p.name for p in final.parent.iterdir()) == ["group"]
