"""Global intensity normalisation: statistics of the whole training set, never per tile.

Per-tile normalisation makes tiles disagree where they meet (seams); with one mean and standard
deviation for the dataset, a tile's input is a fixed affine map of the raw data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def dataset_statistics(array: Any, slices: Sequence[int]) -> dict[str, float]:
    """Mean and standard deviation over z-slices of a (z, y, x) array, read one slice at a time."""
    if len(slices) == 0:
        raise ValueError("dataset_statistics needs at least one slice")
    count, total, total_sq = 0, 0.0, 0.0
    for z in slices:
        image = np.asarray(array[int(z)], dtype=np.float64)
        count += image.size
        total += float(image.sum())
        total_sq += float(np.square(image).sum())
    mean = total / count
    std = float(np.sqrt(max(total_sq / count - mean**2, 0.0)))
    return {"mean": mean, "std": std if std > 0 else 1.0}


def normalize(image: np.ndarray, stats: dict[str, float]) -> np.ndarray:
    """``(image - mean) / std`` as float32."""
    return ((np.asarray(image, dtype=np.float32) - stats["mean"]) / stats["std"]).astype(np.float32)
