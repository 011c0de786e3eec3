"""The paper's datasets (Sec. 4): registry, verified download, safe extraction, conversion to Zarr.

ISBI 2012 EM segmentation (ssTEM, 30 labelled slices) and the Cell Tracking Challenge 2D sets
PhC-C2DH-U373 and DIC-C2DH-HeLa. A download streams to ``<name>.part``, resumes with an HTTP Range
request after an interruption, retries transient failures with exponential backoff and is renamed
to its final name only once its sha256 is verified. Conversion writes the Zarr group of the data
contract (DEVELOPERS.md) under a temporary name and renames it when complete.
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import stat
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import zarr
from scipy import ndimage
from skimage import measure
from tqdm import tqdm

from unetpipe.config import choices
from unetpipe.io import (
    atomic_path,
    make_splits,
    read_stack,
    sha256sum,
    write_array,
    writes_output,
)
from unetpipe.metrics import components

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dataset:
    """A downloadable dataset: where it lives, the sha256 of the archive (None: unpublished) and
    its bioimage.io tags (modality, content) for an exported model."""

    name: str
    url: str
    sha256: str | None
    description: str
    tags: tuple[str, ...]


CTC = "https://data.celltrackingchallenge.net/training-datasets"
REGISTRY: dict[str, Dataset] = {
    "isbi2012": Dataset(
        "isbi2012",
        "https://downloads.imagej.net/ISBI-2012-challenge.zip",
        None,
        "ISBI 2012 EM segmentation challenge: train-volume.tif, train-labels.tif, test-volume.tif",
        ("electron-microscopy", "cell-membrane"),
    ),
    "phc-c2dh-u373": Dataset(
        "phc-c2dh-u373",
        f"{CTC}/PhC-C2DH-U373.zip",
        "b18185c18fce54e8eeb93e4bbb9b201d757add9409bbf2283b8114185a11bc9e",
        "Cell Tracking Challenge: glioblastoma-astrocytoma U373 cells, phase contrast",
        ("transmission-light-microscopy", "cells"),
    ),
    "dic-c2dh-hela": Dataset(
        "dic-c2dh-hela",
        f"{CTC}/DIC-C2DH-HeLa.zip",
        "832fed2d05bb7488cf9c51a2994b75f8f3f53b3c3098856211f2d39023c34e1a",
        "Cell Tracking Challenge: HeLa cells, differential interference contrast",
        ("transmission-light-microscopy", "cells"),
    ),
}
TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}
TRANSIENT_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)


def get_dataset(name: str, url: str | None = None, sha256: str | None = None) -> Dataset:
    """The registry entry ``name``, with the URL (a mirror) and/or expected sha256 overridden."""
    if name not in REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(REGISTRY))}")
    if sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise ValueError(f"sha256 must be 64 hexadecimal digits, got {sha256!r}")
    entry = REGISTRY[name]
    return replace(entry, url=url or entry.url, sha256=sha256.lower() if sha256 else entry.sha256)


def provenance(source: str, url: str | None = None, sha256: str | None = None) -> dict[str, Any]:
    """What the Zarr group records about a registry download: URL and expected sha256."""
    if source not in REGISTRY:
        return {}
    entry = get_dataset(source, url, sha256)
    return {"url": entry.url, "expected_sha256": entry.sha256}


def _validator(headers: Any) -> str | None:
    """What identifies this version of the remote file for ``If-Range``: a strong ETag, else the
    Last-Modified date (a weak ETag may not be used for ranges)."""
    etag = headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return headers.get("Last-Modified")


def _start_afresh(part: Path, why: str) -> None:
    for path in (part, _part_info(part)):
        path.unlink(missing_ok=True)
    log.info("%s: %s; downloading from the start", part, why)


def _part_info(part: Path) -> Path:
    """Beside ``<name>.part``: the URL and the validator of the file the part is a piece of."""
    return part.with_name(part.name + ".json")


def _fetch(url: str, part: Path, timeout: float, chunk_size: int, progress: bool) -> None:
    """Append the rest of ``url`` to ``part``, asking for the missing bytes with a Range header.

    A part is resumed only when it is known to be a piece of this very file: same URL and a
    validator (ETag or Last-Modified) sent as ``If-Range``, so that a server holding a newer
    version sends it whole. A part of unknown origin, one the server cannot extend (416) or one
    longer than the file is discarded and the file fetched from the start.
    """
    info = json.loads(_part_info(part).read_text()) if _part_info(part).is_file() else {}
    if part.exists() and not (info.get("url") == url and info.get("validator")):
        _start_afresh(part, "a partial download of unknown origin")
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-", "If-Range": info["validator"]} if offset else {}
    try:
        response = urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=timeout
        )
    except urllib.error.HTTPError as err:
        if err.code != 416 or not offset:
            raise
        _start_afresh(part, "the server cannot extend the partial download (HTTP 416)")
        return _fetch(url, part, timeout, chunk_size, progress)
    with response:
        resumed = offset and response.status == 206
        if offset and not resumed:
            log.info("%s: the server sent the whole file (changed, or no ranges)", url)
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        if not offset:
            info = {"url": url, "validator": _validator(response.headers), "total": total}
            _part_info(part).write_text(json.dumps(info))
        with (
            open(part, "ab" if offset else "wb") as f,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                desc=part.name,
                disable=not progress,
            ) as bar,
        ):
            while chunk := response.read(chunk_size):
                f.write(chunk)
                bar.update(len(chunk))
    got = part.stat().st_size
    if total is not None and got < total:
        raise ConnectionError(f"{url}: connection closed after {got} of {total} bytes")
    if total is not None and got > total:
        _start_afresh(part, f"{got} bytes where the file has {total}")
        raise ConnectionError(f"{url}: the partial download was longer than the file")


def download(
    url: str,
    dest: str | Path,
    sha256: str | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
    chunk_size: int = 1 << 20,
    progress: bool = True,
) -> str:
    """Download ``url`` (http or https) to ``dest``, verified against ``sha256``; return the
    file's sha256.

    Bytes go to ``dest.part``, which survives a failure so the next call resumes it (see
    :func:`_fetch`). Transient errors (connection, timeout, HTTP 5xx/429) are retried ``retries``
    times after ``backoff * 2**attempt`` seconds. ``dest`` appears only when complete and
    verified. With ``sha256=None`` (the ISBI mirror publishes none) the length the server
    announced must be met, and the sum seen is recorded in ``dest.sha256``: later calls verify
    ``dest`` against it.
    """
    scheme = urllib.parse.urlparse(url).scheme
    if scheme not in ("http", "https"):
        raise ValueError(f"{url}: only http and https URLs can be downloaded, not {scheme!r}")
    dest = Path(dest)
    recorded = dest.with_name(dest.name + ".sha256")
    expected = sha256.lower() if sha256 else None
    if dest.exists():
        actual = sha256sum(dest)
        known = expected or (recorded.read_text().split()[0] if recorded.is_file() else None)
        if known in (None, actual):
            log.info("%s already present (sha256 %s)", dest, actual)
            return actual
        log.warning("%s has sha256 %s, expected %s: downloading again", dest, actual, known)
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    log.info("downloading %s to %s", url, dest)
    for attempt in range(retries + 1):
        try:
            _fetch(url, part, timeout, chunk_size, progress)
            break
        except urllib.error.HTTPError as err:
            if err.code in (404, 410):
                raise FileNotFoundError(
                    f"{url}: HTTP {err.code} {err.reason}; the file is not there. Point to a "
                    "mirror with --url or config dataset.url"
                ) from err
            if err.code not in TRANSIENT_HTTP or attempt == retries:
                raise RuntimeError(f"{url}: HTTP {err.code} {err.reason}") from err
            error: BaseException = err
        except TRANSIENT_ERRORS as err:
            if attempt == retries:
                raise RuntimeError(
                    f"{url}: download failed after {retries + 1} attempts ({err}); "
                    f"{part} keeps the bytes received, run again to resume"
                ) from err
            error = err
        delay = backoff * 2**attempt
        log.warning("%s: %s; retrying in %.1f s", url, error, delay)
        time.sleep(delay)
    actual = sha256sum(part)
    if expected is None:
        if json.loads(_part_info(part).read_text()).get("total") is None:
            log.warning("%s: the server announced no length: completeness not checked", url)
        log.warning("%s: no published checksum; recorded sha256 %s in %s", url, actual, recorded)
    elif actual != expected:
        part.unlink()
        _part_info(part).unlink(missing_ok=True)
        raise ValueError(
            f"{url}: checksum mismatch: expected sha256 {expected}, got {actual}. If the provider "
            f"repackaged the file and you trust it, pass --sha256 {actual} (or set config "
            "dataset.sha256)"
        )
    part.rename(dest)
    _part_info(part).unlink(missing_ok=True)
    if expected is None:
        recorded.write_text(f"{actual}  {dest.name}\n")
    log.info("%s: sha256 %s%s", dest, actual, " verified" if expected else "")
    return actual


def archive_path(root: str | Path, name: str) -> Path:
    """Where dataset ``name`` is downloaded to: ``<root>/<name>.zip``."""
    return Path(root) / f"{name}.zip"


def download_dataset(
    name: str, root: str | Path, url: str | None = None, sha256: str | None = None, **kwargs: Any
) -> Path:
    """Download registry dataset ``name`` to :func:`archive_path` (``kwargs``: :func:`download`)."""
    entry = get_dataset(name, url, sha256)
    dest = archive_path(root, name)
    download(entry.url, dest, entry.sha256, **kwargs)
    return dest


def _safe_member(info: zipfile.ZipInfo) -> PurePosixPath:
    """The member's relative path; ValueError for absolute paths, ``..`` and symlinks."""
    name = info.filename.replace("\\", "/")
    path = PurePosixPath(name)
    if path.is_absolute() or re.match(r"^[A-Za-z]:", name):
        raise ValueError(f"archive member {info.filename!r} has an absolute path: refused")
    if ".." in path.parts:
        raise ValueError(f"archive member {info.filename!r} leaves the target folder: refused")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise ValueError(f"archive member {info.filename!r} is a symbolic link: refused")
    return path


def extract(archive: str | Path, dest: str | Path) -> Path:
    """Extract a zip archive into the folder ``dest`` (created atomically), every member checked
    first: absolute paths, ``..`` traversal and symbolic links are refused."""
    archive = Path(archive)
    if not zipfile.is_zipfile(archive):
        raise ValueError(f"{archive}: not a zip archive")
    with zipfile.ZipFile(archive) as zf:
        members = [(info, _safe_member(info)) for info in zf.infolist()]
        with atomic_path(dest) as tmp:
            tmp.mkdir()
            for info, path in members:
                target = tmp.joinpath(*path.parts)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    while chunk := src.read(1 << 20):
                        out.write(chunk)
    return Path(dest)


def binary_to_instances(labels: np.ndarray) -> np.ndarray:
    """ISBI-style binary labels (cell > 0, membrane 0) to uint32 instances, ids unique in the stack.

    Instances are the 4-connected components of the cell class in each slice. 4-connectivity is
    the dual of the 8-connected one-pixel membranes of ISBI 2012: a diagonal membrane line
    separates the cells on its two sides, which 8-connectivity would join through its corners.
    """
    return components(np.asarray(labels) > 0).astype(np.uint32)


LabelConvention = str | dict[str, Any] | None
"""``dataset.labels``: None (unset), ``"instances"``, ``{"kind": "binary", "foreground": V}`` or
``{"kind": "binary", "threshold": T}`` (config.schema.yaml)."""

SETTING = (
    "set dataset.labels (convert --labels): instances, {kind: binary, foreground: V} or "
    "{kind: binary, threshold: T}"
)


def _values(labels: np.ndarray, shown: int = 6) -> str:
    """The values of a label stack with their pixel counts, e.g. ``0 (900 px), 255 (124 px)``."""
    values, counts = np.unique(labels, return_counts=True)
    text = ", ".join(f"{v:g} ({c} px)" for v, c in zip(values[:shown], counts[:shown], strict=True))
    return text + (f" and {values.size - shown} more" if values.size > shown else "")


def _one_region_each(labels: np.ndarray) -> bool:
    """Whether every value > 0 of every slice is one connected region, as instance ids are
    (a binary, anti-aliased or class mask repeats a value over many separate regions)."""
    for plane in labels:
        regions = measure.label(plane, background=0, connectivity=2).max()
        if regions != np.unique(plane[plane > 0]).size:
            return False
    return True


def _as_instances(
    labels: np.ndarray, where: Path, convention: LabelConvention = None
) -> tuple[np.ndarray, str]:
    """uint32 instances of a label stack under the declared ``convention`` (``dataset.labels``):
    binary masks become the 4-connected components of their cells (:func:`binary_to_instances`),
    instance ids stay. Unset: 0 and one other value is binary, one connected region per value
    and slice is instances; anything else, and values the convention does not allow, is a
    ValueError naming the values found and the setting to choose."""
    values = np.unique(labels)
    integers = values.min() >= 0 and np.all(values == np.round(values))
    if convention is None:
        if values.size <= 2 and values.min() == 0:
            foreground = float(values.max())
            return binary_to_instances(labels == foreground), (
                f"binary (0 and {foreground:g}, not declared): 4-connected components of the cells"
            )
        if integers and _one_region_each(labels):
            return labels.astype(np.uint32), "instance ids as they are (not declared)"
        raise ValueError(
            f"{where}: ambiguous labels with values {_values(labels)}: neither 0 and one other "
            f"value (binary) nor one region per value (instances); {SETTING}"
        )
    if convention == "instances":
        if not integers:
            raise ValueError(
                f"{where}: dataset.labels is instances, but the values {_values(labels)} are not "
                "non-negative integer ids"
            )
        return labels.astype(np.uint32), "instance ids as they are (dataset.labels: instances)"
    if "threshold" in convention:
        threshold = float(convention["threshold"])
        cells = labels >= threshold
        if cells.all() or not cells.any():
            raise ValueError(
                f"{where}: dataset.labels threshold {threshold:g} puts every pixel on one side "
                f"(values {_values(labels)}); choose a threshold between the background and the "
                "cell values"
            )
        return binary_to_instances(cells), (
            f"binary, cells at least {threshold:g} (dataset.labels): 4-connected components"
        )
    foreground = float(convention["foreground"])
    others = values[values != foreground]
    if foreground not in values or others.size > 1:
        raise ValueError(
            f"{where}: dataset.labels is binary with foreground {foreground:g}, but the values "
            f"are {_values(labels)}: a binary mask has the foreground and one background value; "
            "clean the labels or set dataset.labels {kind: binary, threshold: T} (or instances)"
        )
    return binary_to_instances(labels == foreground), (
        f"binary, cells = {foreground:g} (dataset.labels): 4-connected components"
    )


def instance_counts(labels: np.ndarray) -> list[int]:
    """Instances (distinct ids > 0) in each slice of a (z, y, x) label stack."""
    return [int(np.unique(plane[plane > 0]).size) for plane in labels]


def _find(root: Path, pattern: str) -> list[Path]:
    return sorted(p for p in root.rglob(pattern) if not p.name.startswith("."))


def _read_isbi(
    root: Path, digests: dict[str, str], labels: LabelConvention = None
) -> dict[str, Any] | None:
    """The ISBI layout: ``train-volume.tif``/``train-labels.tif`` (+ ``test-volume.tif``), or PNG
    slice folders ``train/image``, ``train/label`` (+ ``test``) as in zhixuhao/unet."""
    volumes = _find(root, "train-volume.tif")
    if volumes:
        folder = volumes[0].parent
        raw_path, label_path, test_path = (
            folder / f"{n}.tif" for n in ("train-volume", "train-labels", "test-volume")
        )
    else:
        images = [p for p in _find(root, "image") if p.is_dir() and p.parent.name == "train"]
        if not images:
            return None
        folder = images[0].parent.parent
        raw_path, label_path, test_path = images[0], images[0].parent / "label", folder / "test"
    if not label_path.exists():
        raise FileNotFoundError(f"{label_path}: the labels of {raw_path} are missing")
    raw, stack = read_stack(raw_path, digests), read_stack(label_path, digests)
    if raw.shape != stack.shape:
        raise ValueError(f"{raw_path} {raw.shape} and {label_path} {stack.shape} differ in shape")
    instances, how = _as_instances(stack, label_path, labels)
    data = {"raw": raw, "labels": instances, "labels_from": how, "layout": "isbi"}
    if test_path.exists():
        data["test"] = read_stack(test_path, digests)
    return data


UNLABELLED = choices("dataset", "unlabelled")
UNLABELLED_MARGIN = 2
"""Pixels by which an unlabelled cell's ignored region is grown (silver outlines are not exact)."""


def _frame(path: Path) -> int:
    return int(re.findall(r"\d+", path.stem)[-1])


def _masks(folder: Path) -> dict[int, Path]:
    return {_frame(p): p for p in folder.glob("man_seg*.tif")} if folder.is_dir() else {}


def _read_mask(path: Path, digests: dict[str, str]) -> np.ndarray:
    mask = read_stack(path, digests)
    if mask.shape[0] != 1 or not np.issubdtype(mask.dtype, np.integer) or mask.min() < 0:
        raise ValueError(f"{path}: expected one 2D mask of non-negative instance ids")
    return mask[0].astype(np.uint32)


def unlabelled_cells(gold: np.ndarray, silver: np.ndarray) -> np.ndarray:
    """Where gold truth is partial: the cells of the silver truth that the gold truth leaves
    unlabelled (less than half of the cell covered by gold cells), grown by
    ``UNLABELLED_MARGIN`` px, except the gold cells themselves. A boolean (y, x) mask."""
    covered = np.bincount(silver.ravel(), weights=(gold > 0).ravel(), minlength=silver.max() + 1)
    sizes = np.bincount(silver.ravel(), minlength=silver.max() + 1)
    missed = (covered < 0.5 * sizes) & (sizes > 0)
    missed[0] = False
    region = ndimage.binary_dilation(missed[silver], iterations=UNLABELLED_MARGIN)
    return region & (gold == 0)


def _read_ctc(
    root: Path,
    digests: dict[str, str],
    sequences: Sequence[str] = (),
    silver_truth: bool = False,
    unlabelled: str = "ignore",
) -> dict[str, Any] | None:
    """The Cell Tracking Challenge layout: ``<seq>/tNNN.tif`` frames, gold-truth instance masks
    ``<seq>_GT/SEG/man_segNNN.tif`` and silver truth ``<seq>_ST/SEG/man_segNNN.tif``.

    Frames with gold truth become labelled slices (with ``silver_truth`` also the frames that
    have silver truth only), the others ``test``. Gold truth may be partial (a cell left
    unlabelled is not background): with ``unlabelled="ignore"`` the unlabelled cells that the
    silver truth shows (:func:`unlabelled_cells`) are 0 in the ``mask`` array, so that they are
    neither taught as background nor scored. ``sequences`` restricts the conversion to these.
    """
    if unlabelled not in UNLABELLED:
        raise ValueError(f"dataset.unlabelled must be one of {UNLABELLED}, got {unlabelled!r}")
    found = {}
    for truth in ("GT", "ST"):
        for seg in _find(root, "SEG"):
            if seg.is_dir() and seg.parent.name.endswith(f"_{truth}"):
                found.setdefault(seg.parent.name[: -len(truth) - 1], seg.parent.parent)
    if not found:
        return None
    wanted = [str(s) for s in sequences] or sorted(found)
    absent = sorted(set(wanted) - set(found))
    if absent:
        raise FileNotFoundError(f"{root}: no sequences {absent}; found {sorted(found)}")
    raw, labels, known, test, frames = [], [], [], [], []
    for sequence in wanted:
        base = found[sequence]
        images = {_frame(p): p for p in (base / sequence).glob("t*.tif")}
        gold = _masks(base / f"{sequence}_GT" / "SEG")
        silver = _masks(base / f"{sequence}_ST" / "SEG")
        missing = sorted(set(gold) - set(images))
        if missing:
            raise FileNotFoundError(f"{base / sequence}: no raw frames {missing} for its masks")
        for frame in sorted(images):
            image = read_stack(images[frame], digests)[0]
            truth = (
                "gold" if frame in gold else "silver" if silver_truth and frame in silver else None
            )
            if truth is None:
                test.append(image)
                continue
            mask = _read_mask((gold if truth == "gold" else silver)[frame], digests)
            if mask.shape != image.shape:
                raise ValueError(
                    f"{images[frame]}: frame {image.shape} and mask {mask.shape} differ"
                )
            unknown = np.zeros(mask.shape, bool)
            if truth == "gold" and frame in silver and unlabelled == "ignore":
                unknown = unlabelled_cells(mask, _read_mask(silver[frame], digests))
            raw.append(image)
            labels.append(mask)
            known.append(~unknown)
            frames.append({"sequence": sequence, "frame": frame, "truth": truth})
    if not raw:
        raise ValueError(f"{root}: no frame of sequences {wanted} has gold or silver truth")
    shapes = {(f"{f['sequence']}", a.shape) for f, a in zip(frames, raw, strict=True)}
    if len({shape for _, shape in shapes} | {a.shape for a in test}) != 1:
        raise ValueError(
            f"{root}: frames differ in shape {sorted(shapes)}; convert the sequences one at a "
            "time (dataset.sequences)"
        )
    data = {
        "raw": np.stack(raw),
        "labels": np.stack(labels),
        "labels_from": "man_seg instance masks as they are (gold truth"
        + (", silver truth where gold is absent)" if silver_truth else ")"),
        "frames": frames,
        "layout": "ctc",
    }
    ignored = int(np.count_nonzero(~np.stack(known)))
    if ignored:
        data["mask"] = np.stack(known).astype(np.uint8)
        log.info("%d pixels of unlabelled cells in the gold truth are ignored", ignored)
    if test:
        data["test"] = np.stack(test)
    return data


def read_dataset(
    folder: str | Path,
    digests: dict[str, str] | None = None,
    labels: LabelConvention = None,
    **ctc: Any,
) -> dict[str, Any]:
    """Images and uint32 instance labels from a folder in the ISBI (TIFF or PNG) or CTC layout
    (``labels``: what the ISBI layout's label values mean, ``dataset.labels``; ``ctc``: the
    options of the Cell Tracking Challenge layout, see :func:`_read_ctc`, whose masks are
    instance ids); ``digests`` collects the sha256 of every file read."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    digests = {} if digests is None else digests
    data = _read_isbi(folder, digests, labels) or _read_ctc(folder, digests, **ctc)
    if data and data["layout"] == "ctc" and labels not in (None, "instances"):
        raise ValueError(
            f"{folder}: Cell Tracking Challenge masks are instance ids; dataset.labels "
            f"{labels} does not apply: leave it unset or set it to instances"
        )
    if data is None:
        raise ValueError(
            f"{folder}: no dataset found. Expected train-volume.tif + train-labels.tif, or PNG "
            "folders train/image + train/label, or Cell Tracking Challenge <seq>/tNNN.tif + "
            "<seq>_GT/SEG/man_segNNN.tif"
        )
    return data


@writes_output("out", "source")
def convert(
    source: str | Path,
    out: str | Path,
    dataset: str,
    val_slices: list[int] | tuple[int, ...] = (),
    voxel_size: list[float] | tuple[float, ...] = (1.0, 1.0, 1.0),
    provenance: dict[str, Any] | None = None,
    overwrite: bool = True,
    labels: LabelConvention = None,
    **ctc: Any,
) -> Path:
    """Convert a downloaded zip or a local folder into the dataset's Zarr group ``out``.

    Writes ``raw``, ``labels`` (uint32 instances) and, when present, ``test`` and ``mask`` (1 where
    the truth is known); group attributes ``dataset``, ``source`` (``provenance``, the archive's
    sha256 or the sha256 of every file read from a folder), ``voxel_size``, ``splits`` and, for
    the Cell Tracking Challenge, ``frames`` (sequence, frame and truth of each slice; ``ctc``:
    the options of :func:`_read_ctc`). ``labels`` (``dataset.labels``) says what the values of
    an ISBI-layout label stack mean (:func:`_as_instances`; an ambiguous stack is refused); the
    instances per slice are logged. The default validation slices are the last 20% of those
    with gold truth. ``out`` must not be, contain or lie inside ``source``.
    """
    source, out = Path(source), Path(out)
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such archive or folder")
    info = dict(provenance or {})
    digests: dict[str, str] = {}
    if source.is_dir():
        info["local_dir"] = str(source.resolve())
        data = read_dataset(source, digests, labels, **ctc)
        info["files"] = {
            str(Path(path).relative_to(source)): digest for path, digest in sorted(digests.items())
        }
    else:
        info.update(archive=source.name, sha256=sha256sum(source))
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            data = read_dataset(extract(source, Path(tmp) / "extracted"), digests, labels, **ctc)
    gold = [i for i, f in enumerate(data.get("frames", [])) if f["truth"] == "gold"]
    attrs: dict[str, Any] = {
        "dataset": dataset,
        "source": info,
        "voxel_size": [float(v) for v in voxel_size],
        "splits": make_splits(len(data["raw"]), val_slices, gold if "frames" in data else None),
    }
    if "frames" in data:
        attrs["frames"] = data["frames"]
    with atomic_path(out) as tmp:
        group = zarr.open_group(tmp, mode="w")
        group.attrs.update(attrs)
        write_array(group, "raw", data["raw"], {"layout": data["layout"]})
        label_attrs = {"layout": data["layout"], "from": data["labels_from"], "convention": labels}
        write_array(group, "labels", data["labels"], label_attrs)
        for name in ("mask", "test"):
            if name in data:
                write_array(group, name, data[name], {"layout": data["layout"]})
    log.info("%s: %d labelled slices %s", out, len(data["raw"]), attrs["splits"])
    log.info(
        "labels: %s; instances per slice: %s", data["labels_from"], instance_counts(data["labels"])
    )
    return out
