"""A stage's parameters: its config section merged over the stage's defaults."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def merge_params(
    section: str, defaults: Mapping[str, Any], given: Mapping[str, Any] | None
) -> dict[str, Any]:
    """``given`` over ``defaults``; a ValueError names keys the stage does not know (typos)."""
    unknown = set(given or {}) - set(defaults)
    if unknown:
        raise ValueError(f"unknown {section} parameters {sorted(unknown)}; known: {list(defaults)}")
    return {**defaults, **(given or {})}
