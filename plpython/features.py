"""Turning profile rows into the model's input, the same way on both sides.

The loader (training, parity checks) and the server (scoring) both build a
model's input with :func:`to_frame`, so a model sees identical dtypes in and
out of the database. Rows hold plain Python values: ``bool``, ``int``,
``float``, ``str`` or ``None`` (numeric columns are read as float8).
"""

from __future__ import annotations

import math

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (package docstring)
if TYPE_CHECKING:
    from typing import Any, Iterable, Mapping, Sequence

def to_frame(rows: Iterable[Mapping[str, Any]], feature_names: Sequence[str]) -> Any:
    """A pandas DataFrame with exactly ``feature_names`` as columns, in order."""
    import pandas as pd

    return pd.DataFrame.from_records(list(rows), columns=list(feature_names))


def from_document(document: Any, feature_names: Sequence[str], columns: Mapping[str, str], model_label: str) -> dict:
    """One row of features from a what-if JSON document (already parsed).

    Keys that are profile columns but not features are ignored, so
    ``to_jsonb(p)`` of a whole profile works. Raises ScoringError naming the
    feature when one is missing, mistyped or not finite, or when a key is
    not a profile column at all (a typo).
    """
    from .catalog import BOOLEAN_TYPES, INTEGER_TYPES, NUMBER_TYPES, PROFILES
    from .errors import DATATYPE_MISMATCH, INVALID_PARAMETER_VALUE, ScoringError

    if not isinstance(document, dict):
        raise ScoringError(
            f"features must be a JSON object of column: value, not a JSON {_json_kind(document)}",
            sqlstate=INVALID_PARAMETER_VALUE,
            hint="""for example '{"tenure_months": 3, "contract": "Month-to-month", ...}'::jsonb""",
        )
    unknown = sorted(key for key in document if key not in columns)
    if unknown:
        raise ScoringError(
            f"feature document has keys that are not columns of {PROFILES}: {', '.join(map(repr, unknown[:10]))}",
            sqlstate=INVALID_PARAMETER_VALUE,
            hint=f"{model_label} needs: {', '.join(feature_names)}",
        )
    missing = [name for name in feature_names if name not in document]
    if missing:
        raise ScoringError(
            f"feature {missing[0]!r} is missing from the feature document"
            + (f" (and {len(missing) - 1} more: {', '.join(missing[1:])})" if len(missing) > 1 else ""),
            sqlstate=INVALID_PARAMETER_VALUE,
            hint=f"{model_label} needs: {', '.join(feature_names)}",
        )
    row = {}
    for name in feature_names:
        value = document[name]
        column_type = columns[name]
        if value is None:
            row[name] = None
            continue
        if column_type in BOOLEAN_TYPES:
            ok = isinstance(value, bool)
            expected = "true or false"
        elif column_type in INTEGER_TYPES:
            low, high = INTEGER_RANGES[column_type]
            ok = isinstance(value, int) and not isinstance(value, bool) or (
                isinstance(value, float) and value.is_integer()
            )
            expected = f"a whole number from {low} to {high}"
            if ok:
                value = int(value)
                ok = low <= value <= high
        elif column_type in NUMBER_TYPES:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            expected = "a finite number"
            if ok:
                try:
                    value = float(value)
                except OverflowError:  # a JSON integer beyond float range
                    ok = False
                else:
                    ok = math.isfinite(value)
        else:
            ok = isinstance(value, str)
            expected = "a string"
        if not ok:
            raise ScoringError(
                f"feature {name!r} must be {expected} (column type {column_type}), not {_show(value)}",
                sqlstate=DATATYPE_MISMATCH,
                hint=f"fix {name!r} in the feature document",
            )
        row[name] = value
    return row


INTEGER_RANGES = {
    "smallint": (-(2**15), 2**15 - 1),
    "integer": (-(2**31), 2**31 - 1),
    "bigint": (-(2**63), 2**63 - 1),
}


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return "null" if value is None else type(value).__name__


def _show(value: Any) -> str:
    text = repr(value)
    return f"{_json_kind(value)} {text[:60] + '...' if len(text) > 60 else text}"
