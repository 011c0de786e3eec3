"""Training tiles (Section 3): the stream of (image, target, weight map) samples a run sees.

For an affinity network (``offsets``) the target is the affinity map of the augmented label tile
(:func:`unetpipe.affinities.affinity_targets`) and the weights its ``valid`` mask: the labels are
warped with nearest-neighbour interpolation, so the targets follow the image exactly; affinities
whose offset leaves the output tile, or whose truth is unknown (the group's ``mask``, carried
through the warp as a reserved label value), are left out of the loss. No weight map (Eq. 2).

Sample ``i`` is a pure function of ``(seed, i)``: a random tile of a random training slice,
augmented as in Section 3.1 (or unaugmented), or a tile of the precomputed bank; for a 3D network
a random tile of a random run of consecutive training slices, deformed in 3D
(:mod:`unetpipe.augment3d`), the run's ends mirrored (other slices are never read). The stream
therefore does not depend on the number of DataLoader workers or processes, and a restarted run
sees the same tiles. Iteration ``t`` takes samples ``t * batch .. (t + 1) * batch - 1``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from unetpipe.affinities import affinity_targets, check_offsets
from unetpipe.augment import augment_sample, open_bank, sample_rng
from unetpipe.augment import sizes as tile_sizes
from unetpipe.augment3d import augment_volume
from unetpipe.config import choices
from unetpipe.intensity import normalize
from unetpipe.io import open_data
from unetpipe.sections import AugmentConfig
from unetpipe.splits import consecutive_runs
from unetpipe.weights import training_labels, training_labels_box


class TileDataset(Dataset):
    """Training tiles ``(image (1, in, in), target (out, out), weights (out, out))``.

    ``data="on_the_fly"`` augments a random tile of a random training slice (Section 3.1),
    ``data="none"`` cuts it unaugmented; ``data="bank"`` draws a tile of the precomputed bank.
    Sample ``index`` depends on ``(seed, index)`` only. Targets are class 1 = cell (labels > 0,
    after the weight maps' separation gap); with ``offsets``, ``(image, affinities (K, out, out),
    valid (K, out, out))`` instead, float32.
    """

    def __init__(
        self,
        data: str | Path,
        slices: Sequence[int],
        stats: dict[str, float],
        input_size: int | Sequence[int],
        output_size: int | Sequence[int],
        augment: AugmentConfig | Mapping[str, Any] | None,
        seed: int,
        mode: str = "on_the_fly",
        bank: Sequence[str | Path] = (),
        offsets: Sequence[Sequence[int]] | None = None,
        dims: int = 2,
        spacing: Sequence[float] = (1.0, 1.0, 1.0),
    ) -> None:
        if mode not in choices("train", "data"):
            raise ValueError(f"train.data must be on_the_fly, bank or none, got {mode!r}")
        if dims == 3 and mode == "bank":
            raise ValueError(
                "the bank holds 2D tiles: train a 3D network with train.data on_the_fly"
            )
        self.offsets = None if offsets is None else check_offsets(offsets, dims)
        self.dims, self.spacing = dims, tuple(float(v) for v in spacing)
        self.runs = consecutive_runs(slices)
        lengths = np.array([stop - start for start, stop in self.runs], dtype=float)
        self.run_odds = lengths / max(lengths.sum(), 1.0)  # 3D: runs drawn by their length
        if self.offsets is not None and mode == "bank" and "mask" in open_data(data):
            raise ValueError(
                f"{data} has a mask (unknown truth), which the bank's labels do not carry: train "
                "model.target affinities with train.data on_the_fly"
            )
        if mode == "bank":
            _check_bank(bank, stats, input_size, output_size)
        augment = AugmentConfig.from_mapping(augment)
        if mode == "none":
            augment = augment.without_augmentation()
        self.data, self.slices, self.stats = str(data), list(slices), stats
        self.input_size, self.output_size = input_size, output_size
        self.augment, self.seed, self.mode = augment, seed, mode
        self.bank_paths = [str(p) for p in bank]
        self._source: Any = None  # opened lazily, once per worker process
        self._volumes: dict[tuple[int, int], tuple[np.ndarray, ...]] = {}  # 3D: runs read

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rng = sample_rng(self.seed, index)
        if self._source is None:
            bank = self.mode == "bank"
            self._source = open_bank(self.bank_paths) if bank else open_data(self.data)
        if self.mode == "bank":
            image, labels, weights = self._source[int(rng.integers(len(self._source)))]
        elif self.dims == 3:
            start, stop = self.runs[int(rng.choice(len(self.runs), p=self.run_odds))]
            image, labels, weights = augment_volume(
                *self._run(start, stop),
                input_size=self.input_size,
                output_size=self.output_size,
                params=self.augment,
                rng=rng,
                spacing=self.spacing,
            )
        else:
            z = self.slices[int(rng.integers(len(self.slices)))]
            image, labels, weights = augment_sample(
                normalize(self._source["raw"][z], self.stats),
                self._labels(z),
                self._source["weights"][z],
                input_size=self.input_size,
                output_size=self.output_size,
                params=self.augment,
                rng=rng,
            )
        if self.offsets is not None:
            known = labels != _UNKNOWN if "mask" in self._source else None
            targets, valid = affinity_targets(labels, self.offsets, known)
            image = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)[None])
            return image, torch.from_numpy(targets), torch.from_numpy(valid.astype(np.float32))
        return (
            torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)[None]),
            torch.from_numpy(np.asarray(labels) > 0).long(),
            torch.from_numpy(np.ascontiguousarray(weights, dtype=np.float32)),
        )

    def _run(self, start: int, stop: int) -> tuple[Any, Any, Any]:
        """Image, training labels (unknown truth as :data:`_UNKNOWN`) and weights of the slices
        ``start:stop``: read once per worker process when they take at most
        :data:`CACHED_RUN_BYTES`, else :class:`_Boxes` that read each tile's box (the same
        values, from the store)."""
        if (start, stop) not in self._volumes:
            shape = (stop - start, *self._source["raw"].shape[1:])
            parts = (self._image, self._training_labels, self._weights)
            if _BYTES_PER_VOXEL * math.prod(shape) > CACHED_RUN_BYTES:
                return tuple(_Boxes(read, shape, start) for read in parts)
            whole = ((start, 0, 0), (stop, *shape[1:]))
            self._volumes[start, stop] = tuple(read(*whole) for read in parts)
        return self._volumes[start, stop]

    def _image(self, start: Sequence[int], stop: Sequence[int]) -> np.ndarray:
        """The normalised image of the box ``[start, stop)`` (z, y, x)."""
        return normalize(self._source["raw"][tuple(map(slice, start, stop))], self.stats)

    def _training_labels(self, start: Sequence[int], stop: Sequence[int]) -> np.ndarray:
        """The training labels of the box (:meth:`_labels` of a 3D box)."""
        box = tuple(map(slice, start, stop))
        return self._mark_unknown(training_labels_box(self._source, start, stop), box)

    def _weights(self, start: Sequence[int], stop: Sequence[int]) -> np.ndarray:
        return np.asarray(self._source["weights"][tuple(map(slice, start, stop))])

    def _labels(self, z: int) -> np.ndarray:
        """The training labels of slice ``z``; for affinities, unknown truth (the group's mask)
        as :data:`_UNKNOWN`, which the nearest-neighbour warp carries exactly."""
        return self._mark_unknown(training_labels(self._source, z), z)

    def _mark_unknown(self, labels: np.ndarray, where: Any) -> np.ndarray:
        """``labels`` of the group's labels at ``where``, with an affinity net's unknown truth
        (the group's mask there) as :data:`_UNKNOWN`."""
        if self.offsets is None or "mask" not in self._source:
            return labels
        return np.where(np.asarray(self._source["mask"][where]) > 0, labels, _UNKNOWN)


CACHED_RUN_BYTES = 2**30
"""A DataLoader worker keeps a run of training slices in memory up to this size (image, labels
and weights: :data:`_BYTES_PER_VOXEL` a voxel); a larger run is read box by box per tile."""
_BYTES_PER_VOXEL = 12


class _Boxes:
    """The image, labels or weights of a run of slices from ``z0`` on, as an array that reads
    only the box it is sliced with (all :func:`unetpipe.tiling.read_mirrored` asks of one)."""

    def __init__(self, read: Any, shape: tuple[int, ...], z0: int) -> None:
        self.read, self.shape, self.z0 = read, shape, z0

    def __getitem__(self, box: tuple[slice, ...]) -> np.ndarray:
        start, stop = [s.start for s in box], [s.stop for s in box]
        return self.read([start[0] + self.z0, *start[1:]], [stop[0] + self.z0, *stop[1:]])


_UNKNOWN = np.iinfo(np.uint32).max
"""Label value of unknown truth in an affinity network's label tiles (never an instance id)."""


def _check_bank(
    paths: Sequence[str | Path],
    stats: dict[str, float],
    input_size: int | Sequence[int],
    output_size: int | Sequence[int],
) -> None:
    """The bank must hold tiles of this network's sizes, normalised like the dataset."""
    if not paths:
        raise ValueError("train.data is 'bank' but no bank shards were given (run rule augment)")
    bank = open_bank(paths)
    sizes = (bank.input_size, bank.output_size)
    wanted = (tile_sizes(input_size, 2, "input_size"), tile_sizes(output_size, 2, "output_size"))
    if sizes != wanted:
        raise ValueError(
            f"the bank holds {sizes[0]} -> {sizes[1]} tiles but the network trains on "
            f"{input_size} -> {output_size}: rebuild the bank (rule augment)"
        )
    norm = bank.normalization
    if not np.allclose([norm["mean"], norm["std"]], [stats["mean"], stats["std"]]):
        raise ValueError(f"the bank was normalised with {bank.normalization}, not {stats}")


class IterationSampler(Sampler[int]):
    """Sample indices of iterations ``start..stop-1`` that fall to process ``rank`` of ``world``.

    Iteration ``t`` uses samples ``t * batch .. (t + 1) * batch - 1`` of the global batch; each
    process takes its contiguous share, so any number of processes trains on the same tiles.
    """

    def __init__(self, start: int, stop: int, batch: int, rank: int = 0, world: int = 1) -> None:
        if batch % world:
            raise ValueError(f"train.batch_size {batch} is not divisible by {world} processes")
        self.start, self.stop, self.batch, self.rank, self.world = start, stop, batch, rank, world

    def __iter__(self) -> Iterator[int]:
        local = self.batch // self.world
        for t in range(self.start, self.stop):
            first = t * self.batch + self.rank * local
            yield from range(first, first + local)

    def __len__(self) -> int:
        return (self.stop - self.start) * (self.batch // self.world)
