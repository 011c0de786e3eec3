"""Download, extraction and conversion (unetpipe.datasets) against a local HTTP server (the
``server`` fixture of tests/conftest.py)."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import stat
import zipfile

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from unetpipe.cli import main
from unetpipe.datasets import (
    UNLABELLED_MARGIN,
    binary_to_instances,
    convert,
    download,
    extract,
    get_dataset,
)
from unetpipe.io import open_data, read_splits


def tiff_bytes(array):
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, photometric="minisblack")
    return buffer.getvalue()


def zip_bytes(members):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def isbi_labels(n):
    """Binary ISBI-style labels: 255 = cell, 0 = membrane; a membrane cross makes 4 cells."""
    labels = np.full((n, 32, 32), 255, np.uint8)
    labels[:, 15, :] = 0
    labels[:, :, 20] = 0
    return labels


@pytest.fixture(scope="module")
def isbi():
    rng = np.random.default_rng(0)
    arrays = {
        "train-volume": rng.integers(0, 256, (5, 32, 32), dtype=np.uint8),
        "train-labels": isbi_labels(5),
        "test-volume": rng.integers(0, 256, (2, 32, 32), dtype=np.uint8),
    }
    files = {f"{name}.tif": tiff_bytes(a) for name, a in arrays.items()}
    files["challenge-error-metrics.bsh"] = b"// script"
    return arrays, zip_bytes(files)


@pytest.fixture(scope="module")
def ctc():
    """A Cell Tracking Challenge zip: sequence 01, frames 0-3, man_seg for frames 1 and 3."""
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (4, 24, 28), dtype=np.uint8)
    masks = {1: np.zeros((24, 28), np.uint16), 3: np.zeros((24, 28), np.uint16)}
    masks[1][2:8, 3:9], masks[1][10:20, 5:25] = 7, 300
    masks[3][4:9, 4:9] = 2
    files = {f"PhC-C2DH-U373/01/t{t:03d}.tif": tiff_bytes(f) for t, f in enumerate(frames)}
    files.update(
        {f"PhC-C2DH-U373/01_GT/SEG/man_seg{t:03d}.tif": tiff_bytes(m) for t, m in masks.items()}
    )
    files["PhC-C2DH-U373/01_ST/SEG/man_seg000.tif"] = tiff_bytes(masks[1])
    return frames, masks, zip_bytes(files)


def sha(data):
    return hashlib.sha256(data).hexdigest()


def test_download_verified(server, isbi, tmp_path, caplog):
    data = isbi[1]
    server.files["/isbi.zip"] = data
    dest = tmp_path / "isbi2012.zip"
    assert download(f"{server.url}/isbi.zip", dest, sha(data), progress=False) == sha(data)
    assert dest.read_bytes() == data
    assert [p.name for p in tmp_path.iterdir()] == ["isbi2012.zip"]
    with caplog.at_level(logging.WARNING):  # no published checksum: record the actual sum, warn
        download(f"{server.url}/isbi.zip", tmp_path / "b.zip", None, progress=False)
    assert sha(data) in caplog.text


def test_checksum_mismatch_names_both_sums(server, isbi, tmp_path):
    server.files["/isbi.zip"] = isbi[1]
    dest = tmp_path / "isbi2012.zip"
    with pytest.raises(ValueError) as err:
        download(f"{server.url}/isbi.zip", dest, "0" * 64, progress=False)
    message = str(err.value)
    assert "0" * 64 in message and sha(isbi[1]) in message and "--sha256" in message
    assert list(tmp_path.iterdir()) == []


def test_interrupted_transfer_resumes_with_range(server, isbi, tmp_path):
    data = isbi[1]
    server.files["/isbi.zip"] = data
    server.cut["/isbi.zip"] = 1000
    dest = tmp_path / "isbi2012.zip"
    with pytest.raises(RuntimeError, match="run again to resume"):
        download(f"{server.url}/isbi.zip", dest, sha(data), retries=0, progress=False)
    assert not dest.exists()
    assert (tmp_path / "isbi2012.zip.part").read_bytes() == data[:1000]
    download(f"{server.url}/isbi.zip", dest, sha(data), retries=0, progress=False)
    assert dest.read_bytes() == data and not (tmp_path / "isbi2012.zip.part").exists()
    assert server.requests == [("/isbi.zip", None), ("/isbi.zip", "bytes=1000-")]
    assert server.if_range == [None, f'"{sha(data)}"']  # resumed only if the file is unchanged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["isbi2012.zip"]


def test_a_part_that_cannot_be_resumed_is_fetched_afresh(server, isbi, tmp_path):
    """A leftover .part of unknown origin, one longer than the file (416), and one of a file
    that changed since (another ETag) never end up spliced or renamed into the download."""
    data = isbi[1]
    server.files["/isbi.zip"] = data
    dest, part = tmp_path / "isbi2012.zip", tmp_path / "isbi2012.zip.part"
    part.write_bytes(b"x" * 300)  # no record of which file it is a piece of
    download(f"{server.url}/isbi.zip", dest, sha(data), progress=False)
    assert dest.read_bytes() == data and server.requests[-1] == ("/isbi.zip", None)
    dest.unlink()
    for first in (data + b"trailing garbage", b"an older version of the file" * 40):
        server.files["/isbi.zip"], server.cut["/isbi.zip"] = first, len(first) - 5
        with pytest.raises(RuntimeError, match="run again to resume"):
            download(f"{server.url}/isbi.zip", dest, None, retries=0, progress=False)
        server.files["/isbi.zip"] = data  # now the server has another, shorter version
        if first.startswith(data):
            part.write_bytes(first)  # longer than the file now served: HTTP 416
        download(f"{server.url}/isbi.zip", dest, None, retries=0, progress=False)
        assert dest.read_bytes() == data
        assert not part.exists() and not (tmp_path / "isbi2012.zip.part.json").exists()
        dest.unlink()
    # A part of this very version, but longer than it (a server-side truncation): HTTP 416.
    part.write_bytes(data + b"junk")
    info = {"url": f"{server.url}/isbi.zip", "validator": f'"{sha(data)}"', "total": len(data)}
    (tmp_path / "isbi2012.zip.part.json").write_text(json.dumps(info))
    download(f"{server.url}/isbi.zip", dest, None, retries=0, progress=False)
    assert dest.read_bytes() == data
    assert server.requests[-2:] == [("/isbi.zip", f"bytes={len(data) + 4}-"), ("/isbi.zip", None)]


def test_without_a_checksum_the_length_must_be_met_and_the_sum_is_recorded(server, isbi, tmp_path):
    data = isbi[1]
    server.files["/isbi.zip"] = data
    dest = tmp_path / "isbi2012.zip"
    server.cut["/isbi.zip"] = 100
    with pytest.raises(RuntimeError, match="after 1 attempts"):
        download(f"{server.url}/isbi.zip", dest, None, retries=0, progress=False)
    assert not dest.exists()
    download(f"{server.url}/isbi.zip", dest, None, retries=0, progress=False)
    assert (tmp_path / "isbi2012.zip.sha256").read_text().split()[0] == sha(data)
    dest.write_bytes(data[:-1])  # truncated later: the recorded sum catches it
    requests = len(server.requests)
    assert download(f"{server.url}/isbi.zip", dest, None, progress=False) == sha(data)
    assert dest.read_bytes() == data and len(server.requests) == requests + 1
    for url in ("file:///etc/passwd", "ftp://host/x.zip"):
        with pytest.raises(ValueError, match="only http and https"):
            download(url, tmp_path / "y.zip", progress=False)


def test_transient_errors_are_retried(server, isbi, tmp_path):
    data = isbi[1]
    server.files["/isbi.zip"] = data
    server.fail["/isbi.zip"] = 1
    server.cut["/isbi.zip"] = 500
    dest = tmp_path / "isbi2012.zip"
    download(f"{server.url}/isbi.zip", dest, sha(data), retries=3, backoff=0, progress=False)
    assert dest.read_bytes() == data
    assert [r for _, r in server.requests] == [None, None, "bytes=500-"]


def test_404_is_a_clear_error(server, tmp_path):
    with pytest.raises(FileNotFoundError, match="HTTP 404.*--url"):
        download(f"{server.url}/gone.zip", tmp_path / "x.zip", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cli_download(server, isbi, tmp_path):
    data = isbi[1]
    server.files["/isbi.zip"] = data
    url = f"{server.url}/isbi.zip"
    args = ["download", "isbi2012", "--root", str(tmp_path), "--url", url]
    assert main([*args, "--sha256", "f" * 64]) == 1
    assert list(tmp_path.iterdir()) == []
    assert main([*args, "--sha256", sha(data)]) == 0
    assert (tmp_path / "isbi2012.zip").read_bytes() == data


def test_registry_overrides():
    entry = get_dataset("dic-c2dh-hela", url="http://mirror/x.zip", sha256="A" * 64)
    assert entry.url == "http://mirror/x.zip" and entry.sha256 == "a" * 64
    assert entry.tags == ("transmission-light-microscopy", "cells")  # bioimage.io tags kept
    assert get_dataset("phc-c2dh-u373").sha256.startswith("b18185c1")
    assert get_dataset("isbi2012").sha256 is None
    with pytest.raises(ValueError, match="unknown dataset"):
        get_dataset("mnist")
    with pytest.raises(ValueError, match="64 hexadecimal"):
        get_dataset("isbi2012", sha256="abc")


@pytest.mark.parametrize("name", ["../evil.txt", "/etc/evil.txt", "a/../../evil.txt"])
def test_extract_refuses_path_traversal(tmp_path, name):
    archive = tmp_path / "bad.zip"
    archive.write_bytes(zip_bytes({"ok.txt": b"fine", name: b"evil"}))
    with pytest.raises(ValueError, match="refused"):
        extract(archive, tmp_path / "out" / "x")
    assert not (tmp_path / "out" / "x").exists() and not (tmp_path / "out" / "evil.txt").exists()
    assert not (tmp_path / "evil.txt").exists()


def test_extract_refuses_symlinks(tmp_path):
    link = zipfile.ZipInfo("link")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok.txt", b"fine")
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(ValueError, match="symbolic link"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_binary_labels_to_4_connected_instances():
    labels = np.full((2, 6, 6), 255, np.uint8)
    labels[0] = np.where(np.eye(6, dtype=bool), 0, 255)  # one-pixel diagonal membrane
    instances = binary_to_instances(labels)
    assert np.unique(instances[0]).tolist() == [0, 1, 2]  # the diagonal separates two cells
    assert np.unique(instances[1]).tolist() == [3]  # ids unique over the stack
    assert instances.dtype == np.uint32


def test_convert_isbi_zip(isbi, tmp_path):
    arrays, data = isbi
    archive = tmp_path / "isbi2012.zip"
    archive.write_bytes(data)
    out = convert(archive, tmp_path / "data.zarr", "isbi", val_slices=[1], voxel_size=(50, 4, 4))
    group = open_data(out)
    np.testing.assert_array_equal(group["raw"][:], arrays["train-volume"])
    np.testing.assert_array_equal(group["test"][:], arrays["test-volume"])
    labels = group["labels"][:]
    np.testing.assert_array_equal(labels > 0, arrays["train-labels"] == 255)
    assert [np.unique(s).size - 1 for s in labels] == [4] * 5 and labels.max() == 20
    assert read_splits(group) == {"train": [0, 2, 3, 4], "val": [1]}
    assert group.attrs["source"]["sha256"] == sha(data)
    assert group.attrs["voxel_size"] == [50.0, 4.0, 4.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.zarr", "isbi2012.zip"]
    args = ["convert", "isbi2012", str(archive), str(out), "--val-slices", "0", "4"]
    assert main(args) == 1  # written by unetpipe, but only replaced when asked
    assert main([*args, "--overwrite"]) == 0
    group = open_data(out)
    assert group.attrs["source"]["url"] == "https://downloads.imagej.net/ISBI-2012-challenge.zip"
    assert read_splits(group) == {"train": [1, 2, 3], "val": [0, 4]}


def test_convert_ctc_zip(ctc, tmp_path):
    frames, masks, data = ctc
    archive = tmp_path / "u373.zip"
    archive.write_bytes(data)
    group = open_data(convert(archive, tmp_path / "data.zarr", "u373"))
    np.testing.assert_array_equal(group["raw"][:], frames[[1, 3]])
    np.testing.assert_array_equal(group["labels"][:], np.stack([masks[1], masks[3]]))
    np.testing.assert_array_equal(group["test"][:], frames[[0, 2]])
    assert group.attrs["frames"] == [
        {"sequence": "01", "frame": 1, "truth": "gold"},
        {"sequence": "01", "frame": 3, "truth": "gold"},
    ]
    assert read_splits(group) == {"train": [0], "val": [1]}
    assert "mask" not in group  # no silver truth of these frames: nothing known to be missing


def ctc_folder(root, shapes=((24, 28), (24, 28)), dtype=np.uint8):
    """Two sequences of 4 frames in the CTC layout: gold truth of frames 1, 3 (frame 3 of 01 is
    partial: it labels one of two cells), silver truth of every frame (both cells)."""
    rng = np.random.default_rng(2)
    for seq, shape in zip(("01", "02"), shapes, strict=True):
        for name in (seq, f"{seq}_GT/SEG", f"{seq}_ST/SEG"):
            (root / name).mkdir(parents=True)
        silver = np.zeros(shape, np.uint16)
        silver[2:8, 3:9], silver[12:20, 5:15] = 4, 9
        for t in range(4):
            frame = rng.integers(0, 256, shape).astype(dtype)
            tifffile.imwrite(root / seq / f"t{t:03d}.tif", frame, compression="lzw")
            tifffile.imwrite(root / f"{seq}_ST/SEG/man_seg{t:03d}.tif", silver, compression="lzw")
        for t in (1, 3):
            gold = silver.copy()
            if (seq, t) == ("01", 3):
                gold[gold == 9] = 0  # a partial annotation: cell 9 left unlabelled
            tifffile.imwrite(root / f"{seq}_GT/SEG/man_seg{t:03d}.tif", gold, compression="lzw")
    return root


def test_partial_gold_truth_is_masked_where_silver_truth_sees_a_cell(tmp_path):
    root = ctc_folder(tmp_path / "ctc")
    group = open_data(convert(root, tmp_path / "gold.zarr", "ctc"))
    assert [f["truth"] for f in group.attrs["frames"]] == ["gold"] * 4
    assert group["raw"].shape == (4, 24, 28) and group["test"].shape == (4, 24, 28)
    mask = group["mask"][:]
    np.testing.assert_array_equal(mask[[0, 2, 3]], 1)  # complete frames: everything known
    unknown = mask[1] == 0  # slice 1 = frame 3 of 01: cell 9 grown by the margin, not cell 4
    cell = np.zeros((24, 28), bool)
    cell[12:20, 5:15] = True
    grown = ndimage.binary_dilation(cell, iterations=UNLABELLED_MARGIN)
    np.testing.assert_array_equal(unknown, grown & (group["labels"][1] == 0))
    assert len(group.attrs["source"]["files"]) == 4 * 2 + 4 + 4  # frames, gold, their silver
    assert group.attrs["splits"] == {"train": [0, 1, 2], "val": [3]}
    # Taken as background instead: no mask; only sequence 02: two slices
    group = open_data(convert(root, tmp_path / "bg.zarr", "ctc", unlabelled="background"))
    assert "mask" not in group
    group = open_data(convert(root, tmp_path / "02.zarr", "ctc", sequences=["02"]))
    assert [f["sequence"] for f in group.attrs["frames"]] == ["02", "02"]
    with pytest.raises(FileNotFoundError, match=r"no sequences \['03'\]"):
        convert(root, tmp_path / "03.zarr", "ctc", sequences=["03"])


def test_silver_truth_adds_every_frame_and_validation_stays_gold(tmp_path):
    root = ctc_folder(tmp_path / "ctc", dtype=np.uint16)  # 16-bit frames
    group = open_data(convert(root, tmp_path / "d.zarr", "ctc", silver_truth=True))
    frames = group.attrs["frames"]
    assert [(f["sequence"], f["frame"], f["truth"]) for f in frames[:4]] == [
        ("01", 0, "silver"),
        ("01", 1, "gold"),
        ("01", 2, "silver"),
        ("01", 3, "gold"),
    ]
    assert group["raw"].shape == (8, 24, 28) and group["raw"].dtype == np.uint16
    assert "test" not in group
    assert group.attrs["splits"]["val"] == [7]  # the last gold frame, not the last frame (6)
    assert (group["mask"][3] == 0).any() and (group["mask"][2] == 1).all()


def test_frames_of_different_sizes_are_a_clear_error(tmp_path):
    root = ctc_folder(tmp_path / "ctc", shapes=((24, 28), (30, 28)))
    with pytest.raises(ValueError, match="one at a time"):
        convert(root, tmp_path / "d.zarr", "ctc")
    assert not (tmp_path / "d.zarr").exists()
    group = open_data(convert(root, tmp_path / "d.zarr", "ctc", sequences=["02"]))
    assert group["raw"].shape == (2, 30, 28)


def test_output_inside_the_input_is_refused_before_anything_is_written(tmp_path):
    root = ctc_folder(tmp_path / "ctc")
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    for out in (root, root / "data.zarr", tmp_path):
        with pytest.raises(ValueError, match="would destroy the input"):
            convert(root, out, "ctc")
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    assert main(["convert", "local", str(root), str(root)]) == 1
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_real_hela_folder_converts_with_its_partial_gold_frame(shared_dir, tmp_path):
    """The real DIC-C2DH-HeLa training set (LZW TIFFs): 2 x 84 frames, 9 gold masks each;
    01_GT/SEG/man_seg067.tif labels 3 of its cells (SOURCE.md), the silver truth 18."""
    root = shared_dir / "data" / "ctc" / "DIC-C2DH-HeLa"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    group = open_data(convert(root, tmp_path / "hela.zarr", "dic-c2dh-hela"))
    frames = group.attrs["frames"]
    assert group["raw"].shape == (18, 512, 512) and group["raw"].dtype == np.uint8
    assert group["test"].shape == (150, 512, 512)
    assert [f["frame"] for f in frames[:9]] == [2, 5, 21, 31, 33, 34, 39, 54, 67]
    assert [f["frame"] for f in frames[9:]] == [6, 7, 14, 27, 34, 38, 42, 61, 67]
    assert [int(np.unique(group["labels"][z]).size - 1) for z in (0, 8, 17)] == [10, 3, 14]
    unknown = (group["mask"][:] == 0).sum(axis=(1, 2))
    assert unknown[8] > 0.4 * 512 * 512  # 15 cells of frame 67 left unlabelled
    assert set(np.flatnonzero(unknown)) == {8, 15, 16}  # and one cell each in 02's 42 and 61
    sums = dict(line.split()[::-1] for line in (root / "SHA256SUMS").read_text().splitlines())
    files = group.attrs["source"]["files"]
    assert files["01/t067.tif"] == sums.get("01/t067.tif", sums.get("./01/t067.tif"))


def test_convert_unknown_layout_leaves_nothing(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "readme.txt").write_text("no images")
    with pytest.raises(ValueError, match="no dataset found"):
        convert(tmp_path / "in", tmp_path / "data.zarr", "x")
    assert not (tmp_path / "data.zarr").exists()


def test_real_isbi_tiff_and_png_layouts_agree(isbi_dir, tmp_path):
    """Both layouts of the local ISBI 2012 copy give the same group; its notes: 30 x 512 x 512,
    21.96% membrane pixels (16.75% to 26.99% per slice)."""
    tif = open_data(convert(isbi_dir / "reconstructed", tmp_path / "tif.zarr", "isbi2012"))
    png = open_data(convert(isbi_dir / "zhixuhao_unet", tmp_path / "png.zarr", "isbi2012"))
    for name in ("raw", "labels", "test"):
        assert tif[name].shape == (30, 512, 512)
        np.testing.assert_array_equal(tif[name][:], png[name][:])
    labels = tif["labels"][:]
    assert np.mean(labels == 0) == pytest.approx(0.2196, abs=5e-5)
    per_slice = np.mean(labels == 0, axis=(1, 2))
    assert per_slice.min() == pytest.approx(0.1675, abs=5e-5)
    assert per_slice.max() == pytest.approx(0.2699, abs=5e-5)
    assert tif["raw"][:].mean() == pytest.approx(126.2, abs=0.05)
    assert read_splits(tif)["val"] == list(range(24, 30))


def isbi_folder(root, labels, test_pages=None):
    """A local ISBI folder: train-volume.tif, train-labels.tif (``labels``) and, with
    ``test_pages``, a test-volume.tif written one page (one series) at a time."""
    root.mkdir()
    rng = np.random.default_rng(2)
    raw = rng.integers(0, 256, labels.shape, np.uint8)
    tifffile.imwrite(root / "train-volume.tif", raw, photometric="minisblack")
    tifffile.imwrite(root / "train-labels.tif", labels, photometric="minisblack")
    if test_pages is not None:
        with tifffile.TiffWriter(root / "test-volume.tif") as tif:
            for page in test_pages:
                tif.write(page, compression="lzw")
    return root


def checksums(root):
    return {p.name: sha(p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()}


def test_ambiguous_label_stacks_are_refused_naming_values_and_setting(tmp_path):
    """Issue 29: anti-aliased 0/128/255, 0/255 with 4 stray pixels and a 0/1/2 class map were
    taken as instance ids (2-3 "cells"); unset, each is refused with the values found."""
    binary = isbi_labels(3)
    anti_aliased = binary.copy()
    anti_aliased[:, 14, :] = anti_aliased[:, 16, :] = 128
    stray = binary.copy()
    stray[0, 3, 3:7] = 254
    classes = (binary // 255).astype(np.uint8)
    classes[:, :, 25:] *= 2  # two classes, each in several separate regions
    for name, labels, values in [
        ("aa", anti_aliased, r"0 \(183 px\), 128 \(192 px\), 255 \(2697 px\)"),
        ("stray", stray, r"0 \(189 px\), 254 \(4 px\), 255 \(2879 px\)"),
        ("classes", classes, r"0 \(189 px\), 1 \(2232 px\), 2 \(651 px\)"),
    ]:
        root = isbi_folder(tmp_path / name, labels)
        before = checksums(root)
        message = rf"train-labels.tif: ambiguous labels with values {values}: .*set dataset.labels"
        with pytest.raises(ValueError, match=message):
            convert(root, tmp_path / f"{name}.zarr", "x")
        assert checksums(root) == before and not (tmp_path / f"{name}.zarr").exists()
    root = tmp_path / "stray"
    with pytest.raises(ValueError, match=r"foreground 255, but the values are 0 \(189 px\), 254"):
        convert(root, tmp_path / "s.zarr", "x", labels={"kind": "binary", "foreground": 255})
    with pytest.raises(ValueError, match="masks are instance ids; dataset.labels"):
        convert(ctc_folder(tmp_path / "ctc"), tmp_path / "c.zarr", "x", labels={
            "kind": "binary", "foreground": 1})  # fmt: skip
    assert not any(p.suffix == ".zarr" for p in tmp_path.iterdir())


def test_declared_label_conventions_convert_and_log_instances_per_slice(tmp_path, caplog):
    binary = isbi_labels(3)
    anti_aliased = binary.copy()
    anti_aliased[:, 14, :] = 128  # the membrane's anti-aliased edge: background at 128 < 200
    root = isbi_folder(tmp_path / "aa", anti_aliased, test_pages=binary[:2])
    with caplog.at_level(logging.INFO, logger="unetpipe.datasets"):
        group = open_data(
            convert(root, tmp_path / "aa.zarr", "x", labels={"kind": "binary", "threshold": 200})
        )
    assert [np.unique(s[s > 0]).size for s in group["labels"][:]] == [4, 4, 4]
    assert "instances per slice: [4, 4, 4]" in caplog.text
    assert group["labels"].attrs["convention"] == {"kind": "binary", "threshold": 200}
    assert group["test"].shape == (2, 32, 32)  # both pages of a page-by-page TIFF
    np.testing.assert_array_equal(group["test"][:], binary[:2])
    ids = np.zeros((3, 32, 32), np.uint16)
    ids[:, :10, :10], ids[:, 20:, 20:], ids[1, 12:14, :] = 1, 2, 3  # one region per id
    for labels, out in [(None, "auto.zarr"), ("instances", "ids.zarr")]:
        root = tmp_path / out.replace(".zarr", "")
        group = open_data(convert(isbi_folder(root, ids), tmp_path / out, "x", labels=labels))
        np.testing.assert_array_equal(group["labels"][:], ids)
    assert main(
        ["convert", "local", str(tmp_path / "aa"), str(tmp_path / "cli.zarr"), "--labels",
         "threshold=200"]
    ) == 0  # fmt: skip
    cli = open_data(tmp_path / "cli.zarr")["labels"][:]
    np.testing.assert_array_equal(cli > 0, anti_aliased >= 200)
    with pytest.raises(SystemExit):
        main(["convert", "local", str(root), str(tmp_path / "no.zarr"), "--labels", "binary"])
    assert not (tmp_path / "no.zarr").exists()
