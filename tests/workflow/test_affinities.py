"""Long-range affinities and the Mutex Watershed end to end (issue 30): the tiny pipeline with
``model.target: affinities`` and ``segment.method: mutex_watershed`` (its bias tuned on the
training slices), scored on instances and on the affinities' nearest-neighbour mean."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
import zarr

from .conftest import TINY, check, snakemake

OFFSETS = [[-1, 0], [0, -1], [-4, 0], [0, -4], [-12, 0], [0, -12]]


def affinity_config(folder: Path) -> Path:
    """tiny.yaml shrunk to 4 slices of 128 px and 60 steps, predicting affinities."""
    config = yaml.safe_load(TINY.read_text())
    config["run"] = "aff"
    config["dataset"]["name"] = "tinyaff"
    config["synth"].update(n_slices=4, shape=[128, 128], test_slices=0)
    config["augment"].update(bank_size=0)
    config["model"].update(target="affinities", offsets=OFFSETS)
    config["train"].update(
        data="on_the_fly", iterations=60, val_every=60, checkpoint_every=60, affinity_loss="dice"
    )
    config["predict"]["arrays"] = ["raw"]
    config["segment"] = {
        "method": "mutex_watershed",
        "tune": {"enabled": True, "grid": {"bias": [-0.2, 0.0, 0.2], "min_size": [0, 16]}},
    }
    path = folder / "affinities.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.mark.slow
def test_affinities_and_mutex_watershed_end_to_end(tmp_path):
    check(snakemake(tmp_path, "--cores", "2", configfile=affinity_config(tmp_path)))
    run = tmp_path / "results" / "tinyaff" / "aff"
    unet = json.loads((run / "metrics.json").read_text())["results"]["val"]["unet"]
    assert unet["instances"] > 0
    for name in ("instances_v_rand", "instances_v_rand_thinned", "seg", "v_rand", "pixel_error"):
        assert 0 < unet[name] <= 1, name
    predictions = zarr.open_group(str(run / "predictions" / "raw.zarr"), mode="r")
    assert predictions.attrs["offsets"] == OFFSETS and predictions["0"].shape[0] == 6
    assert predictions.attrs["channels"][:2] == ["aff_-1_0", "aff_0_-1"]
    segmentation = zarr.open_group(str(run / "segmentation/raw.zarr/labels/cells"), mode="r")
    tuning = segmentation.attrs["tuning"]
    assert segmentation.attrs["segment"]["method"] == "mutex_watershed"
    assert tuning["chosen"]["bias"] in (-0.2, 0.0, 0.2) and len(tuning["table"]) == 6
