"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"


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
