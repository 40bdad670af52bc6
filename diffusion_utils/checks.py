"""Table-driven validation of the config dataclasses (`UNetConfig`, `TrainConfig`).

A config lists its fields as rows `(field, test, what it must be)`; `check_fields` raises the
one-line error of the first row whose test fails, e.g.
`TrainConfig.batch_size must be an integer >= 1, got 0`. Checks that relate several fields
stay as plain code in the config's `validate`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

Row = tuple[str, Callable[[Any], bool], str]  # (field name, test of its value, what it must be)


def is_int(value) -> bool:
    """A Python integer, not a bool (JSON and the CLI give these)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A finite int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def int_at_least(low: int) -> Callable[[Any], bool]:
    """A test: an integer >= low."""
    return lambda value: is_int(value) and value >= low


def check_fields(config, rows: Iterable[Row]) -> None:
    """Raise `ValueError("<Class>.<field> must be <want>, got <value>")` for the first failing row."""
    for name, test, want in rows:
        value = getattr(config, name)
        if not test(value):
            shown = list(value) if isinstance(value, tuple) else value
            raise ValueError(f"{type(config).__name__}.{name} must be {want}, got {shown!r}")
