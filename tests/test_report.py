"""The report of a run (unetpipe.report): figures, summary, the training log."""

import numpy as np

from unetpipe.evaluate import summary
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
