"""Choices measured once per machine: the cache file of unetpipe.measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unetpipe import measured
from unetpipe.measured import cached_choice


def later_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget this process's choices, as a new run on the same machine starts without them."""
    monkeypatch.setattr(measured, "_CHOSEN", {})


def test_a_choice_is_measured_once_per_machine_and_kept(
    measured_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def measure(value: str):
        return lambda: calls.append(value) or value

    assert cached_choice("format", ("net", 572), "cpu", measure("channels_last")) == "channels_last"
    later_process(monkeypatch)
    # Under load the other format would win now: the machine's first measurement stands.
    assert cached_choice("format", ("net", 572), "cpu", measure("contiguous")) == "channels_last"
    assert calls == ["channels_last"]
    # Nor under another thread count (a run setting: it must not change the choice, and with it
    # the rounding).
    later_process(monkeypatch)
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        assert (
            cached_choice("format", ("net", 572), "cpu", measure("contiguous")) == "channels_last"
        )
    finally:
        torch.set_num_threads(threads)
    assert calls == ["channels_last"]
    # Another key, another CPU: measured on their own.
    assert cached_choice("format", ("net", 700), "cpu", measure("contiguous")) == "contiguous"
    later_process(monkeypatch)
    monkeypatch.setattr(measured, "cpu_model", lambda: "another CPU")
    assert cached_choice("format", ("net", 572), "cpu", measure("contiguous")) == "contiguous"
    assert calls == ["channels_last", "contiguous", "contiguous"]
    entries = json.loads((measured_cache / "measured.json").read_text())
    assert sorted(e["value"] for e in entries.values()) == [
        "channels_last",
        "contiguous",
        "contiguous",
    ]


def test_a_foreign_cache_file_is_left_alone_and_an_unwritable_folder_only_warned(
    measured_cache: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    (measured_cache / "measured.json").write_text("{not json")
    assert cached_choice("tile", (1,), "cpu", lambda: [540, 540]) == [540, 540]
    assert "is not unetpipe's cache" in caplog.text
    assert (measured_cache / "measured.json").read_text() == "{not json"  # not overwritten
    (measured_cache / "measured.json").unlink()
    later_process(monkeypatch)
    assert cached_choice("tile", (1,), "cpu", lambda: [540, 540]) == [540, 540]
    entries = json.loads((measured_cache / "measured.json").read_text())
    (measured_cache / "measured.json").write_text(json.dumps(dict.fromkeys(entries, "edited")))
    later_process(monkeypatch)
    assert cached_choice("tile", (1,), "cpu", lambda: [548, 548]) == [548, 548]  # not an entry
    later_process(monkeypatch)
    blocked = measured_cache / "a file"
    blocked.write_text("x")
    monkeypatch.setenv("UNETPIPE_CACHE_DIR", str(blocked))  # not a folder: nothing can be kept
    assert cached_choice("tile", (1,), "cpu", lambda: [700, 700]) == [700, 700]
    assert "cannot use the cache folder" in caplog.text
    assert blocked.read_text() == "x"
    assert not list(measured_cache.glob("*.tmp"))


def test_processes_measuring_at_once_take_turns_and_agree(measured_cache: Path) -> None:
    """Two processes ask for one choice together; each would measure its own process id. The
    lock makes the second wait and read the first one's."""
    script = (
        "import os, time\n"
        "from unetpipe.measured import cached_choice\n"
        "def measure():\n"
        "    time.sleep(1.0)\n"
        "    return os.getpid()\n"
        "print(cached_choice('format', ('shared',), 'cpu', measure))\n"
    )
    runs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    chosen = {int(run.communicate(timeout=120)[0]) for run in runs}
    assert len(chosen) == 1 and chosen <= {run.pid for run in runs}
