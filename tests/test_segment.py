import numpy as np
import pytest
import zarr
from conftest import run_rule_script

from unetpipe import sections, segment
from unetpipe.affinities import OFFSETS_2D, OFFSETS_3D, affinity_targets
from unetpipe.cli import main
from unetpipe.config import load_config
from unetpipe.evaluate import score_instances
from unetpipe.ngff import open_image, open_labels
from unetpipe.segment import (
    score,
    segment_slice,
    segment_stage,
    segment_volume,
    segment_zarr,
    tune_on_slices,
    tune_segmentation,
)


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


def test_segment_zarr_checks_its_settings_once_not_per_slice(tmp_path, monkeypatch):
    calls = []
    validated = sections.section_params
    monkeypatch.setattr(sections, "section_params", lambda *a: calls.append(a) or validated(*a))
    pred = zarr.create_array(
        str(tmp_path / "pred.zarr"), shape=(2, 6, 8, 8), chunks=(2, 1, 8, 8), dtype=np.float32
    )
    pred[:] = np.stack([np.full((6, 8, 8), 0.2), np.full((6, 8, 8), 0.8)])
    segment_zarr(pred.store.root, tmp_path / "seg.zarr", {"min_size": 0})
    assert calls == [("segment", {"min_size": 0})]
    assert (open_image(tmp_path / "seg.zarr")[:] == np.arange(1, 7)[:, None, None]).all()
    calls.clear()  # the stage converts its section once, segment_zarr takes it as it is
    segment_stage(pred.store.root, tmp_path / "stage.zarr", {"min_size": 0})
    assert calls == [("segment", {"min_size": 0})]
    assert (open_image(tmp_path / "stage.zarr")[:] == open_image(tmp_path / "seg.zarr")[:]).all()


def test_segment_zarr_rejects_bad_input(tmp_path):
    pred = zarr.create_array(str(tmp_path / "p.zarr"), shape=(2, 1, 8, 8), dtype=np.float32)
    with pytest.raises(ValueError, match="unknown segment parameters"):
        segment_zarr(pred.store.root, tmp_path / "s.zarr", {"thresh": 0.5})
    one_class = zarr.create_array(str(tmp_path / "q.zarr"), shape=(1, 1, 8, 8), dtype=np.float32)
    with pytest.raises(ValueError, match="classes"):
        segment_zarr(one_class.store.root, tmp_path / "s.zarr")
    assert not (tmp_path / "s.zarr").exists()


def ridge_slices():
    """Two slices, each two flat regions (cell probability 0.9) split by a vertical ridge of
    probability 0.35 (boundary 0.65); the truth is the two regions."""
    prob = np.full((2, 20, 30), 0.9, np.float32)
    prob[:, :, 15] = 0.35
    truth = np.zeros((2, 20, 30), np.uint32)
    truth[:, :, :15], truth[:, :, 16:] = 1, 2
    return prob, truth


def test_agglomerate_slice_ridge_merges_above_its_level():
    prob, _ = ridge_slices()
    cfg = {"method": "agglomerate", "relief": "probability", "sigma": 0.0, "min_size": 0}
    apart = segment_slice(prob[0], merge_threshold=0.6, **cfg)
    assert apart.max() == 2 and apart[5, 3] != apart[5, 25] and (apart > 0).all()
    assert (segment_slice(prob[0], merge_threshold=0.7, **cfg) == 1).all()
    masked = segment_slice(prob[0], merge_threshold=0.7, mask=True, threshold=0.5, **cfg)
    assert masked.max() == 2 and (masked[:, 15] == 0).all()  # the ridge is background


class Recording:
    """An array that records which slices (first index of its (z, ...) reads) were read."""

    def __init__(self, array, axis=0):
        self.array, self.axis, self.read = array, axis, set()
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim
        self.chunks = getattr(array, "chunks", array.shape)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        z = key[self.axis] if len(key) > self.axis else slice(None)
        self.read.update(range(self.shape[self.axis])[z] if isinstance(z, slice) else [z])
        return self.array[key]


def test_tuner_picks_the_known_best_and_reads_only_training_slices():
    prob, truth = ridge_slices()
    prob[1] = 0.1  # slice 1 is not for tuning: it would score nothing
    pred = np.stack([1 - prob, prob])
    cfg = {"method": "agglomerate", "relief": "probability", "sigma": 0.0}
    grid = {"merge_threshold": [0.5, 0.6, 0.7], "min_size": [0]}
    recorded_pred, recorded_truth = Recording(pred, axis=1), Recording(truth)
    tune = {"grid": grid, "measure": "v_rand"}
    chosen, table = tune_on_slices(recorded_pred, recorded_truth, [0], merge(cfg), tune)
    assert recorded_pred.read == {0} and recorded_truth.read == {0}
    assert chosen["merge_threshold"] == 0.5 and chosen["method"] == "agglomerate"  # first best
    assert [r["merge_threshold"] for r in table] == [0.5, 0.6, 0.7]
    assert [r["v_rand"] for r in table[:2]] == [1.0, 1.0] and table[2]["v_rand"] < 0.7
    # components: the threshold between the ridge and the cells is the only perfect one
    chosen, table = tune_segmentation(
        prob[:1], truth[:1], {"method": "components"}, {"threshold": [0.2, 0.5, 0.95]}, "seg"
    )
    assert chosen["threshold"] == 0.5 and [r["seg"] for r in table][1] == 1.0
    assert [r["seg"] for r in table][2] == 0.0  # nothing above 0.95


def test_tuning_on_threads_gives_the_same_table():
    """The costly combinations (threshold x sigma) run on threads, a run setting: the same rows
    in the same order, the same choice."""
    prob, truth = ridge_slices()
    cfg = {"method": "agglomerate", "relief": "probability"}
    grid = {
        "threshold": [0.2, 0.5],
        "sigma": [0.0, 1.0],
        "merge_threshold": [0.5, 0.7],
        "min_size": [0, 50],
    }
    serial = tune_segmentation(prob, truth, cfg, grid, "op_csb")
    assert len(serial[1]) == 16
    assert tune_segmentation(prob, truth, cfg, grid, "op_csb", threads=3) == serial


def test_tuning_by_op_csb_drops_the_fragments_seg_ignores():
    truth = np.zeros((1, 30, 30), np.uint32)
    truth[0, 2:12, 2:12], truth[0, 16:26, 16:26] = 1, 2
    prob = np.where(truth > 0, 0.9, 0.1).astype(np.float32)
    for y, x in [(20, 3), (3, 20), (27, 27)]:
        prob[0, y : y + 2, x : x + 2] = 0.9  # 3 specks: spurious segments
    cfg, grid = {"method": "components"}, {"threshold": [0.5], "min_size": [0, 16]}
    chosen, table = tune_segmentation(prob, truth, cfg, grid, "seg")
    assert chosen["min_size"] == 0 and [r["seg"] for r in table] == [1.0, 1.0]  # blind to them
    chosen, table = tune_segmentation(prob, truth, cfg, grid, "op_csb")
    assert chosen["min_size"] == 16
    assert [r["op_csb"] for r in table] == pytest.approx([(1 + 1 - 3 / 20) / 2, 1.0])
    labels = segment_volume(prob, method="components", threshold=0.5, min_size=0)
    assert score(labels, truth, "det") == pytest.approx(1 - 3 / 20)
    known = np.ones(truth.shape, bool)
    known[0, 18:, :10] = known[0, :10, 18:] = known[0, 26:, 26:] = False  # the specks: unknown
    assert score(labels, truth, "det", known=known) == 1.0
    chosen, table = tune_segmentation(prob, truth, cfg, grid, "op_csb", known)
    assert chosen["min_size"] == 0 and [r["op_csb"] for r in table] == [1.0, 1.0]


def cell_with_rim_fragment():
    """A cell (a 30 x 30 square) whose right rim (4 px wide) a faint line cuts off, and a speck
    apart from it; the truth: the whole square."""
    prob = np.full((1, 40, 50), 0.05, np.float32)
    prob[0, 5:35, 5:35] = 0.95
    prob[0, 5:35, 30] = 0.55  # foreground at threshold 0.5, boundary 0.45 > merge_threshold
    prob[0, 36:39, 42:45] = 0.95  # 9 px, touching nothing
    truth = np.zeros(prob.shape, np.uint32)
    truth[0, 5:35, 5:35] = 1
    return prob, truth


def test_small_objects_merge_into_their_cell():
    prob, truth = cell_with_rim_fragment()
    cfg = {"method": "agglomerate", "mask": True, "threshold": 0.5, "sigma": 0.0}
    cfg |= {"relief": "probability", "merge_threshold": 0.3, "min_size": 200}
    dropped = segment_volume(prob, **cfg)
    assert dropped.max() == 1 and (dropped[0, 5:35, 5:30] == 1).all()
    assert (dropped[0, :, 31:] == 0).all()  # the rim (4 x 30 = 120 px) is a hole
    merged = segment_volume(prob, **cfg, small_objects="merge")
    assert merged.max() == 1 and (merged[truth > 0] == 1).all() and (merged[truth == 0] == 0).all()
    assert score(merged, truth, "seg") == 1.0 and score(dropped, truth, "seg") < 0.9
    grid = {"small_objects": ["drop", "merge"], "min_size": [200]}
    chosen, table = tune_segmentation(prob, truth, cfg, grid, "seg")
    assert chosen["small_objects"] == "merge" and [r["seg"] for r in table][1] == 1.0
    with pytest.raises(ValueError, match="needs method agglomerate"):
        segment_volume(prob, method="components", small_objects="merge")
    with pytest.raises(ValueError, match="needs method agglomerate"):
        tune_segmentation(prob, truth, {"method": "components"}, grid, "seg")
    with pytest.raises(ValueError, match="small_objects must be one of"):
        tune_segmentation(prob, truth, cfg, {"small_objects": ["fill"]}, "seg")


def merge(cfg):
    from unetpipe.config import section_params

    return section_params("segment", cfg)


def test_tuner_scores_equal_direct_scores():
    rng = np.random.default_rng(0)
    prob = ndimage_smooth(rng.random((3, 40, 40)))
    truth = segment_volume(prob, method="components", threshold=0.5, min_size=0)
    for method in ("components", "watershed", "agglomerate"):
        chosen, table = tune_segmentation(prob, truth, {"method": method}, measure="seg")
        for row in table[::5]:
            params = chosen | {k: v for k, v in row.items() if k != "seg"}
            assert row["seg"] == pytest.approx(score(segment_volume(prob, **params), truth, "seg"))
        scores = score_instances(segment_volume(prob, **chosen), truth)
        assert scores["seg"] == pytest.approx(score(segment_volume(prob, **chosen), truth, "seg"))
        assert scores["instances_v_rand"] == pytest.approx(
            score(segment_volume(prob, **chosen), truth, "v_rand")
        )


def ndimage_smooth(x):
    from scipy import ndimage

    x = ndimage.gaussian_filter(x, (0, 2, 2))
    return ((x - x.min()) / (x.max() - x.min())).astype(np.float32)


def write_predictions(path, prob, chunks):
    pred = zarr.create_array(
        str(path), shape=(2, *prob.shape), chunks=(2, *chunks), dtype=np.float32
    )
    pred[1] = prob
    pred[0] = 1 - prob
    return pred


@pytest.mark.parametrize("mode", ["2d", "3d"])
def test_segment_zarr_agglomerate_blockwise_equals_whole_volume(tmp_path, mode):
    prob = ndimage_smooth(np.random.default_rng(1).random((4, 48, 40)))
    write_predictions(tmp_path / "pred.zarr", prob, (1, 16, 16))
    cfg = {"method": "agglomerate", "mode": mode, "merge_threshold": 0.45, "min_size": 4}
    segment_zarr(tmp_path / "pred.zarr", tmp_path / "seg.zarr", cfg, threads=2)
    seg = open_image(tmp_path / "seg.zarr")
    whole = segment_volume(prob, **cfg)
    assert seg.chunks == (1, 16, 16) and 5 < whole.max()
    np.testing.assert_array_equal(seg[:], whole)  # identical labels, not only up to relabelling
    segment_zarr(tmp_path / "pred.zarr", tmp_path / "b.zarr", cfg | {"block": [2, 48, 7]})
    np.testing.assert_array_equal(open_image(tmp_path / "b.zarr")[:], whole)


def test_segment_zarr_object_across_seams_keeps_one_id(tmp_path):
    prob = np.full((2, 40, 60), 0.05, np.float32)
    prob[0, 5:35, 10:50] = 0.9  # a square over four (y, x) blocks
    prob[1, 15:25, 2:58] = 0.9  # a bar over four blocks along x
    write_predictions(tmp_path / "pred.zarr", prob, (1, 20, 15))
    cfg = {"method": "agglomerate", "mask": True, "merge_threshold": 0.3, "min_size": 0}
    segment_zarr(tmp_path / "pred.zarr", tmp_path / "seg.zarr", cfg)
    labels = open_image(tmp_path / "seg.zarr")[:]
    assert sorted(np.unique(labels)) == [0, 1, 2]
    assert (labels[0][prob[0] > 0.5] == 1).all() and (labels[1][prob[1] > 0.5] == 2).all()


def test_segment_zarr_tunes_on_training_slices(tmp_path, caplog):
    prob, truth = ridge_slices()
    write_predictions(tmp_path / "pred.zarr", prob, (1, 20, 30))
    labels = Recording(truth)
    cfg = {
        "method": "agglomerate",
        "relief": "probability",
        "sigma": 0.0,
        "merge_threshold": 0.8,
        "tune": {"enabled": True, "grid": {"merge_threshold": [0.5, 0.7], "min_size": [0]}},
    }
    with caplog.at_level("INFO", logger="unetpipe.segment"):
        segment_zarr(
            tmp_path / "pred.zarr", tmp_path / "seg.zarr", cfg, truth=labels, tune_slices=[1]
        )
    assert labels.read == {1}
    seg = open_image(tmp_path / "seg.zarr")
    tuning = seg.attrs["tuning"]
    assert tuning["chosen"] == {"merge_threshold": 0.5, "min_size": 0} and tuning["slices"] == [1]
    assert [row["v_rand"] for row in tuning["table"]][0] == 1.0 and tuning["measure"] == "v_rand"
    assert seg.attrs["segment"]["merge_threshold"] == 0.5
    assert seg[:].max() == 4  # both slices split by the ridge, as tuned
    assert "fixed on slices [1]" in caplog.text
    with pytest.raises(ValueError, match="labels and the training slices"):
        segment_zarr(tmp_path / "pred.zarr", tmp_path / "x.zarr", cfg)
    assert not (tmp_path / "x.zarr").exists()


def ctc_ridges(path):
    """A CTC-like group of four slices, each two regions of cell probability 0.9 split by a ridge
    of 0.5: slice 0 trains with gold truth (two cells), slices 1 and 2 with silver truth (one
    cell across the ridge), slice 3 is validation. Thresholds above the ridge suit the gold truth,
    below it the silver."""
    prob = np.full((4, 20, 30), 0.9, np.float32)
    prob[:, :, 15] = 0.5
    truth = np.ones((4, 20, 30), np.uint32)
    truth[[0, 3], :, 16:] = 2
    truth[[0, 3], :, 15] = 0
    group = zarr.open_group(str(path / "data.zarr"), mode="w")
    group.attrs.update(
        splits={"train": [0, 1, 2], "val": [3]},
        frames=[
            {"sequence": "01", "frame": z, "truth": "silver" if z in (1, 2) else "gold"}
            for z in range(4)
        ],
    )
    for name, array in [("raw", (prob * 200).astype(np.uint8)), ("labels", truth)]:
        group.create_array(
            name, data=array, chunks=(1, 20, 30), config={"write_empty_chunks": True}
        )
    write_predictions(path / "p.zarr", prob, (1, 20, 30))


def test_cli_and_rule_segment_alike(tmp_path):
    """``unetpipe segment --tune`` and rule segment (its script) run one stage: the same tuning
    slices (the gold training slices), choice and labels."""
    ctc_ridges(tmp_path)
    data, grid = tmp_path / "data.zarr", {"threshold": [0.3, 0.6], "min_size": [0]}
    config = load_config(
        {"segment": {"method": "components", "tune": {"enabled": True, "grid": grid}}}
    )
    run_rule_script(
        "segment",
        config,
        tmp_path,
        input={
            "predictions": tmp_path / "p.zarr",
            "group": data / "zarr.json",
            "labels": data / "labels",
            "raw_predictions": tmp_path / "p.zarr",
        },
        output=[str(tmp_path / "rule" / "seg.zarr")],
        wildcards={"array": "raw"},
    )
    args = ["segment", str(tmp_path / "p.zarr"), str(tmp_path / "cli" / "seg.zarr")]
    args += ["--image", str(data / "raw"), "--method", "components", "--tune", "--data", str(data)]
    args += ["--grid", "threshold=0.3,0.6", "--grid", "min_size=0"]
    every = [*args[:2], str(tmp_path / "all" / "seg.zarr"), *args[3:], "--tune-slices", "0-2"]
    assert main(args) == 0 and main(every) == 0  # every: the silver training slices too
    rule, cli, silver = (open_labels(tmp_path / n / "seg.zarr") for n in ("rule", "cli", "all"))
    np.testing.assert_array_equal(cli[:], rule[:])
    tuning = {k: v for k, v in rule.attrs["tuning"].items() if k != "seconds"}
    assert {k: v for k, v in cli.attrs["tuning"].items() if k != "seconds"} == tuning
    assert cli.attrs["segment"] == rule.attrs["segment"]
    assert tuning["slices"] == [0] and tuning["chosen"] == {"threshold": 0.6, "min_size": 0}
    assert rule[:].max() == 8  # every slice split by the ridge, as the gold truth is
    assert silver.attrs["tuning"]["chosen"]["threshold"] == 0.3  # one cell across the ridge


def test_bad_agglomerate_and_tuning_parameters(tmp_path):
    prob, truth = ridge_slices()
    with pytest.raises(ValueError, match="mode 3d needs method agglomerate"):
        segment_volume(prob, method="components", mode="3d")
    with pytest.raises(ValueError, match=r"segment.mode: .4d. is not one of"):
        segment_volume(prob, method="agglomerate", mode="4d")
    with pytest.raises(ValueError, match="unknown segment parameters"):
        tune_segmentation(prob, truth, {"method": "components"}, {"thresh": [0.5]})
    with pytest.raises(ValueError, match="cannot vary method"):
        tune_segmentation(prob, truth, {}, {"method": ["components", "watershed"]})
    with pytest.raises(ValueError, match="measure"):
        tune_segmentation(prob, truth, {}, measure="iou")
    with pytest.raises(ValueError, match="not consecutive"):
        tune_on_slices(
            np.stack([1 - prob, prob]),
            truth,
            [0, 2],
            merge({"mode": "3d", "method": "agglomerate"}),
            {"grid": {}, "measure": "v_rand"},
        )


def test_predictions_with_a_lost_chunk_or_of_another_shape_are_one_line(tmp_path):
    """Not zeros: a missing chunk of the predictions is named; tuning against labels of another
    extent is refused before anything is read or written."""
    prob, truth = ridge_slices()
    write_predictions(tmp_path / "pred.zarr", prob, (1, 20, 30))
    chunk = tmp_path / "pred.zarr" / "c" / "0" / "1" / "0" / "0"
    saved = chunk.read_bytes()
    chunk.unlink()
    with pytest.raises(ValueError, match=r"pred.zarr: chunk c/0/1/0/0 is missing"):
        segment_zarr(tmp_path / "pred.zarr", tmp_path / "seg.zarr", {"min_size": 0})
    chunk.write_bytes(saved[:9])
    with pytest.raises(ValueError, match=r"pred.zarr: chunk c/0/1/0/0 cannot be decoded"):
        segment_zarr(tmp_path / "pred.zarr", tmp_path / "seg.zarr", {"min_size": 0})
    chunk.write_bytes(saved)
    cfg = {"tune": {"enabled": True, "grid": {"min_size": [0]}}}
    for labels in (truth[:1], truth[:, :, :20]):
        with pytest.raises(ValueError, match=r"pred.zarr: \(z, y, x\) = \(2, 20, 30\) does not"):
            segment_zarr(
                tmp_path / "pred.zarr", tmp_path / "seg.zarr", cfg, truth=labels, tune_slices=[0]
            )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.zarr"]


# --- mutex watershed on affinity maps ------------------------------------------------------------


def touching_affinities():
    """:func:`ridge_slices`' truth with the cells touching (no membrane) and affinities softened
    to 0.8 (same cell) and 0.2 (across the contact): bias 0 keeps the cells apart (repulsion
    0.8 before attraction 0.2 across), bias -0.7 merges them (repulsion 0.1)."""
    _, truth = ridge_slices()
    truth[:, :, 15] = 1
    targets = np.stack([affinity_targets(t, OFFSETS_2D)[0] for t in truth], axis=1)
    return (0.2 + 0.6 * targets).astype(np.float32), truth


def write_affinities(path, affinities, offsets=OFFSETS_2D):
    pred = zarr.create_array(
        str(path), shape=affinities.shape, chunks=(len(offsets), 1, 20, 15), dtype=np.float16
    )
    pred[:] = affinities
    pred.attrs["offsets"] = offsets
    return pred


def test_mutex_watershed_volume_is_its_slices_made_distinct():
    affinities, truth = touching_affinities()
    labels = segment_volume(affinities, OFFSETS_2D, method="mutex_watershed", min_size=0)
    assert labels.dtype == np.uint32 and labels.max() == 4
    assert score(labels, truth, "v_rand") == 1.0
    one = segment_volume(affinities[:, 1], OFFSETS_2D, method="mutex_watershed", min_size=0)
    np.testing.assert_array_equal(one, labels[1] - 2)
    merged = segment_volume(affinities, OFFSETS_2D, method="mutex_watershed", bias=-0.7)
    assert merged.max() == 2
    with pytest.raises(ValueError, match="mode 3d needs 3D offsets"):
        segment_volume(affinities, OFFSETS_2D, method="mutex_watershed", mode="3d")
    with pytest.raises(ValueError, match="its offsets"):
        segment_volume(affinities, method="mutex_watershed")


def test_segment_zarr_mutex_watershed_tunes_the_bias(tmp_path):
    affinities, truth = touching_affinities()
    write_affinities(tmp_path / "pred.zarr", affinities)
    labels = Recording(truth)
    cfg = {
        "method": "mutex_watershed",
        "bias": -0.7,
        "tune": {"enabled": True, "grid": {"bias": [-0.7, 0.0], "min_size": [0, 16]}},
    }
    segment_zarr(tmp_path / "pred.zarr", tmp_path / "seg.zarr", cfg, 2, labels, [1])
    assert labels.read == {1}
    seg = open_image(tmp_path / "seg.zarr")
    assert seg.attrs["tuning"]["chosen"] == {"bias": 0.0, "min_size": 0}
    np.testing.assert_array_equal(
        seg[:], segment_volume(affinities, OFFSETS_2D, method="mutex_watershed", min_size=0)
    )
    # The other methods read the nearest-neighbour mean of an affinity map.
    segment_zarr(tmp_path / "pred.zarr", tmp_path / "c.zarr", {"min_size": 0})
    nearest = affinities[:2].astype(np.float16).astype(np.float32).mean(axis=0)
    expected = segment_volume(nearest, min_size=0)
    np.testing.assert_array_equal(open_image(tmp_path / "c.zarr")[:], expected)
    for cfg, message in (
        ({"method": "mutex_watershed", "mode": "3d"}, "mode 3d needs 3D offsets"),
        ({"method": "mutex_watershed", "stride": 0}, "stride"),
    ):
        with pytest.raises(ValueError, match=message):
            segment_zarr(tmp_path / "pred.zarr", tmp_path / "x.zarr", cfg)
    write_predictions(tmp_path / "classes.zarr", truth.astype(np.float32), (1, 20, 30))
    with pytest.raises(ValueError, match="not affinities"):
        segment_zarr(tmp_path / "classes.zarr", tmp_path / "x.zarr", {"method": "mutex_watershed"})
    assert not (tmp_path / "x.zarr").exists()


@pytest.mark.parametrize("mask", [True, False])
def test_mutex_tuner_scores_equal_direct_scores(mask):
    """With a mask the tuner drops small objects after one Mutex Watershed per bias; without, it
    labels every min_size anew (dropped pixels are flooded): both score as segmenting directly."""
    affinities, truth = touching_affinities()
    noisy = np.clip(affinities + np.random.default_rng(3).normal(0, 0.3, affinities.shape), 0, 1)
    noisy = noisy.astype(np.float32)
    cfg = {"method": "mutex_watershed", "mask": mask, "threshold": 0.4}
    grid = {"bias": [-0.2, 0.2], "min_size": [0, 4, 30]}
    chosen, table = tune_segmentation(noisy, truth, cfg, grid, "op_csb", offsets=OFFSETS_2D)
    assert len(table) == 6 and len({row["op_csb"] for row in table}) > 1
    for row in table:
        params = {**chosen, "bias": row["bias"], "min_size": row["min_size"]}
        direct = segment_volume(noisy, OFFSETS_2D, **params)
        assert row["op_csb"] == pytest.approx(score(direct, truth, "op_csb"))


def test_segment_zarr_mutex_watershed_3d_and_its_memory_bound(tmp_path, monkeypatch):
    truth = np.zeros((4, 12, 14), np.uint32)
    truth[:2, :, :6], truth[:2, :, 7:], truth[2:] = 1, 2, 3
    affinities = affinity_targets(truth, OFFSETS_3D)[0]
    write_affinities(tmp_path / "pred.zarr", affinities, OFFSETS_3D)
    cfg = {"method": "mutex_watershed", "mode": "3d", "min_size": 0}
    segment_zarr(tmp_path / "pred.zarr", tmp_path / "seg.zarr", cfg)
    labels = open_image(tmp_path / "seg.zarr")[:]
    assert score(labels, truth, "v_rand", mode="3d") == 1.0 and labels.max() == 3
    monkeypatch.setattr(segment, "MAX_3D_VOXELS", truth.size - 1)
    with pytest.raises(ValueError, match="set segment.mutex_block"):
        segment_zarr(tmp_path / "pred.zarr", tmp_path / "big.zarr", cfg)
    # By overlapping blocks: the same partition, in chunks of the blocks, no scratch left.
    blocks = {**cfg, "mutex_block": [2, 8, 8]}
    segment_zarr(tmp_path / "pred.zarr", tmp_path / "big.zarr", blocks, threads=2)
    big = open_image(tmp_path / "big.zarr")
    assert score(big[:], truth, "v_rand", mode="3d") == 1.0 and big[:].max() == 3
    assert big.attrs["segment"]["mutex_block"] == [2, 8, 8] and big.chunks == (2, 8, 8)
    np.testing.assert_array_equal(big[:], segment_volume(affinities, OFFSETS_3D, **blocks))
    assert not list(tmp_path.rglob(".mutex-blocks"))
    with pytest.raises(ValueError, match="mutex_block is for method mutex_watershed in mode 3d"):
        segment_volume(
            affinities[:, 0], OFFSETS_2D, method="mutex_watershed", mutex_block=[1, 8, 8]
        )
