"""The documentation: the site builds strictly (no broken link or reference); README links exist."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs", reason="pip install -e '.[docs]' (make install does)")
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO,
        env=os.environ | {"NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # The configuration page includes config/README.md (generated from the schema) ...
    assert "dataset.local_dir" in (site / "configuration" / "index.html").read_text()
    # ... and the API reference is rendered from the docstrings, not left empty.
    assert "valid_input_size" in (site / "api" / "model" / "index.html").read_text()
    assert (site / "history" / "index.html").exists()


def test_readme_links_exist():
    readme = (REPO / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)", readme)
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert "docs/results.md" in local
    missing = [link for link in local if not (REPO / link).exists()]
    assert not missing, f"README links to missing files: {missing}"
