import fcntl
import os

import pytest
import tifffile
import torch
from conftest import cli_options

import unetpipe.cli.evaluate
from unetpipe.cli import build_parser, main
from unetpipe.model import UNet, save_model
from unetpipe.ngff import open_image
from unetpipe.synthetic import write_synthetic


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


def files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A synthetic group, a tiny model and its prediction of ``test``, all by unetpipe."""
    tmp = tmp_path_factory.mktemp("made")
    write_synthetic(tmp / "d.zarr", 2, (40, 40), 1, (40, 40))
    torch.manual_seed(0)
    save_model(tmp / "model.pt", UNet(base_channels=2, depth=2), normalization=STATS)
    args = ["predict", str(tmp / "model.pt"), str(tmp / "d.zarr" / "test"), str(tmp / "p.zarr")]
    assert main([*args, "--no-progress"]) == 0
    return tmp


STATS = {"mean": 128.0, "std": 50.0}


@pytest.mark.parametrize(
    "command",
    [
        ["predict", "{m}/model.pt", "{m}/d.zarr/test", "{out}", "--no-progress"],
        ["segment", "{m}/p.zarr", "{out}"],
        ["synth", "{out}", "--n-slices", "2", "--shape", "8", "8"],
        ["convert", "local", "{m}/d.zarr", "{out}"],
        ["tiff", "{m}/p.zarr", "{out}"],
    ],
    ids=lambda c: c[0],
)
@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]], ids=["", "overwrite"])
def test_an_output_unetpipe_did_not_write_is_never_replaced(made, tmp_path, command, overwrite):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.txt").write_text("x")
    (tmp_path / "notes.tif").write_text("not a TIFF of ours")
    before, inputs = files(tmp_path), files(made)
    for out in (victim, tmp_path / "notes.tif", tmp_path / "."):
        log = tmp_path.parent / f"{tmp_path.name}.log"
        args = [a.format(m=made, out=out) for a in command]
        assert main(["--log-file", str(log), *args, *overwrite]) == 1
        assert "was not written by unetpipe" in log.read_text()
        assert files(tmp_path) == before and files(made) == inputs


def test_outputs_inside_the_input_are_refused(made, tmp_path):
    inputs = files(made)
    model, pred = str(made / "model.pt"), str(made / "p.zarr")
    for args in (
        ["predict", model, str(made / "d.zarr" / "raw"), str(made / "d.zarr" / "test" / "c")],
        ["tiff", pred, pred, "--overwrite"],
        ["tiff", pred, f"{pred}/0/zarr.json", "--overwrite"],
        ["segment", pred, f"{pred}/0/c", "--overwrite"],
    ):
        log = tmp_path / "log.txt"
        assert main(["--log-file", str(log), *args]) == 1, args
        assert "would destroy the input" in log.read_text()
        assert files(made) == inputs


def test_an_earlier_output_is_replaced_only_with_overwrite(made, tmp_path):
    out = str(tmp_path / "p.tif")
    assert main(["tiff", str(made / "p.zarr"), out]) == 0
    before = files(tmp_path)
    assert main(["tiff", str(made / "p.zarr"), out]) == 1
    assert files(tmp_path) == before
    assert main(["tiff", str(made / "p.zarr"), out, "--overwrite"]) == 0
    assert tifffile.TiffFile(out).pages.first.software == "unetpipe"


def test_a_second_writer_stops_before_computing(made, tmp_path, capsys):
    out = tmp_path / "p.zarr"
    (tmp_path / ".p.zarr.tmp-99999").mkdir()  # left by a killed run
    fd = os.open(tmp_path / ".p.zarr.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # what a running predict holds
    args = ["predict", str(made / "model.pt"), str(made / "d.zarr" / "test"), str(out)]
    try:
        assert main([*args, "--no-progress"]) == 1
    finally:
        os.close(fd)
    assert "another unetpipe process is writing" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "p.zarr.partial").exists()
    assert main([*args, "--no-progress"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.zarr"]  # the leftover is gone
