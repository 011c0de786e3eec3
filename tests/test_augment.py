"""Augmentation (Section 3.1): identity, elastic statistics, labels, shift, flips, gray, bank."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import config_file, run_rule_script

from unetpipe.augment import (
    augment_sample,
    open_bank,
    sample_rng,
    write_bank,
)
from unetpipe.cli import main
from unetpipe.config import load_config, rule_params
from unetpipe.intensity import dataset_statistics, normalize
from unetpipe.sections import AugmentConfig

PARTS = ("elastic", "rotation", "shift", "flip", "gray")


def only(*parts: str, **extra) -> dict:
    """Params with just ``parts`` switched on."""
    return {**{p: {"enabled": p in parts} for p in PARTS}, **extra}


def arrays(shape=(60, 70), seed=0):
    rng = np.random.default_rng(seed)
    image = rng.normal(size=shape).astype(np.float32)
    labels = rng.integers(0, 9, size=shape).astype(np.uint32) * 1000 + 2**31
    weights = rng.random(shape, dtype=np.float32)
    return image, labels, weights


def ramps(shape=(260, 260)):
    """Images whose value is the y (image) or x (weights) coordinate: they read out positions."""
    y, x = np.indices(shape, dtype=np.float32)
    return y, np.zeros(shape, np.uint32), x


@pytest.mark.parametrize("interpolation", ["cubic", "linear"])
@pytest.mark.parametrize("origin", [(-30, 25), (10, -5), (40, 50), (2, 3)])
def test_zero_displacement_is_the_mirrored_crop(interpolation, origin):
    image, labels, weights = arrays()
    tile, out = (52, 60), (20, 36)
    params = only(interpolation=interpolation)
    got = augment_sample(
        image, labels, weights, input_size=tile, output_size=out, params=params,
        rng=sample_rng(0, 0), origin=origin,
    )  # fmt: skip
    pad = 100
    y, x = origin[0] + pad, origin[1] + pad
    crop = np.s_[y : y + tile[0], x : x + tile[1]]
    inner = np.s_[y + 16 : y + 16 + out[0], x + 12 : x + 12 + out[1]]
    np.testing.assert_array_equal(got[0], np.pad(image, pad, mode="reflect")[crop])
    np.testing.assert_array_equal(got[1], np.pad(labels, pad, mode="reflect")[inner])
    np.testing.assert_array_equal(got[2], np.pad(weights, pad, mode="reflect")[inner])
    assert [a.dtype for a in got] == [np.float32, np.uint32, np.float32]


@pytest.mark.parametrize("sigma", [10.0, 4.0])
def test_control_point_displacements_have_the_configured_std(sigma):
    image, labels, weights = ramps()
    params = only("elastic", interpolation="linear", elastic={"grid": 3, "sigma": sigma})
    control = np.ix_([0, 20, 40], [0, 20, 40])  # a 3 x 3 grid spanning the 41 px tile
    grid_y, grid_x = np.meshgrid([100, 120, 140], [100, 120, 140], indexing="ij")
    shifts = []
    for index in range(400):
        tile_y, _, tile_x = augment_sample(
            image, labels, weights, input_size=41, output_size=41, params=params,
            rng=sample_rng(1, index), origin=(100, 100),
        )  # fmt: skip
        shifts += [tile_y[control] - grid_y, tile_x[control] - grid_x]
    shifts = np.array(shifts)
    assert np.std(shifts) == pytest.approx(sigma, rel=0.05)
    assert abs(np.mean(shifts)) < 0.05 * sigma
    # Independent draws per control point and axis: correlations near 0.
    flat = shifts.reshape(400, 18)
    corr = np.corrcoef(flat.T)[np.triu_indices(18, 1)]
    assert np.abs(corr).max() < 0.2


def test_labels_keep_their_values_under_all_augmentations():
    image, labels, weights = arrays((80, 90))
    for index in range(10):
        _, tile, _ = augment_sample(
            image, labels, weights, input_size=64, output_size=40, params={},
            rng=sample_rng(2, index),
        )  # fmt: skip
        assert tile.dtype == np.uint32 and tile.shape == (40, 40)
        assert np.isin(tile, labels).all()


def test_pure_shift_moves_every_pixel_by_the_shift():
    ramp_y, _, ramp_x = ramps((120, 120))
    _, labels, _ = arrays((120, 120), seed=3)
    params = only("shift", interpolation="linear", shift={"max_px": 6.0})
    origin = (40, 40)
    seen = []
    for index in range(5):
        tile_y, tile_labels, tile_x = augment_sample(
            ramp_y, labels, ramp_x, input_size=30, output_size=20, params=params,
            rng=sample_rng(3, index), origin=origin,
        )  # fmt: skip
        shift_y = tile_y - ramp_y[40:70, 40:70]
        shift_x = tile_x - ramp_x[45:65, 45:65]
        sy, sx = float(shift_y.mean()), float(shift_x.mean())
        np.testing.assert_allclose(shift_y, sy, atol=1e-4)
        np.testing.assert_allclose(shift_x, sx, atol=1e-4)
        assert abs(sy) <= 6 and abs(sx) <= 6
        iy, ix = 45 + int(np.floor(sy + 0.5)), 45 + int(np.floor(sx + 0.5))
        np.testing.assert_array_equal(tile_labels, labels[iy : iy + 20, ix : ix + 20])
        seen.append((sy, sx))
    assert len(set(seen)) == 5


def test_flips_are_exact():
    image, labels, weights = arrays()
    crop = image[10:42, 20:52]
    flips = [crop, crop[::-1], crop[:, ::-1], crop[::-1, ::-1]]
    kinds = set()
    for index in range(16):
        tile = augment_sample(
            image, labels, weights, input_size=32, output_size=32, params=only("flip"),
            rng=sample_rng(4, index), origin=(10, 20),
        )[0]  # fmt: skip
        matches = [k for k, flipped in enumerate(flips) if np.array_equal(tile, flipped)]
        assert len(matches) == 1
        kinds.add(matches[0])
    assert kinds == {0, 1, 2, 3}


def test_gray_values_are_contrast_brightness_within_bounds():
    image, labels, weights = arrays()
    params = only("gray", gray={"contrast": 0.2, "brightness": 0.3, "gamma": 0.0})
    crop = image[5:37, 5:37]
    for index in range(5):
        tile = augment_sample(
            image, labels, weights, input_size=32, output_size=32, params=params,
            rng=sample_rng(5, index), origin=(5, 5),
        )[0]  # fmt: skip
        contrast, brightness = np.polyfit(crop.ravel(), tile.ravel(), 1)
        np.testing.assert_allclose(tile, contrast * crop + brightness, atol=1e-5)
        assert 0.8 <= contrast <= 1.2 and abs(brightness) <= 0.3
    gamma = augment_sample(
        image, labels, weights, input_size=32, output_size=32,
        params=only("gray", gray={"contrast": 0.0, "brightness": 0.0, "gamma": 0.5}),
        rng=sample_rng(5, 0), origin=(5, 5),
    )[0]  # fmt: skip
    order = np.argsort(crop.ravel())
    assert np.all(np.diff(gamma.ravel()[order]) >= 0)  # a monotonic curve over the tile's range
    assert gamma.min() == pytest.approx(crop.min()) and gamma.max() == pytest.approx(crop.max())


def test_deterministic_per_seed_and_index():
    image, labels, weights = arrays()
    run = lambda seed, index: augment_sample(  # noqa: E731
        image,
        labels,
        weights,
        input_size=36,
        output_size=20,
        params={},
        rng=sample_rng(seed, index),
    )
    first, again, other = run(7, 3), run(7, 3), run(7, 4)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])


def test_bad_input():
    image, labels, weights = arrays()
    kw = {"params": {}, "rng": sample_rng(0, 0)}
    with pytest.raises(ValueError, match="one shape"):
        augment_sample(image, labels[:-1], weights, input_size=30, output_size=20, **kw)
    with pytest.raises(ValueError, match="centred"):
        augment_sample(image, labels, weights, input_size=30, output_size=31, **kw)
    with pytest.raises(ValueError, match="centred"):
        augment_sample(image, labels, weights, input_size=30, output_size=19, **kw)
    with pytest.raises(ValueError, match="unknown augment"):
        AugmentConfig.from_mapping({"elastic": {"alpha": 1}})
    with pytest.raises(ValueError, match="non-negative"):
        sample_rng(-1, 0)


def make_group(path: Path) -> Path:
    rng = np.random.default_rng(8)
    group = zarr.open_group(path, mode="w")
    group.attrs["splits"] = {"train": [0, 2, 3], "val": [1]}
    raw = rng.integers(0, 255, size=(4, 40, 48)).astype(np.uint8)
    raw[1] = 255  # a validation slice that would change the statistics
    group.create_array("raw", data=raw, chunks=(1, 40, 48))
    group.create_array("labels", data=rng.integers(0, 5, size=(4, 40, 48)).astype(np.uint32))
    group.create_array("weights", data=rng.random((4, 40, 48), dtype=np.float32))
    return path


def test_bank_is_independent_of_sharding(tmp_path):
    data = make_group(tmp_path / "data.zarr")
    params = {"bank_size": 7, "seed": 11}
    common = {"params": params, "input_size": 44, "output_size": (28, 20)}
    write_bank(data, tmp_path / "one.zarr", shard=0, n_shards=1, **common)
    shards = [tmp_path / f"shard-{i}.zarr" for i in range(3)]
    for i, shard in enumerate(shards):
        write_bank(data, shard, shard=i, n_shards=3, **common)
    one, many = open_bank([tmp_path / "one.zarr"]), open_bank(shards[::-1])
    assert len(one) == len(many) == 7
    group = zarr.open_group(data, mode="r")
    stats = dataset_statistics(group["raw"], [0, 2, 3])
    assert many.normalization == stats and many.output_size == (28, 20)
    for i in range(7):
        for a, b in zip(one[i], many[i], strict=True):
            np.testing.assert_array_equal(a, b)
        rng = sample_rng(11, i)
        z = [0, 2, 3][rng.integers(3)]
        expected = augment_sample(
            normalize(group["raw"][z], stats), group["labels"][z], group["weights"][z],
            rng=rng, **common,
        )  # fmt: skip
        for a, b in zip(many[i], expected, strict=True):
            np.testing.assert_array_equal(a, b)
    sources = np.concatenate([zarr.open_group(s, mode="r")["slice"][...] for s in shards])
    assert set(sources) <= {0, 2, 3}
    np.testing.assert_array_equal(many[-1][0], many[6][0])
    with pytest.raises(IndexError):
        many[7]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "data.zarr", "one.zarr", "shard-0.zarr", "shard-1.zarr", "shard-2.zarr",
    ]  # fmt: skip


def test_bank_errors(tmp_path):
    data = make_group(tmp_path / "data.zarr")
    common = {"params": {"bank_size": 2}, "input_size": 20, "output_size": 20}
    with pytest.raises(ValueError, match="shard"):
        write_bank(data, tmp_path / "b.zarr", shard=0, n_shards=3, **common)
    zarr.open_group(data, mode="r+").attrs["splits"] = {"train": [], "val": [1]}
    with pytest.raises(ValueError, match="training slices"):
        write_bank(data, tmp_path / "b.zarr", shard=0, n_shards=1, **common)
    assert not (tmp_path / "b.zarr").exists()


def test_cli_and_rule_augment_alike(tmp_path):
    """``unetpipe augment --shard 1`` and rule augment (its script) run one stage: the same tiles
    and attributes of shard 1 for the same config (the network's tile geometry from its model
    section, of which the rule's params hold depth, padding, pool and kernel)."""
    data = make_group(tmp_path / "data.zarr")
    given = {"augment": {"tile": 44, "bank_size": 5, "shards": 2, "seed": 3}, "model": {"depth": 2}}
    config = load_config(given)
    geometry = ("depth", "padding", "pool", "kernel")
    model = {k: v for k, v in rule_params("model", config["model"]).items() if k in geometry}
    rule = tmp_path / "rule" / "shard-1.zarr"
    run_rule_script(
        "augment",
        config,
        tmp_path,
        input={"group": data / "zarr.json", "raw": data / "raw"},
        output=[str(rule)],
        params={"model": model},
        wildcards={"shard": "1"},
    )
    args = ["augment", str(data), str(tmp_path / "cli"), "--config", config_file(tmp_path, given)]
    assert main([*args, "--shard", "1"]) == 0
    ours, theirs = (zarr.open_group(p, mode="r") for p in (tmp_path / "cli" / "shard-1.zarr", rule))
    assert ours.attrs.asdict() == theirs.attrs.asdict()
    assert theirs.attrs["output_size"] == [28, 28] and theirs.attrs["first_index"] == 2
    for name in ("image", "labels", "weights", "slice"):
        np.testing.assert_array_equal(ours[name][:], theirs[name][:])
