"""Overlap-tile inference: exact against one whole-image pass, TTA, Zarr/Dask, resume, bad input."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import zarr
from conftest import run_rule_script
from hypothesis import given, settings
from hypothesis import strategies as st

import unetpipe
from unetpipe.cli import build_parser, main
from unetpipe.config import load_config
from unetpipe.intensity import normalize
from unetpipe.model import UNet, probabilities, save_model
from unetpipe.ngff import open_image
from unetpipe.precision import autocast
from unetpipe.predict import plan, predict_image, predict_zarr, slurm_cluster_options, tiles
from unetpipe.predict.executors import resolve_device
from unetpipe.predict.plan import batch_shape
from unetpipe.tiling import Geometry, plan_axis


def whole_image_pass(
    model: UNet, image: np.ndarray, mode: str = "reflect", precision: str = "float32"
) -> np.ndarray:
    """The reference: the network applied once to the whole mirror-padded image (np.pad), in
    ``precision`` (autocast), the soft-max (an affinity net: sigmoids) in float32."""
    axes = Geometry.of(model).axes
    padded = np.pad(
        image,
        [(a.halo, a.smallest_tile(n) - n - a.halo) for a, n in zip(axes, image.shape, strict=True)],
        mode=mode,
    )
    with torch.no_grad(), autocast("cpu", precision):
        logits = model(torch.from_numpy(padded)[None, None]).float()
    probs = probabilities(logits, model.config)[0].numpy()
    same = model.config["padding"] == "same"
    first = [a.halo if same else 0 for a in axes]
    return probs[(slice(None), *(slice(f, f + n) for f, n in zip(first, image.shape, strict=True)))]


def make_net(depth: int, padding: str = "valid", dims: int = 2, seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(base_channels=4, depth=depth, padding=padding, dims=dims).eval()


NETS = {(d, p): make_net(d, p) for d in (2, 3) for p in ("valid", "same")}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@settings(max_examples=30, deadline=None)
@given(
    height=st.integers(1, 120),
    width=st.integers(1, 120),
    depth=st.sampled_from([2, 3]),
    padding=st.sampled_from(["valid", "same"]),
    steps=st.integers(1, 12),
    mode=st.sampled_from(["reflect", "symmetric"]),
    seed=st.integers(0, 2**16),
)
def test_tiled_equals_one_pass_over_the_mirror_padded_image(
    height: int, width: int, depth: int, padding: str, steps: int, mode: str, seed: int
) -> None:
    model = NETS[depth, padding]
    geometry = Geometry.of(model).axes[0]
    tile = geometry.smallest_tile(geometry.align) + steps * geometry.align
    image = np.random.default_rng(seed).normal(size=(height, width)).astype(np.float32)
    tiled = predict_image(model, image, tile=tile, mirror=mode)
    assert tiled.shape == (2, height, width) and tiled.dtype == np.float32
    np.testing.assert_allclose(tiled, whole_image_pass(model, image, mode), atol=1e-5, rtol=0)


def test_many_tiles_in_batches_on_the_paper_depth() -> None:
    model = make_net(5)
    image = np.random.default_rng(1).normal(size=(70, 45)).astype(np.float32)
    # Tiles of 204 predict 20 px and step by 16: 5 x 3 tiles, the outputs overlapping by 4 px.
    tiled = predict_image(model, image, tile=204, batch_size=4)
    np.testing.assert_allclose(tiled, whole_image_pass(model, image), atol=1e-5, rtol=0)


def test_stepping_by_the_output_size_would_shift_the_pooling_grid() -> None:
    """Why tiles start on multiples of 2**(depth-1): tiles stepped by their output size (20 px,
    not a multiple of 16) disagree with the whole-image pass."""
    model = make_net(5)
    image = np.random.default_rng(2).normal(size=(20, 40)).astype(np.float32)
    padded = np.pad(image, ((92, 92), (92, 112)), mode="reflect")
    with torch.no_grad():
        shifted = torch.softmax(model(torch.from_numpy(padded[:, 20:224])[None, None]), 1)[0]
    second_tile = shifted.numpy()[:, :, :20]
    reference = predict_image(model, image, tile=204)[:, :, 20:40]
    assert np.abs(second_tile - reference).max() > 1e-3


def test_3d_net_on_a_volume() -> None:
    model = make_net(2, dims=3)
    volume = np.random.default_rng(3).normal(size=(9, 30, 23)).astype(np.float32)
    tiled = predict_image(model, volume, tile=32)
    np.testing.assert_allclose(tiled, whole_image_pass(model, volume), atol=1e-5, rtol=0)
    np.testing.assert_allclose(tiled.sum(axis=0), 1.0, atol=1e-6)


ANISOTROPIC = {  # an ISBI-like layout: no pooling and 1 x 3 x 3 kernels along z at first
    "pool": [[1, 2, 2], [2, 2, 2]],
    "kernel": [[1, 3, 3], [3, 3, 3], [3, 3, 3]],
}


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_anisotropic_3d_net_tiled_equals_one_pass(padding: str) -> None:
    """Per-axis pooling and kernels (``model.pool``, ``model.kernel``): tiles on each axis's own
    pooling grid, each with its own context, equal one pass over the whole padded volume."""
    torch.manual_seed(4)
    model = UNet(base_channels=4, depth=3, dims=3, padding=padding, **ANISOTROPIC).eval()
    geometry = Geometry.of(model)
    assert geometry.align == (2, 4, 4)
    assert geometry.halo == ((8, 20, 20) if padding == "valid" else (8, 22, 22))
    volume = np.random.default_rng(6).normal(size=(11, 37, 29)).astype(np.float32)
    whole = whole_image_pass(model, volume)
    smallest = geometry.smallest_tile((1, 1, 1))
    for tile in ((smallest[0] + 2, smallest[1] + 8, smallest[2] + 4), None):
        tiled = predict_image(model, volume, tile=tile)
        np.testing.assert_allclose(tiled, whole, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="along axis 0"):
        model.output_size((smallest[0] + 1, smallest[1], smallest[2]))
    with pytest.raises(ValueError, match=r"nearest valid tiles: \[18, 20\] \(axis z of tile"):
        predict_image(model, volume, tile=(19, smallest[1], smallest[2]))


def _dihedral(image: np.ndarray, k: int, flip: bool) -> tuple:
    def forward(a: np.ndarray) -> np.ndarray:
        return np.rot90(np.flip(a, -1) if flip else a, k, axes=(-2, -1))

    def backward(a: np.ndarray) -> np.ndarray:
        a = np.rot90(a, -k, axes=(-2, -1))
        return np.flip(a, -1) if flip else a

    return forward, backward


def test_tta_averages_the_eight_flips_and_rotations() -> None:
    model = NETS[3, "valid"]
    image = np.random.default_rng(4).normal(size=(37, 61)).astype(np.float32)
    expected = np.zeros((2, 37, 61), dtype=np.float64)
    for k in range(4):
        for flip in (False, True):
            forward, backward = _dihedral(image, k, flip)
            expected += backward(predict_image(model, forward(image).copy(), tile=60))
    tta = predict_image(model, image, tile=60, tta=True)
    np.testing.assert_allclose(tta, expected / 8, atol=1e-5, rtol=0)
    assert np.abs(tta - predict_image(model, image, tile=60)).max() > 1e-3


def test_auto_tile_and_channels_last_leave_the_model_unchanged() -> None:
    model = NETS[2, "same"]
    image = np.random.default_rng(5).normal(size=(33, 50)).astype(np.float32)
    np.testing.assert_allclose(
        predict_image(model, image), whole_image_pass(model, image), atol=1e-5, rtol=0
    )
    assert all(p.is_contiguous() for p in model.parameters())


@pytest.mark.parametrize(("depth", "padding"), list(NETS))
@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last"])
def test_bfloat16_tiled_equals_its_own_whole_pass(
    depth: int, padding: str, memory_format: str
) -> None:
    """In bfloat16 too a pixel's value does not depend on the tiling: measured max difference
    1.2e-7 (the float32 soft-max), while bfloat16 differs from float32 by up to 0.03 here."""
    model = NETS[depth, padding]
    geometry = Geometry.of(model).axes[0]
    image = np.random.default_rng(3).normal(size=(100, 117)).astype(np.float32)
    tile = geometry.smallest_tile(geometry.align) + 3 * geometry.align
    tiled = predict_image(
        model, image, tile=tile, precision="bfloat16", memory_format=memory_format
    )
    whole = whole_image_pass(model, image, precision="bfloat16")
    np.testing.assert_allclose(tiled, whole, atol=1e-5, rtol=0)
    assert np.abs(tiled - whole_image_pass(model, image)).max() > 1e-3  # bfloat16 it was


def test_float32_levels_tile_exactly_and_predict_nearer_float32() -> None:
    """A network with its full-resolution level in float32 (model.float32_levels) predicted in
    bfloat16: tiled equals its own whole pass within float32 rounding, and lies nearer the float32
    prediction than the all-bfloat16 pass of the same weights (mean absolute difference of the
    probabilities 0.00107 against 0.00122)."""
    plain = NETS[3, "valid"]
    model = UNet(base_channels=4, depth=3, float32_levels=1).eval()
    model.load_state_dict(plain.state_dict())
    geometry = Geometry.of(model).axes[0]
    image = np.random.default_rng(3).normal(size=(100, 117)).astype(np.float32)
    tile = geometry.smallest_tile(geometry.align) + 3 * geometry.align
    tiled = predict_image(model, image, tile=tile, precision="bfloat16")
    np.testing.assert_allclose(
        tiled, whole_image_pass(model, image, precision="bfloat16"), atol=1e-5, rtol=0
    )
    exact = whole_image_pass(plain, image)
    reduced = whole_image_pass(plain, image, precision="bfloat16")
    # On average: the largest difference comes from the bfloat16 levels between (0.039 vs 0.031).
    assert np.abs(tiled - exact).mean() < np.abs(reduced - exact).mean()


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((4, 5, 6), np.float32), "must have 2 axes"),
        (np.zeros((0, 5), np.float32), "empty"),
        (np.array([[0.0, np.nan]], np.float32), "NaN"),
    ],
)
def test_predict_image_rejects_bad_images(image: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        predict_image(NETS[2, "valid"], image)


def test_predict_image_rejects_bad_settings() -> None:
    image = np.zeros((8, 8), np.float32)
    with pytest.raises(ValueError, match="nearest valid tiles"):
        predict_image(NETS[2, "valid"], image, tile=31)
    with pytest.raises(ValueError, match="batch_size"):
        predict_image(NETS[2, "valid"], image, batch_size=0)
    training = make_net(2).train()
    with pytest.raises(ValueError, match="eval"):
        predict_image(training, image)


# --- predict_zarr --------------------------------------------------------------------------------

STATS = {"mean": 100.0, "std": 40.0}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_model(path, NETS[3, "valid"], normalization=STATS)
    return path


def make_volume(path: Path, shape: tuple[int, ...], dtype: str = "uint8", seed: int = 0) -> Any:
    data = np.random.default_rng(seed).integers(0, 255, size=shape).astype(dtype)
    array = zarr.create_array(str(path), shape=shape, chunks=(1, 64, 64), dtype=dtype)
    array[:] = data
    array.attrs["made_by"] = "test"
    return array


def per_slice_reference(model: UNet, raw: np.ndarray, tile: int) -> np.ndarray:
    return np.stack([predict_image(model, normalize(s, STATS), tile=tile) for s in raw], axis=1)


def test_predict_zarr_equals_predict_image_per_slice(model_file: Path, tmp_path: Path) -> None:
    raw = make_volume(tmp_path / "raw.zarr", (2, 90, 130))
    output = tmp_path / "pred.zarr"
    block = (1, 32, 36)  # 90 = 3 blocks of 30 -> 32 (4 px pooling grid), 130 = 4 x 36
    result = predict_zarr(
        model_file, raw, output, tile=76, block=block, precision="float32", progress=False
    )
    probs = open_image(output, "czyx")
    assert result["block"] == (1, 32, 36) and result["blocks"] == 2 * 3 * 4
    assert probs.shape == (2, 2, 90, 130) and probs.chunks == (2, 1, 32, 36)
    assert probs.dtype == np.float16
    expected = per_slice_reference(NETS[3, "valid"], raw[:], 76)
    np.testing.assert_allclose(probs[:].astype(np.float32), expected, atol=1e-3, rtol=0)
    assert probs.attrs["normalization"] == STATS and probs.attrs["input_attrs"] == {
        "made_by": "test"
    }
    assert probs.attrs["model_sha256"] and probs.attrs["tile"] == [76, 76]
    assert not (tmp_path / "pred.zarr.partial").exists() and not (output / ".done").exists()

    result = predict_zarr(
        model_file,
        str(tmp_path / "raw.zarr"),
        output,
        dtype="uint8",
        precision="float32",
        progress=False,
    )
    as_bytes = open_image(output, "czyx")[:]
    assert as_bytes.dtype == np.uint8 and result["blocks"] == 2  # auto tile: one block per slice
    np.testing.assert_allclose(as_bytes / 255, expected, atol=0.5 / 255 + 1e-5, rtol=0)


def test_predict_zarr_3d_net_and_tta(tmp_path: Path) -> None:
    path = tmp_path / "model3d.pt"
    model = make_net(2, dims=3)
    save_model(path, model, normalization=STATS)
    raw = make_volume(tmp_path / "raw.zarr", (10, 20, 24))
    f32 = {"precision": "float32", "progress": False}
    predict_zarr(path, raw, tmp_path / "p.zarr", tile=32, block=(8, 8, 8), **f32)
    expected = predict_image(model, normalize(raw[:], STATS), tile=32)
    probs = open_image(tmp_path / "p.zarr", "czyx")
    assert probs.chunks == (2, 8, 8, 8)
    np.testing.assert_allclose(probs[:].astype(np.float32), expected, atol=1e-3, rtol=0)
    predict_zarr(path, raw, tmp_path / "t.zarr", tile=32, tta=True, **f32)
    tta = predict_image(model, normalize(raw[:], STATS), tile=32, tta=True)
    tiled = open_image(tmp_path / "t.zarr", "czyx")[:].astype(np.float32)
    np.testing.assert_allclose(tiled, tta, atol=1e-3, rtol=0)


def test_local_cluster_gives_the_same_output(model_file: Path, tmp_path: Path) -> None:
    raw = make_volume(tmp_path / "raw.zarr", (2, 40, 50))
    predict_zarr(model_file, raw, tmp_path / "a.zarr", tile=60, progress=False)
    predict_zarr(model_file, raw, tmp_path / "b.zarr", tile=60, scheduler="local", progress=False)
    a, b = (open_image(tmp_path / n, "czyx")[:] for n in ("a.zarr", "b.zarr"))
    assert np.array_equal(a, b)


# Blocks of one 60 px tile's output (20 px): many blocks in a small volume.
BLOCK_20 = (1, 20, 20)
RUN = f"""
import sys
from unetpipe.predict import predict_zarr
predict_zarr(
    sys.argv[1], sys.argv[2], sys.argv[3], tile=60, block={BLOCK_20}, batch_size=1, progress=False
)
"""


def finished_blocks(partial: Path) -> int:
    """Blocks a (running or killed) prediction has written: non-zero entries of its markers."""
    markers = partial / ".done"
    if not (markers / "zarr.json").is_file():
        return 0
    return int(np.count_nonzero(zarr.open_array(str(markers), mode="r")[:]))


def test_killed_run_resumes_and_matches_an_uninterrupted_run(
    model_file: Path, tmp_path: Path
) -> None:
    make_volume(tmp_path / "raw.zarr", (24, 60, 60))  # 24 x 9 blocks of 20 px
    output = tmp_path / "pred.zarr"
    partial = tmp_path / "pred.zarr.partial"
    env = {**os.environ, "PYTHONPATH": str(Path(unetpipe.__file__).parents[1])}
    args = [sys.executable, "-c", RUN, str(model_file), str(tmp_path / "raw.zarr"), str(output)]
    process = subprocess.Popen(args, env=env)
    try:
        while finished_blocks(partial) < 5:
            assert process.poll() is None, "the run ended before it could be killed"
            time.sleep(0.01)
    finally:
        process.kill()
        process.wait()
    finished = finished_blocks(partial)
    assert 5 <= finished < 24 * 9 and not output.exists()

    result = predict_zarr(
        model_file, tmp_path / "raw.zarr", output, tile=60, block=BLOCK_20, progress=False
    )
    assert result["computed"] == 24 * 9 - finished and result["reused"] == finished
    assert result["stale"] == 0
    predict_zarr(
        model_file,
        tmp_path / "raw.zarr",
        tmp_path / "again.zarr",
        tile=60,
        block=BLOCK_20,
        progress=False,
    )
    resumed = open_image(output, "czyx")[:]
    assert np.array_equal(resumed, open_image(tmp_path / "again.zarr", "czyx")[:])


def test_resume_recomputes_the_blocks_whose_input_changed(
    model_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Blocks finished before the input's pixels changed in place are not reused."""
    raw = make_volume(tmp_path / "raw.zarr", (4, 40, 40), dtype="float32")
    raw[3] = np.nan  # the run stops at slice 3: the 4 x 3 blocks of slices 0-2 are finished
    output = tmp_path / "pred.zarr"
    with pytest.raises(ValueError, match="NaN"):
        predict_zarr(model_file, raw, output, tile=60, block=BLOCK_20, progress=False)
    assert finished_blocks(tmp_path / "pred.zarr.partial") == 12 and not output.exists()

    raw[0] = raw[0] + 1  # same path, shape and attributes; new pixels in slice 0
    raw[3] = 7
    with caplog.at_level(logging.INFO, logger="unetpipe.predict"):
        result = predict_zarr(model_file, raw, output, tile=60, block=BLOCK_20, progress=False)
    assert (result["reused"], result["stale"], result["computed"]) == (8, 4, 8)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resume:")]
    assert lines == [
        "resume: 8 finished blocks kept (input unchanged), 4 recomputed because their input "
        "changed since they were written, 4 not written before"
    ]
    fresh = predict_zarr(
        model_file, raw, tmp_path / "fresh.zarr", tile=60, block=BLOCK_20, progress=False
    )
    assert fresh["computed"] == 16
    assert np.array_equal(
        open_image(output, "czyx")[:],
        open_image(tmp_path / "fresh.zarr", "czyx")[:],
    )


def test_blocks_batched_into_tasks_give_the_same_output(
    model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = make_volume(tmp_path / "raw.zarr", (3, 90, 130))
    one = predict_zarr(
        model_file, raw, tmp_path / "one.zarr", tile=76, block=(1, 32, 36), progress=False
    )
    assert one["batch"] == (1, 1, 1) and one["blocks"] == 36
    monkeypatch.setattr(plan, "MIN_TASKS", 4)  # 36 blocks: 9 per task, filled along x first
    batched = predict_zarr(
        model_file,
        raw,
        tmp_path / "batched.zarr",
        tile=76,
        block=(1, 32, 36),
        n_workers=2,
        progress=False,
    )
    assert batched["batch"] == (1, 2, 4) and batched["computed"] == 36
    assert sum(batched["workers"].values()) == 36
    assert np.array_equal(
        open_image(tmp_path / "one.zarr", "czyx")[:],
        open_image(tmp_path / "batched.zarr", "czyx")[:],
    )


def test_2d_blocks_span_whole_tiles_of_at_least_min_block() -> None:
    """The CPU recipe net (depth 5: 16 px pooling grid): a 700 px tile predicts 516 px, 512 on
    the grid, so 2D blocks take 2 x 2 of them (1024 = MIN_BLOCK_2D); a tile larger than that
    keeps one tile per block; a 3D net keeps one tile per block."""
    geometry = Geometry.of(UNet(base_channels=4, depth=5))
    assert plan.MIN_BLOCK_2D == 1024
    assert plan.block_shape((1, 2048, 2048), 2, (700, 700), geometry) == (1, 1024, 1024)
    assert plan.block_shape((1, 1500, 1500), 2, (700, 700), geometry) == (1, 1024, 1024)
    assert plan.block_shape((3, 300, 5000), 2, (700, 700), geometry) == (1, 304, 1024)
    assert plan.block_shape((1, 2048, 2048), 2, (2236, 2236), geometry) == (1, 2048, 2048)
    # 876 px predicts 692: three tiles of 688 on the grid cover 2048, two of them a block
    assert plan.block_shape((1, 2048, 2048), 2, (876, 876), geometry) == (1, 1376, 1376)
    geometry = Geometry.of(make_net(2, dims=3))
    tile = geometry.smallest_tile((12, 12, 12))
    output = geometry.axes[0].tile_output(tile[0])
    assert plan.block_shape((100, 100, 100), 3, tile, geometry) == (output,) * 3


@pytest.mark.parametrize("tile", [284, 572, 700, 876, 1116])
def test_blocks_run_no_more_tiles_than_the_whole_axis(tile: int) -> None:
    """Over sizes from 16 to 6000 px, the tiles of the blocks of an axis (each block planned on
    its own, as predict_zarr does) are no more than tiles of output on the pooling grid need,
    and as many as the plan of the whole axis (the plan pass_tile measured the tile for), or one
    more where that plan's last tile reaches past the grid by the few px of a tile's output that
    are off it."""
    geometry = Geometry.of(UNet(base_channels=4, depth=5))
    axis = geometry.axes[1]
    on_grid = axis.tile_output(tile) // axis.align * axis.align
    for size in range(16, 6000, 37):
        block = plan.block_shape((1, size, size), 2, (tile, tile), geometry)[1]
        tiles = sum(
            len(plan_axis(min(block, size - o), tile, axis).starts) for o in range(0, size, block)
        )
        assert tiles <= -(-size // on_grid), (size, block)
        assert tiles - len(plan_axis(size, tile, axis).starts) in (0, 1), (size, block)


def test_batch_shape_scales_to_a_teravoxel_grid() -> None:
    assert batch_shape((24, 3, 3)) == (1, 1, 1)  # under MIN_TASKS blocks: one each
    assert batch_shape((10_000, 12, 12)) == (1, 12, 12)  # one slice of 144 per task
    assert batch_shape((10_000, 40, 40)) == (1, 6, 40)  # at most 256 blocks
    assert batch_shape((3, 40, 40)) == (1, 1, 4)


def test_changed_parameters_start_afresh(model_file: Path, tmp_path: Path) -> None:
    """A partial run with 12 finished blocks: resumed with the same result settings it keeps
    them; with another one (mirror) none is kept, and the output equals a fresh run's."""
    raw = make_volume(tmp_path / "raw.zarr", (4, 40, 40), dtype="float32")
    raw[3] = np.nan  # the run stops at slice 3: the 4 x 3 blocks of slices 0-2 are finished
    for mirror, kept in (("reflect", 12), ("symmetric", 0)):
        with pytest.raises(ValueError, match="NaN"):
            predict_zarr(
                model_file, raw, tmp_path / "p.zarr", tile=60, block=BLOCK_20, progress=False
            )
        assert finished_blocks(tmp_path / "p.zarr.partial") == 12
        raw[3] = 7
        result = predict_zarr(
            model_file,
            raw,
            tmp_path / "p.zarr",
            tile=60,
            block=BLOCK_20,
            mirror=mirror,
            progress=False,
        )
        assert (result["reused"], result["computed"]) == (kept, 16 - kept), mirror
        raw[3] = np.nan
    raw[3] = 7
    predict_zarr(
        model_file,
        raw,
        tmp_path / "f.zarr",
        tile=60,
        block=BLOCK_20,
        mirror="symmetric",
        progress=False,
    )
    assert np.array_equal(
        open_image(tmp_path / "p.zarr", "czyx")[:], open_image(tmp_path / "f.zarr", "czyx")[:]
    )


def test_precision_and_memory_format_are_recorded_and_kept_on_resume(
    model_file: Path, tmp_path: Path
) -> None:
    """bfloat16 output equals predict_image's in bfloat16; the attributes record the resolved
    precision and the memory format; a resumed run keeps the recorded format; another precision
    starts afresh."""
    raw = make_volume(tmp_path / "raw.zarr", (4, 40, 40), dtype="float32")
    raw[3] = np.nan  # the run stops at slice 3: the blocks of slices 0-2 are finished
    output, partial = tmp_path / "p.zarr", tmp_path / "p.zarr.partial"
    bf16 = {"tile": 60, "block": BLOCK_20, "precision": "bfloat16", "progress": False}
    with pytest.raises(ValueError, match="NaN"):
        predict_zarr(model_file, raw, output, **bf16)
    attrs = zarr.open_array(partial).attrs
    assert attrs["precision"] == "bfloat16"
    other = {"contiguous": "channels_last", "channels_last": "contiguous"}[attrs["memory_format"]]
    attrs["memory_format"] = other  # as if another process had measured the other one
    raw[3] = 7
    assert predict_zarr(model_file, raw, output, **bf16)["reused"] == 12
    probs = open_image(output, "czyx")
    assert (probs.attrs["precision"], probs.attrs["memory_format"]) == ("bfloat16", other)
    expected = np.stack(
        [
            predict_image(NETS[3, "valid"], normalize(s, STATS), 60, precision="bfloat16")
            for s in raw
        ],
        axis=1,
    )
    np.testing.assert_allclose(probs[:].astype(np.float32), expected, atol=1e-3, rtol=0)
    raw[3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        predict_zarr(model_file, raw, tmp_path / "q.zarr", **bf16)
    raw[3] = 7
    f32 = {**bf16, "precision": "float32"}
    assert predict_zarr(model_file, raw, tmp_path / "q.zarr", **f32)["reused"] == 0


def test_bad_input_leaves_no_output(model_file: Path, tmp_path: Path) -> None:
    output = tmp_path / "pred.zarr"
    flat = zarr.create_array(str(tmp_path / "flat.zarr"), shape=(30, 30), dtype="uint8")
    with pytest.raises(ValueError, match=r"\(z, y, x\)"):
        predict_zarr(model_file, flat, output, progress=False)
    empty = zarr.create_array(str(tmp_path / "empty.zarr"), shape=(0, 30, 30), dtype="uint8")
    with pytest.raises(ValueError, match="empty"):
        predict_zarr(model_file, empty, output, progress=False)
    with pytest.raises(FileNotFoundError, match="model file not found"):
        predict_zarr(tmp_path / "missing.pt", empty, output, progress=False)
    nan = make_volume(tmp_path / "nan.zarr", (2, 30, 30), dtype="float32")
    with pytest.raises(ValueError, match="dtype"):
        predict_zarr(model_file, nan, output, dtype="int16", progress=False)
    with pytest.raises(ValueError, match="multiples of 4"):
        predict_zarr(model_file, nan, output, block=(1, 30, 30), progress=False)
    unnormalised = tmp_path / "raw_model.pt"
    save_model(unnormalised, NETS[3, "valid"])
    with pytest.raises(ValueError, match="normalization"):
        predict_zarr(unnormalised, nan, output, progress=False)
    assert not output.exists()


@pytest.mark.parametrize(
    ("value", "text"), [(np.nan, "NaN"), (np.inf, r"\+inf"), (-np.inf, "-inf")]
)
def test_non_finite_input_is_refused_naming_where(
    model_file: Path, tmp_path: Path, value: float, text: str
) -> None:
    raw = make_volume(tmp_path / "raw.zarr", (2, 30, 30), dtype="float32")
    raw[1, 5, 7] = value
    output = tmp_path / "pred.zarr"
    where = rf"{tmp_path / 'raw.zarr'} contains {text} at \(z, y, x\) = \(1, 5, 7\)"
    with pytest.raises(ValueError, match=where):
        predict_zarr(model_file, raw, output, progress=False)
    assert not output.exists()


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_outputs_overlapping_the_input_or_the_model_are_refused(
    model_file: Path, tmp_path: Path
) -> None:
    group = zarr.open_group(str(tmp_path / "d.zarr"), mode="w")
    for name in ("raw", "test"):
        group.create_array(name, shape=(1, 30, 30), dtype="uint8")[:] = 7
    (tmp_path / "link").symlink_to(tmp_path / "d.zarr")
    make_volume(tmp_path / "o.zarr.partial", (1, 30, 30))
    before, model_before = tree(tmp_path), model_file.read_bytes()
    test = tmp_path / "d.zarr" / "test"
    for source, output in [
        (test, tmp_path / "d.zarr"),  # the input's group: would delete raw, labels ...
        (test, test),
        (test, test / "inside"),
        (test, tmp_path / "link"),  # the group through a symbolic link
        (tmp_path / "o.zarr.partial", tmp_path / "o.zarr"),  # the input as the stale partial
    ]:
        with pytest.raises(ValueError, match="would destroy the input"):
            predict_zarr(model_file, source, output, progress=False)
    for output in (model_file, model_file.parent):
        with pytest.raises(ValueError, match=f"the input {model_file}"):
            predict_zarr(model_file, test, output, progress=False)
    args = ["predict", str(model_file), str(test), str(tmp_path / "d.zarr"), "--no-progress"]
    assert main(args) == 1
    assert tree(tmp_path) == before and model_file.read_bytes() == model_before


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"memory_gb": 0}, "memory_gb must be a positive number"),
        ({"memory_gb": -2.0}, "memory_gb must be a positive number"),
        ({"memory_gb": float("nan")}, "memory_gb must be a positive number"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"n_workers": 0}, "n_workers must be a positive integer"),
        ({"threads_per_worker": 0}, "threads_per_worker must be a positive integer"),
        ({"tile": 0}, "nearest valid tiles"),
        ({"block": (1, 0, 8)}, "block must be"),
        ({"mirror": "wrap"}, "mirror must be one of"),
        ({"device": "gpu"}, "device must be auto, cpu, cuda or cuda:N"),
        ({"scheduler": "mpi"}, "scheduler must be one of"),
        ({"slurm": {"partition": "gpu"}}, r"unknown slurm options \['partition'\]"),
        ({"precision": "float16", "device": "cpu"}, "float16 needs a CUDA device"),
        ({"memory_format": "nhwc"}, "memory format must be one of"),
    ],
)
def test_bad_settings_are_refused_before_anything_is_written(
    model_file: Path, tmp_path: Path, setting: dict, message: str
) -> None:
    raw = make_volume(tmp_path / "raw.zarr", (1, 30, 30))
    with pytest.raises(ValueError, match=message):
        predict_zarr(model_file, raw, tmp_path / "p.zarr", progress=False, **setting)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw.zarr"]


def test_a_damaged_input_chunk_is_named(model_file: Path, tmp_path: Path) -> None:
    raw = make_volume(tmp_path / "raw.zarr", (3, 30, 30))
    (tmp_path / "raw.zarr" / "c" / "1" / "0" / "0").write_bytes(b"not zstd at all")
    before = tree(tmp_path / "raw.zarr")
    message = rf"{tmp_path / 'raw.zarr'}: chunk c/1/0/0 cannot be decoded \(.+\); the file is"
    with pytest.raises(ValueError, match=message):
        predict_zarr(model_file, raw, tmp_path / "p.zarr", progress=False)
    assert not (tmp_path / "p.zarr").exists()
    assert tree(tmp_path / "raw.zarr") == before


def test_a_missing_input_chunk_is_refused(model_file: Path, tmp_path: Path) -> None:
    """Not predicted from the fill value: a plain Zarr input that leaves a chunk unstored is
    refused with the chunk named (issue 29: ``rm d.zarr/test/c/1/0/0`` predicted zeros)."""
    make_volume(tmp_path / "raw.zarr", (2, 30, 30))
    (tmp_path / "raw.zarr" / "c" / "1" / "0" / "0").unlink()
    before = tree(tmp_path / "raw.zarr")
    message = rf"{tmp_path / 'raw.zarr'}: chunk c/1/0/0 is missing: .* write_empty_chunks=True"
    with pytest.raises(ValueError, match=message):
        predict_zarr(
            model_file, tmp_path / "raw.zarr", tmp_path / "p.zarr", tile=60, progress=False
        )
    assert not (tmp_path / "p.zarr").exists()
    assert tree(tmp_path / "raw.zarr") == before


def test_auto_device_gives_each_local_worker_its_own_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert resolve_device("auto") == "cuda"  # not in a Dask worker
    for name, device in [(0, "cuda:0"), (5, "cuda:1"), ("SLURMCluster-3", "cuda")]:
        monkeypatch.setattr(distributed, "get_worker", lambda name=name: SimpleNamespace(name=name))
        assert resolve_device("auto") == device
    assert resolve_device("cpu") == "cpu"


def test_slurm_options_make_a_job_script() -> None:
    from dask_jobqueue import SLURMCluster

    options = slurm_cluster_options(
        {
            "queue": "gpu",
            "cores": 8,
            "memory": "32GB",
            "walltime": "02:00:00",
            "job_extra_directives": ["--gres=gpu:1"],
        }
    )
    with SLURMCluster(**options) as cluster:
        script = cluster.job_script()
    for line in ("#SBATCH -p gpu", "#SBATCH --cpus-per-task=8", "#SBATCH -t 02:00:00"):
        assert line in script
    assert "#SBATCH --gres=gpu:1" in script and "--nthreads 8" in script  # one worker per job
    assert "#SBATCH -J unetpipe-predict" in script


def test_command_line(model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    make_volume(tmp_path / "raw.zarr", (1, 30, 40))
    args = ["predict", str(model_file), str(tmp_path / "raw.zarr"), str(tmp_path / "p.zarr")]
    assert main([*args, "--tile", "60", "--dtype", "uint8", "--no-progress"]) == 0
    assert open_image(tmp_path / "p.zarr", "czyx").shape == (2, 1, 30, 40)
    assert main(["predict", str(tmp_path / "none.pt"), *args[2:]]) == 1
    before = tree(tmp_path / "p.zarr")
    assert main([*args, "--memory-gb", "0", "--overwrite", "--no-progress"]) == 1
    assert "predict.memory_gb: 0.0 is less than or equal to the minimum" in capsys.readouterr().err
    assert tree(tmp_path / "p.zarr") == before


def test_cli_and_rule_predict_alike(model_file: Path, tmp_path: Path) -> None:
    """``unetpipe predict`` and rule predict (its script) run one stage: the same probabilities
    and attributes (but timings) for the same settings, result and run settings alike."""
    data = tmp_path / "data.zarr"
    zarr.open_group(str(data), mode="w")
    make_volume(data / "raw", (2, 30, 40))
    settings = {"tile": 60, "block": [1, 16, 24], "mirror": "symmetric", "tta": True}
    settings |= {"dtype": "uint8", "precision": "float32", "progress": False}
    run_rule_script(
        "predict",
        load_config({"predict": settings}),
        tmp_path,
        input={"model": model_file, "group": data / "zarr.json"},
        output=[str(tmp_path / "rule.zarr")],
        threads=2,
        wildcards={"array": "raw"},
    )
    args = ["predict", str(model_file), str(data / "raw"), str(tmp_path / "cli.zarr")]
    args += ["--tile", "60", "--block", "1", "16", "24", "--mirror", "symmetric", "--tta"]
    assert main([*args, "--dtype", "uint8", "--precision", "float32", "--no-progress"]) == 0
    ours, theirs = (open_image(tmp_path / f"{door}.zarr", "czyx") for door in ("cli", "rule"))
    np.testing.assert_array_equal(ours[:], theirs[:])
    untimed = [{k: v for k, v in a.attrs.items() if k != "seconds"} for a in (ours, theirs)]
    assert untimed[0] == untimed[1]
    assert theirs.attrs["tta"] and theirs.attrs["block"] == [1, 16, 24]


def test_command_line_takes_a_tile_per_axis(tmp_path: Path) -> None:
    """An anisotropic net has no single valid extent for every axis: ``--tile z y x``."""
    torch.manual_seed(5)
    model = UNet(base_channels=4, depth=3, dims=3, **ANISOTROPIC).eval()
    save_model(tmp_path / "m.pt", model, normalization=STATS)
    raw = make_volume(tmp_path / "raw.zarr", (9, 30, 26))
    smallest = Geometry.of(model).smallest_tile((1, 1, 1))
    tile = [str(t + s) for t, s in zip(smallest, (2, 8, 4), strict=True)]
    args = ["predict", str(tmp_path / "m.pt"), str(tmp_path / "raw.zarr"), str(tmp_path / "p.zarr")]
    assert main([*args, "--tile", *tile, "--precision", "float32", "--no-progress"]) == 0
    expected = predict_image(model, normalize(raw[:], STATS))
    probs = open_image(tmp_path / "p.zarr", "czyx")[:].astype(np.float32)
    np.testing.assert_allclose(probs, expected, atol=1e-3, rtol=0)
    assert open_image(tmp_path / "p.zarr", "czyx").attrs["tile"] == [int(t) for t in tile]


def test_every_predict_option_has_help() -> None:
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    actions = commands.choices["predict"]._actions
    assert len(actions) > 15
    for action in actions:
        assert action.help and action.help != argparse.SUPPRESS, action.dest


def test_a_missing_gpu_and_a_tiny_memory_budget_are_one_line(
    model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_volume(tmp_path / "raw.zarr", (1, 30, 40))
    before = tree(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = ["predict", str(model_file), str(tmp_path / "raw.zarr"), str(tmp_path / "p.zarr")]
    assert main([*args, "--device", "cuda", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "device cuda: no such CUDA device is available" in err and "readable" not in err
    assert main([*args, "--memory-gb", "0.000001", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "a memory budget of 1e-06 GiB fits no tile with 64 output px per axis" in err
    assert tree(tmp_path) == before


# --- affinity networks ---------------------------------------------------------------------------

AFFINITY_OFFSETS = [[-1, 0], [0, -1], [-9, 0], [4, -7]]


def affinity_net(padding: str = "valid") -> UNet:
    torch.manual_seed(1)
    return UNet(base_channels=4, depth=3, padding=padding, n_classes=4, offsets=AFFINITY_OFFSETS)


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_affinity_net_tiled_equals_one_sigmoid_pass(padding: str) -> None:
    model = affinity_net(padding).eval()
    image = np.random.default_rng(5).normal(size=(70, 93)).astype(np.float32)
    geometry = Geometry.of(model).axes[0]
    whole = whole_image_pass(model, image)
    for tile in (geometry.smallest_tile(geometry.align) + 2 * geometry.align, None):
        tiled = predict_image(model, image, tile=tile)
        assert tiled.shape == (4, 70, 93)
        np.testing.assert_allclose(tiled, whole, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="tta off"):
        predict_image(model, image, tta=True)


CLOSED_OFFSETS = [[-1, 0], [0, -1], [-6, 0], [0, -6], [-5, -5], [5, -5]]
"""Closed up to sign under the flips and rotations of the plane: TTA maps every view back."""


@pytest.mark.parametrize("target", ["boundary", "affinities"])
def test_tta_tiles_and_blocks_equal_the_whole_image_tta(target: str, tmp_path: Path) -> None:
    """TTA of either kind of net. Affinities: each view's channels are mapped back to the image's
    offsets, reversed ones read one offset further, so the views predict a margin past the
    region. Both: a flipped view of a block keeps the pooling grid of the whole flipped image
    (blocks of 16 x 32 on a 45 x 58 image gave up to 0.24 off before), so tiles and Zarr blocks
    give the whole image's TTA."""
    torch.manual_seed(3)
    net = {"n_classes": 6, "offsets": CLOSED_OFFSETS} if target == "affinities" else {}
    model = UNet(base_channels=4, depth=3, **net).eval()
    image = np.random.default_rng(8).normal(size=(45, 58)).astype(np.float32)
    whole = predict_image(model, image, tta=True)
    axis = Geometry.of(model).axes[0]
    tiled = predict_image(model, image, tile=axis.smallest_tile(axis.align) + axis.align, tta=True)
    np.testing.assert_allclose(tiled, whole, atol=1e-5, rtol=0)
    assert not np.allclose(whole, predict_image(model, image), atol=1e-3)  # the views differ
    save_model(tmp_path / "m.pt", model, normalization=STATS)
    raw = make_volume(tmp_path / "raw.zarr", (2, 45, 58))
    f32 = {"precision": "float32", "progress": False}
    predict_zarr(tmp_path / "m.pt", raw, tmp_path / "p.zarr", tta=True, block=(1, 16, 32), **f32)
    expected = np.stack([predict_image(model, normalize(s, STATS), tta=True) for s in raw[:]], 1)
    probs = open_image(tmp_path / "p.zarr", "czyx")[:].astype(np.float32)
    np.testing.assert_allclose(probs, expected, atol=1e-3, rtol=0)


def test_predict_zarr_names_affinity_channels_and_records_offsets(tmp_path: Path) -> None:
    path = tmp_path / "aff.pt"
    model = affinity_net().eval()
    save_model(path, model, normalization=STATS)
    raw = make_volume(tmp_path / "raw.zarr", (2, 50, 61))
    output = tmp_path / "pred.zarr"
    predict_zarr(path, raw, output, tile=60, precision="float32", progress=False)
    probs = open_image(output, "czyx")
    expected = np.stack([predict_image(model, normalize(s, STATS)) for s in raw[:]], axis=1)
    np.testing.assert_allclose(probs[:].astype(np.float32), expected, atol=1e-3, rtol=0)
    assert probs.attrs["offsets"] == AFFINITY_OFFSETS
    assert probs.attrs["channels"] == ["aff_-1_0", "aff_0_-1", "aff_-9_0", "aff_4_-7"]
    omero = zarr.open_group(output, mode="r").attrs["ome"]["omero"]
    assert [c["label"] for c in omero["channels"]] == probs.attrs["channels"]
    with pytest.raises(ValueError, match="tta off"):
        predict_zarr(path, raw, tmp_path / "tta.zarr", tta=True, progress=False)
    assert not (tmp_path / "tta.zarr").exists()


def test_provenance_paths_are_relative_to_the_output(model_file: Path, tmp_path: Path) -> None:
    """Results moved or shared together keep a true record: no absolute local paths."""
    from unetpipe.segment import segment_zarr

    make_volume(tmp_path / "in" / "raw.zarr", (1, 30, 40))
    out = tmp_path / "out" / "p.zarr"
    predict_zarr(model_file, tmp_path / "in" / "raw.zarr", out, tile=60, progress=False)
    attrs = open_image(out, "czyx").attrs
    assert attrs["model"] == f"../../{model_file.parent.name}/model.pt" and attrs["model_sha256"]
    assert attrs["input"]["path"] == "../in/raw.zarr"
    segment_zarr(out, tmp_path / "out" / "seg" / "s.zarr", {"min_size": 0})
    assert open_image(tmp_path / "out" / "seg" / "s.zarr").attrs["predictions"] == "../p.zarr"


def test_a_foreign_folder_where_the_partial_output_goes_is_kept(
    model_file: Path, tmp_path: Path
) -> None:
    """``<output>.partial`` is where predict resumes; a folder there that unetpipe did not write
    is refused, not removed to start afresh."""
    make_volume(tmp_path / "raw.zarr", (1, 30, 30))
    (tmp_path / "p.zarr.partial").mkdir()
    (tmp_path / "p.zarr.partial" / "thesis.txt").write_text("x")
    with pytest.raises(ValueError, match=r"p.zarr.partial exists and was not written by unetpipe"):
        predict_zarr(model_file, tmp_path / "raw.zarr", tmp_path / "p.zarr", progress=False)
    assert (tmp_path / "p.zarr.partial" / "thesis.txt").read_text() == "x"
    assert not (tmp_path / "p.zarr").exists()


def test_the_tile_is_measured_cheapest_first_and_stops_once_worse(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Cost = passes x seconds of one pass; a pass here costs its input area, except that the
    tiles of outputs 776 and up run 3x slower per pixel (as bfloat16 does beyond the caches)."""
    model = UNet(base_channels=2, depth=5).eval()
    timed: list[int] = []

    def seconds(run: Any, device: Any, repeats: int) -> float:
        tile = run.__defaults__[0].shape[-1]  # the lambda's bound input
        timed.append(tile)
        return tile**2 * (3.0 if tile >= model.valid_input_size(776) else 1.0)

    monkeypatch.setattr(tiles, "best_seconds", seconds)
    region, cap = (2048, 2048), (4000, 4000)
    tile = tiles.pass_tile(model, region, cap, 1, "float32", "contiguous")
    # The ladder's tiles fitted to 2048 px: 6, 4, 3 and 2 per axis of 540, 700, 876 and 1212 px;
    # cost 36 x 540^2 > 16 x 700^2 > 9 x 876^2, then 4 x 3 x 1212^2 is worse: not tried further.
    assert timed == [540, 700, 876, 1212] and tile == (876, 876)
    # Within the budget only, and a region one small tile covers is not measured at all.
    timed.clear()
    assert tiles.pass_tile(model, region, (572, 572), 1, "float32", "contiguous") == (540, 540)
    assert tiles.pass_tile(model, (100, 100), cap, 1, "float32", "contiguous") == (284, 284)
    assert timed == []


def test_a_measured_tile_is_recorded_and_kept_on_resume(
    model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = make_volume(tmp_path / "raw.zarr", (3, 40, 40), dtype="float32")
    raw[2] = np.nan  # stops at slice 2, slices 0-1 finished
    measured: list[tuple] = []

    def measure(model: UNet, region: Any, cap: Any, *args: Any) -> tuple[int, ...]:
        measured.append(tuple(region))
        return (44, 44)

    monkeypatch.setattr("unetpipe.predict.pass_tile", measure)  # the name predict_zarr calls
    output, partial = tmp_path / "p.zarr", tmp_path / "p.zarr.partial"
    bf16 = {"precision": "bfloat16", "progress": False}
    with pytest.raises(ValueError, match="NaN"):
        predict_zarr(model_file, raw, output, **bf16)
    assert measured == [(40, 40)] and zarr.open_array(partial).attrs["tile"] == [44, 44]
    raw[2] = 7
    assert predict_zarr(model_file, raw, output, **bf16)["reused"] > 0
    assert measured == [(40, 40)]  # the recorded tile, not measured again
    probs = open_image(output, "czyx")[:]
    expected = np.stack(
        [
            predict_image(NETS[3, "valid"], normalize(s, STATS), 44, precision="bfloat16")
            for s in raw
        ],
        axis=1,
    )
    np.testing.assert_allclose(probs.astype(np.float32), expected, atol=1e-3, rtol=0)
    # float32 keeps the memory budget's tile: not measured.
    predict_zarr(model_file, raw, tmp_path / "f.zarr", precision="float32", progress=False)
    assert measured == [(40, 40)]


def test_threads_per_worker_leave_the_process_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    save_model(path, make_net(2), normalization=STATS)
    make_volume(tmp_path / "raw.zarr", (1, 40, 40))
    before = torch.get_num_threads()
    predict_zarr(
        path,
        str(tmp_path / "raw.zarr"),
        tmp_path / "p.zarr",
        threads_per_worker=before + 1,
        precision="float32",
        progress=False,
    )
    assert torch.get_num_threads() == before
