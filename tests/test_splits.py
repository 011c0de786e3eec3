import numpy as np
import pytest
import zarr

from unetpipe.splits import consecutive_runs, gold, rule_split, tuning

# a Cell Tracking Challenge group's frames with dataset.silver_truth: gold truth on 1 and 3 only
FRAMES = [{"sequence": "01", "frame": t, "truth": "gold" if t % 2 else "silver"} for t in range(5)]


@pytest.mark.parametrize("silver_truth, expected", [(False, [1, 3]), (True, [0, 1, 3, 4])])
def test_tuning_slices_are_the_gold_training_frames_or_with_silver_truth_all(
    silver_truth, expected
):
    train = [0, 1, 3, 4]  # slice 2 is scored
    assert tuning({"frames": FRAMES}, train, silver_truth) == expected
    assert gold({"frames": FRAMES}, train) == [1, 3]


def test_data_without_frames_is_all_gold():
    assert tuning({}, [4, 0], False) == tuning({}, [4, 0], True) == [4, 0]


def test_consecutive_runs_of_slices():
    assert consecutive_runs([5, 0, 1, 2, 7, 6, 9]) == [(0, 3), (5, 8), (9, 10)]
    assert consecutive_runs([]) == []


def test_rule_split_is_none_for_the_group_split_else_the_fold(tmp_path):
    group = zarr.open_group(str(tmp_path), mode="w")
    group.attrs["splits"] = {"train": [1, 2, 3], "val": [0]}
    labels = np.ones((4, 2, 2), np.uint32)
    group.create_array("labels", data=labels, chunks=(1, 2, 2), config={"write_empty_chunks": True})
    assert rule_split(tmp_path, {}) is None
    fold = {"crossval": {"k": 2, "sequences": []}, "fold": "fold-2"}
    assert rule_split(tmp_path, fold) == {"train": [0, 1], "val": [2, 3]}
