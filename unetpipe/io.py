"""Reading images (TIFF stacks, PNG slices) and the Zarr group helpers every stage shares.

The data contract (DEVELOPERS.md): one Zarr v3 group per dataset, arrays (z, y, x) chunked
``(1, <=1024, <=1024)`` so that a slice is one read; group attribute ``splits`` lists the training
and validation slices. Outputs are built under a temporary name and renamed when complete.

Every chunk of the arrays we write is stored, even one equal to the fill value, so that a chunk
deleted later is noticed: :func:`open_data` refuses an array with a missing chunk and names the
chunk that cannot be decoded, instead of reading zeros or failing with a codec's bare message.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import functools
import hashlib
import inspect
import io
import itertools
import json
import math
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np
import tifffile
import zarr
from PIL import Image

MAX_CHUNK = 1024
IMAGE_SUFFIXES = (".tif", ".tiff", ".png")
P = ParamSpec("P")
R = TypeVar("R")
STORE_EVERY_CHUNK = {"write_empty_chunks": True}
"""Zarr array config of every array we write: all chunks stored, so a missing one is an error."""


def read_image(path: str | Path, digests: dict[str, str] | None = None) -> np.ndarray:
    """One image file as an array: a TIFF (any number of pages, BigTIFF, compressed;
    several series of one shape and dtype as one stack: :func:`tiff_series`) or a PNG
    (a single slice; palette images as their grey values). The file is read once; with
    ``digests`` its sha256 is recorded there under its path."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise ValueError(f"{path}: unsupported image format {suffix!r}; use TIFF or PNG")
    data = path.read_bytes()
    if digests is not None:
        digests[str(path)] = hashlib.sha256(data).hexdigest()
    try:
        if suffix == ".png":
            with Image.open(io.BytesIO(data)) as image:
                array = _grey(image, path)
        else:
            with tifffile.TiffFile(io.BytesIO(data)) as tif:
                pages = [series.asarray() for series in tiff_series(tif, path)]
            array = pages[0] if len(pages) == 1 else np.stack(pages)
    except ValueError as err:
        if str(err).startswith(str(path)):  # ours: already names the file and what to do
            raise
        raise ValueError(f"{path}: cannot read this image ({err})") from err
    except Exception as err:  # tifffile and PIL raise many kinds for broken files
        raise ValueError(f"{path}: cannot read this image ({err})") from err
    if array.size == 0:
        raise ValueError(f"{path}: cannot read this image (no image data in the file)")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise ValueError(f"{path}: contains NaN or infinite values; fill them before converting")
    return array


def tiff_series(tif: tifffile.TiffFile, path: str | Path) -> list[tifffile.TiffPageSeries]:
    """The image series of a TIFF file that make its stack: its one series, or every series when
    the file holds several of one shape and dtype (as ``TiffWriter`` in a loop writes one series
    per page), read in order as consecutive slices. Series that differ, and a file without any
    image, are a ValueError saying so."""
    series = list(tif.series)
    if not series or not len(tif.pages) or any(s.size == 0 or not s.shape for s in series):
        raise ValueError(
            f"{path}: cannot read this image: a TIFF without image data ({len(tif.pages)} "
            "pages); give a TIFF with images"
        )
    kinds = sorted({(tuple(s.shape), str(s.dtype)) for s in series})
    if len(kinds) > 1:
        differ = "; ".join(
            f"{sum((tuple(s.shape), str(s.dtype)) == k for s in series)} of shape {k[0]} {k[1]}"
            for k in kinds
        )
        raise ValueError(
            f"{path}: its {len(series)} image series differ ({differ}); unetpipe reads the series "
            "of a file as one stack only when their shapes and dtypes agree: save each stack to "
            "its own file"
        )
    return series


def _grey(image: Image.Image, path: Path) -> np.ndarray:
    """A PNG's grey values; a palette image through its palette, which must be grey."""
    if image.mode != "P":
        return np.asarray(image)
    palette = np.asarray(image.getpalette() or [], np.uint8).reshape(-1, 3)
    indices = np.asarray(image)
    used = palette[np.unique(indices)]
    if (used != used[:, :1]).any():
        raise ValueError(f"{path}: a colour palette image; save it as a greyscale PNG")
    return palette[:, 0][indices]


def numeric_key(path: Path) -> tuple[int, str]:
    """Sort key putting ``2.png`` before ``10.png`` (the number in the name, then the name)."""
    numbers = re.findall(r"\d+", path.stem)
    return (int(numbers[-1]) if numbers else -1, path.name)


def slice_files(folder: str | Path) -> list[Path]:
    """The image files of a folder of slices, in numeric order of their names."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder of image slices")
    files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    if not files:
        raise FileNotFoundError(f"{folder}: no TIFF or PNG slices in this folder")
    return sorted(files, key=numeric_key)


def read_stack(path: str | Path, digests: dict[str, str] | None = None) -> np.ndarray:
    """A (z, y, x) stack: a multi-page TIFF, or a folder of single-slice images in numeric order
    (``digests``: see :func:`read_image`)."""
    path = Path(path)
    if path.is_dir():
        slices = [read_image(p, digests) for p in slice_files(path)]
        shapes = {s.shape for s in slices}
        if len(shapes) != 1:
            raise ValueError(f"{path}: slices differ in shape {sorted(shapes)}")
        stack = np.stack(slices)
    elif path.is_file():
        stack = read_image(path, digests)
    else:
        raise FileNotFoundError(f"{path}: no such image file or folder")
    if stack.ndim == 2:
        stack = stack[None]
    if stack.ndim != 3:
        raise ValueError(f"{path}: expected grey-value images (z, y, x), got shape {stack.shape}")
    return stack


def slice_chunks(shape: Sequence[int], max_chunk: int = MAX_CHUNK) -> tuple[int, ...]:
    """Chunks of one slice: 1 along every leading axis, at most ``max_chunk`` along y and x."""
    if len(shape) < 2:
        raise ValueError(f"slice_chunks needs at least (y, x), got shape {tuple(shape)}")
    lead = (1,) * (len(shape) - 2)
    return lead + tuple(max(1, min(int(n), max_chunk)) for n in shape[-2:])


def create_array(
    group: zarr.Group,
    name: str,
    shape: Sequence[int],
    dtype: Any,
    attrs: dict[str, Any] | None = None,
    fill_value: Any = 0,
) -> zarr.Array:
    """An array in ``group`` chunked slice by slice (:func:`slice_chunks`); replaces an old one."""
    return group.create_array(
        name,
        shape=tuple(int(n) for n in shape),
        chunks=slice_chunks(shape),
        dtype=dtype,
        fill_value=fill_value,
        attributes=dict(attrs or {}),
        overwrite=True,
        config=STORE_EVERY_CHUNK,
    )


def write_array(
    group: zarr.Group, name: str, data: np.ndarray, attrs: dict[str, Any] | None = None
) -> zarr.Array:
    """Store a (z, y, x) array in ``group``, one slice at a time."""
    array = create_array(group, name, data.shape, data.dtype, attrs)
    for z in range(data.shape[0]):
        array[z] = data[z]
    return array


def _axis_chunks(key: Any, length: int, size: int) -> list[int]:
    """The chunk indices along one axis that ``key`` (an integer, a slice, a list or array of
    integers or booleans) touches; chunks of ``size`` elements."""
    if isinstance(key, slice):
        start, stop, step = key.indices(length)
        touched = range(start, stop, step)
        if step == 1 and touched:
            return list(range(start // size, (stop - 1) // size + 1))
        return sorted({i // size for i in touched})
    index = np.asarray(key)
    if index.dtype == bool:
        index = np.flatnonzero(index)
    if not np.issubdtype(index.dtype, np.integer):
        return list(range(math.ceil(length / size)))
    return sorted({int(i) % max(length, 1) // size for i in index.ravel()})


class CheckedArray:
    """A read-only Zarr array that never reads a missing chunk as its fill value and names the
    chunk that cannot be decoded: the one reader of every input array of every stage.

    Every read first checks that the stored chunks (shards) it touches exist (on a local store:
    one file each), then decodes them; either failure is a ValueError naming the array
    (``where``) and the chunk's key. Arrays written by unetpipe store every chunk
    (:data:`STORE_EVERY_CHUNK`); an array written elsewhere that leaves chunks equal to the fill
    value unstored is refused too, with a line saying so: unetpipe cannot tell such a chunk from
    a deleted one.
    """

    def __init__(self, array: zarr.Array, where: str) -> None:
        self.array, self.where = array, where
        self.shape, self.dtype, self.chunks = array.shape, array.dtype, array.chunks
        self.ndim, self.attrs, self.fill_value = array.ndim, array.attrs, array.fill_value
        self.stored = tuple(array.shards or array.chunks)  # what one key (file) holds
        root = getattr(array.store, "root", None)
        self.folder = None if root is None else Path(root) / array.path

    def __len__(self) -> int:
        return self.shape[0]

    def _key(self, index: Sequence[int]) -> str:
        return self.array.metadata.encode_chunk_key(tuple(index))

    def _grid(self, selection: Any) -> Iterator[tuple[int, ...]]:
        """Stored-chunk indices touched by ``selection`` (basic or orthogonal indexing)."""
        keys = list(selection) if isinstance(selection, tuple) else [selection]
        if any(k is Ellipsis for k in keys):
            at = next(i for i, k in enumerate(keys) if k is Ellipsis)
            keys[at : at + 1] = [slice(None)] * (self.ndim - len(keys) + 1)
        keys += [slice(None)] * (self.ndim - len(keys))
        axes = [
            _axis_chunks(k, n, c) for k, n, c in zip(keys, self.shape, self.stored, strict=True)
        ]
        return itertools.product(*axes)

    def missing(self, selection: Any = slice(None)) -> list[str]:
        """Keys of the chunks of ``selection`` that are not stored (local stores only: others
        are not checked)."""
        if self.folder is None:
            return []
        keys = (self._key(index) for index in self._grid(selection))
        return [key for key in keys if not (self.folder / key).is_file()]

    def check_complete(self) -> None:
        """Refuse an array with any chunk missing, naming the first and counting them."""
        if self.folder is None or self.array.nchunks_initialized == self.array.nchunks:
            return
        lost = self.missing()
        if lost:
            raise ValueError(
                self._missing_message(lost[0], f" ({len(lost)} of {self.array.nchunks})")
            )

    def _missing_message(self, key: str, count: str = "") -> str:
        return (
            f"{self.where}: chunk {key} is missing{count}: the array is incomplete and unetpipe "
            f"never reads a missing chunk as the fill value {self.fill_value}; rerun the stage "
            "that wrote it (an array written outside unetpipe must store every chunk: zarr "
            "config write_empty_chunks=True)"
        )

    def __getitem__(self, selection: Any) -> np.ndarray:
        lost = self.missing(selection)
        if lost:
            raise ValueError(self._missing_message(lost[0]))
        try:
            return self.array[selection]
        except OSError:  # the file system, not the data: as it is (a rerun may succeed)
            raise
        except Exception as err:  # a codec's error names neither the array nor the chunk
            raise ValueError(f"{self.where}: {self._bad_chunk(selection, err)}") from err

    def _bad_chunk(self, selection: Any, err: Exception) -> str:
        for index in self._grid(selection):
            region = tuple(
                slice(i * c, (i + 1) * c) for i, c in zip(index, self.stored, strict=True)
            )
            try:
                self.array[region]
            except Exception as chunk_err:
                return (
                    f"chunk {self._key(index)} cannot be decoded ({chunk_err}); the file is "
                    "damaged: restore it or rerun the stage that wrote this array"
                )
        return f"cannot be read ({err})"


def unparsable_metadata(path: Path) -> ValueError | None:
    """A clear error for the Zarr metadata file of ``path`` (v3 ``zarr.json``; v2 ``.zarray``,
    ``.zgroup``, ``.zattrs``) that is not valid JSON, if one is."""
    for name in ("zarr.json", ".zarray", ".zgroup", ".zattrs"):
        file = path / name
        if file.is_file():
            try:
                json.loads(file.read_bytes())
            except ValueError as err:
                return ValueError(
                    f"{file}: the Zarr metadata cannot be parsed ({err}); the file is damaged: "
                    "restore it or rerun the stage that wrote it"
                )
    return None


def open_zarr(path: str | Path) -> zarr.Array | zarr.Group:
    """The Zarr array or group at ``path``, read-only; damaged metadata is named by its file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such Zarr array or group")
    try:
        return zarr.open(str(path), mode="r")
    except Exception as err:
        named = unparsable_metadata(path)
        if named is not None:
            raise named from err
        raise ValueError(f"{path}: not a readable Zarr array or group ({err})") from err


def checked_array(path: str | Path, where: str | None = None) -> CheckedArray:
    """The Zarr array at ``path`` as a :class:`CheckedArray` (``where``: its name in messages)."""
    node = open_zarr(path)
    if not isinstance(node, zarr.Array):
        raise ValueError(f"{path}: a Zarr group, not an array")
    return CheckedArray(node, where or str(path))


class DataGroup:
    """A dataset's Zarr group, read-only: every array it hands out is complete (no chunk missing)
    and reads through :class:`CheckedArray`."""

    def __init__(self, path: Path) -> None:
        self.path, self.store = path, str(path)
        group = open_zarr(path)
        if not isinstance(group, zarr.Group):
            raise ValueError(f"{path}: a Zarr array, not a dataset group")
        self.group = group
        self.attrs = self.group.attrs
        self._arrays: dict[str, CheckedArray] = {}

    def __contains__(self, name: str) -> bool:
        return (self.path / name / "zarr.json").is_file()

    def __getitem__(self, name: str) -> CheckedArray:
        if name not in self._arrays:
            if name not in self:
                raise KeyError(f"{self.path} has no array {name!r}")
            array = checked_array(self.path / name, f"{self.path}/{name}")
            array.check_complete()
            self._arrays[name] = array
        return self._arrays[name]

    def digest(self, names: Iterable[str]) -> str:
        """sha256 of the stored content (metadata and every chunk's bytes) of arrays ``names``:
        it changes whenever a value does, without decoding anything."""
        digest = hashlib.sha256()
        for name in names:
            _hash_files(digest, self.path / name, self.path)
        return digest.hexdigest()


def _hash_files(digest: Any, root: Path, base: Path) -> None:
    """Feed every file under ``root`` (its path relative to ``base``, then its bytes) to
    ``digest``, in sorted order."""
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(base)).encode())
        digest.update(file.read_bytes())


def stored_digest(path: str | Path) -> str:
    """sha256 of what is stored at ``path``: a file's bytes, or a folder's files (relative path
    and bytes, sorted), e.g. a Zarr array's metadata and chunks."""
    path = Path(path)
    if path.is_file():
        return sha256sum(path)
    digest = hashlib.sha256()
    _hash_files(digest, path, path)
    return digest.hexdigest()


def open_data(path: str | Path) -> DataGroup:
    """The dataset's Zarr group, read-only (:class:`DataGroup`)."""
    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise FileNotFoundError(f"{path}: not a Zarr v3 group (run the synth or convert rule)")
    return DataGroup(path)


def read_splits(data: str | Path | DataGroup) -> dict[str, list[int]]:
    """Group attribute ``splits``: ``{"train": [...], "val": [...]}``, slice indices of ``raw``."""
    group = data if isinstance(data, DataGroup) else open_data(data)
    splits = group.attrs.get("splits")
    if not isinstance(splits, dict) or "train" not in splits or "val" not in splits:
        raise ValueError(f"{group.store}: no group attribute 'splits' with 'train' and 'val'")
    return {"train": [int(i) for i in splits["train"]], "val": [int(i) for i in splits["val"]]}


def read_log(path: str | Path) -> list[dict[str, str]]:
    """The rows of a training log (``log.csv``, written by :mod:`unetpipe.train`) as text."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def make_splits(
    n_slices: int, val_slices: Sequence[int] = (), candidates: Sequence[int] | None = None
) -> dict[str, list[int]]:
    """Training and validation slices: ``val_slices`` as given, or the last 20% of the
    ``candidates`` (default: all slices; e.g. only those with gold truth) when empty."""
    if n_slices < 2:
        raise ValueError(
            f"a dataset needs at least 2 labelled slices (one to train on, one to validate "
            f"and evaluate), got {n_slices}: add labelled slices"
        )
    val = sorted({int(i) for i in val_slices})
    if not val:
        pool = sorted(candidates) if candidates is not None else list(range(n_slices))
        val = pool[len(pool) - max(1, round(0.2 * len(pool))) :] if len(pool) > 1 else []
    bad = [i for i in val if not 0 <= i < n_slices]
    if bad:
        raise ValueError(f"val_slices {bad} out of range: the dataset has {n_slices} slices")
    train = [i for i in range(n_slices) if i not in set(val)]
    if not train or not val:
        raise ValueError(f"val_slices {val} leave no training or no validation slice of {n_slices}")
    return {"train": train, "val": val}


PROVENANCE = "unetpipe"
"""The attribute (Zarr ``zarr.json``), marker file (``.unetpipe`` in a folder), extended attribute
(``user.unetpipe`` of a file) or TIFF Software tag that says unetpipe wrote a path."""
_MARKER = f".{PROVENANCE}"
_XATTR = f"user.{PROVENANCE}"
_held: set[Path] = set()  # outputs whose lock this process holds


def written_by_unetpipe(path: str | Path) -> bool:
    """Whether ``path`` is unetpipe's own output, so that unetpipe may replace it: it carries
    unetpipe's mark (:func:`_marked`), or it is a file inside a folder that does."""
    path = Path(path)
    if path.is_symlink() or not path.exists():
        return False
    return _marked(path) or (path.is_file() and any(map(_folder_mark, path.parents)))


def _folder_mark(folder: Path) -> bool:
    """The folder's own mark: the ``.unetpipe`` file, or ``unetpipe`` in its Zarr attributes."""
    return (folder / _MARKER).is_file() or PROVENANCE in _zarr_attributes(folder)


def _marked(path: Path) -> bool:
    """A folder with its own mark (:func:`_folder_mark`), a file with the extended attribute or
    a TIFF with unetpipe's Software tag; or a plain folder holding only such things (or
    nothing)."""
    if path.is_symlink():
        return False
    if path.is_dir():
        if _folder_mark(path):
            return True
        return not (path / "zarr.json").exists() and all(_marked(c) for c in path.iterdir())
    with contextlib.suppress(OSError):
        if _XATTR in os.listxattr(path):
            return True
    if path.suffix.lower() in (".tif", ".tiff"):
        with contextlib.suppress(Exception), tifffile.TiffFile(path) as tif:
            return (tif.pages.first.software or "").startswith(PROVENANCE)
    return False


def _zarr_attributes(folder: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        attributes = json.loads((folder / "zarr.json").read_text()).get("attributes", {})
        return attributes if isinstance(attributes, dict) else {}
    return {}


def _mark(path: Path) -> None:
    """Record that unetpipe wrote ``path`` (see :data:`PROVENANCE`): every Zarr node in it (not
    only the root, so that what is left of a group whose other arrays were removed is still
    known as ours), else a ``.unetpipe`` file in a folder, an extended attribute on a file."""
    if not path.is_dir():
        with contextlib.suppress(OSError, AttributeError):  # no extended attributes: unmarked
            os.setxattr(path, _XATTR, _version().encode())
        return
    if not (path / "zarr.json").is_file():
        (path / _MARKER).write_text("written by unetpipe\n")
        return
    for folder, subfolders, names in os.walk(path):
        subfolders[:] = [d for d in subfolders if d != "c"]  # chunks, not nodes
        if "zarr.json" not in names:
            continue
        metadata = Path(folder) / "zarr.json"
        node = json.loads(metadata.read_text())
        if PROVENANCE not in node.setdefault("attributes", {}):
            node["attributes"][PROVENANCE] = {"version": _version()}
            metadata.write_text(json.dumps(node, indent=2))


def _version() -> str:
    from unetpipe import __version__

    return __version__


def _name(final: Path) -> str:
    if not final.name:
        raise ValueError(f"{final}: not a path to write to; name a file or folder")
    return final.name


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)  # left over: removed by the next run
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def claim_folder(folder: str | Path) -> Path:
    """Make ``folder`` unetpipe's to write into (a run folder): create it, or take one that
    unetpipe wrote or that holds no file; refuse any other (what is in it is not ours)."""
    folder = Path(folder)
    refuse_foreign(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _mark(folder)
    return folder


def _holds_a_file(path: Path) -> bool:
    return path.is_file() or any(p.is_file() for p in path.rglob("*"))


def refuse_foreign(final: Path) -> None:
    """Refuse an existing path unetpipe did not write (:func:`written_by_unetpipe`)."""
    if (final.exists() or final.is_symlink()) and not written_by_unetpipe(final):
        raise ValueError(
            f"{final} exists and was not written by unetpipe, which never replaces or deletes "
            "what it did not write: choose another output path"
        )


@contextlib.contextmanager
def claim_output(final: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Hold ``final`` for writing (resolved path yielded): refuse a path unetpipe did not write,
    one it did unless ``overwrite``, and a second writer (a lock, released when the holder
    exits or dies); remove the temporary files a killed run left beside it. Re-entrant."""
    final = Path(final).resolve()
    name = _name(final)
    if final in _held:  # this process holds it already (atomic_path inside a stage)
        yield final
        return
    refuse_foreign(final)
    if final.exists() and not overwrite and _holds_a_file(final):
        raise ValueError(f"{final} exists (written by unetpipe): pass --overwrite to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    lock = final.with_name(f".{name}.lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ValueError(
            f"{final}: another unetpipe process is writing it; wait for it to finish"
        ) from None
    for leftover in [*final.parent.glob(f".{name}.tmp-*"), *final.parent.glob(f".{name}.old-*")]:
        _remove(leftover)
    _held.add(final)
    try:
        yield final
    finally:
        _held.discard(final)
        lock.unlink(missing_ok=True)
        os.close(fd)


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``final`` to write (a file or a folder); rename it on success.

    On an exception the temporary is removed and ``final`` is left as it was; nothing partial
    ever sits at ``final``. An existing ``final`` is replaced only if unetpipe wrote it
    (:func:`written_by_unetpipe`); what is published is marked as unetpipe's.
    """
    with claim_output(final) as final:
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        try:
            yield tmp
        except BaseException:
            _remove(tmp)
            raise
        if not tmp.exists():
            raise RuntimeError(f"{tmp}: nothing was written for {final}")
        _mark(tmp)
        refuse_foreign(final)
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        if final.exists() or final.is_symlink():
            final.rename(old)
        tmp.rename(final)
        _remove(old)


def location(item: Any) -> Path | None:
    """Where an input lives on the local file system: a path as given, an image's OME-Zarr
    group or file, a Zarr array's folder; None for an in-memory array or another store."""
    if item is None or isinstance(item, np.ndarray):
        return None
    if isinstance(item, (str, os.PathLike)):
        return Path(item).resolve()
    root = getattr(getattr(item, "store", None), "root", None)
    if root is not None:
        return (Path(root) / item.path).resolve()
    where = getattr(item, "group", None) or getattr(item, "path", None)
    return Path(where).resolve() if isinstance(where, (str, os.PathLike)) else None


def writes_output(
    output: str, *inputs: str, beside: str | None = None
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorator of a stage that writes its argument ``output``: before anything is read or
    written, the output is checked against the arguments ``inputs`` (:func:`check_disjoint`;
    a sequence argument counts each item) and then held for the whole call
    (:func:`claim_output`, with the call's ``overwrite`` argument, default True)."""

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        signature = inspect.signature(func)

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            given = bound.arguments
            paths = []
            for name in inputs:
                value = given.get(name)
                items = value if isinstance(value, (list, tuple)) else [value]
                paths += [where for item in items if (where := location(item)) is not None]
            check_disjoint(given[output], *paths, beside=beside)
            with claim_output(given[output], given.get("overwrite", True)):
                return func(*args, **kwargs)

        return wrapper

    return decorate


def relative_to_output(path: str | Path, output: str | Path) -> str:
    """``path`` as provenance of ``output``: relative to the folder holding ``output`` (so that
    the record stays true when results are moved or shared together), as a URI otherwise."""
    path, base = Path(path).resolve(), Path(output).resolve().parent
    try:
        return Path(os.path.relpath(path, base)).as_posix()
    except ValueError:  # another drive: no relative path
        return path.as_uri()


def _zarr_root(path: Path) -> Path:
    """The outermost Zarr node holding ``path`` (its group), or ``path`` outside Zarr."""
    root = path
    for parent in path.parents:
        if not (parent / "zarr.json").is_file():
            break
        root = parent
    return root


def check_disjoint(output: str | Path, *inputs: str | Path, beside: str | None = None) -> None:
    """Refuse, before anything is written, an output that is, contains or lies inside an input
    or the Zarr group holding it: writing it would delete or overwrite the input. ``beside``:
    a sub-folder of the inputs where outputs may lie (an OME-Zarr image's ``labels``)."""
    out = Path(output).resolve()
    for given in inputs:
        source = Path(given).resolve()
        sources = dict.fromkeys((source, _zarr_root(source)))
        if beside and any((s / beside) in out.parents for s in sources):
            continue
        for protected in sources:
            if out == protected or out in protected.parents or protected in out.parents:
                relation = (
                    "is"
                    if out == protected
                    else "contains"
                    if out in protected.parents
                    else "lies in"
                )
                what = "the input" if protected == source else "the Zarr group of the input"
                raise ValueError(
                    f"the output {output} {relation} {what} {given}: writing it would destroy "
                    "the input; choose another output path"
                )


def sha256sum(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
