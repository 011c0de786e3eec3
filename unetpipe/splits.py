"""Which labelled slices train a network and which score it: nothing is chosen on scored slices.

A run uses the dataset group's own split (attribute ``splits``, from ``dataset.val_slices``) or
one fold of a cross-validation (config section ``crossval``): ``k`` contiguous folds of the
labelled slices (fold ``fold-<i>`` scores the i-th block), or, for the Cell Tracking Challenge,
one sequence held out in turn (fold ``val-<sequence>``: trained on every labelled frame of the other
sequences, scored on the gold-truth frames of this one, so that frames of one sequence, which
look alike, never sit on both sides).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unetpipe.config import check_crossval
from unetpipe.io import DataGroup, make_splits, open_data, read_splits

Split = dict[str, list[int]]


def consecutive_runs(slices: Sequence[int]) -> list[tuple[int, int]]:
    """The runs ``[start, stop)`` of consecutive slice indices in ``slices`` (a 3D network reads
    each run as a volume)."""
    runs: list[tuple[int, int]] = []
    for z in sorted({int(z) for z in slices}):
        if runs and runs[-1][1] == z:
            runs[-1] = (runs[-1][0], z + 1)
        else:
            runs.append((z, z + 1))
    return runs


def fold_names(crossval: Mapping[str, Any] | None) -> list[str]:
    """The folds of a ``crossval`` section (``{"k": int, "sequences": [str]}``, checked by
    :func:`unetpipe.config.check_crossval`); [] when off."""
    check_crossval(crossval)
    k, sequences = int((crossval or {}).get("k", 0)), list((crossval or {}).get("sequences", []))
    return [f"fold-{i}" for i in range(1, k + 1)] if k else [f"val-{s}" for s in sequences]


def gold(attrs: Mapping[str, Any], slices: Sequence[int]) -> list[int]:
    """The slices among ``slices`` whose truth is gold (all of them for data without ``frames``):
    the only ones measures and choices are made on when silver truth is trained on too."""
    frames = attrs.get("frames")
    if not frames:
        return [int(z) for z in slices]
    return [int(z) for z in slices if frames[z].get("truth", "gold") == "gold"]


def tuning(attrs: Mapping[str, Any], train: Sequence[int], silver_truth: bool = False) -> list[int]:
    """The training slices ``train`` that fix the post-processing (``segment.tune``): the gold ones,
    or with ``silver_truth`` every one (silver truth where a frame has no gold)."""
    return [int(z) for z in train] if silver_truth else gold(attrs, train)


def run_split(group: DataGroup, config: Mapping[str, Any], fold: str | None = None) -> Split | None:
    """The split a command run with a config file uses: ``fold`` of its ``crossval`` section, or
    its ``dataset.val_slices`` (validation slices, every other labelled slice trains), or None
    (the group's own ``splits``). Both at once is a ValueError."""
    val_slices = list(config["dataset"]["val_slices"])
    if fold and val_slices:
        raise ValueError(
            f"--fold {fold} and dataset.val_slices {val_slices} both choose the validation "
            "slices: drop one"
        )
    if fold:
        return resolve(group, config["crossval"], fold)
    if val_slices:
        return make_splits(group["labels"].shape[0], val_slices)
    return None


def rule_split(data: str | Path, split: Mapping[str, Any]) -> Split | None:
    """The split a rule's ``params.split`` names for the dataset group ``data``: None for ``{}``
    (the group's own ``splits``), else fold ``fold`` of ``crossval`` (:func:`resolve`)."""
    return resolve(open_data(data), **split) if split else None


def resolve(
    group: DataGroup, crossval: Mapping[str, Any] | None = None, fold: str | None = None
) -> Split:
    """The training and validation slices of ``fold`` (None: the group's own ``splits``)."""
    if fold is None:
        return read_splits(group)
    names = fold_names(crossval)
    if fold not in names:
        raise ValueError(f"no fold {fold!r} in crossval {dict(crossval or {})}; folds: {names}")
    attrs = group.attrs
    n = group["labels"].shape[0]
    if fold.startswith("fold-"):
        blocks = np.array_split(np.arange(n), int(crossval["k"]))  # type: ignore[index]
        held = blocks[int(fold[len("fold-") :]) - 1].tolist()
    else:
        sequence = fold[len("val-") :]
        frames = attrs.get("frames") or []
        sequences = sorted({str(f["sequence"]) for f in frames})
        if sequence not in sequences:
            raise ValueError(f"fold {fold}: the dataset has no sequence {sequence!r} {sequences}")
        held = [i for i, f in enumerate(frames) if str(f["sequence"]) == sequence]
    split = {"train": [i for i in range(n) if i not in set(held)], "val": gold(attrs, held)}
    if not split["train"] or not split["val"]:
        raise ValueError(f"fold {fold}: needs labelled slices outside it and gold ones inside it")
    return split
