"""Overlap-tile geometry (Ronneberger et al. 2015, Fig. 2).

The network predicts only pixels whose full context lies in its input tile: a valid-convolution
U-Net loses ``halo`` pixels on each side (92 for the paper's network: 572 -> 388). An image is
covered by output blocks whose input tiles read the real neighbouring pixels as context; context
that passes the image border is extrapolated by mirroring.

Two details make tiling *exact* (equal to one pass of the network over the whole mirror-padded
image, not merely seamless looking):

* Tile origins lie on multiples of ``align = 2**(depth - 1)``, so every tile sees the 2x2
  max-pooling grid of the whole-image pass. Valid outputs are 16k + 4 wide (depth 5); stepping
  tiles by the output size would shift that grid from tile to tile, so tiles step by the output
  size rounded down to a multiple of ``align`` and neighbouring outputs overlap by a few pixels.
* Mirroring is numpy's ``reflect`` by default (``abc|ba``: the border pixel is the mirror axis and
  is not repeated) or numpy's ``symmetric`` (``abc|cb``, edge repeated; this is what Dask calls
  ``reflect``). Both extend periodically when the context is wider than the image.

For ``padding="same"`` networks (not the paper's) the same geometry applies with a halo wide enough
that the zero padding at tile borders only touches pixels that are cropped away.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from unetpipe.model import layout, output_size, valid_input_size

MIRROR_MODES = ("reflect", "symmetric")


def mirror_indices(start: int, stop: int, size: int, mode: str = "reflect") -> np.ndarray:
    """Indices into an axis of ``size`` pixels for positions ``start..stop-1``, mirrored outside.

    ``mode`` is numpy's ``np.pad`` mode name: ``reflect`` (edge not repeated) or ``symmetric``.
    """
    if mode not in MIRROR_MODES:
        raise ValueError(f"mirror mode must be one of {MIRROR_MODES}, got {mode!r}")
    if size < 1:
        raise ValueError("cannot mirror an empty axis")
    positions = np.arange(start, stop)
    if mode == "reflect":
        if size == 1:
            return np.zeros_like(positions)
        period = 2 * (size - 1)
        folded = np.mod(positions, period)
        return np.where(folded < size, folded, period - folded)
    folded = np.mod(positions, 2 * size)
    return np.where(folded < size, folded, 2 * size - 1 - folded)


def read_mirrored(
    array: Any, start: Sequence[int], stop: Sequence[int], mode: str = "reflect"
) -> np.ndarray:
    """Region ``[start, stop)`` of any sliceable array (numpy, Zarr), mirrored past its borders.

    Reads only the bounding box of the needed pixels, once.
    """
    indices = [
        mirror_indices(a, b, n, mode) for a, b, n in zip(start, stop, array.shape, strict=True)
    ]
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in indices)
    data = np.asarray(array[box])
    return data[np.ix_(*[i - i.min() for i in indices])]


@dataclass(frozen=True)
class AxisGeometry:
    """Tile geometry of a U-Net along one axis: context per side, pooling alignment, valid tile
    extents. ``kernels``: the convolution extent along the axis at each level; ``pools``: the
    factor of each pooling (:func:`unetpipe.model.layout`; the paper: 3 and 2 throughout)."""

    padding: str
    kernels: tuple[int, ...]
    pools: tuple[int, ...]

    @property
    def align(self) -> int:
        """Tile origins on this grid see the whole-image pooling grid (2**(depth-1) in the paper's
        layout)."""
        return math.prod(self.pools)

    @functools.cached_property  # planning asks for it once per candidate tile of every block
    def halo(self) -> int:
        """Context pixels per side that a tile needs for exact outputs.

        Valid network: each double convolution loses kernel - 1 px per side at its level's scale
        (2 for the paper's 3x3, Fig. 1). Same network: the width of the band that zero padding
        reaches, grown by (kernel - 1) / 2 px per convolution, rounded up by each pooling,
        multiplied by each up-convolution's factor.
        """
        if self.padding == "valid":
            smallest = self.smallest_tile(1)
            axes = [(self.kernels, self.pools)]
            (output,) = output_size((smallest,), len(self.kernels), "valid", axes)
            return (smallest - output) // 2
        band, skips = 0, []
        for kernel, factor in zip(self.kernels[:-1], self.pools, strict=True):
            skips.append(band + kernel - 1)
            band = math.ceil(skips[-1] / factor)
        band += self.kernels[-1] - 1
        for skip, kernel, factor in reversed(
            list(zip(skips, self.kernels[:-1], self.pools, strict=True))
        ):
            band = max(factor * band, skip) + kernel - 1
        return band

    def smallest_tile(self, min_output: int) -> int:
        """Smallest valid input tile whose output covers ``min_output`` pixels."""
        return _smallest_tile(self, min_output)

    def tiles_up_to(self, limit: int) -> list[int]:
        """Valid input tile extents up to ``limit``, ascending (at least the smallest one).

        Valid extents step by ``align``: every pooling must see a multiple of its factor.
        """
        smallest = self.smallest_tile(1)
        return list(range(smallest, max(limit, smallest) + 1, self.align))

    def largest_tile(self, limit: int) -> int:
        """The largest valid input tile of at most ``limit`` px (the smallest one if none is)."""
        smallest = self.smallest_tile(1)
        return smallest + max(0, limit - smallest) // self.align * self.align

    def tile_output(self, tile: int) -> int:
        """Output extent kept from an input tile (ValueError naming the nearest valid tiles)."""
        smallest = self.smallest_tile(1)
        if tile < smallest or (tile - smallest) % self.align:
            below = self.tiles_up_to(tile)[-1]
            nearest = sorted({below, below + self.align} - {tile})
            raise ValueError(
                f"tile {tile} is not a valid input extent for a depth-{len(self.kernels)} U-Net "
                f"with {self.padding!r} padding; nearest valid tiles: {nearest}"
            )
        return tile - 2 * self.halo


@functools.cache
def _smallest_tile(axis: AxisGeometry, min_output: int) -> int:
    depth, kernels_pools = len(axis.kernels), (axis.kernels, axis.pools)
    if axis.padding == "valid":
        return valid_input_size(min_output, depth, "valid", kernels_pools)
    return valid_input_size(min_output + 2 * axis.halo, depth, "same", kernels_pools)


@dataclass(frozen=True)
class Geometry:
    """Tile geometry of a U-Net: one :class:`AxisGeometry` per axis (the same on every axis in
    the paper's layout; per axis for an anisotropic net, ``model.pool`` and ``model.kernel``)."""

    padding: str
    axes: tuple[AxisGeometry, ...]

    @classmethod
    def of(cls, model: Any) -> Geometry:
        """The geometry of a :class:`unetpipe.model.UNet` (or of its config)."""
        config = model if isinstance(model, dict) else model.config
        padding = config["padding"]
        return cls(padding, tuple(AxisGeometry(padding, k, p) for k, p in layout(config)))

    @property
    def dims(self) -> int:
        return len(self.axes)

    @property
    def align(self) -> tuple[int, ...]:
        """The pooling grid per axis (:attr:`AxisGeometry.align`)."""
        return tuple(a.align for a in self.axes)

    @property
    def halo(self) -> tuple[int, ...]:
        """Context per side per axis (:attr:`AxisGeometry.halo`)."""
        return tuple(a.halo for a in self.axes)

    def smallest_tile(self, min_output: Sequence[int]) -> tuple[int, ...]:
        """Per axis, the smallest valid tile whose output covers ``min_output``."""
        return tuple(a.smallest_tile(m) for a, m in zip(self.axes, min_output, strict=True))

    def tile_output(self, tile: Sequence[int]) -> tuple[int, ...]:
        """Per axis, the output extent kept from an input tile (ValueError naming the axis and
        its nearest valid tiles where one is invalid)."""
        outputs = []
        for index, (axis, extent) in enumerate(zip(self.axes, tile, strict=True)):
            try:
                outputs.append(axis.tile_output(extent))
            except ValueError as err:
                name = "zyx"[3 - self.dims + index]
                raise ValueError(f"{err} (axis {name} of tile {tuple(tile)})") from None
        return tuple(outputs)


@dataclass(frozen=True)
class AxisPlan:
    """Tiles along one axis of a region of ``size`` output pixels.

    Tile ``k`` reads input ``[starts[k], starts[k] + tile)`` of the region's padded input (region
    origin minus the halo) and predicts outputs ``[starts[k], starts[k] + output)`` of the region.
    """

    size: int
    tile: int
    output: int
    starts: tuple[int, ...]

    @property
    def read_length(self) -> int:
        """Padded input pixels the tiles read: halo + size + halo + the alignment overhang."""
        return self.starts[-1] + self.tile


def plan_axis(size: int, max_tile: int, geometry: AxisGeometry) -> AxisPlan:
    """Cover ``size`` output pixels with the fewest tiles of at most ``max_tile``, each as small
    as that count allows (tiles fitted to the image), origins on multiples of ``geometry.align``."""
    if size < 1:
        raise ValueError(f"cannot tile an empty axis (size {size})")

    def starts(tile: int) -> tuple[int, ...] | None:
        out = geometry.tile_output(tile)
        if out >= size:
            return (0,)
        step = out // geometry.align * geometry.align
        return tuple(range(0, size - out + step, step)) if step else None

    # A tile covering the whole axis needs one tile; larger ones only cost more.
    limit = min(max_tile, geometry.smallest_tile(size))
    plans = {tile: starts(tile) for tile in geometry.tiles_up_to(limit) if tile <= limit}
    plans = {tile: s for tile, s in plans.items() if s is not None}
    if not plans:
        raise ValueError(
            f"tiles up to {max_tile} px predict fewer than {geometry.align} px each and cannot "
            f"step over {size} px; use a tile of at least {geometry.smallest_tile(geometry.align)}"
        )
    fewest = min(len(s) for s in plans.values())
    tile = min(t for t, s in plans.items() if len(s) == fewest)
    return AxisPlan(size, tile, geometry.tile_output(tile), plans[tile])


def activation_bytes(config: dict[str, Any], tile: Sequence[int], batch_size: int = 1) -> int:
    """Estimated peak memory of one inference forward pass (float32 feature maps).

    At the peak the skip connections of all levels are alive (a geometric sum dominated by the
    first level: level l has 2**l times the channels on the tile shrunk by the poolings above it)
    plus about four first-level maps while the last level is decoded.
    """
    pixels = math.prod(tile)
    axes, depth = layout(config), config["depth"]
    shrink = [math.prod(pools[i] for _, pools in axes) for i in range(depth - 1)]
    skips = sum(2**level / math.prod(shrink[:level]) for level in range(depth))
    return int(4 * batch_size * config["base_channels"] * pixels * (skips + 4))


def max_tile_for_budget(
    config: dict[str, Any],
    geometry: Geometry,
    memory_bytes: float,
    batch_size: int = 1,
    extent: Sequence[int] | None = None,
) -> tuple[int, ...]:
    """Largest valid tile, per axis, whose forward pass fits ``memory_bytes``: the largest
    extent n such that the largest valid tile of at most n px on every axis fits. With the
    ``extent`` to predict (output px per axis), an axis stops growing once one tile covers it,
    so the budget goes to the axes that still need tiles (a thin stack of sections: tiles as wide
    as the budget allows in the plane). A budget that fits no tile of
    :data:`MIN_BUDGET_OUTPUT` output px per axis is a ValueError naming the least sensible
    budget: smaller tiles spend nearly all their work on the overlap (Fig. 2)."""
    least = MIN_BUDGET_OUTPUT[geometry.dims]
    cover = extent or (1 << 16,) * geometry.dims
    floor = geometry.smallest_tile([min(least, c) for c in cover])
    whole = geometry.smallest_tile(cover)

    def tile(limit: int) -> tuple[int, ...]:
        return tuple(
            min(max(a.largest_tile(limit), f), w)
            for a, f, w in zip(geometry.axes, floor, whole, strict=True)
        )

    need = activation_bytes(config, floor, batch_size)
    if need > memory_bytes:
        raise ValueError(
            f"a memory budget of {memory_bytes / 2**30:.3g} GiB fits no tile with "
            f"{least} output px per axis; give at least "
            f"{math.ceil(need / 2**30 * 1000) / 1000:g} GiB (memory_gb, --memory-gb) or a tile"
        )
    step = min(geometry.align)
    best, limit = floor, max(floor)
    while limit < max(whole):
        limit += step
        candidate = tile(limit)
        if activation_bytes(config, candidate, batch_size) > memory_bytes:
            break
        best = candidate
    return best


MIN_BUDGET_OUTPUT = {2: 64, 3: 1}
"""Least output extent per axis of a tile chosen from a memory budget, for 2D and 3D nets (a 3D
net of the paper's width fits few tiles in a few GiB: any that fits is taken)."""
