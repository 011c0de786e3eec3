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
    AxisGeometry,
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


def _axis(depth: int, padding: str) -> AxisGeometry:
    """One axis of the paper's layout."""
    return Geometry.of({"depth": depth, "padding": padding, "dims": 2}).axes[0]


def test_mirror_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="mirror mode"):
        mirror_indices(0, 3, 3, "wrap")
    with pytest.raises(ValueError, match="empty"):
        mirror_indices(0, 3, 0)


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_valid_halo_and_tiles_match_the_network(depth: int) -> None:
    geometry = _axis(depth, "valid")
    tiles = geometry.tiles_up_to(600)
    assert tiles[0] == valid_input_size(1, depth)
    for tile in tiles:
        assert output_size(tile, depth) == tile - 2 * geometry.halo == geometry.tile_output(tile)
    assert _axis(5, "valid").halo == 92  # 572 -> 388 in the paper


def test_same_halo_is_the_reach_of_zero_padding() -> None:
    """A same-padded net on a constant image: the output is periodic (period ``align``, from the
    up-convolutions) except within exactly ``halo`` pixels of the border, where zero padding
    reaches."""
    torch.manual_seed(0)
    for depth in (2, 3, 4):
        model = UNet(base_channels=8, depth=depth, padding="same", dropout=0).eval()
        geometry = Geometry.of(model).axes[0]
        size = geometry.smallest_tile(8 * geometry.align)
        with torch.no_grad():
            row = model(torch.ones(1, 1, size, size))[0, 0, size // 2].numpy()
        interior = row[size // 2 - size // 2 % geometry.align :][: geometry.align]
        periodic = np.resize(interior, size)
        changed = np.flatnonzero(np.abs(row - periodic) > 1e-6)
        assert changed[changed < size // 2].max() == geometry.halo - 1, depth


def test_same_halo_per_axis_of_an_anisotropic_net() -> None:
    """The same reach, per axis, for a 3D net that pools z only at its second pooling and
    convolves it 1 x 3 x 3 at the first level: along each axis through the centre of a constant
    volume, the output differs from its periodic interior exactly within that axis's halo."""
    torch.manual_seed(0)
    layout = {"pool": [[1, 2, 2], [2, 2, 2]], "kernel": [[1, 3, 3], [3, 3, 3], [3, 3, 3]]}
    model = UNet(base_channels=4, depth=3, dims=3, padding="same", dropout=0, **layout).eval()
    geometry = Geometry.of(model)
    size = geometry.smallest_tile([8 * a for a in geometry.align])
    with torch.no_grad():
        out = model(torch.ones(1, 1, *size))[0, 0].numpy()
    for axis, (n, align, halo) in enumerate(zip(size, geometry.align, geometry.halo, strict=True)):
        centre = [s // 2 for s in size]
        centre[axis] = slice(None)
        line = out[tuple(centre)]
        interior = line[n // 2 - n // 2 % align :][:align]
        changed = np.flatnonzero(np.abs(line - np.resize(interior, n)) > 1e-6)
        assert changed[changed < n // 2].max() == halo - 1, axis


def test_invalid_tile_names_the_nearest_valid_tiles() -> None:
    with pytest.raises(ValueError, match=r"nearest valid tiles: \[556, 572\]"):
        _axis(5, "valid").tile_output(570)
    with pytest.raises(ValueError, match=r"\[96, 104\]"):
        _axis(4, "same").tile_output(101)


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
    geometry = _axis(depth, padding)
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
    geometry = _axis(5, "valid")  # the smallest tile, 188, predicts only 4 px
    assert plan_axis(3, 188, geometry).starts == (0,)
    with pytest.raises(ValueError, match="fewer than 16 px"):
        plan_axis(100, 200, geometry)


def test_memory_budget_picks_the_largest_fitting_tile() -> None:
    config = UNet(base_channels=16, depth=4).config
    geometry = Geometry.of(config)
    budget = 2**30
    tile, same = max_tile_for_budget(config, geometry, budget)
    assert tile == same
    assert activation_bytes(config, (tile, tile)) <= budget
    assert activation_bytes(config, (tile + 8, tile + 8)) > budget
    assert max_tile_for_budget(config, geometry, budget, batch_size=4)[0] < tile


def test_the_budget_grows_only_the_axes_that_still_need_tiles() -> None:
    """A thin anisotropic stack (issue 34): one cube limit for every axis gave (234, 220, 220)
    tiles predicting 36 x 36 px in the plane for a 30-section stack; with the extent to predict,
    z stops at the tile covering 30 sections and the budget widens the plane."""
    config = UNet(
        dims=3,
        depth=5,
        base_channels=16,
        pool=[[1, 2, 2]] * 3 + [[2, 2, 2]],
        kernel=[[1, 3, 3]] * 3 + [[3, 3, 3]] * 2,
    ).config
    geometry, budget = Geometry.of(config), 4 * 2**30
    z, y, x = geometry.axes
    assert max_tile_for_budget(config, geometry, budget) == (234, 220, 220)
    tile = max_tile_for_budget(config, geometry, budget, extent=(30, 512, 512))
    assert tile[0] == z.smallest_tile(30) == 46 and tile[1] == tile[2]
    assert geometry.tile_output(tile)[0] == 30
    assert activation_bytes(config, tile) <= budget
    assert activation_bytes(config, (46, tile[1] + 16, tile[2] + 16)) > budget
    # A plane the budget covers: every axis stops at its covering tile.
    small = max_tile_for_budget(config, geometry, budget, extent=(30, 100, 100))
    assert small == (46, y.smallest_tile(100), x.smallest_tile(100))


def test_activation_memory_follows_the_pooling_of_each_axis() -> None:
    """Level l holds 2**l x base channels on the tile shrunk by the poolings above it: 4x per
    in-plane pooling of an anisotropic net, 8x per cubic one."""
    poolings = [[1, 2, 2], [2, 2, 2]]
    config = UNet(dims=3, depth=3, base_channels=8, pool=poolings).config
    skips = 1 + 2 / 4 + 4 / (4 * 8)
    assert activation_bytes(config, (10, 20, 20)) == int(4 * 8 * 4000 * (skips + 4))


def test_a_budget_too_small_for_sensible_tiles_is_refused_naming_the_least() -> None:
    """Issue 29: 1e-6 GiB planned 65,536 blocks of 4 x 4 px without a word."""
    from unetpipe.tiling import MIN_BUDGET_OUTPUT

    config = UNet(base_channels=64, depth=5).config
    geometry, axis = Geometry.of(config), _axis(5, "valid")
    floor = axis.smallest_tile(MIN_BUDGET_OUTPUT[2])
    assert floor - 2 * axis.halo >= 64 > floor - 16 - 2 * axis.halo
    least = activation_bytes(config, (floor, floor))
    assert max_tile_for_budget(config, geometry, least) == (floor, floor)
    message = r"a memory budget of 1e-06 GiB fits no tile with 64 output px per axis; give at least"
    with pytest.raises(
        ValueError, match=message + rf" {math.ceil(least / 2**30 * 1000) / 1000:g} GiB"
    ):
        max_tile_for_budget(config, geometry, 1e-6 * 2**30)
    with pytest.raises(ValueError, match="fits no tile with 64 output px"):
        max_tile_for_budget(config, geometry, least - 1)
