"""Evaluation of a run (unetpipe.evaluate): metrics.json against values recomputed from
unetpipe.metrics, thresholds fixed on training slices, the Cell Tracking Challenge per sequence,
unknown truth (mask) left unscored."""

import json

import numpy as np
import pytest
import zarr
from conftest import config_file, make_run, run_rule_script

from unetpipe import metrics
from unetpipe.cli import main
from unetpipe.config import load_config
from unetpipe.evaluate import (
    CROSSVAL_MEASURES,
    PAPER,
    choose_thresholds,
    evaluate_run,
    fit_baseline,
    format_table,
    score_instances,
    score_sequences,
    score_volume,
    summarize_folds,
    summary,
    table2_dataset,
)
from unetpipe.ngff import open_image


def test_metrics_json(evaluated_run):
    tmp, data, report = evaluated_run
    assert json.loads((tmp / "metrics.json").read_text()) == report
    assert set(report["results"]) == {"val", "test"} and report["paper"] == PAPER
    val = report["results"]["val"]
    assert val["slices"] == [3, 4]
    truth = np.asarray(data["labels"][3:5])
    prob = np.asarray(zarr.open_array(str(tmp / "predictions/raw.zarr"))[1, 3:5], np.float32)
    unet = val["unet"]
    assert unet["pixel_error"] == pytest.approx(metrics.pixel_error(prob, truth))
    assert unet["v_rand"] == pytest.approx(metrics.isbi_scores(prob, truth)["v_rand"])
    assert unet["rand_error"] == pytest.approx(1 - unet["v_rand"])
    warping = metrics.warping_scores(prob, truth)
    assert unet["warping_error"] == warping["warping_error"]
    assert unet["warping_error_threshold"] == warping["warping_error_threshold"]
    assert (unet["warping_splits"], unet["warping_mergers"]) == (
        warping["warping_splits"],
        warping["warping_mergers"],
    )
    for key in ("pixel_error", "rand_error", "warping_error"):
        assert unet[key] < val["baseline"][key]  # the network beats thresholding
    assert val["baseline"]["v_rand_threshold"] == report["baseline"]["threshold"]
    # the baseline's instances are the components of its thresholded map, so their thinned
    # V_rand is the map's at that threshold (isbi_scores thins both on its own path)
    assert val["baseline"]["instances_v_rand_thinned"] == pytest.approx(val["baseline"]["v_rand"])
    instances = np.asarray(open_image(tmp / "segmentation/raw.zarr")[3:5])
    thinned = metrics.v_rand(
        *map(metrics.thin_boundaries, map(metrics.slice_unique, (instances, truth)))
    )
    assert unet["instances_v_rand_thinned"] == pytest.approx(thinned)
    assert unet["instances_v_rand_thinned"] != pytest.approx(unet["instances_v_rand"])
    assert report["results"]["test"]["slices"] == [0, 1]


def test_thinned_instance_v_rand_only_with_thinning():
    """``instances_v_rand_thinned`` of the components of a binary map is the ISBI protocol's
    thinned V_rand of that map; without thinning the key is absent."""
    rng = np.random.default_rng(0)
    truth = metrics.components(rng.random((2, 24, 24)) > 0.3)
    cell = (rng.random((2, 24, 24)) > 0.35).astype(np.float32)
    scores = score_instances(metrics.components(cell > 0.5), truth, thinning=True)
    expected = metrics.isbi_scores(cell, truth, thresholds=[0.5])["v_rand"]
    assert scores["instances_v_rand_thinned"] == pytest.approx(expected)
    assert "instances_v_rand_thinned" not in score_instances(cell.astype(int), truth)


def test_thresholds_fixed_on_training_slices(evaluated_run):
    """Every *_t_train measure is the measure at the threshold chosen on slices 0-2 (never on the
    scored 3-4), recomputed here from the metrics module."""
    tmp, data, report = evaluated_run
    pred = zarr.open_array(str(tmp / "predictions/raw.zarr"))
    prob = np.asarray(pred[1], np.float32)
    truth = np.asarray(data["labels"])
    grid = metrics.ISBI_THRESHOLDS
    f1 = metrics.pixel_fscores(prob[:3], truth[:3], grid)
    chosen = report["thresholds_from_training"]
    assert chosen["pixel_error"] == pytest.approx(grid[np.argmax(f1)])
    assert chosen["slice_v_rand"] == metrics.slice_v_rand(prob[:3], truth[:3])[1]
    assert chosen["v_rand"] == metrics.isbi_scores(prob[:3], truth[:3])["v_rand_threshold"]
    warping = metrics.warping_scores(prob[:3], truth[:3])
    assert chosen["warping_error"] == warping["warping_error_threshold"]
    unet = report["results"]["val"]["unet"]
    val_prob, val_truth = prob[3:5], truth[3:5]
    t = chosen["pixel_error"]
    assert unet["pixel_error_t_train"] == pytest.approx(
        1 - metrics.pixel_fscores(val_prob, val_truth, [t])[0]
    )
    t = chosen["v_rand"]
    assert unet["v_rand_t_train"] == pytest.approx(
        metrics.isbi_scores(val_prob, val_truth, [t])["v_rand"]
    )
    t = chosen["slice_v_rand"]
    assert unet["slice_v_rand_t_train"] == pytest.approx(
        metrics.slice_v_rand(val_prob, val_truth, [t])[0]
    )
    t = chosen["warping_error"]
    assert (
        unet["warping_error_t_train"]
        == metrics.warping_error(val_prob, val_truth, t)["warping_error"]
    )
    # a fixed threshold can only do as well as the best one on the scored slices
    for key in ("v_rand", "slice_v_rand"):
        assert unet[f"{key}_t_train"] <= unet[key] + 1e-12
    for key in ("pixel_error", "warping_error"):
        assert unet[f"{key}_t_train"] >= unet[key] - 1e-12
    baseline = report["results"]["val"]["baseline"]
    assert baseline["v_rand_t_train"] == pytest.approx(baseline["v_rand"])  # one threshold
    assert baseline["warping_error_t_train"] == baseline["warping_error"]


def test_choose_thresholds_prefers_the_training_optimum():
    """Cells at 0.35 over a background of 0.25 on the training slices: only t = 0.3 separates
    them there (for the warping error, t >= 0.4 leaves no cell and is not scored); slices whose
    background is 0.5 score worse at it than at their own best."""
    truth = np.zeros((2, 16, 16), np.uint32)
    truth[:, 2:7, 2:7], truth[:, 9:14, 9:14] = 1, 2
    prob = np.where(truth > 0, 0.35, 0.25)
    chosen = choose_thresholds(prob, truth, metrics.ISBI_THRESHOLDS.tolist(), False)
    assert chosen == {"pixel_error": 0.3, "v_rand": 0.3, "slice_v_rand": 0.3, "warping_error": 0.3}
    noisy = np.where(truth > 0, 0.75, 0.5)  # at t = 0.3 all is one component
    # both cells merged: split score 1, merge score 1/2, V_rand = 2/3
    assert metrics.slice_v_rand(noisy, truth, [chosen["slice_v_rand"]])[0] == pytest.approx(2 / 3)
    assert metrics.slice_v_rand(noisy, truth)[0] == 1.0


def test_baseline_polarity(tmp_path):
    data, _ = make_run(tmp_path, dark_cells=True)
    raw, labels = np.asarray(data["raw"][:3]), np.asarray(data["labels"][:3])
    dark = fit_baseline(raw, labels, sigma=2.0)
    bright = fit_baseline(255 - raw, labels, sigma=2.0)
    assert dark["inverted"] and not bright["inverted"]
    assert dark["train_f1"] == pytest.approx(bright["train_f1"], abs=0.02)
    assert 0.8 < dark["train_f1"] <= 1.0


def test_format_table_and_errors(evaluated_run, tmp_path):
    _, _, report = evaluated_run
    table = format_table(report["results"])
    assert table.splitlines()[0].split() == [
        "measure",
        "val",
        "u-net",
        "val",
        "baseline",
        "test",
        "u-net",
        "test",
        "baseline",
        "paper",
        "u-net",
    ]
    warping = next(line for line in table.splitlines() if line.startswith("warping error (split"))
    results = report["results"]
    scores = [
        results[n][who]["warping_error"] for n in ("val", "test") for who in ("unet", "baseline")
    ]
    assert warping.split()[-5:] == [*(f"{v:.6f}" for v in scores), "0.000353"]
    assert "not computed" not in table
    with pytest.raises(FileNotFoundError, match="evaluate"):
        summary(tmp_path)
    with pytest.raises(ValueError, match="unknown evaluate parameters"):
        evaluate_run(tmp_path / "data.zarr", {}, {}, tmp_path / "m.json", {"thinnning": False})


def test_cli_summary(evaluated_run, tmp_path, capsys):
    from unetpipe.cli import main

    tmp, _, _ = evaluated_run
    assert main(["summary", str(tmp)]) == 0
    assert "pixel error" in capsys.readouterr().out
    assert main(["summary", str(tmp_path)]) == 1


def test_score_sequences_exact():
    """Sequence 01 pools two frames; a segment on unannotated pixels costs IoU, not SEG."""
    truth = np.zeros((3, 6, 6), np.uint32)
    truth[0, 0:2, 0:2], truth[0, 4:6, 4:6] = 1, 2  # two 4-px cells
    truth[1, 0:3, 0:3] = 5  # a 9-px cell
    truth[2, 1:4, 1:4] = 3
    seg = np.zeros_like(truth)
    seg[0, 0:2, 0:3] = 7  # cell 1 and 2 more px: Jaccard 4/6; cell 2 missed
    seg[0, 0:2, 5] = 8  # unannotated pixels only: matches no reference object
    seg[1, 0:3, 0:2] = 1  # 6 of 9 px > half: Jaccard 6/9
    seg[2] = truth[2]
    frames = [{"sequence": "01", "frame": 3}, {"sequence": "01", "frame": 8}]
    frames.append({"sequence": "02", "frame": 0})
    out = score_sequences(seg, np.zeros_like(seg), truth, frames, "DIC-HeLa")
    assert sorted(out) == ["01", "02"]
    assert out["01"]["frames"] == [3, 8] and out["02"]["frames"] == [0]
    assert out["01"]["unet"]["seg"] == pytest.approx((4 / 6 + 0 + 6 / 9) / 3)
    assert out["01"]["unet"]["iou"] == pytest.approx((4 + 6) / (4 + 4 + 2 + 2 + 9))
    assert out["02"]["unet"]["seg"] == 1.0 and out["02"]["unet"]["iou"] == 1.0
    first, second = out["01"]["per_frame"]
    assert first["frame"] == 3 and second["frame"] == 8
    assert first["unet_seg"] == pytest.approx((4 / 6 + 0) / 2)
    assert first["unet_iou"] == pytest.approx(4 / (4 + 4 + 2 + 2))
    assert second["unet_seg"] == pytest.approx(6 / 9) and second["unet_iou"] == pytest.approx(6 / 9)
    assert first["baseline_seg"] == 0.0 and first["baseline_iou"] == 0.0
    assert out["01"]["baseline"]["seg"] == 0.0 and out["01"]["baseline"]["iou"] == 0.0
    assert out["01"]["paper_iou"] == PAPER["iou"]["DIC-HeLa"] == 0.7756
    with pytest.raises(ValueError, match="one frame per slice"):
        score_sequences(seg, seg, truth, frames[:2])


def test_ctc_evaluation_per_sequence(tmp_path):
    data, predictions = make_run(tmp_path)
    pairs = [("01", 0), ("01", 5), ("02", 1), ("01", 9), ("02", 4)]
    data.attrs.update(
        dataset="u373",
        source={"url": "https://host/PhC-C2DH-U373.zip"},
        frames=[{"sequence": s, "frame": f} for s, f in pairs],
    )
    segmentations = {k: tmp_path / "segmentation" / f"{k}.zarr" for k in predictions}
    report = evaluate_run(tmp_path / "data.zarr", predictions, segmentations, tmp_path / "m.json")
    sequences = report["results"]["val"]["sequences"]
    assert "sequences" not in report["results"]["test"]  # test_labels are not CTC frames
    seg, truth = open_image(segmentations["raw"]), data["labels"]
    for z, sequence, frame in [(3, "01", 9), (4, "02", 4)]:
        entry = sequences[sequence]
        assert entry["frames"] == [frame] and entry["paper_iou"] == 0.9203
        assert entry["unet"]["iou"] == pytest.approx(metrics.foreground_iou(seg[z], truth[z]))
        assert entry["unet"]["seg"] == pytest.approx(metrics.seg_score(seg[z], truth[z]))
        assert entry["unet"]["det"] == pytest.approx(metrics.det_score(seg[z], truth[z]))
        assert entry["unet"]["seg"] > entry["baseline"]["seg"]
    lines = format_table(report["results"]).splitlines()
    row = next(line.split() for line in lines if line.startswith("val ") and " 02 " in line)
    unet, baseline = sequences["02"]["unet"], sequences["02"]["baseline"]
    scores = [unet["iou"], baseline["iou"], unet["seg"], baseline["seg"], unet["det"]]
    scores += [baseline["det"], 0.9203]
    assert row == ["val", "02", "1", *(f"{v:.4f}" for v in scores)]


def test_table2_dataset():
    assert table2_dataset({"dataset": "DIC-C2DH-HeLa"}) == "DIC-HeLa"
    assert (
        table2_dataset({"dataset": "x", "source": {"archive": "phc-c2dh-u373.zip"}}) == "PhC-U373"
    )
    assert table2_dataset({"dataset": "fluo-n2dl-hela", "source": {}}) is None


def test_unknown_truth_is_not_scored_and_the_split_is_the_runs(tmp_path):
    """A mask (0 = unknown) takes pixels out of the pixel measures and the IoU: a false cell drawn
    there costs nothing; a split given to evaluate_run replaces the group's."""
    data, predictions = make_run(tmp_path)
    segmentations = {k: tmp_path / "segmentation" / f"{k}.zarr" for k in predictions}
    plain = evaluate_run(tmp_path / "data.zarr", predictions, segmentations, tmp_path / "a.json")
    labels = np.asarray(data["labels"])
    mask = np.ones(labels.shape, np.uint8)
    mask[4, :, 40:] = 0  # the right part of validation slice 4 is unknown
    data.create_array("mask", data=mask, chunks=(1, *mask.shape[1:]))
    seg = zarr.open_array(str(segmentations["raw"] / "0"), mode="r+")  # level 0
    seg[4, :, 40:] = 99  # one false cell over the whole unknown part
    masked = evaluate_run(tmp_path / "data.zarr", predictions, segmentations, tmp_path / "b.json")
    prob = np.asarray(zarr.open_array(str(predictions["raw"]))[1], np.float32)
    known = mask[3:5] > 0
    val = masked["results"]["val"]["unet"]
    assert val["pixel_error"] == pytest.approx(
        metrics.pixel_error(np.where(known, prob[3:5], 0), np.where(known, labels[3:5], 0))
    )
    instances, truth = (np.where(known, a, 0) for a in (np.asarray(seg[3:5]), labels[3:5]))
    assert val["iou"] == pytest.approx(metrics.foreground_iou(instances, truth))
    assert val["seg"] == pytest.approx(
        metrics.seg_score(metrics.slice_unique(instances), metrics.slice_unique(truth))
    )
    assert val["iou"] > plain["results"]["val"]["unet"]["iou"] - 0.05
    split = {"train": [0, 1, 3], "val": [2, 4]}
    other = evaluate_run(
        tmp_path / "data.zarr", predictions, segmentations, tmp_path / "c.json", split=split
    )
    assert other["split"] == split and other["results"]["val"]["slices"] == [2, 4]


def test_summarize_folds_mean_and_sample_sd_of_every_measure(tmp_path):
    folds = {}
    for i, fold in enumerate(("fold-1", "fold-2", "fold-3")):
        val = {
            who: {
                key: 0.1 * (i + 1) + 0.01 * j + (0.5 if who == "baseline" else 0.0)
                for j, (key, _) in enumerate(CROSSVAL_MEASURES)
            }
            for who in ("unet", "baseline")
        }
        path = tmp_path / fold / "metrics.json"
        path.parent.mkdir()
        path.write_text(json.dumps({"results": {"val": val}}))
        folds[fold] = path
    out = summarize_folds(folds, tmp_path / "cv.json", tmp_path / "cv.md")
    assert json.loads((tmp_path / "cv.json").read_text()) == out
    for who, offset in (("unet", 0.0), ("baseline", 0.5)):
        for j, (key, _) in enumerate(CROSSVAL_MEASURES):
            values = [0.1 * (i + 1) + 0.01 * j + offset for i in range(3)]
            assert out[who]["mean"][key] == pytest.approx(np.mean(values), abs=1e-12)
            assert out[who]["std"][key] == pytest.approx(0.1, abs=1e-12)  # sd of 0.1, 0.2, 0.3
    table = (tmp_path / "cv.md").read_text().splitlines()
    assert [row.split(" | ")[0] for row in table[2:]] == [
        "| fold-1",
        "| fold-2",
        "| fold-3",
        "| u-net, mean ± sd",
        "| baseline, mean ± sd",
    ]
    assert "| fold-1 | 0.100000 | 0.1100 |" in table[2]  # warping error to 6 decimals
    with pytest.raises(ValueError, match="at least 2 folds"):
        summarize_folds({"fold-1": folds["fold-1"]}, tmp_path / "a.json", tmp_path / "a.md")


def _tree(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_predictions_of_another_image_are_refused(tmp_path):
    """Predictions record the digest of what they read; evaluate scores them only against the
    array with that content (issue 29: another image of the same shape was scored)."""
    import torch

    from unetpipe.model import UNet, save_model
    from unetpipe.predict import predict_zarr

    make_run(tmp_path)
    torch.manual_seed(0)
    save_model(
        tmp_path / "m.pt",
        UNet(depth=2, base_channels=2),
        normalization={"mean": 120.0, "std": 60.0},
    )
    raw = zarr.open_array(str(tmp_path / "data.zarr" / "raw"))[:]
    zarr.create_array(str(tmp_path / "other.zarr"), data=255 - raw, chunks=(1, 64, 64))
    segmentations = {"raw": tmp_path / "segmentation" / "raw.zarr"}
    before = _tree(tmp_path / "data.zarr")
    for source, name in [(tmp_path / "other.zarr", "other"), (tmp_path / "data.zarr/raw", "own")]:
        predict_zarr(
            tmp_path / "m.pt", source, tmp_path / f"{name}.ome.zarr", tile=92, progress=False
        )
    message = r"other.ome.zarr/0: predicted from .*other.zarr \(sha256 [0-9a-f]{12}\.\.\.\), whose"
    with pytest.raises(ValueError, match=message + r" content is not that of .*data.zarr/raw"):
        evaluate_run(
            tmp_path / "data.zarr", {"raw": tmp_path / "other.ome.zarr"}, segmentations,
            tmp_path / "m.json",
        )  # fmt: skip
    assert not (tmp_path / "m.json").exists()
    report = evaluate_run(
        tmp_path / "data.zarr", {"raw": tmp_path / "own.ome.zarr"}, segmentations,
        tmp_path / "m.json",
    )  # fmt: skip
    assert report["results"]["val"]["slices"] == [3, 4]
    assert _tree(tmp_path / "data.zarr") == before


def test_predictions_of_another_extent_or_with_a_lost_chunk_are_one_line(tmp_path):
    _, paths = make_run(tmp_path)
    segmentations = {k: tmp_path / "segmentation" / f"{k}.zarr" for k in paths}
    pred = zarr.open_array(str(paths["raw"]))[:]
    zarr.create_array(str(tmp_path / "short.zarr"), data=pred[:, :3], chunks=(2, 1, 64, 64))
    before = _tree(tmp_path)
    with pytest.raises(ValueError, match=r"short.zarr: \(z, y, x\) = \(3, 64, 64\) does not match"):
        evaluate_run(
            tmp_path / "data.zarr", {**paths, "raw": tmp_path / "short.zarr"}, segmentations,
            tmp_path / "m.json",
        )  # fmt: skip
    (paths["test"] / "c" / "0" / "1" / "0" / "0").unlink()
    with pytest.raises(ValueError, match=r"predictions/test.zarr: chunk c/0/1/0/0 is missing"):
        evaluate_run(tmp_path / "data.zarr", paths, segmentations, tmp_path / "m.json")
    (paths["raw"] / "c" / "0" / "1" / "0" / "0").write_bytes(b"damaged")
    with pytest.raises(
        ValueError, match=r"predictions/raw.zarr: chunk c/0/1/0/0 cannot be decoded"
    ):
        evaluate_run(tmp_path / "data.zarr", paths, segmentations, tmp_path / "m.json")
    after = _tree(tmp_path)
    assert set(before) - set(after) == {"predictions/test.zarr/c/0/1/0/0"}
    assert {k for k in after if after[k] != before[k]} == {"predictions/raw.zarr/c/0/1/0/0"}


def test_volume_measures_match_objects_in_3d_within_each_run():
    """Scored slices 0-2 and 5-6: in each run one reference object, 2 x 2 px per plane. The
    first is split along z (planes 0-1 one segment, plane 2 another), the second found whole,
    under the same id as the first's segment: 3D SEG (8/12 + 1) / 2; DET one false positive of
    two objects, 1 - 1/20. Slice by slice SEG would be 1; ids shared across runs would give 0.8."""
    truth = np.zeros((5, 4, 4), np.uint32)
    truth[:, 1:3, 1:3] = 1
    instances = np.zeros_like(truth)
    instances[:2, 1:3, 1:3] = 7
    instances[2, 1:3, 1:3] = 8
    instances[3:, 1:3, 1:3] = 7
    scores = score_volume(instances, truth, [0, 1, 2, 5, 6])
    assert scores["seg_3d"] == pytest.approx((8 / 12 + 1) / 2)
    assert scores["det_3d"] == pytest.approx(1 - 1 / 20)
    assert 0 < scores["instances_v_rand_3d"] < 1
    assert score_instances(instances, truth)["seg"] == 1.0
    assert score_volume(truth, truth, [0, 1, 2, 5, 6]) == {
        "instances_v_rand_3d": 1.0,
        "seg_3d": 1.0,
        "det_3d": 1.0,
    }


def test_cli_and_rule_evaluate_alike(tmp_path):
    """``unetpipe evaluate`` and rule evaluate (its script) run one stage: the same metrics.json
    for the same config (the command scores the arrays predicted in the run folder, the rule
    those of its params)."""
    make_run(tmp_path)
    data, arrays = tmp_path / "data.zarr", ["raw", "test"]
    given = {"evaluate": {"thresholds": [0.3, 0.5, 0.7], "baseline_sigma": 1.5}}
    folders = {"predictions": "predictions", "segmentations": "segmentation"}
    run = {k: [str(tmp_path / f / f"{a}.zarr") for a in arrays] for k, f in folders.items()}
    run_rule_script(
        "evaluate",
        load_config(given),
        tmp_path,
        input={"group": data / "zarr.json", "raw": data / "raw", "labels": data / "labels", **run},
        output=[str(tmp_path / "rule.json")],
        params={"arrays": arrays},
    )
    args = ["evaluate", str(data), str(tmp_path), "--config", config_file(tmp_path, given)]
    assert main(args) == 0
    ours, theirs = (json.loads((tmp_path / n).read_text()) for n in ("metrics.json", "rule.json"))
    assert ours == theirs and set(theirs["results"]) == {"val", "test"}
    assert theirs["evaluate"]["thresholds"] == [0.3, 0.5, 0.7]
