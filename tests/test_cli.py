from conftest import cli_options

import unetpipe.cli.evaluate
from unetpipe.cli import build_parser, main
from unetpipe.ngff import open_image


def test_expected_error_is_one_line(tmp_path):
    log = tmp_path / "log.txt"
    assert main(["--log-file", str(log), "summary", str(tmp_path)]) == 1
    text = log.read_text()
    assert "no metrics yet" in text and "Traceback" not in text


def test_unexpected_error_keeps_its_traceback_in_the_log(tmp_path, monkeypatch):
    def broken(run_dir):
        raise TypeError("a bug")

    monkeypatch.setattr(unetpipe.cli.evaluate, "summary", broken)
    log = tmp_path / "log.txt"
    assert main(["--log-file", str(log), "summary", str(tmp_path)]) == 1
    text = log.read_text()
    assert "unexpected error in unetpipe summary" in text
    assert "Traceback" in text and "TypeError: a bug" in text


def test_every_option_of_every_command_has_help_text():
    missing = [name for name, action in cli_options(build_parser()) if not action.help]
    assert not missing, f"options without help text: {missing}"


def test_segment_agglomerate_tuned_on_the_train_split(tmp_path):
    import numpy as np
    import zarr

    prob = np.full((2, 20, 30), 0.9, np.float32)
    prob[:, :, 15] = 0.35  # a ridge of boundary probability 0.65 between two cells
    prob[1, :, :] = 0.9  # the validation slice: no ridge
    group = zarr.open_group(str(tmp_path / "data.zarr"), mode="w")
    group.attrs["splits"] = {"train": [0], "val": [1]}
    labels = group.create_array(
        "labels", shape=(2, 20, 30), dtype=np.uint32, config={"write_empty_chunks": True}
    )
    labels[1] = 0  # stored although empty: the data group's arrays are complete
    labels[0, :, :15], labels[0, :, 16:] = 1, 2
    pred = zarr.create_array(str(tmp_path / "p.zarr"), shape=(2, 2, 20, 30), dtype=np.float32)
    pred[1], pred[0] = prob, 1 - prob
    out = tmp_path / "s.zarr"
    args = ["segment", str(tmp_path / "p.zarr"), str(out), "--method", "agglomerate"]
    args += ["--relief", "probability", "--sigma", "0", "--tune", "--data"]
    args += [
        str(tmp_path / "data.zarr"),
        "--grid",
        "merge_threshold=0.6,0.7",
        "--grid",
        "min_size=0",
    ]
    assert main(args) == 0
    seg = open_image(out)
    assert seg.attrs["tuning"]["slices"] == [0]
    assert seg.attrs["tuning"]["chosen"] == {"merge_threshold": 0.6, "min_size": 0}
    assert seg[0].max() == 2 and len(np.unique(seg[1])) == 1
    assert main([*args[:-4], "--grid", "min_size"]) == 1  # a malformed grid is an error
