"""The plan of a volume's prediction: output blocks on the pooling grid (one Zarr chunk each), the
blocks batched into tasks, and the job every task gets.

The volume is cut into output blocks and the blocks into batches (one task each: neighbouring
blocks, so that a 10^12-voxel volume is thousands of tasks, not millions). Batches are generated
lazily (never a list of every block) and depend on the block grid only, so that a resumed run
cuts the same batches.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from unetpipe.predict.tiles import Pass, Views
from unetpipe.tiling import Geometry

if TYPE_CHECKING:
    from unetpipe.ngff import ImageArray

BATCH_BLOCKS = 256  # at most this many blocks per task ...
MIN_TASKS = 1000  # ... and one block per task while the volume has fewer blocks than this


def checked_block(block: Sequence[int] | None, geometry: Geometry) -> tuple[int, ...] | None:
    """A block shape asked for, as ints, checked against the net's pooling grid (None: none)."""
    if block is None:
        return None
    given = tuple(int(b) for b in block)
    dims = geometry.dims
    if len(given) != 3 or (dims == 2 and given[0] != 1) or min(given) < 1:
        raise ValueError(f"block must be (z, y, x) with z = 1 for a 2D net, got {given}")
    if any(b % a for b, a in zip(given[3 - dims :], geometry.align, strict=True)):
        raise ValueError(
            f"block extents must be multiples of {' x '.join(map(str, geometry.align))} "
            "(the pooling grid per axis)"
        )
    return given


# A 2D block spans at least this many output px per axis (whole tiles of it) where the image
# allows: per block, reading, writing and the calls into Zarr cost a fixed part, which blocks of
# one small tile (the tile measured in bfloat16: 700 px) pay 4x as often (bench_predict.py, 2048^2
# in bfloat16: blocks of 1024^2 1.11-1.17x faster end to end than of 512^2).
MIN_BLOCK_2D = 1024


def block_shape(
    shape: Sequence[int], dims: int, max_tile: Sequence[int], geometry: Geometry
) -> tuple[int, int, int]:
    """Output blocks made of whole tiles of the plan of the whole axis (the plan
    :func:`unetpipe.predict.tiles.pass_tile` timed the tile for): the fewest tiles of at most
    ``max_tile`` whose outputs step on the pooling grid, split evenly; a block takes one of them,
    in 2D as many as span :data:`MIN_BLOCK_2D` px. The blocks then run no more tiles than that
    plan; splitting the blocks evenly instead cut 1500 px at a 700 px tile into two blocks of 752
    px of two tiles each, 4 tiles where 3 cover it."""
    block = [1] if dims == 2 else []
    for size, tile, axis in zip(shape[3 - dims :], max_tile, geometry.axes, strict=True):
        largest = axis.tile_output(tile) // axis.align * axis.align
        count = math.ceil(size / largest)
        step = math.ceil(size / count / axis.align) * axis.align
        per_block = math.ceil(MIN_BLOCK_2D / step) if dims == 2 else 1
        block.append(min(per_block, count) * step)
    return tuple(block)  # type: ignore[return-value]


def batch_shape(grid: Sequence[int]) -> tuple[int, int, int]:
    """Blocks per task along (z, y, x): one while the volume has fewer than MIN_TASKS blocks,
    else up to BATCH_BLOCKS neighbours, filled along x, then y, then z. A function of the block
    grid only, so that a resumed run cuts the same batches."""
    wanted = min(BATCH_BLOCKS, max(1, math.prod(grid) // MIN_TASKS))
    batch = []
    for extent in reversed(grid):
        batch.append(min(extent, wanted))
        wanted = max(1, wanted // batch[-1])
    return tuple(reversed(batch))  # type: ignore[return-value]


@dataclass(frozen=True, kw_only=True)
class BlockPlan:
    """A volume (z, y, x) cut into output blocks, ``grid`` of them per axis, batched ``batch``
    blocks per task along each axis."""

    shape: tuple[int, int, int]
    block: tuple[int, int, int]
    grid: tuple[int, int, int]
    batch: tuple[int, int, int]

    @classmethod
    def of(cls, shape: Sequence[int], block: Sequence[int]) -> BlockPlan:
        """The plan of blocks ``block`` over a volume of ``shape``."""
        grid = tuple(math.ceil(n / b) for n, b in zip(shape, block, strict=True))
        return cls(shape=tuple(shape), block=tuple(block), grid=grid, batch=batch_shape(grid))

    @property
    def blocks(self) -> int:
        """How many blocks the volume has."""
        return math.prod(self.grid)

    def batches(self) -> Iterator[tuple[int, int, int]]:
        """Batch indices in order, generated lazily (never a list of every block)."""
        counts = [math.ceil(g / b) for g, b in zip(self.grid, self.batch, strict=True)]
        return itertools.product(*(range(c) for c in counts))  # type: ignore[return-value]

    def box(self, index: Sequence[int]) -> tuple[list[int], list[int]]:
        """Origin and size of the output block ``index`` (smaller at the volume's far border)."""
        origin = [i * b for i, b in zip(index, self.block, strict=True)]
        size = [min(b, n - o) for b, o, n in zip(self.block, origin, self.shape, strict=True)]
        return origin, size


@dataclass(frozen=True, kw_only=True)
class Job:
    """Everything a task needs to predict its batch of blocks; small and picklable."""

    model_path: str
    source: ImageArray  # (z, y, x), reopened lazily by each worker
    target: str  # the temporary output array
    geometry: Geometry
    plan: BlockPlan
    max_tile: tuple[int, ...]
    mirror: str
    views: Views  # test-time augmentation
    dtype: str
    device: str
    run: Pass  # precision resolved
