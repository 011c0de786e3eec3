"""Images in and out of the pipeline: TIFF, Zarr and OME-Zarr (OME-NGFF 0.5, Moore et al. 2023).

:func:`open_image` reads any input (a TIFF stack, a plain Zarr array, an OME-Zarr 0.4/0.5 image)
as a lazy array with the axes a stage asks for, and its voxel size (:class:`Space`).
:func:`write_image` and :func:`label_image` make the full-resolution predictions and
segmentations OME-Zarr 0.5 images (Zarr v3): ``multiscales`` with axes and scale, a 2x pyramid in
(y, x) written chunk by chunk, and the segmentation as an ``image-label`` image pointing at the
probabilities it came from. :func:`write_tiff` exports any of them as an ImageJ hyperstack for Fiji.
Spec: https://ngff.openmicroscopy.org/0.5/
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import operator
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import zarr
from zarr.storage import LocalStore

from unetpipe.affinities import is_attractive
from unetpipe.io import (
    PROVENANCE,
    STORE_EVERY_CHUNK,
    CheckedArray,
    atomic_path,
    checked_array,
    open_zarr,
    slice_chunks,
    tiff_series,
    unparsable_metadata,
    writes_output,
)

VERSION = "0.5"
PYRAMID_PLANE = 512  # levels are added until a (y, x) plane fits in 512 x 512
TIFF_SUFFIXES = (".tif", ".tiff")
CHANNEL_AXES = ("c", "s")  # channels; TIFF samples (RGB)

# OME-NGFF units (UDUNITS-2 names) and how ImageJ writes them.
_IMAGEJ_UNITS = {
    "angstrom": "\u00c5",
    "picometer": "pm",
    "nanometer": "nm",
    "micrometer": "micron",
    "millimeter": "mm",
    "centimeter": "cm",
    "meter": "m",
    "inch": "inch",
}
# Every spelling met in ImageJ, OME-XML and TIFF metadata -> the OME-NGFF unit.
_UNITS = {
    **{name: name for name in _IMAGEJ_UNITS},
    **{short: name for name, short in _IMAGEJ_UNITS.items()},
    **{f"{micro}m": "micrometer" for micro in ("u", "\u00b5", "\u03bc", "\\u00B5")},
    "microns": "micrometer",
}
_TIFF_MICROMETERS = {2: 25400.0, 3: 10000.0}  # per unit of the ResolutionUnit tag: inch, cm


@dataclass(frozen=True)
class Space:
    """Where the (z, y, x) voxels lie: size per voxel, position of voxel 0 and units (None:
    unknown), as the ``scale`` and ``translation`` of OME-NGFF ``coordinateTransformations``."""

    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    translation: tuple[float, float, float] = (0.0, 0.0, 0.0)
    unit: tuple[str | None, str | None, str | None] = (None, None, None)


class ImageArray:
    """The full-resolution array of an image on disk, with the axes asked for, read lazily.

    Indexing with integers and slices (one per axis) reads only that region: Zarr chunks, TIFF
    strips, tiles or pages, or rows of an uncompressed TIFF through a memory map made per read.
    Pickling carries the path, not the open file, so Dask workers get it cheaply and reopen it.
    ``format``: zarr, ome-zarr or tiff; ``group``: the OME-Zarr image it belongs to, if any.
    Zarr data is read through :class:`unetpipe.io.CheckedArray` (a missing or undecodable chunk
    is an error naming it); a TIFF of several series of one shape (one per page) is read as
    their stack along a leading axis (``series``: their number).
    """

    def __init__(
        self,
        path: str,
        format: str,
        axes: str,
        stored_shape: Sequence[int],
        dtype: Any,
        source_axes: Sequence[int | None],
        space: Space,
        *,
        attrs: dict[str, Any] | None = None,
        stored_chunks: Sequence[int] | None = None,
        group: str | None = None,
        raw: tuple[int, str] | None = None,
        array: zarr.Array | None = None,
        series: int | None = None,
    ) -> None:
        self.path, self.format, self.axes, self.group = path, format, axes, group
        self.space, self.attrs = space, dict(attrs or {})
        self.dtype = np.dtype(dtype)
        self._stored_shape = tuple(int(n) for n in stored_shape)
        self._source_axes = tuple(source_axes)  # per axis: the stored axis, None if inserted
        self.shape = tuple(1 if i is None else self._stored_shape[i] for i in self._source_axes)
        self.ndim = len(self.shape)
        self.chunks = (
            tuple(1 if i is None else stored_chunks[i] for i in self._source_axes)
            if stored_chunks is not None
            else slice_chunks(self.shape)  # TIFF: read in strips, tiles or pages anyway
        )
        self._raw = raw  # (offset, stored dtype) of uncompressed contiguous TIFF data
        self._series = series  # a TIFF's series stacked along stored axis 0
        self._array: Any = None if array is None else CheckedArray(array, path)
        self._kept = array is not None  # an array not on local disk travels as it is
        self._tiff: tifffile.TiffFile | None = None
        self._pages: dict[int, zarr.Array] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = {**self.__dict__, "_tiff": None, "_pages": {}}
        return {**state, "_array": self._array if self._kept else None}

    def __repr__(self) -> str:
        return f"ImageArray({self.path!r}, {self.format}, {self.axes}, shape={self.shape})"

    def _page_series(self, index: int) -> zarr.Array:
        """Series ``index`` of the TIFF (level 0) as a Zarr array, the file opened once."""
        if index not in self._pages:
            if self._tiff is None:
                self._tiff = tifffile.TiffFile(self.path)
            store = self._tiff.series[index].aszarr(level=0)
            self._pages[index] = zarr.open_array(store, mode="r")
        return self._pages[index]

    def _stored(self) -> Any:
        if self._array is None:
            self._array = checked_array(self.path)
        return self._array

    def _read_tiff(self, key: tuple[int | slice, ...]) -> np.ndarray:
        if self._series is None:
            return np.asarray(self._page_series(0)[key])
        first, rest = key[0], key[1:]
        if not isinstance(first, slice):
            return np.asarray(self._page_series(range(self._series)[first])[rest])
        pages = [np.asarray(self._page_series(i)[rest]) for i in range(self._series)[first]]
        return (
            np.stack(pages)
            if pages
            else np.zeros((0, *self._page_series(0)[rest].shape), self.dtype)
        )

    def _read(self, key: tuple[int | slice, ...]) -> np.ndarray:
        if self.format != "tiff":
            return np.asarray(self._stored()[key])
        if self._raw is None:
            try:
                return self._read_tiff(key)
            except (OSError, IndexError):
                raise
            except Exception as err:  # a codec's error names neither the file nor the region
                raise ValueError(f"{self.path}: cannot read {key} of this TIFF ({err})") from err
        offset, dtype = self._raw
        mapped = np.memmap(self.path, dtype, "r", offset, self._stored_shape)
        try:
            return np.array(mapped[key], dtype=self.dtype)
        finally:
            del mapped  # unmapped after each read: resident memory stays one region

    def __getitem__(self, key: Any) -> np.ndarray:
        key = tuple(k if isinstance(k, slice) else operator.index(k) for k in _tuple(key))
        if len(key) > self.ndim:
            raise IndexError(f"{self!r} takes up to {self.ndim} integers or slices, got {key}")
        key = key + (slice(None),) * (self.ndim - len(key))
        stored: list[int | slice] = [0] * len(self._stored_shape)
        for axis, source in enumerate(self._source_axes):
            if source is not None:
                stored[source] = key[axis]
        data = self._read(tuple(stored))
        kept = [a for a, s in enumerate(self._source_axes) if s is not None]
        kept = [a for a in sorted(kept, key=lambda a: self._source_axes[a]) if _sliced(key[a])]
        data = np.transpose(data, np.argsort(kept)) if kept != sorted(kept) else data
        for axis in range(self.ndim):  # axes the stored image lacks: length 1
            if self._source_axes[axis] is None and _sliced(key[axis]):
                position = sum(_sliced(k) for k in key[:axis])
                count = len(range(*key[axis].indices(1)))
                data = np.repeat(np.expand_dims(data, position), count, axis=position)
            elif self._source_axes[axis] is None and key[axis] not in (0, -1):
                raise IndexError(f"index {key[axis]} out of range for axis {self.axes[axis]}")
        return data


def _tuple(key: Any) -> tuple:
    return key if isinstance(key, tuple) else (key,)


def _sliced(key: int | slice) -> bool:
    return isinstance(key, slice)


def open_image(
    source: str | Path | zarr.Array | ImageArray, axes: str = "zyx", level: int = 0
) -> ImageArray:
    """An image as an :class:`ImageArray` with ``axes`` (letters of c, z, y, x), and its space.

    ``source``: a TIFF file (multi-page, BigTIFF, compressed; several series of one shape and
    dtype, such as one series per page, stacked: :func:`unetpipe.io.tiff_series`), a Zarr array
    (its voxel size from the ``voxel_size`` attribute of the dataset group holding it), or an
    OME-Zarr 0.4/0.5 image or label image (multiscale ``level``, 0 = full resolution). Axes of
    length 1 that are not asked for are dropped, axes asked for but absent get length 1; a stack
    axis (time, pages) stands for z when there is no z. Zarr reads refuse missing chunks and name
    undecodable ones (:class:`unetpipe.io.CheckedArray`); damaged metadata, multiscales that list
    no level or a level that is absent are one line each.
    """
    if isinstance(source, ImageArray) and source.axes == axes and level == 0:
        return source
    if isinstance(source, zarr.Array):
        if not isinstance(source.store, LocalStore):
            return _plain(str(source.store), source, axes, Space(), array=source)
        source = Path(source.store.root) / source.path
    path = Path(source)
    if path.suffix.lower() in TIFF_SUFFIXES:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such TIFF file")
        return _open_tiff(path, axes)
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no such image (a TIFF, a Zarr array or an OME-Zarr image)"
        )
    node = open_zarr(path)
    if isinstance(node, zarr.Array):
        return _plain(str(path.resolve()), node, axes, _group_space(path.parent))
    return _open_ome_zarr(path, node, axes, level)


def require_grid(image: ImageArray, shape: Sequence[int], of: str) -> None:
    """Refuse an image whose (z, y, x) extent is not ``shape``, the extent of ``of`` (e.g. the
    dataset array it was predicted from): one line, before anything is read."""
    grid, shape = tuple(image.shape[-3:]), tuple(int(n) for n in shape)
    if grid != shape:
        raise ValueError(
            f"{image.path}: (z, y, x) = {grid} does not match {of} {shape}; it was made from "
            "another image: predict (and segment) that array again"
        )


def _plain(path: str, array: zarr.Array, axes: str, space: Space, **kw: Any) -> ImageArray:
    """A Zarr array of the pipeline's layout: (z, y, x) images, (c, z, y, x) predictions."""
    if array.ndim not in (3, 4):
        raise ValueError(
            f"{path}: shape {array.shape}; a Zarr array must be (z, y, x) or (c, z, y, x)"
        )
    source_axes = _source_axes("czyx"[-array.ndim :], array.shape, axes, Path(path))
    return ImageArray(
        path,
        "zarr",
        axes,
        array.shape,
        array.dtype,
        source_axes,
        space,
        attrs=array.attrs.asdict(),
        stored_chunks=array.chunks,
        **kw,
    )


def _group_space(folder: Path) -> Space:
    """The dataset group's ``voxel_size`` (z, y, x), unit unknown; 1 without a group."""
    metadata = folder / "zarr.json"
    if not metadata.is_file():
        return Space()
    damaged = unparsable_metadata(folder)
    if damaged is not None:
        raise damaged
    voxel = json.loads(metadata.read_text()).get("attributes", {}).get("voxel_size")
    return Space(scale=tuple(float(v) for v in voxel)) if voxel else Space()


def _source_axes(names: Sequence[str], shape: Sequence[int], axes: str, path: Path) -> list:
    """For each axis asked for, the stored axis it reads (None: absent, length 1)."""
    mapping = {a: names.index(a) for a in axes if a in names}
    stacks = [
        i
        for i, n in enumerate(names)
        if n not in (*axes, *CHANNEL_AXES) and shape[i] > 1 and i not in mapping.values()
    ]
    if "z" in axes and "z" not in mapping and len(stacks) == 1:
        mapping["z"] = stacks[0]  # a time series or a page stack stands for z
    missing = [a for a in "yx" if a in axes and a not in mapping]
    extra = [i for i in range(len(names)) if i not in mapping.values() and shape[i] > 1]
    if missing or extra:
        stored = ", ".join(f"{n}={s}" for n, s in zip(names, shape, strict=True))
        raise ValueError(
            f"{path}: axes ({stored}) cannot be read as ({', '.join(axes)}); "
            "give one grey-value channel as a (z, y, x) stack"
        )
    return [mapping.get(a) for a in axes]


def _space(
    names: Sequence[str], source_axes: Sequence[int | None], axes: str, scale, translation, units
) -> Space:
    """The (z, y, x) part of per-stored-axis scale, translation and units."""
    picked = [source_axes[axes.index(a)] if a in axes else None for a in "zyx"]
    known = [
        i if i is not None and names[i] == a else None for i, a in zip(picked, "zyx", strict=True)
    ]
    return Space(
        scale=tuple(1.0 if i is None else float(scale[i]) for i in known),
        translation=tuple(0.0 if i is None else float(translation[i]) for i in known),
        unit=tuple(None if i is None else units[i] for i in known),
    )


# --- TIFF ----------------------------------------------------------------------------------------


def _open_tiff(path: Path, axes: str) -> ImageArray:
    """A TIFF's first series, or the stack of all its series when it has several of one shape
    and dtype (:func:`unetpipe.io.tiff_series`; axis ``i``, standing for z)."""
    try:
        tif = tifffile.TiffFile(path)
    except Exception as err:  # tifffile raises many kinds for broken files
        raise ValueError(f"{path}: cannot read this TIFF ({err})") from err
    with tif:
        every = tiff_series(tif, path)
        series, count = every[0], len(every) if len(every) > 1 else None
        names = ("i" if count else "") + series.axes.lower()
        shape = (*((count,) if count else ()), *series.shape)
        source_axes = _source_axes(names, shape, axes, path)
        scale, units = _tiff_scale(tif, names)
        space = _space(names, source_axes, axes, scale, [0.0] * len(names), units)
        raw = None
        if count is None and series.dataoffset is not None and not series.is_pyramidal:
            raw = (int(series.dataoffset), tif.byteorder + series.dtype.char)
        return ImageArray(
            str(path.resolve()),
            "tiff",
            axes,
            shape,
            series.dtype,
            source_axes,
            space,
            raw=raw,
            series=count,
        )


def _tiff_scale(tif: tifffile.TiffFile, names: str) -> tuple[list[float], list[str | None]]:
    """Pixel size and unit per stored axis: OME-XML, ImageJ spacing, else resolution tags."""
    scale, units = [1.0] * len(names), [None] * len(names)
    if tif.is_ome:
        image = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
        pixels = (image[0] if isinstance(image, list) else image)["Pixels"]
        for i, name in enumerate(names):
            size = pixels.get(f"PhysicalSize{name.upper()}")
            if name in "zyx" and size:
                scale[i] = float(size)
                units[i] = _UNITS.get(pixels.get(f"PhysicalSize{name.upper()}Unit", "\u00b5m"))
        return scale, units
    page = tif.series[0].keyframe
    imagej = tif.imagej_metadata or {}
    per_unit = _TIFF_MICROMETERS.get(int(page.resolutionunit), 1.0)  # inch, cm -> micrometer
    unit = "micrometer" if int(page.resolutionunit) in _TIFF_MICROMETERS else None
    if tif.is_imagej:
        per_unit, unit = 1.0, _UNITS.get(str(imagej.get("unit", "")))
    for i, name in enumerate(names):
        if name == "z" and "spacing" in imagej:
            scale[i], units[i] = float(imagej["spacing"]), unit
        elif name in "yx":
            resolution = page.resolution[0 if name == "x" else 1]
            scale[i] = per_unit / resolution if resolution > 0 else 1.0
            units[i] = unit
    return scale, units


# --- OME-Zarr in ---------------------------------------------------------------------------------


def _ome(attrs: dict[str, Any]) -> dict[str, Any]:
    """The OME metadata: under ``ome`` (0.5) or at the top of the attributes (0.4)."""
    return attrs.get("ome", attrs)


def _open_ome_zarr(path: Path, group: zarr.Group, axes: str, level: int) -> ImageArray:
    ome = _ome(group.attrs.asdict())
    if "multiscales" not in ome:
        raise ValueError(
            f"{path}: a Zarr group without OME-Zarr multiscales; give one of its members: "
            f"{sorted(group.keys())}"
        )
    multiscale = (ome["multiscales"] or [{}])[0]
    version = ome.get("version", multiscale.get("version"))
    if version not in ("0.4", "0.5"):
        raise ValueError(f"{path}: OME-Zarr version {version}; unetpipe reads 0.4 and 0.5")
    datasets = multiscale.get("datasets")
    if not datasets:
        raise ValueError(
            f"{path}: its OME-Zarr multiscales list no image (empty); the image is incomplete: "
            "rewrite it, or give one of its arrays"
        )
    if not 0 <= level < len(datasets):
        raise ValueError(f"{path}: no multiscale level {level} (it has {len(datasets)})")
    member = path / str(datasets[level].get("path", ""))
    if not datasets[level].get("path") or not member.is_dir():
        raise ValueError(
            f"{path}: its OME-Zarr multiscales point level {level} at "
            f"{datasets[level].get('path')!r}, but there is no such array in the image; "
            "the image is incomplete: rewrite it"
        )
    array = open_zarr(member)
    if not isinstance(array, zarr.Array):
        raise ValueError(f"{member}: level {level} of {path} is a group, not an array")
    names = [str(a["name"]).lower() for a in multiscale["axes"]]
    # The dataset's transforms, then the multiscale's (applied to all levels).
    scale, shift = _transform(datasets[level].get("coordinateTransformations", []), len(names))
    outer, outer_shift = _transform(multiscale.get("coordinateTransformations", []), len(names))
    scale, shift = scale * outer, shift * outer + outer_shift
    source_axes = _source_axes(names, array.shape, axes, path)
    units = [a.get("unit") for a in multiscale["axes"]]
    return ImageArray(
        str(path.resolve() / datasets[level]["path"]),
        "ome-zarr",
        axes,
        array.shape,
        array.dtype,
        source_axes,
        _space(names, source_axes, axes, scale, shift, units),
        attrs=array.attrs.asdict(),
        stored_chunks=array.chunks,
        group=str(path.resolve()),
    )


def _transform(transforms: Sequence[dict[str, Any]], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Scale and translation of a list of OME-NGFF scale/translation transforms, in order."""
    scale, shift = np.ones(n), np.zeros(n)
    for transform in transforms:
        if transform["type"] == "scale":
            factor = np.asarray(transform["scale"], dtype=float)
            scale, shift = scale * factor, shift * factor
        elif transform["type"] == "translation":
            shift = shift + np.asarray(transform["translation"], dtype=float)
        elif transform["type"] != "identity":
            raise ValueError(f"unsupported coordinate transformation {transform}")
    return scale, shift


# --- OME-Zarr out --------------------------------------------------------------------------------


def class_names(n_classes: int) -> list[str]:
    """Channel names of the network's classes (channel 1 = cell, DEVELOPERS.md)."""
    return ["background", "cell"] if n_classes == 2 else [f"class {i}" for i in range(n_classes)]


def downsample_mean(block: np.ndarray) -> np.ndarray:
    """2x2 means over the last two axes, in float32 (a last odd row or column is averaged with
    itself); integers are rounded back to their dtype. Summed from strided views into a
    quarter-sized float32 array, without a float32 copy of the whole block (on 2 x 2048^2
    float16: 2x faster alone, 5x inside predict_zarr)."""
    data = block
    if any(n % 2 for n in block.shape[-2:]):
        pad = [(0, 0)] * (block.ndim - 2) + [(0, n % 2) for n in block.shape[-2:]]
        data = np.pad(block, pad, mode="edge")
    mean = np.add(data[..., ::2, ::2], data[..., 1::2, ::2], dtype=np.float32)
    mean += data[..., ::2, 1::2]
    mean += data[..., 1::2, 1::2]
    mean *= 0.25
    return (np.rint(mean) if np.issubdtype(block.dtype, np.integer) else mean).astype(block.dtype)


def downsample_nearest(block: np.ndarray) -> np.ndarray:
    """Every second pixel in (y, x), from the first: labels keep their values."""
    return block[..., ::2, ::2]


def _next_level(source: zarr.Array, path: Path, reduce: Callable, names: list[str]) -> zarr.Array:
    """Level ``n + 1`` of ``source``, written one output chunk at a time (memory: a chunk)."""
    shape = (*source.shape[:-2], *(math.ceil(n / 2) for n in source.shape[-2:]))
    chunks = (*shape[:-3], *slice_chunks(shape[-3:]))
    target = zarr.create_array(
        str(path),
        shape=shape,
        chunks=chunks,
        dtype=source.dtype,
        fill_value=source.fill_value,
        dimension_names=names,
        config=STORE_EVERY_CHUNK,
    )
    lead = (slice(None),) * (len(shape) - 3)
    step_y, step_x = chunks[-2:]
    for z in range(shape[-3]):
        for y in range(0, shape[-2], step_y):
            for x in range(0, shape[-1], step_x):
                block = source[
                    (*lead, z, slice(2 * y, 2 * (y + step_y)), slice(2 * x, 2 * (x + step_x)))
                ]
                target[(*lead, z, slice(y, y + step_y), slice(x, x + step_x))] = reduce(block)
    return target


def _name_dimensions(array: Path, names: Sequence[str]) -> None:
    """Set ``dimension_names`` of a finished Zarr v3 array (metadata only; NGFF 0.5 wants them
    equal to the axes)."""
    metadata = array / "zarr.json"
    content = json.loads(metadata.read_text())
    content["dimension_names"] = list(names)
    metadata.write_text(json.dumps(content, indent=2))


def _multiscale(
    group: Path, level0: Path, space: Space, channels: bool, method: str, name: str
) -> dict[str, Any]:
    """Write the pyramid of ``level0`` into ``group`` (levels 1, 2, ... until a plane fits in
    :data:`PYRAMID_PLANE`) and return the ``multiscales`` entry of all its levels."""
    names = (["c"] if channels else []) + ["z", "y", "x"]
    _name_dimensions(level0, names)
    reduce = downsample_mean if method == "mean" else downsample_nearest
    lead = [1.0] if channels else []
    level, datasets = zarr.open_array(str(level0), mode="r"), []
    for index in itertools.count():
        factor = np.array([1.0, 2.0**index, 2.0**index])
        scale = np.array(space.scale) * factor
        # A mean of 2^k pixels sits at their centre; nearest keeps the first pixel's position.
        shift = np.array(space.translation)
        if method == "mean":
            shift = shift + (factor - 1) / 2 * np.array(space.scale)
        transforms = [{"type": "scale", "scale": lead + scale.tolist()}]
        if shift.any():
            transforms.append(
                {
                    "type": "translation",
                    "translation": [0.0] * len(lead) + shift.tolist(),
                }
            )
        datasets.append({"path": str(index), "coordinateTransformations": transforms})
        if max(level.shape[-2:]) <= PYRAMID_PLANE:
            break
        level = _next_level(level, group / str(index + 1), reduce, names)
    axes = [{"name": "c", "type": "channel"}] if channels else []
    axes += [
        {"name": a, "type": "space", **({"unit": u} if u else {})}
        for a, u in zip("zyx", space.unit, strict=True)
    ]
    return {"name": name, "axes": axes, "datasets": datasets, "type": method}


def _write_group(folder: Path, ome: dict[str, Any], attrs: dict[str, Any]) -> None:
    """The group metadata of ``folder`` (its arrays stay): ``ome`` metadata plus ``attrs``."""
    group = zarr.open_group(str(folder), mode="a", zarr_format=3)
    group.attrs.update({**attrs, "ome": {"version": VERSION, **ome}})


def _stem(path: Path) -> str:
    return path.name.removesuffix(".zarr").removesuffix(".ome")


def _omero(names: Sequence[str], dtype: np.dtype) -> dict[str, Any]:
    """Display settings: channel names, the probability range, the cell channel shown in green."""
    top = float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0
    window = {"min": 0.0, "max": top, "start": 0.0, "end": top}
    colours = {"background": "808080", "cell": "00FF00"}
    return {
        "channels": [
            {
                "label": n,
                "color": colours.get(n, "FFFFFF"),
                "active": n != "background",
                "window": window,
            }
            for n in names
        ]
    }


def write_image(output: str | Path, level0: str | Path, space: Space) -> Path:
    """Make ``output`` an OME-Zarr 0.5 image of the complete (classes, z, y, x) probabilities
    ``level0``, which becomes its full-resolution level ``0`` unchanged (moved, last).

    Adds the 2x2-mean pyramid, ``multiscales`` (axes c, z, y, x; ``space``), ``omero`` channel
    names (the array's ``channels`` attribute, else :func:`class_names`) and the array's
    attributes (provenance) on the group; nothing partial at ``output``.
    """
    output, level0 = Path(output), Path(level0)
    array = zarr.open_array(str(level0), mode="r")
    with atomic_path(output) as tmp:
        tmp.mkdir()
        multiscale = _multiscale(tmp, level0, space, True, "mean", _stem(output))
        names = array.attrs.get("channels") or class_names(array.shape[0])  # affinities: named
        omero = _omero(names, array.dtype)
        _write_group(tmp, {"multiscales": [multiscale], "omero": omero}, array.attrs.asdict())
        level0.rename(tmp / "0")
    return output


LABEL_NAME = "cells"
"""Name of the label image that :func:`labelled_image` writes inside its image."""


@contextlib.contextmanager
def label_image(output: str | Path, source: ImageArray) -> Iterator[Path]:
    """Yield the path to write the full-resolution (z, y, x) labels of ``source`` at; then make
    ``output`` an OME-Zarr 0.5 label image of them (nothing partial at ``output`` meanwhile).

    Adds the pyramid (nearest: labels keep their values), ``multiscales`` (axes z, y, x in
    ``source``'s space) and ``image-label`` with the relative path to ``source``'s OME-Zarr image
    (napari opens both). As ``IMAGE/labels/NAME`` the label is also listed in IMAGE's labels.
    """
    output = Path(output)
    with atomic_path(output) as tmp:
        yield tmp / "0"
        image = None
        if source.group is not None:
            image = os.path.relpath(Path(source.group).resolve(), output.resolve())
        _label_group(tmp, source.space, _stem(output), image)
    labels, image_json = output.parent, output.parent.parent / "zarr.json"
    if labels.name == "labels" and image_json.is_file():
        if "multiscales" in _ome(json.loads(image_json.read_text()).get("attributes", {})):
            _list_label(labels, output.name)


@contextlib.contextmanager
def labelled_image(output: str | Path, image: ImageArray) -> Iterator[Path]:
    """Yield the path to write full-resolution (z, y, x) labels of ``image`` at; then make
    ``output`` an OME-Zarr 0.5 image of ``image`` (copied slice by slice, 2x2-mean pyramid)
    holding the labels, the NGFF way, as ``output/labels/``:data:`LABEL_NAME`: napari (and any
    NGFF viewer) opens the image with its labels from either path, reading only. Nothing partial
    at ``output`` meanwhile."""
    output = Path(output)
    with atomic_path(output) as tmp:
        tmp.mkdir()
        copy = zarr.create_array(
            str(tmp / "0"),
            shape=image.shape,
            chunks=(1, *slice_chunks(image.shape)[1:]),
            dtype=image.dtype,
            fill_value=0,
            config=STORE_EVERY_CHUNK,
        )
        for z in range(image.shape[0]):
            copy[z] = image[z]
        multiscale = _multiscale(tmp, tmp / "0", image.space, False, "mean", _stem(output))
        _write_group(tmp, {"multiscales": [multiscale], "omero": _omero(["raw"], image.dtype)}, {})
        label = tmp / "labels" / LABEL_NAME
        label.parent.mkdir()
        yield label / "0"
        _label_group(label, image.space, LABEL_NAME, "../..")
        _list_label(label.parent, LABEL_NAME)


def _label_group(folder: Path, space: Space, name: str, image: str | None) -> None:
    """Pyramid and group metadata of the label image in ``folder`` (level ``0`` written);
    ``image``: the relative path to the image it labels."""
    multiscale = _multiscale(folder, folder / "0", space, False, "nearest", name)
    label = {"source": {"image": Path(image).as_posix()}} if image else {}
    attrs = zarr.open_array(str(folder / "0"), mode="r").attrs.asdict()
    _write_group(folder, {"multiscales": [multiscale], "image-label": label}, attrs)


def _list_label(labels: Path, name: str) -> None:
    """List ``name`` in the ``labels`` group of an image."""
    group = zarr.open_group(str(labels), mode="a", zarr_format=3)
    listed = _ome(group.attrs.asdict()).get("labels", [])
    group.attrs["ome"] = {"version": VERSION, "labels": sorted({*listed, name})}


def open_labels(path: str | Path) -> ImageArray:
    """A label image as an :class:`ImageArray` (z, y, x): ``path`` itself, or of an OME-Zarr
    image holding labels (:func:`labelled_image`) its label :data:`LABEL_NAME` (or its only
    one)."""
    path = Path(path)
    listed = []
    if (path / "labels" / "zarr.json").is_file():
        listed = _ome(zarr.open_group(str(path / "labels"), mode="r").attrs.asdict()).get(
            "labels", []
        )
    if listed:
        if LABEL_NAME not in listed and len(listed) > 1:
            raise ValueError(f"{path} holds labels {listed}: give the one to read")
        path = path / "labels" / (LABEL_NAME if LABEL_NAME in listed else listed[0])
    return open_image(path)


# --- TIFF out ------------------------------------------------------------------------------------


def cell_probability(predictions: zarr.Array | ImageArray, z: int) -> np.ndarray:
    """Slice ``z`` of channel 1 (cell) of a (classes, z, y, x) prediction, as float32 in [0, 1]
    (integer predictions are scaled by their dtype's maximum)."""
    return cell_region(predictions, (z, 0, 0), (z + 1, *predictions.shape[2:]))[0]


def cell_region(predictions: zarr.Array, lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
    """Channel 1 (cell) of a (classes, z, y, x) prediction over the (z, y, x) box [lo, hi), as
    float32 in [0, 1] (integer predictions are scaled by their dtype's maximum). Of an affinity
    map (``offsets`` in its attributes) the mean of its nearest-neighbour channels: the
    probability that a pixel is in one instance with its neighbours, low on membranes and
    background, the map that pixel measures, the other methods and the report read."""
    offsets = affinity_offsets(predictions)
    if offsets is None:
        return scaled_probability(predictions[(1, *map(slice, lo, hi))])
    nearest = [k for k, o in enumerate(offsets) if is_attractive(o)]
    box = tuple(map(slice, lo, hi))
    return np.mean(
        [scaled_probability(predictions[(k, *box)]) for k in nearest], axis=0, dtype=np.float32
    )


def scaled_probability(prob: Any) -> np.ndarray:
    """Stored probabilities as float32 in [0, 1] (integers scaled by their dtype's maximum)."""
    prob = np.asarray(prob)
    if np.issubdtype(prob.dtype, np.integer):
        return prob.astype(np.float32) / np.iinfo(prob.dtype).max
    return prob.astype(np.float32)


def affinity_offsets(predictions: Any) -> list[list[int]] | None:
    """The offsets of an affinity map (its ``offsets`` attribute), None for class probabilities."""
    offsets = getattr(predictions, "attrs", {}).get("offsets")  # plain arrays: probabilities
    return None if offsets is None else [list(map(int, o)) for o in offsets]


def affinity_slice(predictions: Any, z: int) -> np.ndarray:
    """Slice ``z`` of every channel of a (K, z, y, x) affinity map, float32 in [0, 1]."""
    return scaled_probability(predictions[:, z])


def _imagej_dtype(image: ImageArray) -> np.dtype:
    """The ImageJ pixel type (uint8, uint16, float32) that holds ``image`` exactly."""
    if image.dtype in (np.uint8, np.uint16, np.float32):
        return image.dtype
    if np.issubdtype(image.dtype, np.floating):
        return np.dtype(np.float32)
    low = min(int(image[:, z].min()) for z in range(image.shape[1]))
    high = max(int(image[:, z].max()) for z in range(image.shape[1]))
    if low >= 0 and high < 2**16:
        return np.dtype(np.uint16)
    if max(-low, high) <= 2**24:  # float32 holds every integer up to 2^24
        return np.dtype(np.float32)
    raise ValueError(f"{image.path}: labels up to {high} do not fit an ImageJ image (2^24)")


@writes_output("output", "source")
def write_tiff(
    source: str | Path, output: str | Path, level: int = 0, overwrite: bool = True
) -> Path:
    """Export an image (OME-Zarr image or label image, plain Zarr array, TIFF) as an ImageJ
    hyperstack TIFF (axes ZCYX, pixel size and z spacing with their unit) for Fiji.

    Written page by page (memory: one (y, x) plane); ``level`` picks a multiscale level.
    Probabilities become float32 (uint8 stays), labels uint16 or float32, whichever holds them.
    Every plane is labelled with its channel's name (Fiji shows it): the classes, the affinity
    channels or ``labels``.
    """
    image = open_image(source, "czyx", level)
    classes, n_slices, height, width = image.shape
    dtype = _imagej_dtype(image)
    (spacing, size_y, size_x), unit = image.space.scale, image.space.unit[-1]
    names = image.attrs.get("channels") or (["labels"] if classes == 1 else class_names(classes))
    metadata: dict[str, Any] = {"axes": "ZCYX", "spacing": spacing, "Labels": names * n_slices}
    if unit:
        metadata["unit"] = _IMAGEJ_UNITS.get(unit, unit)
    pages = (image[c, z].astype(dtype) for z in range(n_slices) for c in range(classes))
    with atomic_path(output) as tmp:
        tifffile.imwrite(
            tmp,
            pages,
            shape=(n_slices, classes, height, width),
            dtype=dtype,
            imagej=True,
            resolution=(1 / size_x, 1 / size_y),
            metadata=metadata,
            software=PROVENANCE,
        )
    return Path(output)
