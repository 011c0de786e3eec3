"""Shared fixtures."""

from __future__ import annotations

import argparse
import hashlib
import re
import runpy
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import yaml
import zarr
from scipy import ndimage
from skimage.segmentation import find_boundaries

from unetpipe.config import rule_params

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"


@pytest.fixture(autouse=True)
def measured_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Each test its own cache of measured choices (``unetpipe.measured``), in this process and
    in the processes it starts: none reads or writes the user's ``~/.cache``."""
    folder = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("UNETPIPE_CACHE_DIR", str(folder))
    monkeypatch.setattr("unetpipe.measured._CHOSEN", {})
    return folder


@pytest.fixture
def shared_dir() -> Path:
    """The shared folder beside the repository (real ISBI 2012 data); skips when absent."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent")
    return SHARED.resolve()


@pytest.fixture
def isbi_dir(shared_dir: Path) -> Path:
    """The real ISBI 2012 data (``shared/data/isbi2012``); skips when absent."""
    folder = shared_dir / "data" / "isbi2012"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    return folder


class Handler(BaseHTTPRequestHandler):
    """Serves ``server.files`` with a strong ETag (its sha256); honours ``Range: bytes=N-`` and
    ``If-Range`` (a range only of the same version, else the whole file); ``server.cut[path] = n``
    sends only n bytes of the next response and closes; ``server.fail[path] = k`` answers 503 k
    times; ``server.no_length`` drops the Content-Length header."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        server.if_range.append(self.headers.get("If-Range"))
        if server.fail.get(self.path, 0) > 0:
            server.fail[self.path] -= 1
            self.send_error(503)
            return
        data = server.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        etag = '"' + hashlib.sha256(data).hexdigest() + '"'
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if match and self.headers.get("If-Range") not in (None, etag):
            match = None  # another version: the whole file
        start = int(match[1]) if match else 0
        if start >= len(data) > 0 and match:
            self.send_error(416)
            return
        self.send_response(206 if match else 200)
        self.send_header("ETag", etag)
        if match:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        if not server.no_length:
            self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start : start + server.cut.pop(self.path, len(data))])

    def log_message(self, *args):
        pass


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    """A local HTTP server on 127.0.0.1 serving ``server.files`` (path -> bytes) at ``server.url``;
    ``server.requests`` lists the (path, Range header) of every request."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.files, httpd.cut, httpd.fail, httpd.requests, httpd.if_range = {}, {}, {}, [], []
    httpd.no_length = False
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def voronoi_cells(shape, rng, spacing=16):
    """EM-like instances: Voronoi cells of jittered grid points, 0 on 2-px membranes."""
    seeds = np.zeros(shape, bool)
    ys = np.arange(spacing // 2, shape[0], spacing)
    xs = np.arange(spacing // 2, shape[1], spacing)
    for y in ys:
        for x in xs:
            dy, dx = rng.integers(-spacing // 4, spacing // 4 + 1, 2)
            seeds[min(y + dy, shape[0] - 1), min(x + dx, shape[1] - 1)] = True
    markers = ndimage.label(seeds)[0]
    nearest = ndimage.distance_transform_edt(~seeds, return_indices=True)[1]
    cells = markers[tuple(nearest)].astype(np.uint32)
    cells[find_boundaries(cells, mode="thick")] = 0
    return cells


def make_run(tmp_path, dark_cells=False):
    """A tiny dataset, a 'network' prediction (blurred truth + noise), instances and a log."""
    from unetpipe.segment import segment_zarr

    rng = np.random.default_rng(1)
    labels = np.stack([voronoi_cells((64, 64), rng) for _ in range(5)])
    test_labels = np.stack([voronoi_cells((80, 80), rng) for _ in range(2)])

    def image(lab):
        bright = np.where(lab > 0, 170.0, 70.0)
        if dark_cells:
            bright = 240.0 - bright
        return np.clip(bright + rng.normal(0, 45, lab.shape), 0, 255).astype(np.uint8)

    data = zarr.open_group(str(tmp_path / "data.zarr"), mode="w")
    data.attrs.update(dataset="tiny", splits={"train": [0, 1, 2], "val": [3, 4]})
    for name, array in [
        ("raw", image(labels)),
        ("labels", labels),
        ("weights", 1.0 + 5.0 * (labels == 0).astype(np.float32)),
        ("test", image(test_labels)),
        ("test_labels", test_labels),
    ]:
        data.create_array(name, data=array, chunks=(1, *array.shape[1:]))
    paths = {}
    for name, lab in [("raw", labels), ("test", test_labels)]:
        cell = ndimage.gaussian_filter((lab > 0).astype(np.float32), (0, 0.7, 0.7))
        cell = np.clip(cell + rng.normal(0, 0.05, cell.shape), 0, 1)
        pred = np.stack([1 - cell, cell]).astype(np.float16)
        paths[name] = tmp_path / "predictions" / f"{name}.zarr"
        zarr.create_array(str(paths[name]), data=pred, chunks=(2, 1, *lab.shape[1:]))
        segment_zarr(paths[name], tmp_path / "segmentation" / f"{name}.zarr", {"min_size": 4})
    (tmp_path / "train").mkdir()
    rows = ["iteration,loss,lr,val_vrand,val_pixel_error"]
    for i in range(1, 201):
        val = f"{0.5 + i / 500:.3f},{0.3 - i / 1000:.3f}" if i % 50 == 0 else ","
        rows.append(f"{i},{1 / (1 + 0.05 * i) + 0.05 * rng.random():.4f},0.01,{val}")
    (tmp_path / "train" / "log.csv").write_text("\n".join(rows) + "\n")
    return data, paths


@pytest.fixture(scope="session")
def evaluated_run(tmp_path_factory):
    """``make_run`` evaluated by ``unetpipe.evaluate.evaluate_run``: (folder, group, report)."""
    from unetpipe.evaluate import evaluate_run

    tmp = tmp_path_factory.mktemp("run")
    data, predictions = make_run(tmp)
    segmentations = {k: tmp / "segmentation" / f"{k}.zarr" for k in predictions}
    report = evaluate_run(
        tmp / "data.zarr", predictions, segmentations, tmp / "metrics.json", {"thinning": True}
    )
    return tmp, data, report


def cli_options(parser: argparse.ArgumentParser):
    """(name, argparse action) of every option and argument of every sub-command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from ((f"{name} {opt}", a) for opt, a in cli_options(sub))
        elif not isinstance(action, argparse._HelpAction | argparse._VersionAction):
            yield "/".join(action.option_strings) or action.dest, action


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny nets gain nothing from threads; one keeps them fast on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_rule_script(
    stage: str,
    config: Mapping[str, Any],
    folder: Path,
    *,
    input: Mapping[str, Any],
    output: list[str] | Mapping[str, Any],
    params: Mapping[str, Any] | None = None,
    threads: int = 1,
    wildcards: Mapping[str, Any] | None = None,
) -> None:
    """Run ``workflow/scripts/<stage>.py`` as its rule does, with a stand-in for the ``snakemake``
    object: ``config`` (validated), the rule's ``params`` (``cfg``: the result settings of the
    config section named like the stage, as ``section()`` gives them; ``split``: ``{}``, the
    group's own, unless given) and the log ``folder/<stage>.log``."""
    script = Path(__file__).resolve().parents[1] / "workflow" / "scripts" / f"{stage}.py"
    params = {"cfg": rule_params(stage, config[stage]), "split": {}, **(params or {})}
    snakemake = SimpleNamespace(
        input=SimpleNamespace(
            **{k: v if isinstance(v, list) else str(v) for k, v in input.items()}
        ),
        output=SimpleNamespace(**output) if isinstance(output, Mapping) else output,
        params=SimpleNamespace(**params),
        config=config,
        threads=threads,
        log=[str(folder / f"{stage}.log")],
        wildcards=SimpleNamespace(**(wildcards or {})),
    )
    runpy.run_path(str(script), init_globals={"snakemake": snakemake})


def config_file(folder: Path, config: Mapping[str, Any]) -> str:
    """``config`` written as ``folder/config.yaml`` (for a command's ``--config``)."""
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(dict(config)))
    return str(path)
