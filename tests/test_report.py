"""The report of a run (unetpipe.report): figures, summary, the training log."""

import numpy as np
from conftest import config_file, make_run, run_rule_script

from unetpipe.cli import main
from unetpipe.config import load_config
from unetpipe.evaluate import evaluate_run, summary
from unetpipe.io import read_log
from unetpipe.report import curves_figure, log_columns, write_report


def test_report_and_summary(evaluated_run):
    tmp, _, report = evaluated_run
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
        ".unetpipe",  # the mark that unetpipe wrote the folder (it may replace it)
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
    (tmp_path / "log.csv").write_text("iteration,loss,time\n1,0.7,12:00\n2,,12:01\n")
    rows = read_log(tmp_path / "log.csv")
    assert rows == [
        {"iteration": "1", "loss": "0.7", "time": "12:00"},
        {"iteration": "2", "loss": "", "time": "12:01"},
    ]
    columns = log_columns(rows)
    assert sorted(columns) == ["iteration", "loss"]
    np.testing.assert_array_equal(columns["loss"], [0.7, np.nan])
    assert read_log(tmp_path / "missing.csv") == []


def test_curves_figure_is_a_png_with_or_without_validation(tmp_path):
    rows = [{"iteration": i, "loss": 1 / i, "lr": 0.1, "val_vrand": ""} for i in range(1, 60)]
    rows[-1]["val_vrand"] = 0.8
    for name, data in [("a.png", rows), ("b.png", [])]:
        curves_figure(data, tmp_path / name, dpi=50, baseline=0.4)
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]  # nothing partial


def test_cli_and_rule_report_alike(tmp_path):
    """``unetpipe report`` and rule report (its script) run one stage: the same figures and
    summary for the same config."""
    data = tmp_path / "data.zarr"
    predictions = make_run(tmp_path)[1]
    segmentations = {k: tmp_path / "segmentation" / f"{k}.zarr" for k in predictions}
    evaluate_run(data, predictions, segmentations, tmp_path / "metrics.json")
    given = {"report": {"overlays": 1, "dpi": 50}}
    run_files = {"metrics": "metrics.json", "log": "train/log.csv"}
    run_files |= {"predictions": "predictions/raw.zarr", "segmentation": "segmentation/raw.zarr"}
    run_rule_script(
        "report",
        load_config(given),
        tmp_path,
        input={"group": data / "zarr.json"}
        | {key: tmp_path / name for key, name in run_files.items()},
        output=[str(tmp_path / "rule")],
    )
    args = ["report", str(data), str(tmp_path), "--config", config_file(tmp_path, given)]
    assert main(args) == 0
    ours, theirs = (
        {p.name: p.read_bytes() for p in (tmp_path / name).iterdir()} for name in ("report", "rule")
    )
    assert ours == theirs
    assert sorted(theirs) == [
        ".unetpipe",
        "curves.png",
        "metrics.png",
        "overlay_003.png",
        "summary.txt",
    ]
