import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from conftest import config_file, run_rule_script

from unetpipe.affinities import affinity_targets
from unetpipe.augment import augment_sample, open_bank, sample_rng, write_bank
from unetpipe.cli import main
from unetpipe.config import load_config, rule_params
from unetpipe.intensity import dataset_statistics, normalize
from unetpipe.io import claim_folder, write_array
from unetpipe.losses import weighted_cross_entropy
from unetpipe.model import UNet, load_model
from unetpipe.precision import MEMORY_FORMATS
from unetpipe.synthetic import write_synthetic
from unetpipe.tiles import IterationSampler, TileDataset
from unetpipe.train import lr_factor, train
from unetpipe.weightmaps import write_weights

ROOT = Path(__file__).resolve().parents[1]
TILE = 44  # depth 2: 44 -> 28 px output


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny nets run fastest, and undisturbed by other load, on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Three 64 x 64 synthetic slices (two for training, one for validation) with weights."""
    path = tmp_path_factory.mktemp("data") / "data.zarr"
    write_synthetic(path, 3, (64, 64), 0, (64, 64), cell_size=16.0, membrane_width=2.0)
    group = zarr.open_group(path, mode="a")
    labels = group["labels"][:]
    write_array(group, "weights", np.where(labels > 0, 1.0, 3.0).astype(np.float32))
    return path


def sections(**train) -> list[dict]:
    """The train, model and augment sections of a config: a tiny net on tiny tiles."""
    config = load_config(None)
    config["train"].update(
        {"device": "cpu", "workers": 0, "optimizer": "adam", "lr": 1e-3, **train}
    )
    config["model"].update(depth=2, base_channels=4, dropout=0.0)
    config["augment"]["tile"] = TILE
    return [config["train"], config["model"], config["augment"]]


def read_log(run: Path) -> list[dict[str, str]]:
    with (run / "train" / "log.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    train(data, run, *sections(iterations=8, val_every=4, checkpoint_every=4))
    return run


def test_a_tiny_model_overfits_one_tile():
    torch.manual_seed(0)
    model = UNet(depth=2, base_channels=8, dropout=0.0)
    image = torch.randn(1, 1, TILE, TILE)
    target = torch.randint(0, 2, (1, 28, 28))
    weights = torch.rand(1, 28, 28) + 0.5
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    losses = []
    for _ in range(100):
        loss = weighted_cross_entropy(model(image), target, weights)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10


def test_run_writes_log_curves_checkpoints_and_model(data, trained):
    rows = read_log(trained)
    assert [int(r["iteration"]) for r in rows] == list(range(1, 9))
    validated = [int(r["iteration"]) for r in rows if r["val_vrand"]]
    assert validated == [4, 8]
    for r in rows:
        assert float(r["loss"]) > 0 and float(r["tiles_per_s"]) > 0
        assert float(r["lr"]) == pytest.approx(1e-3)
    assert (trained / "train" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(trained.rglob(".*tmp*"))

    last = torch.load(trained / "checkpoints" / "last.pt", weights_only=True)
    best = torch.load(trained / "checkpoints" / "best.pt", weights_only=True)
    assert last["iteration"] == 8
    assert {"model", "optimizer", "scheduler", "rng", "model_config"} <= set(last)
    scores = {int(r["iteration"]): float(r["val_vrand"]) for r in rows if r["val_vrand"]}
    assert best["iteration"] == max(scores, key=scores.get)
    assert best["scores"]["val_vrand"] == pytest.approx(max(scores.values()), rel=1e-5)

    model, metadata = load_model(trained / "model.pt")  # weights_only=True inside
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, best["model"][name])
    group = zarr.open_group(data, mode="r")
    stats = dataset_statistics(group["raw"], group.attrs["splits"]["train"])
    assert metadata["normalization"] == pytest.approx(stats)
    assert metadata["tile"] == TILE and metadata["output_size"] == 28
    assert 0 <= metadata["baseline_vrand"] <= 1


def test_bfloat16_training_keeps_a_float32_model_and_precision_enters_the_fingerprint(
    data, trained, tmp_path
):
    """The float32 run's checkpoint asked to go on in bfloat16: moved aside (another
    fingerprint), trained anew under autocast; the model file stays float32 and records it."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert last["precision"] == "float32" and last["memory_format"] in MEMORY_FORMATS
    train(data, run, *sections(iterations=8, val_every=4, checkpoint_every=4, precision="bfloat16"))
    old = torch.load(run / "checkpoints" / "superseded" / "last.pt", weights_only=True)
    new = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert old["fingerprint"] != new["fingerprint"] and new["precision"] == "bfloat16"
    model, metadata = load_model(run / "model.pt")
    assert metadata["precision"] == "bfloat16"
    assert all(t.dtype == torch.float32 for t in model.state_dict().values())
    assert not torch.equal(model.head.weight, load_model(trained / "model.pt")[0].head.weight)


def test_float32_levels_train_in_bfloat16_and_are_recorded_in_the_model_file(data, tmp_path):
    """model.float32_levels reaches the network that trains and the model file that predict
    loads; under bfloat16 it trains other weights than the all-bfloat16 net from the same seed."""
    train_cfg, model_cfg, augment_cfg = sections(iterations=2, precision="bfloat16")
    train(data, tmp_path / "plain", train_cfg, model_cfg, augment_cfg)
    train(data, tmp_path / "ends", train_cfg, {**model_cfg, "float32_levels": 1}, augment_cfg)
    plain, ends = (load_model(tmp_path / r / "model.pt")[0] for r in ("plain", "ends"))
    assert ends.config == {**plain.config, "float32_levels": 1} and ends.float32_levels == 1
    assert not torch.equal(ends.head.weight, plain.head.weight)


def test_a_resumed_run_keeps_the_recorded_memory_format(data, tmp_path, caplog):
    settings = sections(iterations=4, val_every=4, checkpoint_every=2)
    run = tmp_path / "run"
    train(data, run, *settings)
    path = run / "checkpoints" / "last.pt"
    ckpt = torch.load(path, weights_only=True)
    other = {"contiguous": "channels_last", "channels_last": "contiguous"}[ckpt["memory_format"]]
    ckpt["memory_format"], ckpt["iteration"] = other, 2  # as if measured elsewhere, killed at 2
    torch.save(ckpt, path)
    with caplog.at_level("INFO", logger="unetpipe.train"):
        train(data, run, *settings)
    assert f"memory format {other} (recorded)" in caplog.text
    assert torch.load(path, weights_only=True)["memory_format"] == other


def test_missing_weights_is_a_clear_error(tmp_path):
    path = tmp_path / "data.zarr"
    write_synthetic(path, 2, (64, 64), 0, (64, 64), cell_size=16.0, membrane_width=2.0)
    with pytest.raises(ValueError, match="weights rules first"):
        train(path, tmp_path / "run", *sections(iterations=1))


def test_another_model_starts_afresh_and_keeps_the_old_checkpoints(data, trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    train_cfg, model_cfg, augment_cfg = sections(iterations=4, val_every=4, checkpoint_every=4)
    model_cfg["base_channels"] = 8
    train(data, run, train_cfg, model_cfg, augment_cfg)
    assert [row["iteration"] for row in read_log(run)] == ["1", "2", "3", "4"]
    assert load_model(run / "model.pt")[0].config["base_channels"] == 8
    old = torch.load(run / "checkpoints" / "superseded" / "last.pt", weights_only=True)
    assert (old["iteration"], old["model_config"]["base_channels"]) == (8, 4)


def test_other_weight_maps_start_afresh_the_same_settings_resume(data, trained, tmp_path):
    run, other = tmp_path / "run", tmp_path / "data.zarr"
    shutil.copytree(trained, run)
    shutil.copytree(data, other)
    zarr.open_group(other, mode="a")["weights"].attrs["sigma"] = 3.0
    settings = sections(iterations=8, val_every=4, checkpoint_every=4)  # those of `trained`
    train(data, run, *settings)  # resumes at iteration 8: nothing left to train
    assert not (run / "checkpoints" / "superseded").exists()
    assert len(read_log(run)) == 8
    assert torch.equal(
        load_model(run / "model.pt")[0].head.weight, load_model(trained / "model.pt")[0].head.weight
    )
    train(other, run, *settings)  # same weight values, other provenance: trained anew from 0...
    assert (run / "checkpoints" / "superseded" / "last.pt").is_file()
    assert len(read_log(run)) == 8
    assert torch.equal(  # ...and, with the same seed, to the same weights
        load_model(run / "model.pt")[0].head.weight, load_model(trained / "model.pt")[0].head.weight
    )


CHILD = """
import json, os, signal, sys
import unetpipe.train as t

args = json.loads(sys.argv[1])
calls = 0
loss = t.weighted_cross_entropy

def killed_in_step(*a, **k):  # SIGKILL in the middle of step kill_at + 1
    global calls
    calls += 1
    if calls > args["kill_at"]:
        os.kill(os.getpid(), signal.SIGKILL)
    return loss(*a, **k)

if args["kill_at"]:
    t.weighted_cross_entropy = killed_in_step
t.train(args["data"], args["run"], *args["sections"], threads=1)
"""


ANISOTROPIC = {"dims": 3, "pool": [[1, 2, 2]], "kernel": [[1, 3, 3], [3, 3, 3]]}
"""A 3D net that keeps z at full resolution with 1 x 3 x 3 kernels at the first level (tiles of
(6, 44, 44) predict (2, 28, 28))."""


def run_child(
    data: Path, run: Path, kill_at: int = 0, checkpoint_every: int = 10, model: dict | None = None
) -> int:
    config = sections(
        iterations=30,
        val_every=30,
        checkpoint_every=checkpoint_every,
        workers=1,
        optimizer="sgd",
        lr=0.01,
        memory_format="contiguous",  # the same in both processes (auto measures in each)
    )
    config[1].update(dropout=0.5, **(model or {}))  # resumed dropout masks must match too
    if config[1].get("pool"):
        config[2]["tile"] = [6, TILE, TILE]
    args = {"data": str(data), "run": str(run), "sections": config, "kill_at": kill_at}
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(args)], env=env, capture_output=True, timeout=300
    ).returncode


@pytest.mark.parametrize(
    "model", [{}, {"dims": 3}, ANISOTROPIC], ids=["2d", "3d", "3d-anisotropic"]
)
def test_resume_after_sigkill_matches_an_uninterrupted_run(data, tmp_path, model):
    assert run_child(data, tmp_path / "straight", model=model) == 0
    assert run_child(data, tmp_path / "killed", kill_at=25, model=model) == -signal.SIGKILL
    killed = tmp_path / "killed"
    assert torch.load(killed / "checkpoints" / "last.pt", weights_only=True)["iteration"] == 20
    assert not (killed / "model.pt").exists()
    assert run_child(data, killed, model=model) == 0

    rows = {name: read_log(tmp_path / name) for name in ("straight", "killed")}
    assert [int(r["iteration"]) for r in rows["killed"]] == list(range(1, 31))
    assert [r["loss"] for r in rows["killed"]] == [r["loss"] for r in rows["straight"]]
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(killed / "checkpoints" / "last.pt", weights_only=True)
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, rtol=0, atol=1e-6)
    net, metadata = load_model(killed / "model.pt")
    assert {k: net.config[k] for k in model} == model
    if "pool" in model:
        assert metadata["tile"] == (6, TILE, TILE) and metadata["output_size"] == (2, 28, 28)


@pytest.mark.parametrize("model", [{}, ANISOTROPIC], ids=["2d", "3d-anisotropic"])
def test_ddp_two_processes_match_one_with_the_same_global_batch(data, tmp_path, model):
    config = dict(
        iterations=4,
        batch_size=2,
        val_every=100,
        optimizer="sgd",
        lr=0.01,
        memory_format="contiguous",
    )
    one, two = sections(**config), sections(**config, gpus=2)
    for settings in (one, two):
        settings[1].update(model)
        if model:
            settings[2]["tile"] = [6, TILE, TILE]
    train(data, tmp_path / "one", *one)
    train(data, tmp_path / "two", *two, threads=2)
    a = torch.load(tmp_path / "one" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "checkpoints" / "last.pt", weights_only=True)
    assert b["iteration"] == 4 and len(b["rng"]) == 2
    atol = 1e-5 if model else 1e-6  # gradients summed over 3D tiles: measured 4.7e-6 apart
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, rtol=1e-4, atol=atol)
    losses = [[float(r["loss"]) for r in read_log(tmp_path / run)] for run in ("one", "two")]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)


def test_swap_axes_of_a_2d_net_is_refused_before_training(data, tmp_path):
    """``augment.rotation.swap_axes`` permutes the axes of isotropic 3D tiles: a 2D net stops at
    the start with the line that says so, and writes no checkpoint."""
    train_cfg, model_cfg, augment_cfg = sections(iterations=2)
    augment_cfg["rotation"]["swap_axes"] = True
    with pytest.raises(ValueError, match="swap_axes permutes the axes of 3D tiles"):
        train(data, tmp_path / "run", train_cfg, model_cfg, augment_cfg)
    assert not list((tmp_path / "run" / "checkpoints").glob("*.pt"))


def test_iteration_sampler_shares_each_global_batch_between_processes():
    one = list(IterationSampler(3, 6, batch=4))
    assert one == list(range(12, 24))
    shares = [list(IterationSampler(3, 6, batch=4, rank=r, world=2)) for r in (0, 1)]
    assert shares == [[12, 13, 16, 17, 20, 21], [14, 15, 18, 19, 22, 23]]
    with pytest.raises(ValueError, match="divisible"):
        IterationSampler(0, 1, batch=3, world=2)


def test_learning_rate_schedules():
    assert lr_factor(0, 100, "constant", warmup=4) == 0.25
    assert lr_factor(3, 100, "constant", warmup=4) == 1.0
    assert lr_factor(50, 100, "cosine", warmup=0) == pytest.approx(0.5)
    assert lr_factor(100, 100, "cosine", warmup=0) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(75, 100, "poly", warmup=0) == pytest.approx(0.25**0.9)
    assert lr_factor(10, 100, "poly", warmup=20) == pytest.approx(11 / 20 * 0.9**0.9)
    with pytest.raises(ValueError, match="schedule"):
        lr_factor(0, 10, "step", warmup=0)
    assert math.isfinite(lr_factor(200, 100, "poly", warmup=0))


def test_unaugmented_tiles_are_mirrored_crops(data):
    group = zarr.open_group(data, mode="r")
    stats = dataset_statistics(group["raw"], [0])
    augment = load_config(None)["augment"]
    dataset = TileDataset(data, [0], stats, TILE, 28, augment, seed=0, mode="none")
    image = np.pad(normalize(group["raw"][0], stats), 8, mode="reflect")
    labels = group["labels"][0]
    for index in range(3):
        tile, target, weights = (t.numpy() for t in dataset[index])
        assert tile.shape == (1, TILE, TILE) and target.shape == weights.shape == (28, 28)
        matches = [
            (y, x)
            for y in range(image.shape[0] - TILE + 1)
            for x in range(image.shape[1] - TILE + 1)
            if np.allclose(image[y : y + TILE, x : x + TILE], tile[0], atol=1e-5)
        ]
        assert len(matches) == 1
        y, x = matches[0]
        np.testing.assert_array_equal(target, labels[y : y + 28, x : x + 28] > 0)
        np.testing.assert_array_equal(weights, np.where(target, 1.0, 3.0))


def test_3d_tiles_are_mirrored_crops_of_a_run_of_training_slices(tmp_path):
    """Training slices 0-1 and 3-5 of 6: each 3D tile lies in one run, mirrored at its ends (the
    held-out slice 2 is never read), and targets and weights are its central crop."""
    path = tmp_path / "data.zarr"
    write_synthetic(path, 6, (24, 24), 0, (24, 24), cell_size=8.0, membrane_width=2.0)
    group = zarr.open_group(path, mode="a")
    write_array(group, "weights", np.where(group["labels"][:] > 0, 1.0, 3.0).astype(np.float32))
    group = zarr.open_group(path, mode="r")
    stats = dataset_statistics(group["raw"], [0, 1, 3, 4, 5])
    augment = load_config(None)["augment"]
    dataset = TileDataset(path, [0, 1, 3, 4, 5], stats, 8, 4, augment, seed=0, mode="none", dims=3)
    raw = normalize(group["raw"][:], stats)
    runs = {(0, 2): 0, (3, 6): 0}
    for index in range(12):
        tile, target, weights = (t.numpy() for t in dataset[index])
        assert tile.shape == (1, 8, 8, 8) and target.shape == weights.shape == (4, 4, 4)
        found = []
        for start, stop in runs:
            volume = np.pad(raw[start:stop], 8, mode="reflect")
            labels = np.pad(group["labels"][start:stop], 8, mode="reflect")
            for z, y, x in np.ndindex(*(n - 7 for n in volume.shape)):
                if np.array_equal(volume[z : z + 8, y : y + 8, x : x + 8], tile[0]):
                    found.append((start, stop))
                    inner = labels[z + 2 : z + 6, y + 2 : y + 6, x + 2 : x + 6]
                    np.testing.assert_array_equal(target, inner > 0)
                    np.testing.assert_array_equal(weights, np.where(inner > 0, 1.0, 3.0))
        assert len(set(found)) == 1, found
        runs[found[0]] += 1
    assert all(runs.values())  # both runs drawn


@pytest.mark.parametrize("mode", ["2d", "3d"])
def test_3d_tiles_read_box_by_box_equal_those_of_runs_in_memory(tmp_path, monkeypatch, mode):
    """Runs larger than tiles.CACHED_RUN_BYTES are read per tile box (a volume larger than a
    worker's memory): every augmented tile, target and weight map is the same, with the
    separation gap of the weight maps (2D or 3D) and every augmentation on."""
    from unetpipe import tiles

    path = tmp_path / "data.zarr"
    write_synthetic(path, 7, (40, 40), 0, (40, 40), cell_size=10.0, membrane_width=1.0)
    write_weights(path, {"mode": mode, "separation_gap": 2})
    group = zarr.open_group(path, mode="r")
    slices = [0, 1, 2, 4, 5, 6]
    stats = dataset_statistics(group["raw"], slices)
    augment = load_config(None)["augment"]
    args = (path, slices, stats, (6, TILE, TILE), (2, 28, 28), augment)
    model = dict(seed=3, dims=3, spacing=(3.0, 1.0, 1.0))
    in_memory = [TileDataset(*args, **model)[i] for i in range(6)]
    monkeypatch.setattr(tiles, "CACHED_RUN_BYTES", 0)
    dataset = TileDataset(*args, **model)
    for index, expected in enumerate(in_memory):
        for got, want in zip(dataset[index], expected, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not dataset._volumes  # nothing held


def test_bank_tiles_must_match_the_network(data, tmp_path):
    group = zarr.open_group(data, mode="r")
    stats = dataset_statistics(group["raw"], group.attrs["splits"]["train"])
    augment = {**load_config(None)["augment"], "bank_size": 4, "tile": TILE}
    shard = tmp_path / "shard-0.zarr"
    write_bank(data, shard, shard=0, n_shards=1, params=augment, input_size=TILE, output_size=28)
    dataset = TileDataset(data, [0, 1], stats, TILE, 28, augment, 0, mode="bank", bank=[shard])
    bank = open_bank([shard])
    tile, target, weights = dataset[5]
    assert any(np.array_equal(tile[0].numpy(), bank[i][0]) for i in range(len(bank)))
    with pytest.raises(ValueError, match="rebuild the bank"):
        TileDataset(data, [0, 1], stats, 60, 44, augment, 0, mode="bank", bank=[shard])
    with pytest.raises(ValueError, match="no bank shards"):
        TileDataset(data, [0, 1], stats, TILE, 28, augment, 0, mode="bank")


def test_a_diverging_run_stops_naming_the_step_and_exports_nothing(data, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match=r"diverged: the loss is nan at iteration \d+.*train.lr"):
        train(data, run, *sections(iterations=6, checkpoint_every=1, lr=1e6))
    assert not (run / "model.pt").exists()
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in last["model"].values())  # the last finite state


def test_non_finite_training_images_are_refused(data, tmp_path):
    bad = tmp_path / "data.zarr"
    shutil.copytree(data, bad)
    raw = zarr.open_array(bad / "raw", mode="r")[:].astype(np.float32)
    raw[0, 3, 4] = np.inf
    group = zarr.open_group(bad, mode="a")
    write_array(group, "raw", raw)
    with pytest.raises(ValueError, match="NaN or infinite"):
        train(bad, tmp_path / "run", *sections(iterations=1))
    assert not (tmp_path / "run" / "model.pt").exists()


def test_a_run_folder_unetpipe_did_not_write_is_refused(data, tmp_path):
    run = tmp_path / "victim"
    run.mkdir()
    (run / "thesis.txt").write_text("x")
    with pytest.raises(ValueError, match="victim exists and was not written by unetpipe"):
        train(data, run, *sections(iterations=1))
    assert [p.name for p in run.iterdir()] == ["thesis.txt"]


def test_checkpoint_and_model_files_that_are_not_ours_are_one_clear_error(data, tmp_path):
    run = claim_folder(tmp_path / "run")  # a run folder of unetpipe's, a damaged checkpoint
    (run / "checkpoints").mkdir(parents=True)
    for content in (b"", b"garbage", b"PK\x03\x04 truncated zip"):
        (run / "checkpoints" / "last.pt").write_bytes(content)
        with pytest.raises(ValueError, match=r"last.pt: not a readable unetpipe checkpoint"):
            train(data, run, *sections(iterations=1))
        (tmp_path / "model.pt").write_bytes(content)
        with pytest.raises(ValueError, match=r"model.pt: not a readable unetpipe model"):
            load_model(tmp_path / "model.pt")
    torch.save({"anything": torch.zeros(1)}, tmp_path / "model.pt")
    with pytest.raises(ValueError, match="not a unetpipe model file"):
        load_model(tmp_path / "model.pt")


def test_changed_data_content_starts_afresh(data, trained, tmp_path):
    """Labels changed in place (same metadata, same attributes): the old checkpoint is moved
    aside and the run trains anew from iteration 0."""
    run, other = tmp_path / "run", tmp_path / "data.zarr"
    shutil.copytree(trained, run)
    shutil.copytree(data, other)
    settings = sections(iterations=8, val_every=4, checkpoint_every=4)  # those of `trained`
    labels = zarr.open_array(other / "labels", mode="r+")
    labels[1, :8, :8] = 0
    train(other, run, *settings)
    assert (run / "checkpoints" / "superseded" / "last.pt").is_file()
    assert [row["iteration"] for row in read_log(run)][0] == "1"


def test_run_settings_resume_and_export_re_exports_without_training(data, trained, tmp_path):
    """Cadence, workers and device do not restart a finished run; `export` only picks another
    checkpoint: nothing is trained again."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = (run / "checkpoints" / "log.csv").read_text()
    cadence = sections(iterations=8, val_every=3, checkpoint_every=5, workers=1, gpus=1)
    cadence[0]["export"] = "best"  # `trained` uses val_every 4: with export best it counts
    cadence[0]["val_every"] = 4
    train(data, run, *cadence)
    assert not (run / "checkpoints" / "superseded").exists()
    assert (run / "checkpoints" / "log.csv").read_text() == before
    last = sections(iterations=8, val_every=5, checkpoint_every=4, export="last")
    train(data, run, *last)  # export last: the validation cadence does not matter
    assert not (run / "checkpoints" / "superseded").exists()
    assert (run / "checkpoints" / "log.csv").read_text() == before
    assert load_model(run / "model.pt")[1]["iteration"] == 8
    best = sections(iterations=8, val_every=5, checkpoint_every=4, export="best")
    train(data, run, *best)  # export best at another cadence: another state would be best
    assert (run / "checkpoints" / "superseded" / "last.pt").is_file()


def test_changing_the_checkpoint_cadence_mid_run_resumes_to_the_same_weights(data, tmp_path):
    """Killed at iteration 25 with checkpoints every 10, resumed with checkpoints every 7: the
    same final weights as an uninterrupted run (CPU)."""
    assert run_child(data, tmp_path / "straight") == 0
    assert run_child(data, tmp_path / "killed", kill_at=25) == -signal.SIGKILL
    assert run_child(data, tmp_path / "killed", checkpoint_every=7) == 0
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "checkpoints" / "last.pt", weights_only=True)
    assert b["iteration"] == 30
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, rtol=0, atol=1e-6)


def test_library_calls_leave_process_settings_as_they_were(data, tmp_path):
    threads = torch.get_num_threads()
    benchmark = torch.backends.cudnn.benchmark
    train(data, tmp_path / "run", *sections(iterations=1), threads=threads + 1)
    assert torch.get_num_threads() == threads
    assert torch.backends.cudnn.benchmark == benchmark


def test_cli_config_applies_dataset_val_slices_and_refuses_what_it_cannot(data, tmp_path, capsys):
    """Issue 29: ``--config`` validated ``dataset.val_slices: [99]`` and trained on the group's
    split anyway."""
    import yaml

    from unetpipe.cli import main

    train_cfg, model_cfg, augment_cfg = sections(iterations=2, val_every=2, checkpoint_every=2)
    config = {
        "dataset": {"val_slices": [0], "source": "synthetic"},
        "train": {k: train_cfg[k] for k in ("device", "workers", "optimizer", "lr", "iterations")}
        | {"val_every": 2, "checkpoint_every": 2},
        "model": {"depth": 2, "base_channels": 4, "dropout": 0.0},
        "augment": {"tile": TILE},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", str(data), str(tmp_path / "run"), "--config", str(path)]) == 0
    err = capsys.readouterr().err
    assert load_model(tmp_path / "run" / "model.pt")[1]["split"] == {"train": [1, 2], "val": [0]}
    assert "dataset.val_slices of" in err and "dataset keys ['source'] describe how" in err
    before = sorted(p.name for p in tmp_path.iterdir())
    config["dataset"]["val_slices"] = [99]
    path.write_text(yaml.safe_dump(config))
    assert main(["train", str(data), str(tmp_path / "r99"), "--config", str(path)]) == 1
    assert "val_slices [99] out of range: the dataset has 3 slices" in capsys.readouterr().err
    config["crossval"] = {"k": 3}
    config["dataset"]["val_slices"] = [0]
    path.write_text(yaml.safe_dump(config))
    args = ["train", str(data), str(tmp_path / "rf"), "--config", str(path), "--fold", "fold-1"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "--fold fold-1 and dataset.val_slices [0] both choose the validation" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_cli_and_rule_train_alike(data, tmp_path):
    """``unetpipe train`` and rule train (its script) run one stage: the same weights, metadata
    and log after a few steps for the same config (the rule's params hold the result settings,
    its script adds the run settings)."""
    train_cfg = {"device": "cpu", "workers": 0, "optimizer": "adam", "lr": 1e-3, "iterations": 3}
    given = {
        "train": {
            **train_cfg,
            "val_every": 3,
            "checkpoint_every": 2,
            "memory_format": "contiguous",
        },
        "model": {"depth": 2, "base_channels": 4},
        "augment": {"tile": TILE},
    }
    config = load_config(given)
    run_rule_script(
        "train",
        config,
        tmp_path,
        input={"raw": data / "raw", "labels": data / "labels", "weights": data / "weights"}
        | {"bank": []},
        output={"model": str(tmp_path / "rule" / "model.pt")},
        params={k: rule_params(k, config[k]) for k in ("model", "augment")},
    )
    args = ["train", str(data), str(tmp_path / "cli"), "--config", config_file(tmp_path, given)]
    assert main([*args, "--threads", "1"]) == 0
    (ours, ours_meta), (theirs, theirs_meta) = (
        load_model(tmp_path / run / "model.pt") for run in ("cli", "rule")
    )
    assert ours.config == theirs.config and ours_meta == theirs_meta
    for name, value in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[name], value, rtol=0, atol=0)
    untimed = [
        [{k: v for k, v in row.items() if k not in ("tiles_per_s", "seconds")} for row in rows]
        for rows in (read_log(tmp_path / "cli"), read_log(tmp_path / "rule"))
    ]
    assert untimed[0] == untimed[1] and len(untimed[0]) == 3


def test_the_papers_gpu_recipe_on_a_cpu_is_said_before_training(data, tmp_path, caplog):
    from unetpipe import train as training

    def stop(*args, **kwargs):
        raise RuntimeError("stopped before the first step")

    config = load_config(None)  # the paper's network and 10,000 steps
    config["train"].update(device="cpu", workers=0)
    original = training._fit
    training._fit = stop
    try:
        with caplog.at_level("WARNING"), pytest.raises(RuntimeError, match="stopped before"):
            train(data, tmp_path / "run", config["train"], config["model"], config["augment"])
    finally:
        training._fit = original
    (line,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert line.startswith("training on a CPU with the paper's GPU defaults: a 31030658-param")
    assert "for 10000 steps" in line
    caplog.clear()
    smaller = sections(iterations=2)
    training._fit = stop
    try:
        with caplog.at_level("WARNING"), pytest.raises(RuntimeError, match="stopped before"):
            train(data, tmp_path / "small", *smaller)
    finally:
        training._fit = original
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_a_full_disk_while_saving_a_checkpoint_names_the_path(data, tmp_path, monkeypatch):
    """torch says only "unexpected pos" when the disk fills during a save."""

    def full(obj, target):
        Path(target).write_bytes(b"partial")
        raise RuntimeError(
            "[enforce fail at inline_container.cc:664] . unexpected pos 1280 vs 1163"
        )

    monkeypatch.setattr(torch, "save", full)
    folder = tmp_path / "run" / "checkpoints"
    message = (
        rf"^{folder}/(best|last).pt: writing failed, no space left on the device most likely \("
    )
    with pytest.raises(OSError, match=message + r"\d+ MiB free in .*unexpected pos 1280 vs 1163"):
        train(data, tmp_path / "run", *sections(iterations=1, checkpoint_every=1))
    assert not list((tmp_path / "run").rglob(".*tmp*"))
    assert not list(folder.glob("*.pt"))  # no checkpoint, nor half of one


OFFSETS = [[-1, 0], [0, -1], [-4, 0], [3, -5]]


@pytest.fixture(scope="module")
def masked_data(data, tmp_path_factory) -> Path:
    """``data`` with a mask: the truth of rows 20..29 of every slice is unknown."""
    path = tmp_path_factory.mktemp("masked") / "data.zarr"
    shutil.copytree(data, path)
    group = zarr.open_group(path, mode="a")
    mask = np.ones(group["labels"].shape, np.uint8)
    mask[:, 20:30] = 0
    write_array(group, "mask", mask)
    return path


def test_affinity_tiles_are_the_affinities_of_the_label_tile(masked_data):
    group = zarr.open_group(masked_data, mode="r")
    stats = dataset_statistics(group["raw"], [0])
    augment = load_config(None)["augment"]
    dataset = TileDataset(masked_data, [0], stats, TILE, 28, augment, 0, "none", offsets=OFFSETS)
    image = np.pad(normalize(group["raw"][0], stats), 8, mode="reflect")
    labels, mask = group["labels"][0], group["mask"][0] > 0
    for index in range(3):
        tile, targets, valid = (t.numpy() for t in dataset[index])
        assert targets.shape == valid.shape == (4, 28, 28) and valid.dtype == np.float32
        y, x = next(
            (y, x)
            for y in range(image.shape[0] - TILE + 1)
            for x in range(image.shape[1] - TILE + 1)
            if np.allclose(image[y : y + TILE, x : x + TILE], tile[0], atol=1e-5)
        )
        crop = (slice(y, y + 28), slice(x, x + 28))
        expected = affinity_targets(labels[crop], OFFSETS, mask[crop])
        np.testing.assert_array_equal(targets, expected[0])
        np.testing.assert_array_equal(valid, expected[1])
    # Augmented: the same affinities as the warped label tile (unknown truth warped along).
    dataset = TileDataset(masked_data, [0], stats, TILE, 28, augment, 0, offsets=OFFSETS)
    rng = sample_rng(0, 7)
    rng.integers(1)  # the slice drawn
    known = np.where(mask, labels, np.iinfo(np.uint32).max)
    _, label_tile, _ = augment_sample(
        normalize(group["raw"][0], stats), known, group["weights"][0],
        input_size=TILE, output_size=28, params=augment, rng=rng,
    )  # fmt: skip
    expected = affinity_targets(label_tile, OFFSETS, label_tile != np.iinfo(np.uint32).max)
    _, targets, valid = dataset[7]
    np.testing.assert_array_equal(targets.numpy(), expected[0])
    np.testing.assert_array_equal(valid.numpy(), expected[1])
    assert 0 < valid.numpy().mean() < 1
    with pytest.raises(ValueError, match="on_the_fly"):
        TileDataset(masked_data, [0], stats, TILE, 28, augment, 0, "bank", ["x"], OFFSETS)


@pytest.mark.parametrize("loss", ["dice", "bce"])
def test_an_affinity_network_trains_and_exports_its_offsets(data, tmp_path, loss):
    train_cfg, model_cfg, augment_cfg = sections(
        iterations=30, val_every=30, checkpoint_every=30, affinity_loss=loss, lr=3e-3
    )
    model_cfg.update(target="affinities", offsets=OFFSETS)
    train(data, tmp_path, train_cfg, model_cfg, augment_cfg)
    model, _ = load_model(tmp_path / "model.pt")
    assert model.config["offsets"] == OFFSETS and model.config["n_classes"] == 4
    rows = read_log(tmp_path)
    losses = [float(r["loss"]) for r in rows]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert 0 <= float(rows[-1]["val_vrand"]) <= 1


def test_importing_train_pulls_neither_matplotlib_nor_dask():
    """The training stage is the pure core plus torch: plotting and Dask come in at the edges."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    code = "import json, sys, unetpipe.train; print(json.dumps(sorted(sys.modules)))"
    child = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert child.returncode == 0, child.stderr
    loaded = {name.split(".")[0] for name in json.loads(child.stdout)}
    assert "unetpipe" in loaded and not {"matplotlib", "dask"} & loaded
