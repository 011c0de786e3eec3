"""Choices made by timing (the memory format, the prediction tile), measured once per machine.

A choice timed at the start of every run depends on what else the machine is doing: under load
the slower format can win, and since formats round differently, two fresh runs of one
configuration on one machine could then differ (a trained network more than rounding). So a
measured choice is kept in a cache file, ``measured.json`` in ``$UNETPIPE_CACHE_DIR`` (else
``$XDG_CACHE_HOME/unetpipe``, else ``~/.cache/unetpipe``), under a key of the machine (CPU model,
GPU name, torch version) and of what was timed; later runs on the same kind of machine read it
instead of timing again. Not under the thread count: threads are a run setting, and a choice
remade per thread count would let them change a result (the first run's count measures for all).
The file is written whole (by rename); one that is not unetpipe's (not JSON of entries) is never
overwritten. Processes that measure at once take turns (a lock file), so two folds started
together choose alike. Deleting the file measures again; a setting other than ``auto`` measures
nothing. Not part of the paper.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import platform
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import torch

log = logging.getLogger(__name__)

_CHOSEN: dict[str, Any] = {}  # this process's choices, by full key


def cache_dir() -> Path:
    """The folder of the cache file (see the module's docstring)."""
    if os.environ.get("UNETPIPE_CACHE_DIR"):
        return Path(os.environ["UNETPIPE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "unetpipe"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; elsewhere what :mod:`platform` reports)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine(device: str | torch.device) -> dict[str, Any]:
    """What a measured choice is kept for besides the work timed: the CPU, the GPU of ``device``
    and torch's version (not the thread count, a run setting: see the module's docstring)."""
    device = torch.device(device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {
        "cpu": cpu_model(),
        "gpu": gpu,
        "torch": torch.__version__,
    }


@contextlib.contextmanager
def _exclusive(lock: IO[str]) -> Iterator[None]:
    """An exclusive lock on the open file ``lock`` for the block (where ``fcntl`` exists)."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock; the last writer's choice is kept
        yield
        return
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)


def _read(path: Path) -> dict[str, Any] | None:
    """The cache file's entries ({} when there is none yet); None for a file that is not JSON of
    entries (unetpipe writes it whole, by rename, so such a file is not its own: left alone)."""
    try:
        entries = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        log.warning("%s is not unetpipe's cache (%s): left as it is, nothing kept", path, err)
        return None
    if not isinstance(entries, dict):
        log.warning("%s is not unetpipe's cache: left as it is, nothing kept", path)
        return None
    return entries


def cached_choice(
    what: str, key: Sequence[Any], device: str | torch.device, measure: Callable[[], Any]
) -> Any:
    """The value of ``measure()`` (JSON-serialisable) for ``key`` (what was timed: shapes,
    network, precision ...) on this machine: from this process, else from the cache file, else
    measured now and stored there. ``what`` names the choice in the log."""
    full = json.dumps([what, machine(device), *key], sort_keys=True, default=str)
    if full in _CHOSEN:
        return _CHOSEN[full]
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder / "measured.lock", "a")  # noqa: SIM115 (closed by the with below)
    except OSError as err:
        log.warning(
            "cannot use the cache folder %s (%s): %s measured by this run only", folder, err, what
        )
        _CHOSEN[full] = measure()
        return _CHOSEN[full]
    path = folder / "measured.json"
    with lock, _exclusive(lock):
        entries = _read(path)
        entry = (entries or {}).get(full)
        if isinstance(entry, dict) and {"value", "date"} <= entry.keys():
            value = entry["value"]
            log.info(
                "%s %s: measured on this machine on %s (%s; delete it to measure again)",
                what,
                value,
                entry["date"],
                path,
            )
        else:
            value = measure()
            if entries is not None:  # None: not unetpipe's file, left alone (this run only)
                _keep(path, entries, full, value, what)
    _CHOSEN[full] = value
    return value


def _keep(path: Path, entries: dict[str, Any], full: str, value: Any, what: str) -> None:
    """Write ``entries`` with ``value`` measured today under ``full`` to the cache file whole, by
    rename; a failed write only warns and leaves no temporary file."""
    entries[full] = {"value": value, "date": datetime.date.today().isoformat()}
    temp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        temp.write_text(json.dumps(entries, indent=1))
        os.replace(temp, path)
        log.info("%s %s: measured now, kept in %s", what, value, path)
    except OSError as err:
        temp.unlink(missing_ok=True)
        log.warning("cannot write %s (%s): %s not kept for later runs", path, err, what)
