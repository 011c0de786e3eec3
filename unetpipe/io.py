"""Reading images (TIFF stacks, PNG slices) and the Zarr group helpers every stage shares.

The data contract (DEVELOPERS.md): one Zarr v3 group per dataset, arrays (z, y, x) chunked
``(1, <=1024, <=1024)`` so that a slice is one read; group attribute ``splits`` lists the training
and validation slices. Outputs are built under a temporary name and renamed when complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import zarr
from PIL import Image

MAX_CHUNK = 1024
IMAGE_SUFFIXES = (".tif", ".tiff", ".png")


def read_image(path: str | Path) -> np.ndarray:
    """One image file as an array: a TIFF (any number of pages) or a PNG (a single slice)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        return tifffile.imread(path)
    if suffix == ".png":
        with Image.open(path) as image:
            return np.asarray(image)
    raise ValueError(f"{path}: unsupported image format {suffix!r}; use TIFF or PNG")


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


def read_stack(path: str | Path) -> np.ndarray:
    """A (z, y, x) stack: a multi-page TIFF, or a folder of single-slice images in numeric order."""
    path = Path(path)
    if path.is_dir():
        slices = [read_image(p) for p in slice_files(path)]
        shapes = {s.shape for s in slices}
        if len(shapes) != 1:
            raise ValueError(f"{path}: slices differ in shape {sorted(shapes)}")
        stack = np.stack(slices)
    elif path.is_file():
        stack = read_image(path)
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
    )


def write_array(
    group: zarr.Group, name: str, data: np.ndarray, attrs: dict[str, Any] | None = None
) -> zarr.Array:
    """Store a (z, y, x) array in ``group``, one slice at a time."""
    array = create_array(group, name, data.shape, data.dtype, attrs)
    for z in range(data.shape[0]):
        array[z] = data[z]
    return array


def open_data(path: str | Path) -> zarr.Group:
    """The dataset's Zarr group, read-only."""
    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise FileNotFoundError(f"{path}: not a Zarr v3 group (run the synth or convert rule)")
    return zarr.open_group(path, mode="r")


def read_splits(data: str | Path | zarr.Group) -> dict[str, list[int]]:
    """Group attribute ``splits``: ``{"train": [...], "val": [...]}``, slice indices of ``raw``."""
    group = data if isinstance(data, zarr.Group) else open_data(data)
    splits = group.attrs.get("splits")
    if not isinstance(splits, dict) or "train" not in splits or "val" not in splits:
        raise ValueError(f"{group.store}: no group attribute 'splits' with 'train' and 'val'")
    return {"train": [int(i) for i in splits["train"]], "val": [int(i) for i in splits["val"]]}


def make_splits(n_slices: int, val_slices: Sequence[int] = ()) -> dict[str, list[int]]:
    """Training and validation slices: ``val_slices`` as given, or the last 20% when empty."""
    if n_slices < 1:
        raise ValueError("a dataset needs at least one labelled slice")
    val = sorted({int(i) for i in val_slices})
    if not val:
        n_val = max(1, round(0.2 * n_slices)) if n_slices > 1 else 0
        val = list(range(n_slices - n_val, n_slices))
    bad = [i for i in val if not 0 <= i < n_slices]
    if bad:
        raise ValueError(f"val_slices {bad} out of range: the dataset has {n_slices} slices")
    train = [i for i in range(n_slices) if i not in set(val)]
    if not train:
        raise ValueError(f"val_slices {val} leave no training slice of {n_slices}")
    return {"train": train, "val": val}


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``final`` to write (a file or a folder); rename it on success.

    On an exception the temporary is removed and ``final`` is left as it was; nothing partial
    ever sits at ``final``. An existing ``final`` is replaced.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if not tmp.exists():
        raise RuntimeError(f"{tmp}: nothing was written for {final}")
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists() or final.is_symlink():
        final.rename(old)
    tmp.rename(final)
    _remove(old)


def sha256sum(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
