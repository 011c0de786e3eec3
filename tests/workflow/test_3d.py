"""The 3D U-Net end to end (issue 34): the tiny pipeline with ``model.dims: 3`` trains on 3D
tiles deformed on the fly, predicts, segments (agglomerate in 3D) and scores the volume."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml
import zarr

from unetpipe.model import load_model

from .conftest import REPO, TINY, check, snakemake


def volume_config(folder: Path) -> Path:
    """tiny.yaml as a volume of 8 slices of 96 px, a 3D net of depth 2 trained 12 steps."""
    config = yaml.safe_load(TINY.read_text())
    config["run"] = "vol"
    config["dataset"]["name"] = "tiny3d"
    config["synth"].update(n_slices=8, shape=[96, 96], test_slices=0)
    config["weights"] = {"mode": "3d"}
    config["augment"].update(tile=44, bank_size=0)
    config["model"].update(dims=3, depth=2, base_channels=4)
    config["train"].update(data="on_the_fly", iterations=12, val_every=6, checkpoint_every=6)
    config["predict"]["arrays"] = ["raw"]
    config["segment"] = {"method": "agglomerate", "mode": "3d"}
    path = folder / "volume.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


ANISOTROPIC = {"pool": [[1, 2, 2]], "kernel": [[1, 3, 3], [3, 3, 3]]}
"""z at full resolution, convolved only at the bottom: tiles of (8, 44, 44) predict (4, 28, 28)."""


@pytest.mark.slow
@pytest.mark.parametrize("anisotropic", [False, True], ids=["isotropic", "anisotropic"])
def test_a_3d_net_trains_predicts_segments_and_scores_a_volume(tmp_path, anisotropic):
    path = volume_config(tmp_path)
    if anisotropic:
        config = yaml.safe_load(path.read_text())
        config["model"].update(ANISOTROPIC)
        config["augment"]["tile"] = [8, 44, 44]
        path.write_text(yaml.safe_dump(config, sort_keys=False))
    check(snakemake(tmp_path, "--cores", "2", configfile=path))
    run = tmp_path / "results" / "tiny3d" / "vol"
    with (run / "train" / "log.csv").open() as log:
        assert [int(row["iteration"]) for row in csv.DictReader(log)] == list(range(1, 13))
    net, metadata = load_model(run / "model.pt")
    assert net.config["dims"] == 3
    if anisotropic:
        assert net.config["pool"] == ANISOTROPIC["pool"] and metadata["output_size"] == (4, 28, 28)
    predictions = zarr.open_group(str(run / "predictions" / "raw.zarr"), mode="r")
    assert predictions.attrs["model_config"]["dims"] == 3
    assert predictions["0"].shape == (2, 8, 96, 96)
    unet = json.loads((run / "metrics.json").read_text())["results"]["val"]["unet"]
    assert unet["instances"] > 0
    for name in ("instances_v_rand", "v_rand", "pixel_error", "seg_3d", "instances_v_rand_3d"):
        assert 0 < unet[name] <= 1, name  # segmented in 3D: objects also scored as volumes


@pytest.mark.slow
def test_the_gpu_volume_recipe_runs_shrunk_on_a_real_nuclei_volume(shared_dir, tmp_path):
    """config/volume-3d-gpu.yaml with the stardist 3D sample (31 x 61 x 57, 51 nuclei; ../shared)
    as its TIFF folder, shrunk to a CPU and a few steps (net, tile, steps, device; everything else
    as shipped: 3D weights, axis permutations, TTA, agglomeration in 3D tuned for SEG): trained,
    predicted, segmented in 3D, scored on its last 6 slices."""
    samples = shared_dir / "data" / "stardist-samples"
    if not samples.is_dir():
        pytest.skip(f"{samples} is absent")
    stack = tmp_path / "nuclei"
    stack.mkdir()
    shutil.copy(samples / "img3d.tif", stack / "train-volume.tif")
    shutil.copy(samples / "mask3d.tif", stack / "train-labels.tif")
    config = yaml.safe_load((REPO / "config" / "volume-3d-gpu.yaml").read_text())
    assert config["augment"]["rotation"] == {"swap_axes": True}
    config["dataset"].update(local_dir=str(stack), val_slices=list(range(25, 31)))
    config["augment"]["tile"] = 44
    config["model"].update(depth=2, base_channels=4)
    config["train"].update(
        iterations=12, val_every=6, checkpoint_every=6, device="cpu", gpus=1, workers=0
    )
    config["predict"]["arrays"] = ["raw"]
    path = tmp_path / "nuclei.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    check(snakemake(tmp_path, "--cores", "2", configfile=path))
    run = tmp_path / "results" / "volume-3d" / "gpu-3d"
    assert zarr.open_group(str(run / "predictions" / "raw.zarr"), mode="r")["0"].shape == (
        2,
        31,
        61,
        57,
    )
    unet = json.loads((run / "metrics.json").read_text())["results"]["val"]["unet"]
    assert unet["instances"] > 0 and 0 <= unet["seg"] <= 1 and 0 <= unet["seg_3d"] <= 1


def test_a_3d_net_refuses_the_2d_bank(tmp_path):
    config = yaml.safe_load(volume_config(tmp_path).read_text())
    config["augment"]["bank_size"] = 32
    path = tmp_path / "bank.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "-n", configfile=path)
    assert result.returncode != 0
    assert "model.dims 3: the augmented bank holds 2D tiles" in result.stdout + result.stderr
