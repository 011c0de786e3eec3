"""Overlap-tile geometry (Fig. 2): mirroring, valid tile extents, halos, tile plans."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unetpipe.model import UNet, output_size, valid_input_size
from unetpipe.tiling import (
    Geometry,
    activation_bytes,
    max_tile_for_budget,
    mirror_indices,
    plan_axis,
    read_mirrored,
)


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(1, 12),
    before=st.integers(0, 40),
    after=st.integers(0, 40),
    mode=st.sampled_from(["reflect", "symmetric"]),
)
def test_mirror_indices_match_numpy_pad(size: int, before: int, after: int, mode: str) -> None:
    values = np.arange(size) * 10
    expected = np.pad(values, (before, after), mode=mode)
    assert np.array_equal(values[mirror_indices(-before, size + after, size, mode)], expected)


def test_dask_reflect_is_numpy_symmetric() -> None:
    import dask.array as da

    values = np.arange(6).reshape(2, 3)
    padded = da.overlap.overlap(da.from_array(values), depth=2, boundary="reflect")
    assert np.array_equal(padded.compute(), read_mirrored(values, (-2, -2), (4, 5), "symmetric"))


def test_read_mirrored_reads_interior_and_mirrors_borders() -> None:
    values = np.arange(7 * 9).reshape(7, 9)
    expected = np.pad(values, ((3, 5), (4, 2)), mode="reflect")[1:12, 2:13]
    assert np.array_equal(read_mirrored(values, (-2, -2), (9, 9), "reflect"), expected)
    assert np.array_equal(read_mirrored(values, (1, 2), (4, 6)), values[1:4, 2:6])


def test_mirror_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="mirror mode"):
        mirror_indices(0, 3, 3, "wrap")
    with pytest.raises(ValueError, match="empty"):
        mirror_indices(0, 3, 0)


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_valid_halo_and_tiles_match_the_network(depth: int) -> None:
    geometry = Geometry(depth, "valid", 2)
    tiles = geometry.tiles_up_to(600)
    assert tiles[0] == valid_input_size(1, depth)
    for tile in tiles:
        assert output_size(tile, depth) == tile - 2 * geometry.halo == geometry.tile_output(tile)
    assert Geometry(5, "valid", 2).halo == 92  # 572 -> 388 in the paper


def test_same_halo_is_the_reach_of_zero_padding() -> None:
    """A same-padded net on a constant image: the output is periodic (period ``align``, from the
    up-convolutions) except within exactly ``halo`` pixels of the border, where zero padding
    reaches."""
    torch.manual_seed(0)
    for depth in (2, 3, 4):
        model = UNet(base_channels=8, depth=depth, padding="same", dropout=0).eval()
        geometry = Geometry.of(model)
        size = geometry.smallest_tile(8 * geometry.align)
        with torch.no_grad():
            row = model(torch.ones(1, 1, size, size))[0, 0, size // 2].numpy()
        interior = row[size // 2 - size // 2 % geometry.align :][: geometry.align]
        periodic = np.resize(interior, size)
        changed = np.flatnonzero(np.abs(row - periodic) > 1e-6)
        assert changed[changed < size // 2].max() == geometry.halo - 1, depth


def test_invalid_tile_names_the_nearest_valid_tiles() -> None:
    with pytest.raises(ValueError, match=r"nearest valid tiles: \[556, 572\]"):
        Geometry(5, "valid", 2).tile_output(570)
    with pytest.raises(ValueError, match=r"\[96, 104\]"):
        Geometry(4, "same", 2).tile_output(101)


@settings(max_examples=80, deadline=None)
@given(
    size=st.integers(1, 3000),
    depth=st.integers(2, 5),
    padding=st.sampled_from(["valid", "same"]),
    extra=st.integers(0, 1100),
)
def test_plan_axis_covers_with_aligned_fitted_tiles(
    size: int, depth: int, padding: str, extra: int
) -> None:
    geometry = Geometry(depth, padding, 2)
    max_tile = geometry.smallest_tile(geometry.align) + extra  # tiles that can step
    plan = plan_axis(size, max_tile, geometry)
    assert plan.tile <= max_tile
    assert plan.output == geometry.tile_output(plan.tile)
    assert all(start % geometry.align == 0 for start in plan.starts)
    assert plan.starts[0] == 0 and plan.starts[-1] + plan.output >= size
    gaps = np.diff(plan.starts)
    assert np.all(gaps <= plan.output) and np.all(gaps > 0)
    # Fitted: one alignment step smaller needs more tiles (or is not a valid tile at all).
    smaller = plan.tile - geometry.align
    if smaller >= geometry.tiles_up_to(0)[0]:
        try:
            assert len(plan_axis(size, smaller, geometry).starts) > len(plan.starts)
        except ValueError as err:  # or smaller tiles cannot cover the axis at all
            assert "cannot step" in str(err)


def test_plan_axis_rejects_tiles_that_cannot_step() -> None:
    geometry = Geometry(5, "valid", 2)  # the smallest tile, 188, predicts only 4 px
    assert plan_axis(3, 188, geometry).starts == (0,)
    with pytest.raises(ValueError, match="fewer than 16 px"):
        plan_axis(100, 200, geometry)


def test_memory_budget_picks_the_largest_fitting_tile() -> None:
    config = UNet(base_channels=16, depth=4).config
    geometry = Geometry(4, "valid", 2)
    budget = 2**30
    tile = max_tile_for_budget(config, geometry, budget)
    assert activation_bytes(config, (tile, tile)) <= budget
    assert activation_bytes(config, (tile + 8, tile + 8)) > budget
    assert max_tile_for_budget(config, geometry, budget, batch_size=4) < tile


def test_a_budget_too_small_for_sensible_tiles_is_refused_naming_the_least() -> None:
    """Issue 29: 1e-6 GiB planned 65,536 blocks of 4 x 4 px without a word."""
    from unetpipe.tiling import MIN_BUDGET_OUTPUT

    config = UNet(base_channels=64, depth=5).config
    geometry = Geometry(5, "valid", 2)
    floor = geometry.smallest_tile(MIN_BUDGET_OUTPUT[2])
    assert floor - 2 * geometry.halo >= 64 > floor - 16 - 2 * geometry.halo
    least = activation_bytes(config, (floor, floor))
    assert max_tile_for_budget(config, geometry, least) == floor
    message = r"a memory budget of 1e-06 GiB fits no tile with 64 output px per axis; give at least"
    with pytest.raises(
        ValueError, match=message + rf" {math.ceil(least / 2**30 * 1000) / 1000:g} GiB"
    ):
        max_tile_for_budget(config, geometry, 1e-6 * 2**30)
    with pytest.raises(ValueError, match="fits no tile with 64 output px"):
        max_tile_for_budget(config, geometry, least - 1)
