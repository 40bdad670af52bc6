"""Table-driven validation of the config dataclasses (`UNetConfig`, `TrainConfig`, `AutoencoderConfig`).

A config lists its fields as rows `(field, test, what it must be)`; `check_fields` raises the
one-line error of the first row whose test fails, e.g.
`TrainConfig.batch_size must be an integer >= 1, got 0`. Checks that relate several fields
stay as plain code in the config's `validate`. `known_keys` guards their `from_dict`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import fields
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


def known_keys(cls, d) -> dict:
    """`d` itself when it is a dict whose keys are all fields of the dataclass `cls`, else a one-line
    ValueError naming the unknown keys and the expected ones (what a `from_dict` checks first)."""
    if not isinstance(d, dict):
        raise ValueError(f"{cls.__name__}.from_dict expects a dict, got {type(d).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown key(s) {unknown}; expected some of {sorted(known)}")
    return d
