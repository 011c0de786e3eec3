"""Image reading, Zarr helpers, splits and atomic outputs (unetpipe.io)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from unetpipe.io import (
    CheckedArray,
    atomic_path,
    check_disjoint,
    checked_array,
    claim_folder,
    claim_output,
    create_array,
    make_splits,
    open_data,
    open_zarr,
    read_image,
    read_splits,
    read_stack,
    slice_chunks,
    write_array,
    written_by_unetpipe,
)


def test_read_tiff_stack_and_png(tmp_path):
    stack = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack")
    Image.fromarray(stack[1]).save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_stack(tmp_path / "s.tif"), stack)
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), stack[1])
    assert read_stack(tmp_path / "p.png").shape == (1, 4, 5)
    with pytest.raises(ValueError, match="unsupported"):
        read_image(tmp_path / "x.jpg")


def test_read_slice_folder_in_numeric_order(tmp_path):
    for i in (10, 2, 0, 1):
        Image.fromarray(np.full((3, 3), i, np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    stack = read_stack(tmp_path)
    assert stack[:, 0, 0].tolist() == [0, 1, 2, 10]
    Image.fromarray(np.zeros((4, 3), np.uint8)).save(tmp_path / "11.png")
    with pytest.raises(ValueError, match="differ in shape"):
        read_stack(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_stack(tmp_path / "missing")


def test_slice_chunks():
    assert slice_chunks((30, 512, 512)) == (1, 512, 512)
    assert slice_chunks((2, 5000, 700)) == (1, 1024, 700)
    assert slice_chunks((2, 3, 2048, 2048)) == (1, 1, 1024, 1024)
    with pytest.raises(ValueError):
        slice_chunks((5,))


def test_zarr_helpers_round_trip(tmp_path):
    group = zarr.open_group(tmp_path / "d.zarr", mode="w")
    group.attrs["splits"] = {"train": [0, 1], "val": [2]}
    data = np.random.default_rng(0).integers(0, 9, (3, 1100, 40)).astype(np.uint32)
    write_array(group, "labels", data, {"made_by": "test"})
    write_array(group, "weights", np.zeros((3, 1100, 40), np.float32))  # all fill value
    opened = open_data(tmp_path / "d.zarr")
    np.testing.assert_array_equal(opened["labels"][:], data)
    assert opened["labels"].chunks == (1, 1024, 40)
    assert opened["labels"].attrs["made_by"] == "test"
    assert opened["weights"].dtype == np.float32
    assert opened["weights"][:].sum() == 0  # every chunk stored, though equal to the fill value
    assert read_splits(tmp_path / "d.zarr") == {"train": [0, 1], "val": [2]}
    with pytest.raises(FileNotFoundError, match="not a Zarr"):
        open_data(tmp_path)


def test_missing_and_corrupt_chunks_are_named(tmp_path):
    group = zarr.open_group(tmp_path / "d.zarr", mode="w")
    write_array(group, "raw", np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5))
    write_array(group, "labels", np.ones((3, 4, 5), np.uint32))
    create_array(group, "weights", (3, 4, 5), np.float32)  # created, never written
    (tmp_path / "d.zarr" / "raw" / "c" / "1" / "0" / "0").unlink()
    (tmp_path / "d.zarr" / "labels" / "c" / "2" / "0" / "0").write_bytes(b"garbage")
    opened = open_data(tmp_path / "d.zarr")
    with pytest.raises(ValueError, match=r"d.zarr/raw: chunk c/1/0/0 is missing \(1 of 3\)"):
        opened["raw"]
    with pytest.raises(ValueError, match=r"weights: chunk c/0/0/0 is missing \(3 of 3\)"):
        opened["weights"]
    labels = opened["labels"]
    np.testing.assert_array_equal(labels[0], 1)
    with pytest.raises(ValueError, match=r"d.zarr/labels: chunk c/2/0/0 cannot be decoded"):
        labels[1:]


def test_digest_follows_the_stored_content(tmp_path):
    group = zarr.open_group(tmp_path / "d.zarr", mode="w")
    write_array(group, "raw", np.zeros((2, 4, 4), np.uint8))
    write_array(group, "labels", np.ones((2, 4, 4), np.uint32))
    before = open_data(tmp_path / "d.zarr").digest(["raw", "labels"])
    assert open_data(tmp_path / "d.zarr").digest(["raw", "labels"]) == before
    assert open_data(tmp_path / "d.zarr").digest(["raw"]) != before
    zarr.open_array(tmp_path / "d.zarr" / "raw", mode="r+")[1, 2, 3] = 7
    assert open_data(tmp_path / "d.zarr").digest(["raw", "labels"]) != before


def test_check_disjoint(tmp_path):
    check_disjoint(tmp_path / "out.zarr", tmp_path / "in.zarr")
    for out, word in [
        (tmp_path / "in.zarr", "is"),
        (tmp_path, "contains"),
        (tmp_path / "in.zarr" / "pred", "lies in"),
    ]:
        with pytest.raises(ValueError, match=f"{word} the input"):
            check_disjoint(out, tmp_path / "in.zarr")


def test_palette_png_is_read_as_grey_and_colour_is_refused(tmp_path):
    grey = Image.new("P", (4, 3))
    grey.putpalette([v for i in range(256) for v in (255 - i,) * 3])
    grey.putdata([0, 1, 2, 3] * 3)
    grey.save(tmp_path / "grey.png")
    np.testing.assert_array_equal(
        read_image(tmp_path / "grey.png"), 255 - np.tile([0, 1, 2, 3], (3, 1))
    )
    colour = Image.new("P", (2, 2))
    colour.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    colour.putdata([0, 1, 0, 1])
    colour.save(tmp_path / "colour.png")
    with pytest.raises(ValueError, match="colour palette"):
        read_image(tmp_path / "colour.png")


def test_tiff_kinds_real_data_comes_in(tmp_path):
    """BigTIFF, 16-bit and LZW/zlib-compressed TIFFs read as written; a digest is recorded."""
    stack = np.random.default_rng(0).integers(0, 65535, (3, 16, 20), dtype=np.uint16)
    for name, options in [
        ("big.tif", {"bigtiff": True}),
        ("lzw.tif", {"compression": "lzw"}),
        ("zlib.tif", {"compression": "zlib"}),
    ]:
        tifffile.imwrite(tmp_path / name, stack, photometric="minisblack", **options)
        digests = {}
        np.testing.assert_array_equal(read_stack(tmp_path / name, digests), stack)
        assert list(digests) == [str(tmp_path / name)]
    (tmp_path / "bad.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(ValueError, match="bad.tif: cannot read"):
        read_image(tmp_path / "bad.tif")
    tifffile.imwrite(tmp_path / "nan.tif", np.full((2, 2), np.inf, np.float32))
    with pytest.raises(ValueError, match="NaN or infinite"):
        read_image(tmp_path / "nan.tif")


def test_make_splits():
    assert make_splits(10) == {"train": list(range(8)), "val": [8, 9]}
    assert make_splits(30)["val"] == list(range(24, 30))
    assert make_splits(2) == {"train": [0], "val": [1]}
    with pytest.raises(ValueError, match="at least 2 labelled slices"):
        make_splits(1)
    assert make_splits(12, candidates=[0, 2, 4, 6, 8, 10, 1, 3, 5, 7])["val"] == [8, 10]
    with pytest.raises(ValueError, match="no training or no validation"):
        make_splits(3, candidates=[0])
    assert make_splits(5, [3, 0, 3]) == {"train": [1, 2, 4], "val": [0, 3]}
    with pytest.raises(ValueError, match="out of range"):
        make_splits(5, [5])
    with pytest.raises(ValueError, match="leave no training"):
        make_splits(2, [0, 1])


def test_atomic_path_renames_only_on_success(tmp_path):
    final = tmp_path / "out" / "group"
    with pytest.raises(RuntimeError, match="boom"), atomic_path(final) as tmp:
        tmp.mkdir()
        (tmp / "partial").write_text("x")
        raise RuntimeError("boom")
    assert not final.exists() and list((tmp_path / "out").iterdir()) == []
    for content in ("old", "new"):
        with atomic_path(final) as tmp:
            tmp.mkdir()
            (tmp / content).write_text(content)
    assert sorted(p.name for p in final.iterdir()) == [".unetpipe", "new"]  # ours: replaced
    assert sorted(p.name for p in final.parent.iterdir()) == ["group"]


def files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_what_unetpipe_did_not_write_is_never_replaced(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.txt").write_text("x")
    (tmp_path / "notes.txt").write_text("mine")
    tifffile.imwrite(tmp_path / "theirs.tif", np.zeros((4, 4), np.uint8))
    before = files(tmp_path)
    for final in (victim, tmp_path / "notes.txt", tmp_path / "theirs.tif", tmp_path / "."):
        assert not written_by_unetpipe(final)
        with pytest.raises(ValueError, match="was not written by unetpipe"):
            with atomic_path(final) as tmp:
                tmp.write_text("new")
        with pytest.raises(ValueError, match="was not written by unetpipe"):
            claim_folder(final)
    assert files(tmp_path) == before


def test_what_unetpipe_wrote_is_marked_and_replaced_only_with_overwrite(tmp_path):
    with atomic_path(tmp_path / "g.zarr") as tmp:
        zarr.open_group(tmp, mode="w").attrs["made"] = 1
    with atomic_path(tmp_path / "table.csv") as tmp:
        tmp.write_text("a,b\n")
    tifffile.imwrite(tmp_path / "ours.tif", np.zeros((4, 4), np.uint8), software="unetpipe")
    run = claim_folder(tmp_path / "run")
    (run / "sub").mkdir()
    (run / "sub" / "log.csv").write_text("1\n")
    assert zarr.open_group(tmp_path / "g.zarr").attrs["unetpipe"]["version"]
    for ours in ("g.zarr", "table.csv", "ours.tif", "run", "run/sub/log.csv"):
        assert written_by_unetpipe(tmp_path / ours), ours
        with pytest.raises(ValueError, match="pass --overwrite"):
            with claim_output(tmp_path / ours, overwrite=False):
                pass
        with claim_output(tmp_path / ours, overwrite=True):
            pass
    assert not written_by_unetpipe(tmp_path / "run" / "sub")  # a folder: only its own mark
    assert claim_folder(tmp_path / "run") == tmp_path / "run"
    empty = tmp_path / "made-by-snakemake" / "train"
    empty.mkdir(parents=True)  # empty folders hold nothing to lose
    assert written_by_unetpipe(claim_folder(empty.parent))
    with atomic_path(tmp_path / "d.zarr") as tmp:
        group = zarr.open_group(tmp, mode="w")
        for name in ("raw", "weights"):
            group.create_array(name, shape=(1, 4, 4), dtype="uint8")
    (tmp_path / "d.zarr" / "zarr.json").unlink()  # what Snakemake removes of a rerun's outputs
    shutil.rmtree(tmp_path / "d.zarr" / "raw")
    assert written_by_unetpipe(tmp_path / "d.zarr")  # weights/ is marked too
    (tmp_path / "d.zarr" / "thesis.txt").write_text("x")
    assert not written_by_unetpipe(tmp_path / "d.zarr")


def test_a_second_writer_is_refused_and_leftovers_removed(tmp_path):
    final = tmp_path / "out.zarr"
    (tmp_path / ".out.zarr.tmp-99999").mkdir()  # a killed run's temporary
    (tmp_path / ".out.zarr.tmp-99999" / "c").write_text("x")
    (tmp_path / ".other.tmp-1").write_text("not this output's")
    with claim_output(final) as held:
        assert held == final and not (tmp_path / ".out.zarr.tmp-99999").exists()
        with atomic_path(final) as tmp:  # the holder itself may write (re-entrant)
            tmp.mkdir()
        fd = os.open(tmp_path / ".out.zarr.lock", os.O_RDWR)
        try:  # what another process sees: the lock is taken
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    fd = os.open(tmp_path / ".out.zarr.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another process holds it
    try:
        with pytest.raises(ValueError, match="another unetpipe process is writing"):
            with claim_output(final):
                pass
    finally:
        os.close(fd)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".other.tmp-1",
        ".out.zarr.lock",
        "out.zarr",
    ]
    with claim_output(final):
        pass
    assert not (tmp_path / ".out.zarr.lock").exists()


def test_check_disjoint_covers_the_input_group(tmp_path):
    group = zarr.open_group(tmp_path / "d.zarr", mode="w")
    for name in ("raw", "test"):
        group.create_array(name, shape=(1, 4, 4), dtype="uint8")[:] = 1
    for out in (tmp_path / "d.zarr" / "test" / "c", tmp_path / "d.zarr" / "new"):
        with pytest.raises(ValueError, match="lies in the Zarr group of the input"):
            check_disjoint(out, tmp_path / "d.zarr" / "raw")
    check_disjoint(tmp_path / "p.zarr" / "labels" / "s", tmp_path / "p.zarr", beside="labels")


def test_an_interrupt_while_writers_still_write_leaves_no_partial_output(tmp_path):
    """Ctrl-C while Zarr's threads still write chunks: the interrupt propagates (not rmtree's
    'Directory not empty'), nothing is at the output, and the next run removes what is left."""
    final, stop = tmp_path / "out.zarr", threading.Event()

    def keep_writing(folder):
        i = 0
        while not stop.is_set():
            with contextlib.suppress(OSError):
                (folder / "c" / str(i % 50)).parent.mkdir(parents=True, exist_ok=True)
                (folder / "c" / str(i % 50)).write_bytes(b"x" * 100)
            i += 1

    with pytest.raises(KeyboardInterrupt), atomic_path(final) as tmp:
        tmp.mkdir()
        writer = threading.Thread(target=keep_writing, args=(tmp,))
        writer.start()
        time.sleep(0.05)
        raise KeyboardInterrupt
    stop.set()
    writer.join()
    assert not final.exists()
    with claim_output(final):
        assert sorted(p.name for p in tmp_path.iterdir()) == [".out.zarr.lock"]


def _checksums(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_checked_array_refuses_a_missing_chunk_of_the_region_it_reads(tmp_path):
    """A chunk left unstored (a foreign array's fill-value chunk, or a deleted one) is an error
    naming it, never zeros; reads that do not touch it work, and nothing is written."""
    plain = zarr.create_array(tmp_path / "a.zarr", shape=(3, 4, 6), chunks=(1, 4, 3), dtype="u1")
    plain[:] = np.arange(72, dtype=np.uint8).reshape(3, 4, 6)
    plain[1, :, 3:] = 0  # equal to the fill value: zarr's default leaves it unstored
    before = _checksums(tmp_path)
    array = checked_array(tmp_path / "a.zarr")
    np.testing.assert_array_equal(array[0], plain[0])
    np.testing.assert_array_equal(array[1:, :, :3], plain[1:, :, :3])
    for selection in (1, (slice(None), 2), (1, slice(None), 5), ([0, 1],), (..., slice(4, 6))):
        with pytest.raises(ValueError, match=r"a.zarr: chunk c/1/0/1 is missing: .*fill value 0"):
            array[selection]
    with pytest.raises(ValueError, match=r"c/1/0/1 is missing \(1 of 6\).*write_empty_chunks"):
        array.check_complete()
    assert _checksums(tmp_path) == before


def test_checked_array_names_a_damaged_chunk_and_shard(tmp_path):
    sharded = zarr.create_array(
        tmp_path / "s.zarr", shape=(4, 4, 4), chunks=(1, 2, 2), shards=(2, 4, 4), dtype="u2"
    )
    sharded[:] = 7
    (tmp_path / "s.zarr" / "c" / "1" / "0" / "0").write_bytes(b"not a shard")
    array = CheckedArray(zarr.open_array(tmp_path / "s.zarr", mode="r"), "the input")
    assert array[:2].sum() == 7 * 32
    with pytest.raises(ValueError, match=r"the input: chunk c/1/0/0 cannot be decoded \(.+\)"):
        array[3]
    (tmp_path / "s.zarr" / "c" / "0" / "0" / "0").unlink()
    with pytest.raises(ValueError, match=r"the input: chunk c/0/0/0 is missing"):
        array[0]


def test_damaged_metadata_names_its_file(tmp_path):
    group = zarr.open_group(tmp_path / "d.zarr", mode="w")
    write_array(group, "raw", np.ones((2, 4, 4), np.uint8))
    metadata = tmp_path / "d.zarr" / "raw" / "zarr.json"
    metadata.write_text(metadata.read_text()[:40])
    with pytest.raises(ValueError, match=r"raw/zarr.json: the Zarr metadata cannot be parsed"):
        open_data(tmp_path / "d.zarr")["raw"]
    with pytest.raises(ValueError, match=r"raw/zarr.json: the Zarr metadata cannot be parsed"):
        open_zarr(tmp_path / "d.zarr" / "raw")
    (tmp_path / "d.zarr" / "zarr.json").write_text("{")
    with pytest.raises(ValueError, match=r"d.zarr/zarr.json: the Zarr metadata cannot be parsed"):
        open_data(tmp_path / "d.zarr")


def test_every_series_of_a_multi_series_tiff_is_read(tmp_path):
    """Pages written one at a time (one series each, as acquisition tools write) are one stack,
    LZW-compressed too; series of different shapes or dtypes are refused, saying what differs."""
    stack = np.random.default_rng(0).integers(0, 255, (3, 5, 7), dtype=np.uint8)
    with tifffile.TiffWriter(tmp_path / "loop.tif") as tif:
        for page in stack:
            tif.write(page, compression="lzw")
    np.testing.assert_array_equal(read_stack(tmp_path / "loop.tif"), stack)
    with tifffile.TiffWriter(tmp_path / "mixed.tif") as tif:
        tif.write(stack[0])
        tif.write(stack[1, :4])
        tif.write(stack[2].astype(np.uint16))
    message = r"mixed.tif: its 3 image series differ \(1 of shape \(4, 7\) uint8; 1 of shape "
    with pytest.raises(ValueError, match=message):
        read_stack(tmp_path / "mixed.tif")


def test_a_tiff_without_images_is_refused(tmp_path):
    (tmp_path / "none.tif").write_bytes(b"II*\x00\x00\x00\x00\x00")  # no first page
    with pytest.raises(ValueError, match=r"none.tif: cannot read this image: a TIFF without"):
        read_stack(tmp_path / "none.tif")
