"""The tiny pipeline end to end on 2 cores (synth -> ... -> report), reruns after config changes,
one stage or one target on demand, and `snakemake --lint`."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import REPO, TINY, check, scheduled_rules, snakemake

CONFIGS = REPO / "config"
AUTHORS = [{"name": "A. Tester"}]
RUN = Path("results/tiny/tiny")
AFTER_TRAIN = {"predict", "segment", "evaluate", "report", "all"}


def changed_config(workdir: Path, section: str, key: str, value, **more) -> Path:
    """tiny.yaml with one value (and ``more`` of the same section) changed, written into
    ``workdir`` (keys kept in their order: Snakemake compares params by their repr, so reordering
    a section would rerun its rules)."""
    config = yaml.safe_load(TINY.read_text())
    config.setdefault(section, {}).update({key: value, **more})
    path = workdir / f"tiny-{section}-{key}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.mark.slow
def test_tiny_pipeline_beats_thresholding(tiny_run):
    metrics = json.loads((tiny_run / RUN / "metrics.json").read_text())
    assert set(metrics["results"]) == {"val", "test"}
    for name, result in metrics["results"].items():
        unet, baseline = result["unet"], result["baseline"]
        assert unet["pixel_error"] < baseline["pixel_error"], name
        assert unet["v_rand"] > baseline["v_rand"], name
        assert unet["instances"] > 0, name
    assert (tiny_run / RUN / "model.pt").stat().st_size > 0
    assert list((tiny_run / RUN / "report").glob("*.png"))
    for rule in ("synth", "weights", "train", "predict", "evaluate", "report"):
        assert list((tiny_run / "logs/tiny").glob(f"**/benchmarks/{rule}*.tsv")), rule
    assert scheduled_rules(tiny_run) == set(), "a finished run has nothing left to do"


@pytest.mark.slow
def test_predictions_and_segmentations_are_ome_zarr(tiny_run):
    """What napari opens: an NGFF image per predicted array, and the segmentation as an NGFF
    image of the array predicted holding its instances as labels/cells."""
    models = pytest.importorskip("ome_zarr_models")
    import zarr

    voxel = yaml.safe_load(TINY.read_text()).get("dataset", {}).get("voxel_size", [1.0] * 3)
    for array in ("raw", "test"):
        predictions = tiny_run / RUN / "predictions" / f"{array}.zarr"
        image = tiny_run / RUN / "segmentation" / f"{array}.zarr"
        label = image / "labels" / "cells"
        for group in (predictions, image):
            opened = models.open_ome_zarr(zarr.open_group(str(group), mode="r"))
            assert type(opened).__name__ == "Image"
        assert zarr.open_group(str(image / "labels")).attrs["ome"]["labels"] == ["cells"]
        metadata = zarr.open_group(str(label), mode="r").attrs["ome"]
        assert (label / metadata["image-label"]["source"]["image"]).resolve() == image.resolve()
        scale = metadata["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]
        assert scale["scale"] == [float(v) for v in voxel]


@pytest.mark.slow
def test_weights_change_reruns_weights_and_downstream_only(tiny_run):
    rules = scheduled_rules(tiny_run, configfile=changed_config(tiny_run, "weights", "sigma", 4.0))
    assert {"weights", "train"} | AFTER_TRAIN <= rules
    assert not rules & {"synth", "download", "convert"}


@pytest.mark.slow
def test_predict_change_reruns_predict_and_later_only(tiny_run):
    config = changed_config(tiny_run, "predict", "mirror", "symmetric")
    assert scheduled_rules(tiny_run, configfile=config) == AFTER_TRAIN


@pytest.mark.slow
def test_a_change_after_a_failed_rerun_still_reruns_what_follows(tiny_run, tmp_path):
    """A rerun that fails after writing removes its stage's outputs and Snakemake's records of
    them (as a segment rerun that failed did on DIC-HeLa), while what follows stays: the next run
    must rebuild the stage and everything after it for the new setting, not call the old results
    up to date."""
    workdir = tmp_path / "run"
    shutil.copytree(tiny_run, workdir, symlinks=True)
    for array in ("raw", "test"):
        output = f"{RUN}/segmentation/{array}.zarr"
        shutil.rmtree(workdir / output)
        record = base64.b64encode(output.encode()).decode()
        (workdir / ".snakemake" / "metadata" / record).unlink()
    config = changed_config(workdir, "segment", "min_size", 3)
    assert scheduled_rules(workdir, configfile=config) == {"segment", "evaluate", "report", "all"}


@pytest.mark.slow
def test_forcerun_one_stage(tiny_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(tiny_run, workdir, symlinks=True)
    model = workdir / RUN / "model.pt"
    before = model.stat().st_mtime_ns
    output = check(snakemake(workdir, "--cores", "2", "--forcerun", "segment"))
    assert "rule segment:" in output and "rule report:" in output
    assert "rule train:" not in output and "rule predict:" not in output
    assert model.stat().st_mtime_ns == before
    assert (workdir / RUN / "metrics.json").read_text() == (
        tiny_run / RUN / "metrics.json"
    ).read_text()


def test_bioimageio_package_is_built_only_when_asked(tmp_path):
    assert "export_bioimageio" not in scheduled_rules(tmp_path)
    config = changed_config(tmp_path, "export", "bioimageio", True)
    result = snakemake(tmp_path, "-n", configfile=config)
    assert result.returncode == 1 and "authors" in result.stderr + result.stdout
    config = changed_config(tmp_path, "export", "bioimageio", True, authors=AUTHORS)
    assert "export_bioimageio" in scheduled_rules(tmp_path, configfile=config)


@pytest.mark.slow
def test_bioimageio_package_at_the_end_of_a_run(tiny_run, tmp_path):
    """export.bioimageio on a finished run adds the package, tested by bioimageio.core."""
    workdir = tmp_path / "run"
    shutil.copytree(tiny_run, workdir, symlinks=True)
    config = changed_config(workdir, "export", "bioimageio", True, authors=AUTHORS)
    assert scheduled_rules(workdir, configfile=config) == {"export_bioimageio", "all"}
    check(snakemake(workdir, "--cores", "2", configfile=config))
    assert (workdir / RUN / "tiny.bioimageio.zip").stat().st_size > 0
    log = (workdir / "logs/tiny/tiny/export_bioimageio.log").read_text()
    assert "bioimage.io test: passed  Reproduce test outputs from test inputs (torchscript)" in log
    assert "bioimage.io test: failed" not in log


def test_one_target_builds_only_what_it_needs(tmp_path):
    rules = scheduled_rules(tmp_path, str(RUN / "model.pt"))
    assert "synth" in rules and "train" in rules
    assert not rules & AFTER_TRAIN


def test_lint_is_clean(tmp_path):
    check(snakemake(tmp_path, "--lint"))


def test_rules_are_snakefmt_formatted():
    result = subprocess.run(
        [sys.executable, "-m", "snakefmt", "--check", str(REPO / "workflow")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("config", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_builds_its_dag(config, tmp_path):
    """A dry run of each shipped config from a fresh working directory (local_dir made absolute:
    it is relative to the repository, the working directory of `make demo`; a recipe for the
    user's own folder gets a small stand-in stack)."""
    values = yaml.safe_load(config.read_text())
    local_dir = values.get("dataset", {}).get("local_dir")
    if local_dir is not None:
        folder = REPO / local_dir
        if not folder.is_dir():  # a recipe for the user's own folder: a stand-in stack
            import numpy as np
            import tifffile

            folder = tmp_path / "own"
            folder.mkdir()
            stack = np.random.default_rng(0).integers(0, 3, (6, 32, 32), np.uint8)
            tifffile.imwrite(folder / "train-volume.tif", stack * 80, photometric="minisblack")
            tifffile.imwrite(folder / "train-labels.tif", stack, photometric="minisblack")
        values["dataset"]["local_dir"] = str(folder.resolve())
        config = tmp_path / config.name
        config.write_text(yaml.safe_dump(values, sort_keys=False))
    assert "report" in scheduled_rules(tmp_path, configfile=config)


def test_a_file_changed_in_local_dir_reruns_the_conversion(tmp_path):
    """Overwriting a file inside dataset.local_dir (the folder's own time does not change) or
    adding one reruns convert; an untouched folder reruns nothing."""
    import numpy as np
    import tifffile

    local = tmp_path / "isbi"
    local.mkdir()
    rng = np.random.default_rng(0)
    labels = np.full((3, 32, 32), 255, np.uint8)
    labels[:, 15, :] = 0
    raw = rng.integers(0, 255, (3, 32, 32), np.uint8)
    tifffile.imwrite(local / "train-volume.tif", raw, photometric="minisblack")
    tifffile.imwrite(local / "train-labels.tif", labels, photometric="minisblack")
    config = yaml.safe_load(TINY.read_text())
    config["dataset"] = {"name": "local", "source": "local", "local_dir": str(local)}
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    target = "results/local/data.zarr/zarr.json"
    work = tmp_path / "work"
    work.mkdir()
    check(snakemake(work, target, "--cores", "1", configfile=path))
    assert scheduled_rules(work, target, configfile=path) == set()
    labels[1, :, 20] = 0  # the same file name, new content, written later
    tifffile.imwrite(local / "train-labels.tif", labels, photometric="minisblack")
    assert scheduled_rules(work, target, configfile=path) == {"convert"}
    check(snakemake(work, target, "--cores", "1", configfile=path))
    tifffile.imwrite(local / "test-volume.tif", np.zeros((1, 32, 32), np.uint8))
    assert scheduled_rules(work, target, configfile=path) == {"convert"}


@pytest.mark.parametrize("name", ["isbi2012-cpu.yaml", "isbi2012-cv.yaml", "ctc-dic-hela-cpu.yaml"])
def test_real_data_recipes_download_unless_given_a_local_copy(name, tmp_path):
    """Cloned anywhere, a recipe plans the registry download; ``dataset.local_dir`` (a local copy
    of the same dataset) replaces the download by reading that folder."""
    config = CONFIGS / name
    assert "local_dir" not in yaml.safe_load(config.read_text())["dataset"]
    assert {"download", "convert"} <= scheduled_rules(tmp_path, configfile=config)
    local = tmp_path / "copy"
    local.mkdir()
    (local / "train-volume.tif").write_bytes(b"a local copy")
    override = f"dataset={{local_dir: {local}}}"  # merged into the recipe's dataset section
    rules = scheduled_rules(tmp_path, "--config", override, configfile=config)
    assert "convert" in rules and "download" not in rules
