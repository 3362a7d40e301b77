"""Values checked before they are stored, so that SQLite and PostgreSQL answer alike and in plain words.

SQLite ignores VARCHAR lengths and stores NaN inside JSON as an invalid `NaN` token; PostgreSQL refuses both
with a DataError traceback, and refuses NUL characters in text as well. The insert and update functions of the
query modules call these helpers first, so both databases refuse the same values with the same message.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

# The column widths of db/models.py, by what they hold.
CLASS_NAME_MAX = 100
REVIEWER_MAX = 100
REASON_MAX = 100
DATASET_NAME_MAX = 200
USERNAME_MAX = 64
DISPLAY_NAME_MAX = 200
METRIC_NAME_MAX = 100
GROUP_NAME_MAX = 100


class InvalidValue(ValueError):
    """A value the database cannot store as given (too long, NUL characters, NaN or infinity)."""


def _preview(value: str, n: int = 40) -> str:
    return repr(value if len(value) <= n else value[:n] + "…")


def text(value: str | None, what: str, max_length: int, *, required: bool = False) -> str | None:
    """The value unchanged if it fits a column of max_length characters; InvalidValue saying what is wrong if not."""
    if value is None:
        if required:
            raise InvalidValue(f"{what} is required")
        return None
    if not isinstance(value, str):
        raise InvalidValue(f"{what} must be text, got {type(value).__name__}")
    if required and not value.strip():
        raise InvalidValue(f"{what} must not be empty")
    if len(value) > max_length:
        raise InvalidValue(f"{what} {_preview(value)} is {len(value)} characters long; at most {max_length} "
                           "are allowed")
    if "\x00" in value:
        raise InvalidValue(f"{what} {_preview(value)} contains a NUL character; remove it")
    return value


def texts(values: Iterable[str], what: str, max_length: int) -> list[str]:
    """text() for each of several values (e.g. the class names of a dataset)."""
    return [text(v, what, max_length, required=True) for v in values]


def finite(value: float | None, what: str) -> float | None:
    """The number unchanged if it is finite (or None); InvalidValue for NaN and infinity."""
    if value is None:
        return None
    number = float(value)
    if not math.isfinite(number):
        raise InvalidValue(f"{what} is {number}; only finite numbers can be stored")
    return number


def _non_finite_path(value: Any, path: str) -> str | None:
    if isinstance(value, float):
        return None if math.isfinite(value) else path
    if isinstance(value, Mapping):
        for key, item in value.items():
            found = _non_finite_path(item, f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = _non_finite_path(item, f"{path}[{i}]")
            if found is not None:
                return found
    return None


def json_value(value: Any, what: str) -> Any:
    """The value unchanged if it can be stored as JSON: InvalidValue naming the key that holds NaN or infinity
    (or that is not JSON at all)."""
    path = _non_finite_path(value, "")
    if path is not None:
        raise InvalidValue(f"{what} holds a value that is not a finite number at {path or 'its top'}; "
                           "only finite numbers can be stored")
    try:
        dumped = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidValue(f"{what} cannot be stored as JSON: {exc}") from None
    if "\\u0000" in dumped:
        raise InvalidValue(f"{what} contains a NUL character; remove it")
    return value
