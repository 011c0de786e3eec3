import json

import numpy as np
import pytest
import zarr
from scipy import ndimage
from skimage.segmentation import find_boundaries

from unetpipe import metrics
from unetpipe.ngff import open_image
from unetpipe.report import (
    PAPER,
    choose_thresholds,
    evaluate_run,
    fit_baseline,
    format_table,
    read_log,
    score_sequences,
    summary,
    table2_dataset,
    write_report,
)
from unetpipe.segment import segment_zarr


def voronoi_cells(shape, rng, spacing=16):
    """EM-like instances: Voronoi cells of jittered grid points, 0 on 2-px membranes."""
    seeds = np.zeros(shape, bool)
    ys = np.arange(spacing // 2, shape[0], spacing)
    xs = np.arange(spacing // 2, shape[1], spacing)
    for y in ys:
        for x in xs:
            dy, dx = rng.integers(-spacing // 4, spacing // 4 + 1, 2)
            seeds[min(y + dy, shape[0] - 1), min(x + dx, shape[1] - 1)] = True
    markers = ndimage.label(seeds)[0]
    nearest = ndimage.distance_transform_edt(~seeds, return_indices=True)[1]
    cells = markers[tuple(nearest)].astype(np.uint32)
    cells[find_boundaries(cells, mode="thick")] = 0
    return cells


def make_run(tmp_path, dark_cells=False):
    """A tiny dataset, a 'network' prediction (blurred truth + noise), instances and a log."""
    rng = np.random.default_rng(1)
    labels = np.stack([voronoi_cells((64, 64), rng) for _ in range(5)])
    test_labels = np.stack([voronoi_cells((80, 80), rng) for _ in range(2)])

    def image(lab):
        bright = np.where(lab > 0, 170.0, 70.0)
        if dark_cells:
            bright = 240.0 - bright
        return np.clip(bright + rng.normal(0, 45, lab.shape), 0, 255).astype(np.uint8)

    data = zarr.open_group(str(tmp_path / "data.zarr"), mode="w")
    data.attrs.update(dataset="tiny", splits={"train": [0, 1, 2], "val": [3, 4]})
    for name, array in [
        ("raw", image(labels)),
        ("labels", labels),
        ("weights", 1.0 + 5.0 * (labels == 0).astype(np.float32)),
        ("test", image(test_labels)),
        ("test_labels", test_labels),
    ]:
        data.create_array(name, data=array, chunks=(1, *array.shape[1:]))
    paths = {}
    for name, lab in [("raw", labels), ("test", test_labels)]:
        cell = ndimage.gaussian_filter((lab > 0).astype(np.float32), (0, 0.7, 0.7))
        cell = np.clip(cell + rng.normal(0, 0.05, cell.shape), 0, 1)
        pred = np.stack([1 - cell, cell]).astype(np.float16)
        paths[name] = tmp_path / "predictions" / f"{name}.zarr"
        zarr.create_array(str(paths[name]), data=pred, chunks=(2, 1, *lab.shape[1:]))
        segment_zarr(paths[name], tmp_path / "segmentation" / f"{name}.zarr", {"min_size": 4})
    (tmp_path / "train").mkdir()
    rows = ["iteration,loss,lr,val_vrand,val_pixel_error"]
    for i in range(1, 201):
        val = f"{0.5 + i / 500:.3f},{0.3 - i / 1000:.3f}" if i % 50 == 0 else ","
        rows.append(f"{i},{1 / (1 + 0.05 * i) + 0.05 * rng.random():.4f},0.01,{val}")
    (tmp_path / "train" / "log.csv").write_text("\n".join(rows) + "\n")
    return data, paths


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    data, predictions = make_run(tmp)
    segmentations = {k: tmp / "segmentation" / f"{k}.zarr" for k in predictions}
    report = evaluate_run(
        tmp / "data.zarr", predictions, segmentations, tmp / "metrics.json", {"thinning": True}
    )
    return tmp, data, report


def test_metrics_json(run):
    tmp, data, report = run
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
    for key in ("pixel_error", "rand_error"):
        assert unet[key] < val["baseline"][key]  # the network beats thresholding
    assert val["baseline"]["v_rand_threshold"] == report["baseline"]["threshold"]
    assert report["results"]["test"]["slices"] == [0, 1]


def test_thresholds_fixed_on_training_slices(run):
    """Every *_t_train measure is the measure at the threshold chosen on slices 0-2 (never on the
    scored 3-4), recomputed here from the metrics module."""
    tmp, data, report = run
    pred = zarr.open_array(str(tmp / "predictions/raw.zarr"))
    prob = np.asarray(pred[1], np.float32)
    truth = np.asarray(data["labels"])
    grid = metrics.ISBI_THRESHOLDS
    f1 = metrics.pixel_fscores(prob[:3], truth[:3], grid)
    chosen = report["thresholds_from_training"]
    assert chosen["pixel_error"] == pytest.approx(grid[np.argmax(f1)])
    assert chosen["slice_v_rand"] == metrics.slice_v_rand(prob[:3], truth[:3])[1]
    assert chosen["v_rand"] == metrics.isbi_scores(prob[:3], truth[:3])["v_rand_threshold"]
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
    # a fixed threshold can only do as well as the best one on the scored slices
    for key in ("v_rand", "slice_v_rand"):
        assert unet[f"{key}_t_train"] <= unet[key] + 1e-12
    assert unet["pixel_error_t_train"] >= unet["pixel_error"] - 1e-12
    baseline = report["results"]["val"]["baseline"]
    assert baseline["v_rand_t_train"] == pytest.approx(baseline["v_rand"])  # one threshold


def test_choose_thresholds_prefers_the_training_optimum():
    """Cells at 0.35 over a background of 0.25 on the training slices: only t = 0.3 separates
    them there; slices whose background is 0.5 score worse at it than at their own best."""
    truth = np.zeros((2, 16, 16), np.uint32)
    truth[:, 2:7, 2:7], truth[:, 9:14, 9:14] = 1, 2
    prob = np.where(truth > 0, 0.35, 0.25)
    chosen = choose_thresholds(prob, truth, metrics.ISBI_THRESHOLDS.tolist(), False)
    assert chosen == {"pixel_error": 0.3, "v_rand": 0.3, "slice_v_rand": 0.3}
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


def test_report_and_summary(run):
    tmp, _, report = run
    out = tmp / "report"
    write_report(
        tmp / "metrics.json",
        tmp / "data.zarr",
        tmp / "predictions/raw.zarr",
        tmp / "segmentation/raw.zarr",
        tmp / "train/log.csv",
        out,
        {"overlays": 2},
    )
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "curves.png",
        "metrics.png",
        "overlay_003.png",
        "overlay_004.png",
        "summary.txt",
    ]
    text = summary(tmp)
    assert "0.0382" in text and str(out.resolve()) in text
    assert f"{report['results']['val']['unet']['pixel_error']:.4f}" in text
    assert "snakemake --report" in text  # how to build the HTML report, until it exists
    (tmp / "report.html").write_text("<html></html>")
    assert f"report: {(tmp / 'report.html').resolve()}" in summary(tmp)


def test_log_tolerates_missing_columns(tmp_path):
    (tmp_path / "log.csv").write_text("iteration,loss,time\n1,0.7,12:00\n2,0.6,12:01\n")
    columns = read_log(tmp_path / "log.csv")
    assert sorted(columns) == ["iteration", "loss"]
    assert read_log(tmp_path / "missing.csv") == {}


def test_format_table_and_errors(run, tmp_path):
    _, _, report = run
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
    with pytest.raises(FileNotFoundError, match="evaluate"):
        summary(tmp_path)
    with pytest.raises(ValueError, match="unknown evaluate parameters"):
        evaluate_run(tmp_path / "data.zarr", {}, {}, tmp_path / "m.json", {"thinnning": False})


def test_cli_summary(run, tmp_path, capsys):
    from unetpipe.cli import main

    tmp, _, _ = run
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
        assert entry["unet"]["seg"] > entry["baseline"]["seg"]
    lines = format_table(report["results"]).splitlines()
    row = next(line.split() for line in lines if line.startswith("val ") and " 02 " in line)
    unet, baseline = sequences["02"]["unet"], sequences["02"]["baseline"]
    scores = [unet["iou"], baseline["iou"], unet["seg"], baseline["seg"], 0.9203]
    assert row == ["val", "02", "1", *(f"{v:.4f}" for v in scores)]


def test_table2_dataset():
    assert table2_dataset({"dataset": "DIC-C2DH-HeLa"}) == "DIC-HeLa"
    assert (
        table2_dataset({"dataset": "x", "source": {"archive": "phc-c2dh-u373.zip"}}) == "PhC-U373"
    )
    assert table2_dataset({"dataset": "fluo-n2dl-hela", "source": {}}) is None
