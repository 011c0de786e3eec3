"""TIFF / Zarr / OME-Zarr in, OME-Zarr 0.5 and ImageJ TIFF out: exact reads, voxel sizes, the
pyramid, label images, validated with ome-zarr-models and opened with ome-zarr's reader."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr
from skimage.measure import block_reduce

from unetpipe import ngff
from unetpipe.cli import main
from unetpipe.model import UNet, save_model
from unetpipe.ngff import Space, open_image, write_image, write_tiff
from unetpipe.predict import predict_zarr
from unetpipe.segment import segment_slice, segment_zarr

# The maintained NGFF libraries that check our files (test extras; Python >= 3.11).
pytest.importorskip("ome_zarr", reason="pip install ome-zarr (Python >= 3.11)")
pytest.importorskip("ome_zarr_models", reason="pip install ome-zarr-models (Python >= 3.11)")
from ome_zarr.format import FormatV04  # noqa: E402
from ome_zarr.io import parse_url  # noqa: E402
from ome_zarr.reader import Label, Multiscales, Reader  # noqa: E402
from ome_zarr.writer import write_image as ome_zarr_write_image  # noqa: E402
from ome_zarr_models import open_ome_zarr  # noqa: E402
from ome_zarr_models.v05.image import Image  # noqa: E402
from ome_zarr_models.v05.image_label import ImageLabel  # noqa: E402

RNG = np.random.default_rng(0)
STACK = RNG.integers(0, 2**16, size=(5, 70, 90), dtype=np.uint16)
# (path, tifffile.imwrite keywords): the layouts a lab's TIFFs come in.
TIFFS = {
    "imagej": {"imagej": True, "metadata": {"axes": "ZYX", "spacing": 0.5, "unit": "micron"}},
    "bigtiff_zlib": {"bigtiff": True, "compression": "zlib", "photometric": "minisblack"},
    "lzw_tiled": {"compression": "lzw", "tile": (32, 32), "photometric": "minisblack"},
    "big_endian": {"byteorder": ">", "photometric": "minisblack"},
    "ome": {"ome": True, "metadata": {"axes": "ZYX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.2}},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiffs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tiffs")
    paths = {}
    for name, options in TIFFS.items():
        paths[name] = folder / f"{name}.tif"
        tifffile.imwrite(paths[name], STACK, **options)
    return paths


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_model(path, UNet(depth=3, base_channels=4), normalization={"mean": 3e4, "std": 2e4})
    return path


# --- reading ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TIFFS))
def test_tiff_regions_are_read_exactly(tiffs: dict[str, Path], name: str) -> None:
    image = open_image(tiffs[name])
    assert image.shape == STACK.shape and image.dtype == np.uint16 and image.format == "tiff"
    for key in [(slice(None),), (2, slice(10, 47), slice(0, 90)), (slice(1, 4), 69, slice(5, 6))]:
        np.testing.assert_array_equal(image[key], STACK[key])
    # Uncompressed contiguous data is memory-mapped per read, the rest read through tifffile.
    assert (image._raw is not None) == (name in ("imagej", "big_endian", "ome"))
    shipped = pickle.dumps(image)  # what a Dask worker receives: the path, not the pixels
    assert len(shipped) < 2000 < tiffs[name].stat().st_size // 10
    np.testing.assert_array_equal(pickle.loads(shipped)[4], STACK[4])


def test_tiff_voxel_size(tiffs: dict[str, Path], tmp_path: Path) -> None:
    assert open_image(tiffs["imagej"]).space.scale == (0.5, 1.0, 1.0)
    assert open_image(tiffs["imagej"]).space.unit == ("micrometer",) * 3
    assert open_image(tiffs["ome"]).space == Space(
        (1.0, 0.2, 0.2), unit=(None, *["micrometer"] * 2)
    )
    assert open_image(tiffs["bigtiff_zlib"]).space == Space()
    path = tmp_path / "calibrated.tif"
    tifffile.imwrite(
        path,
        STACK,
        imagej=True,
        resolution=(1 / 0.25, 1 / 0.125),
        metadata={"axes": "ZYX", "spacing": 3.0, "unit": "nm"},
    )
    assert open_image(path).space == Space((3.0, 0.125, 0.25), unit=("nanometer",) * 3)
    path = tmp_path / "centimeter.tif"
    tifffile.imwrite(path, STACK[0], resolution=(2e4, 4e4), resolutionunit="CENTIMETER")
    image = open_image(path)
    assert image.shape == (1, 70, 90) and image.space.unit == (None, "micrometer", "micrometer")
    assert image.space.scale == pytest.approx((1.0, 0.25, 0.5))  # 1e4 / (4e4, 2e4 px per cm)


def test_real_isbi_stack_is_memory_mapped(isbi_dir: Path) -> None:
    path = isbi_dir / "reconstructed" / "train-volume.tif"
    image = open_image(path)  # 30 uncompressed pages (axis I): a (z, y, x) stack
    assert image.shape == (30, 512, 512) and image._raw is not None
    np.testing.assert_array_equal(image[7:9, 100:300], tifffile.imread(path)[7:9, 100:300])


def test_real_lzw_frame_of_the_cell_tracking_challenge(shared_dir: Path) -> None:
    path = shared_dir / "data/ctc/DIC-C2DH-HeLa/01/t000.tif"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    image = open_image(path)  # LZW, 0.19 micrometer pixels given in pixels per centimeter
    np.testing.assert_array_equal(image[0], tifffile.imread(path))
    assert image.space.scale[1:] == pytest.approx((0.19, 0.19), rel=1e-4) and image._raw is None


def test_axes_are_mapped_dropped_and_inserted(tmp_path: Path) -> None:
    hyper = RNG.random((1, 4, 3, 20, 30), dtype=np.float32)  # ImageJ TZCYX, one time point
    tifffile.imwrite(tmp_path / "h.tif", hyper, imagej=True, metadata={"axes": "TZCYX"})
    image = open_image(tmp_path / "h.tif", "czyx")
    expected = np.moveaxis(hyper[0], 1, 0)  # (c, z, y, x)
    assert image.shape == (3, 4, 20, 30)
    np.testing.assert_array_equal(image[:], expected)
    np.testing.assert_array_equal(image[1, 2], expected[1, 2])
    np.testing.assert_array_equal(image[:, 1:3, 5], expected[:, 1:3, 5])
    with pytest.raises(ValueError, match="one grey-value channel"):
        open_image(tmp_path / "h.tif")  # three channels are not one (z, y, x) stack

    tifffile.imwrite(tmp_path / "t.tif", STACK, imagej=True, metadata={"axes": "TYX"})
    series = open_image(tmp_path / "t.tif")  # frames stand for z, with no physical z size
    assert series.shape == STACK.shape and series.space.scale[0] == 1.0

    tifffile.imwrite(tmp_path / "one.tif", STACK[0])  # one page: z and c of length 1
    flat = open_image(tmp_path / "one.tif", "czyx")
    assert flat.shape == (1, 1, 70, 90)
    np.testing.assert_array_equal(flat[0, 0], STACK[0])
    assert flat[:, 1:].shape == (1, 0, 70, 90) and flat[0, :, 3].shape == (1, 90)


def test_ome_zarr_04_and_05_inputs_written_by_ome_zarr(tmp_path: Path) -> None:
    volume = STACK[:, :64, :64]
    scale = {"z": 3.0, "y": 0.5, "x": 0.5}
    units = {a: "micrometer" for a in "zyx"}
    ome_zarr_write_image(
        volume[None, None], str(tmp_path / "v04"), axes="tczyx", fmt=FormatV04(), scale=scale,
        axes_units=units, scale_factors=(2,),
    )  # fmt: skip
    ome_zarr_write_image(volume, str(tmp_path / "v05"), axes="zyx", scale=scale, scale_factors=(2,))
    for version in ("v04", "v05"):
        image = open_image(tmp_path / version)
        assert image.format == "ome-zarr" and image.group == str((tmp_path / version).resolve())
        np.testing.assert_array_equal(image[:], volume)
        assert image.space.scale == (3.0, 0.5, 0.5)
        half = open_image(tmp_path / version, level=1)
        assert half.shape == (5, 32, 32) and half.space.scale == (3.0, 1.0, 1.0)
    assert open_image(tmp_path / "v04").space.unit == ("micrometer",) * 3


def test_zarr_array_takes_the_dataset_voxel_size(tmp_path: Path) -> None:
    group = zarr.open_group(str(tmp_path / "data.zarr"), mode="w")
    group.attrs["voxel_size"] = [50.0, 4.0, 4.0]
    group.create_array("raw", data=STACK, chunks=(1, 70, 90))
    image = open_image(tmp_path / "data.zarr" / "raw")
    assert image.space.scale == (50.0, 4.0, 4.0) and image.chunks == (1, 70, 90)
    assert open_image(group["raw"]).path == image.path  # a zarr.Array object: same image
    assert open_image(image) is image
    np.testing.assert_array_equal(image[3], STACK[3])


def test_bad_inputs_say_what_to_give(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such"):
        open_image(tmp_path / "missing.tif")
    with pytest.raises(FileNotFoundError, match="OME-Zarr"):
        open_image(tmp_path / "missing.zarr")
    group = zarr.open_group(str(tmp_path / "data.zarr"), mode="w")
    group.create_array("raw", shape=(1, 4, 4), dtype="uint8")
    with pytest.raises(ValueError, match=r"give one of its members: \[.raw.\]"):
        open_image(tmp_path / "data.zarr")
    group.attrs["multiscales"] = [{"version": "0.3", "axes": ["z", "y", "x"], "datasets": []}]
    with pytest.raises(ValueError, match="version 0.3"):
        open_image(tmp_path / "data.zarr")
    tifffile.imwrite(tmp_path / "rgb.tif", RNG.integers(0, 255, (20, 20, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="grey-value"):
        open_image(tmp_path / "rgb.tif")
    flat = zarr.create_array(str(tmp_path / "flat.zarr"), shape=(4, 4), dtype="uint8")
    with pytest.raises(ValueError, match=r"\(z, y, x\)"):
        open_image(flat)


def test_a_tiff_of_one_series_per_page_is_read_whole(tmp_path: Path) -> None:
    """``TiffWriter`` in a loop writes one series per page: every page is read (LZW too), as
    whole stack and as regions; series that differ are refused, a TIFF without pages too."""
    with tifffile.TiffWriter(tmp_path / "loop.tif") as tif:
        for page in STACK:
            tif.write(page, compression="lzw")
    image = open_image(tmp_path / "loop.tif")
    assert image.shape == STACK.shape
    np.testing.assert_array_equal(image[:], STACK)
    np.testing.assert_array_equal(image[1:4, 5:9, 80:], STACK[1:4, 5:9, 80:])
    np.testing.assert_array_equal(image[-1, 3], STACK[-1, 3])
    np.testing.assert_array_equal(open_image(tmp_path / "loop.tif", "czyx")[0, 2], STACK[2])
    pickled = pickle.loads(pickle.dumps(image))
    np.testing.assert_array_equal(pickled[2:, :3], STACK[2:, :3])
    with tifffile.TiffWriter(tmp_path / "mixed.tif") as tif:
        tif.write(STACK[0])
        tif.write(STACK[1, :60])
    with pytest.raises(ValueError, match=r"mixed.tif: its 2 image series differ \(1 of shape"):
        open_image(tmp_path / "mixed.tif")
    (tmp_path / "none.tif").write_bytes(b"II*\x00\x00\x00\x00\x00")
    with pytest.raises(ValueError, match="none.tif: cannot read this image: a TIFF without"):
        open_image(tmp_path / "none.tif")


def test_multiscales_that_point_nowhere_are_one_line(tmp_path: Path) -> None:
    level0 = tmp_path / "level0.zarr"
    zarr.create_array(str(level0), data=np.ones((2, 1, 8, 8), np.float32))
    write_image(tmp_path / "p.ome.zarr", level0, Space())
    group = zarr.open_group(str(tmp_path / "p.ome.zarr"), mode="r+")
    ome = group.attrs["ome"]
    ome["multiscales"][0]["datasets"][0]["path"] = "s0"
    group.attrs["ome"] = ome
    with pytest.raises(ValueError, match=r"p.ome.zarr: its OME-Zarr multiscales point level 0 at "):
        open_image(tmp_path / "p.ome.zarr", "czyx")
    ome["multiscales"][0]["datasets"] = []
    group.attrs["ome"] = ome
    with pytest.raises(ValueError, match=r"p.ome.zarr: its OME-Zarr multiscales list no image"):
        open_image(tmp_path / "p.ome.zarr", "czyx")
    ome["multiscales"] = []
    group.attrs["ome"] = ome
    with pytest.raises(ValueError, match=r"p.ome.zarr: its OME-Zarr multiscales list no image"):
        open_image(tmp_path / "p.ome.zarr", "czyx")


def test_tiff_export_refuses_a_prediction_with_a_missing_or_damaged_chunk(tmp_path: Path) -> None:
    level0 = tmp_path / "level0.zarr"
    zarr.create_array(str(level0), data=np.ones((2, 3, 8, 8), np.float16), chunks=(2, 1, 8, 8))
    write_image(tmp_path / "p.ome.zarr", level0, Space())
    chunk = tmp_path / "p.ome.zarr" / "0" / "c" / "0" / "1" / "0" / "0"
    saved = chunk.read_bytes()
    chunk.unlink()
    with pytest.raises(ValueError, match=r"p.ome.zarr/0: chunk c/0/1/0/0 is missing"):
        write_tiff(tmp_path / "p.ome.zarr", tmp_path / "p.tif")
    chunk.write_bytes(saved[:5])
    with pytest.raises(ValueError, match=r"p.ome.zarr/0: chunk c/0/1/0/0 cannot be decoded"):
        write_tiff(tmp_path / "p.ome.zarr", tmp_path / "p.tif")
    metadata = tmp_path / "p.ome.zarr" / "0" / "zarr.json"
    metadata.write_text(metadata.read_text()[:-30])  # truncated
    with pytest.raises(ValueError, match=r"p.ome.zarr/0/zarr.json: the Zarr metadata cannot be"):
        write_tiff(tmp_path / "p.ome.zarr", tmp_path / "p.tif")
    assert sorted(os.listdir(tmp_path)) == ["p.ome.zarr"]
    assert chunk.read_bytes() == saved[:5]


# --- writing ------------------------------------------------------------------------------------


def test_pyramid_is_written_chunk_by_chunk_and_equals_whole_array_downsampling(
    tmp_path: Path,
) -> None:
    # Planes of 2100 x 2051: levels 1050 x 1026 (four 1024-chunks, an odd column pair at the
    # border), 525 x 513, 263 x 257 (<= 512: the last).
    probs = RNG.random((2, 1, 2100, 2051), dtype=np.float32).astype(np.float16)
    level0 = zarr.create_array(
        str(tmp_path / "level0"), data=probs, chunks=(2, 1, 512, 512), attributes={"made": "here"}
    )
    space = Space((50.0, 4.0, 4.0), unit=(None, "nanometer", "nanometer"))
    write_image(tmp_path / "p.ome.zarr", tmp_path / "level0", space)
    assert not (tmp_path / "level0").exists()  # moved, not copied
    group = zarr.open_group(str(tmp_path / "p.ome.zarr"), mode="r")
    full = group["0"]
    assert full.chunks == level0.chunks and full.dtype == np.float16
    np.testing.assert_array_equal(full[:], probs)  # bit for bit: the array itself
    assert full.attrs["made"] == "here" and group.attrs["made"] == "here"

    def reference(x: np.ndarray) -> np.ndarray:  # skimage's block mean of the whole array
        odd = [(0, 0), (0, 0), (0, x.shape[2] % 2), (0, x.shape[3] % 2)]
        padded = np.pad(x.astype(np.float32), odd, mode="edge")
        return block_reduce(padded, (1, 1, 2, 2), np.mean).astype(np.float16)

    level = probs
    for index, shape in enumerate([(1050, 1026), (525, 513), (263, 257)], start=1):
        level = reference(level)
        assert group[str(index)].shape == (2, 1, *shape)
        np.testing.assert_array_equal(group[str(index)][:], level)
    assert group["1"].chunks == (2, 1, 1024, 1024)
    assert sorted(name for name, _ in group.arrays()) == ["0", "1", "2", "3"]
    multiscale = group.attrs["ome"]["multiscales"][0]
    assert [a["name"] for a in multiscale["axes"]] == ["c", "z", "y", "x"]
    assert multiscale["axes"][2] == {"name": "y", "type": "space", "unit": "nanometer"}
    transforms = [d["coordinateTransformations"] for d in multiscale["datasets"]]
    assert transforms[0] == [{"type": "scale", "scale": [1.0, 50.0, 4.0, 4.0]}]
    assert transforms[2] == [
        {"type": "scale", "scale": [1.0, 50.0, 16.0, 16.0]},
        {"type": "translation", "translation": [0.0, 0.0, 6.0, 6.0]},  # centre of 4 px
    ]
    Image.from_zarr(group)  # validated by ome-zarr-models
    node = next(iter(Reader(parse_url(str(tmp_path / "p.ome.zarr")))()))
    assert node.metadata["channel_names"] == ["background", "cell"]
    assert node.metadata["coordinateTransformations"][1][0]["scale"] == [1.0, 50.0, 8.0, 8.0]


def test_means_round_integers_and_nearest_keeps_labels() -> None:
    block = np.array([[[10, 11, 200], [13, 12, 100]]], dtype=np.uint8)
    np.testing.assert_array_equal(ngff.downsample_mean(block), [[[12, 150]]])
    # Probabilities (float16), odd extents: the mean of each 2x2 window in float64, a last odd
    # row or column counted twice.
    probs = np.random.default_rng(0).random((2, 1, 7, 9)).astype(np.float16)
    edged = np.pad(probs.astype(np.float64), [(0, 0), (0, 0), (0, 1), (0, 1)], mode="edge")
    expected = edged.reshape(2, 1, 4, 2, 5, 2).mean(axis=(3, 5))
    mean = ngff.downsample_mean(probs)
    assert mean.dtype == np.float16
    np.testing.assert_allclose(mean.astype(np.float64), expected, atol=1e-3, rtol=0)
    labels = np.arange(12, dtype=np.uint32).reshape(1, 3, 4)
    np.testing.assert_array_equal(ngff.downsample_nearest(labels), [[[0, 2], [8, 10]]])


def predictions_of(model_file: Path, tiff: Path, folder: Path) -> Path:
    """``folder/pred.ome.zarr``: the random model's predictions of ``tiff``."""
    output = folder / "pred.ome.zarr"
    predict_zarr(model_file, tiff, output, tile=100, progress=False)
    return output


def test_predict_tiff_equals_zarr_bit_for_bit_and_opens_in_ngff_readers(
    model_file: Path, tiffs: dict[str, Path], tmp_path: Path
) -> None:
    """From a TIFF never converted: ``unetpipe predict model.pt stack.tif out.ome.zarr``."""
    out = tmp_path / "out.ome.zarr"
    args = ["predict", str(model_file), str(tiffs["imagej"]), str(out), "--no-progress"]
    assert main([*args, "--tile", "100"]) == 0
    zarr.create_array(str(tmp_path / "stack.zarr"), data=STACK, chunks=(1, 70, 90))
    predict_zarr(
        model_file, tmp_path / "stack.zarr", tmp_path / "z.ome.zarr", tile=100, progress=False
    )
    for name in ("bigtiff_zlib", "lzw_tiled"):  # compressed and tiled reads give the same bits
        predict_zarr(model_file, tiffs[name], tmp_path / f"{name}.zarr", tile=100, progress=False)
    full = zarr.open_array(str(out / "0"), mode="r")
    for other in ("z.ome.zarr", "bigtiff_zlib.zarr", "lzw_tiled.zarr"):
        assert np.array_equal(full[:], zarr.open_array(str(tmp_path / other / "0"))[:]), other
    assert full.attrs["input"]["format"] == "tiff" and full.attrs["fingerprint"]

    assert isinstance(open_ome_zarr(zarr.open_group(str(out), mode="r")), Image)
    (node,) = Reader(parse_url(str(out)))()
    assert Multiscales in [type(s) for s in node.specs]
    assert [a["name"] for a in node.metadata["axes"]] == ["c", "z", "y", "x"]
    assert node.metadata["coordinateTransformations"][0] == [
        {"type": "scale", "scale": [1.0, 0.5, 1.0, 1.0]}  # the ImageJ z spacing
    ]
    assert node.metadata["axes"][1]["unit"] == "micrometer"
    assert node.data[0].shape == (2, *STACK.shape)


def test_predict_reads_every_page_of_a_tiff_written_page_by_page(
    model_file: Path, tiffs: dict[str, Path], tmp_path: Path
) -> None:
    with tifffile.TiffWriter(tmp_path / "loop.tif") as tif:
        for page in STACK:
            tif.write(page, compression="lzw")
    predict_zarr(
        model_file, tmp_path / "loop.tif", tmp_path / "loop.zarr", tile=100, progress=False
    )
    predict_zarr(model_file, tiffs["lzw_tiled"], tmp_path / "one.zarr", tile=100, progress=False)
    pages = zarr.open_array(str(tmp_path / "loop.zarr" / "0"))[:]
    assert pages.shape == (2, *STACK.shape)
    assert np.array_equal(pages, zarr.open_array(str(tmp_path / "one.zarr" / "0"))[:])


def test_tiff_input_resumes_after_a_failure(
    model_file: Path, tiffs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiff, output = tiffs["lzw_tiled"], tmp_path / "p.ome.zarr"
    reads = {"n": 0}
    original = ngff.ImageArray.__getitem__

    def failing(self: ngff.ImageArray, key: object) -> np.ndarray:
        reads["n"] += 1
        if reads["n"] > 3:
            raise OSError("the disk went away")
        return original(self, key)

    monkeypatch.setattr(ngff.ImageArray, "__getitem__", failing)
    with pytest.raises(OSError, match="disk went away"):
        predict_zarr(model_file, tiff, output, tile=100, progress=False)
    monkeypatch.undo()
    assert not output.exists()
    result = predict_zarr(model_file, tiff, output, tile=100, progress=False)
    assert result["computed"] == result["blocks"] - 3
    predict_zarr(model_file, tiff, tmp_path / "again.ome.zarr", tile=100, progress=False)
    resumed = zarr.open_array(str(output / "0"))[:]
    assert np.array_equal(resumed, zarr.open_array(str(tmp_path / "again.ome.zarr" / "0"))[:])


def test_local_cluster_workers_reopen_the_tiff(
    model_file: Path, tiffs: dict[str, Path], tmp_path: Path
) -> None:
    for scheduler in ("threads", "local"):
        predict_zarr(
            model_file, tiffs["bigtiff_zlib"], tmp_path / f"{scheduler}.zarr", tile=100,
            scheduler=scheduler, progress=False,
        )  # fmt: skip
    threads, local = (
        zarr.open_array(str(tmp_path / f"{s}.zarr" / "0"))[:] for s in ("threads", "local")
    )
    assert np.array_equal(threads, local)


@pytest.mark.parametrize("layout", ["beside", "inside"])
def test_segmentation_is_a_label_image_of_the_predictions(
    model_file: Path, tiffs: dict[str, Path], tmp_path: Path, layout: str
) -> None:
    predictions = predictions_of(model_file, tiffs["imagej"], tmp_path)
    output = tmp_path / "seg.ome.zarr" if layout == "beside" else predictions / "labels" / "cells"
    segment_zarr(predictions, output, {"threshold": 0.5, "min_size": 1})
    label = zarr.open_group(str(output), mode="r")
    probs = zarr.open_array(str(predictions / "0"))
    expected = [segment_slice(probs[1, z].astype(np.float32), min_size=1) for z in range(5)]
    for z in range(5):  # the level-0 labels are segment_zarr's (offset per slice)
        labels = label["0"][z]
        np.testing.assert_array_equal(labels > 0, expected[z] > 0)
        assert len(np.unique(labels)) == expected[z].max() + 1
    source = label.attrs["ome"]["image-label"]["source"]["image"]
    assert (output / source).resolve() == predictions.resolve()
    assert source == ("../pred.ome.zarr" if layout == "beside" else "../..")
    assert isinstance(ImageLabel.from_zarr(label), ImageLabel)
    scale = label.attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"]
    assert scale == [{"type": "scale", "scale": [0.5, 1.0, 1.0]}]
    nodes = list(Reader(parse_url(str(output)))())
    (labels_node,) = [n for n in nodes if Label in [type(s) for s in n.specs]]
    assert labels_node.data[0].shape == STACK.shape
    if layout == "inside":  # listed in the image's labels group, validated with the image
        labels_group = zarr.open_group(str(predictions / "labels"), mode="r")
        assert labels_group.attrs["ome"]["labels"] == ["cells"]
        image = Image.from_zarr(zarr.open_group(str(predictions), mode="r"))
        assert image.labels is not None and image.labels.label_paths == ["cells"]
    else:  # ome-zarr's reader follows image-label's source to the probabilities
        assert any(n.zarr.path.endswith("pred.ome.zarr") for n in nodes)


def test_tiff_export_for_fiji_round_trips(
    model_file: Path, tiffs: dict[str, Path], tmp_path: Path
) -> None:
    predictions = predictions_of(model_file, tiffs["imagej"], tmp_path)
    segment_zarr(predictions, tmp_path / "seg.ome.zarr", {"min_size": 1})
    assert main(["tiff", str(predictions), str(tmp_path / "p.tif")]) == 0
    write_tiff(tmp_path / "seg.ome.zarr", tmp_path / "s.tif")
    with tifffile.TiffFile(tmp_path / "p.tif") as tif:
        assert tif.is_imagej and tif.series[0].axes == "ZCYX"
        assert tif.imagej_metadata["spacing"] == 0.5 and tif.imagej_metadata["unit"] == "micron"
        assert tif.pages[0].resolution == (1.0, 1.0)
        exported = tif.asarray()
        n_slices = exported.shape[0]
        assert tif.imagej_metadata["Labels"] == ["background", "cell"] * n_slices  # channel names
    with tifffile.TiffFile(tmp_path / "s.tif") as tif:
        assert tif.imagej_metadata["Labels"] == ["labels"] * n_slices
    probs = zarr.open_array(str(predictions / "0"))[:]
    assert exported.dtype == np.float32
    np.testing.assert_array_equal(exported, np.moveaxis(probs, 0, 1).astype(np.float32))
    labels = tifffile.imread(tmp_path / "s.tif")
    assert labels.dtype == np.uint16  # uint32 ids that fit 16 bits
    np.testing.assert_array_equal(labels, zarr.open_array(str(tmp_path / "seg.ome.zarr/0"))[:])
    # The exported TIFF is a valid input of segment: the same instances.
    segment_zarr(tmp_path / "p.tif", tmp_path / "again.ome.zarr", {"min_size": 1})
    np.testing.assert_array_equal(
        zarr.open_array(str(tmp_path / "again.ome.zarr/0"))[:],
        zarr.open_array(str(tmp_path / "seg.ome.zarr/0"))[:],
    )
    assert "image-label" in zarr.open_group(str(tmp_path / "again.ome.zarr")).attrs["ome"]
    with pytest.raises(ValueError, match="no multiscale level 1"):  # 70 x 90: one level
        write_tiff(predictions, tmp_path / "half.tif", level=1)


def test_many_labels_go_to_float32_tiff(tmp_path: Path) -> None:
    big = np.array([[[0, 70000], [2**24, 3]]], dtype=np.uint32)
    zarr.create_array(str(tmp_path / "l.zarr"), data=big)
    write_tiff(tmp_path / "l.zarr", tmp_path / "l.tif")
    exported = tifffile.imread(tmp_path / "l.tif")
    assert exported.dtype == np.float32 and np.array_equal(exported, big[0])
    big[0, 0, 0] = 2**24 + 1
    zarr.create_array(str(tmp_path / "m.zarr"), data=big)
    with pytest.raises(ValueError, match="do not fit"):
        write_tiff(tmp_path / "m.zarr", tmp_path / "m.tif")
    assert not (tmp_path / "m.tif").exists()
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []


def files_of(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time (ns)."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


def test_segmentation_inside_its_image_opens_in_napari_from_either_path_writing_nothing(
    model_file: Path, tmp_path: Path
) -> None:
    """The workflow's layout: segmentation/raw.zarr is an OME-Zarr image of the raw array holding
    the instances as labels/cells. napari-ome-zarr's reader (no display) gives the image layer
    (visible) and the labels layer (the plugin brings labels in hidden) with the dataset's voxel
    size, whichever path is opened, and changes no file."""
    reader = pytest.importorskip("napari_ome_zarr._reader")
    group = zarr.open_group(str(tmp_path / "data.zarr"), mode="w")
    group.attrs["voxel_size"] = [50.0, 4.0, 4.0]
    raw = group.create_array("raw", data=STACK, chunks=(1, 70, 90))
    predictions = tmp_path / "run" / "predictions" / "raw.zarr"
    predict_zarr(model_file, raw, predictions, tile=100, progress=False)
    output = tmp_path / "run" / "segmentation" / "raw.zarr"
    segment_zarr(predictions, output, {"min_size": 1}, image=tmp_path / "data.zarr" / "raw")

    copy = open_image(output)
    assert np.array_equal(copy[:], STACK) and copy.space.scale == (50.0, 4.0, 4.0)
    labels = ngff.open_labels(output)
    assert labels.path.endswith("labels/cells/0") and labels.dtype == np.uint32
    beside = tmp_path / "beside.zarr"
    segment_zarr(predictions, beside, {"min_size": 1})
    assert np.array_equal(labels[:], open_image(beside)[:])  # the same labels, either layout
    assert isinstance(open_ome_zarr(zarr.open_group(str(output), mode="r")), Image)
    label_group = zarr.open_group(str(output / "labels" / "cells"), mode="r")
    assert isinstance(open_ome_zarr(label_group), ImageLabel)

    before = files_of(tmp_path)
    for path in (output, output / "labels" / "cells"):
        layers = reader.napari_get_reader(str(path))()
        kinds = [(kind, meta["name"]) for _, meta, kind in layers]
        assert [k for k, _ in kinds] == ["image", "labels"], kinds
        (image, image_meta, _), (cells, cells_meta, _) = layers
        assert image_meta.get("visible", True) and not cells_meta["visible"]
        assert tuple(image_meta["scale"]) == tuple(cells_meta["scale"]) == (50.0, 4.0, 4.0)
        assert np.array_equal(np.asarray(image[0]), STACK)
        assert np.array_equal(np.asarray(cells[0]), labels[:])
    assert files_of(tmp_path) == before  # opening wrote nothing
