"""Global normalisation statistics against numpy over the selected slices."""

import numpy as np
import pytest

from unetpipe.intensity import dataset_statistics, normalize


def test_statistics_match_numpy_over_selected_slices():
    rng = np.random.default_rng(0)
    volume = rng.integers(0, 256, size=(5, 17, 23), dtype=np.uint8)
    stats = dataset_statistics(volume, [0, 3, 4])
    selected = volume[[0, 3, 4]].astype(np.float64)
    assert stats["mean"] == pytest.approx(selected.mean(), rel=1e-12)
    assert stats["std"] == pytest.approx(selected.std(), rel=1e-9)
    normalised = normalize(volume[[0, 3, 4]], stats)
    assert normalised.dtype == np.float32
    assert normalised.mean() == pytest.approx(0, abs=1e-5)
    assert normalised.std() == pytest.approx(1, abs=1e-5)


def test_constant_image_gets_unit_std_and_empty_selection_fails():
    assert dataset_statistics(np.full((2, 4, 4), 7), [1]) == {"mean": 7.0, "std": 1.0}
    with pytest.raises(ValueError, match="at least one slice"):
        dataset_statistics(np.zeros((2, 4, 4)), [])
