import numpy as np
import pytest
import zarr

from unetpipe.ngff import open_image
from unetpipe.segment import segment_slice, segment_zarr


def two_touching_disks():
    """Two disks of radius 12 whose centres are 20 px apart: one connected blob."""
    yy, xx = np.mgrid[:40, :60]
    disks = ((yy - 20) ** 2 + (xx - 20) ** 2 < 144) | ((yy - 20) ** 2 + (xx - 40) ** 2 < 144)
    return disks.astype(np.float32)


def test_components_and_small_objects():
    prob = np.zeros((30, 30), np.float32)
    prob[2:10, 2:10] = 0.9
    prob[15:25, 15:25] = 0.7
    prob[0, 29] = 1.0  # a 1-px speck
    labels = segment_slice(prob, threshold=0.5, method="components", min_size=4)
    assert labels.dtype == np.uint32 and labels.max() == 2
    assert (labels[2:10, 2:10] == 1).all() and (labels[15:25, 15:25] == 2).all()
    assert labels[0, 29] == 0
    assert segment_slice(prob, threshold=0.8, method="components", min_size=4).max() == 1


@pytest.mark.parametrize("relief", ["distance", "probability"])
def test_watershed_splits_touching_cells(relief):
    prob = two_touching_disks()
    assert segment_slice(prob, method="components").max() == 1
    labels = segment_slice(prob, method="watershed", relief=relief, min_distance=7)
    assert labels.max() == 2
    assert labels[20, 20] != labels[20, 40] and labels[20, 20] > 0 and labels[20, 40] > 0
    assert ((labels > 0) == (prob > 0.5)).all()  # the split only divides the foreground


def test_bad_parameters():
    with pytest.raises(ValueError, match="method"):
        segment_slice(np.zeros((4, 4)), method="magic")
    with pytest.raises(ValueError, match="slice"):
        segment_slice(np.zeros((2, 4, 4)))


def test_segment_zarr_multi_chunk_slices(tmp_path):
    prob = np.zeros((3, 40, 60), np.float32)
    prob[0] = two_touching_disks()  # one blob across all four (y, x) chunks
    prob[1, 5:15, 5:50] = 1.0  # a bar across the x chunk border
    prob[2, 30:38, 2:10] = 1.0
    prob[2, 30:38, 40:58] = 1.0
    pred = zarr.create_array(
        str(tmp_path / "pred.zarr"), shape=(2, 3, 40, 60), chunks=(2, 1, 20, 30), dtype=np.uint8
    )
    pred[1] = np.round(prob * 255).astype(np.uint8)
    pred[0] = 255 - pred[1]
    out = tmp_path / "seg.zarr"
    segment_zarr(pred.store.root, out, {"method": "components", "min_size": 4}, threads=2)
    seg = open_image(out)
    assert seg.shape == (3, 40, 60) and seg.chunks == (1, 20, 30) and seg.dtype == np.uint32
    labels = seg[:]
    assert len(np.unique(labels[0])) == 2 and len(np.unique(labels[1])) == 2  # one object each
    assert sorted(np.unique(labels)) == [0, 1, 2, 3, 4]  # distinct over the stack
    for z in range(3):
        expected = segment_slice(prob[z], method="components", min_size=4)
        offset = labels[z][expected > 0].min() - 1
        np.testing.assert_array_equal(labels[z], np.where(expected > 0, expected + offset, 0))
    assert seg.attrs["segment"]["method"] == "components"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_segment_zarr_rejects_bad_input(tmp_path):
    pred = zarr.create_array(str(tmp_path / "p.zarr"), shape=(2, 1, 8, 8), dtype=np.float32)
    with pytest.raises(ValueError, match="unknown segment parameters"):
        segment_zarr(pred.store.root, tmp_path / "s.zarr", {"thresh": 0.5})
    one_class = zarr.create_array(str(tmp_path / "q.zarr"), shape=(1, 1, 8, 8), dtype=np.float32)
    with pytest.raises(ValueError, match="classes"):
        segment_zarr(one_class.store.root, tmp_path / "s.zarr")
    assert not (tmp_path / "s.zarr").exists()
