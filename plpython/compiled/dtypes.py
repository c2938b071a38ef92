"""pandas' dtype inference, emulated: the evaluator reproduces
``pipeline.predict_proba(to_frame(rows))``, and pandas infers each column's
dtype from the whole batch: ``None`` becomes NaN in a column of numbers or
of strings, but stays ``None`` in a column holding only ``None`` (one row)
or mixing booleans with ``None``. scikit-learn's OneHotEncoder and
most_frequent/constant SimpleImputer treat ``None`` and NaN differently, so
the evaluator infers the same column kinds per batch (:func:`infer_kind`)
before it looks categories up.
"""

from __future__ import annotations

from .codes import CategoryCodes
from .ir import NAN_KEY
from .lazy import Numpy

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (package docstring)
if TYPE_CHECKING:
    from typing import Any, Sequence

    import numpy as np

if not TYPE_CHECKING:
    np = Numpy(globals())

NAN = float("nan")
_NONE_TYPE = type(None)


def infer_kind(column: Sequence[Any]) -> tuple[str, bool]:
    """The dtype pandas' ``DataFrame.from_records`` gives this column, and whether it has gaps.

    The kind is 'int', 'float', 'bool', 'str' or 'object'. In 'float' and
    'str' columns pandas turns ``None`` into NaN; in 'object' columns it
    stays ``None``. The flag is False when no value is None or a float (so
    no NaN either): such a column needs no canonicalisation.
    """
    types = set(map(type, column))
    has_gaps = _NONE_TYPE in types or float in types
    has_none = _NONE_TYPE in types
    types.discard(_NONE_TYPE)
    if not types:
        return "object", has_gaps
    if bool in types:
        return ("bool" if types == {bool} and not has_none else "object"), has_gaps
    if types <= {int, float}:
        return ("int" if types == {int} and not has_none else "float"), has_gaps
    if types == {str}:
        return "str", has_gaps
    # NaN next to strings is pandas' missing marker, not a number.
    if types == {str, float} and all(v != v for v in column if type(v) is float):
        return "str", has_gaps
    return "object", has_gaps


def canonical(column: Sequence[Any], none_is_nan: bool) -> list[Any]:
    """The column with NaN (and ``None`` where pandas converts it) as :data:`NAN_KEY`."""
    out = []
    append = out.append
    for v in column:
        if v is None:
            append(NAN_KEY if none_is_nan else None)
        elif v.__class__ is float and v != v:
            append(NAN_KEY)
        else:
            append(v)
    return out


def to_float(value: Any, feature: str) -> float:
    """One value as scikit-learn's float64 conversion of an object column sees it.

    Raises ValueError naming the feature if the value is not a number.
    """
    cls = value.__class__
    if cls is float:
        return value
    if value is None or value is NAN_KEY:
        return NAN
    try:
        # numpy's object-to-float cast calls float(): bools, ints and
        # numeric strings pass, as they do through scikit-learn.
        return float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"feature {feature!r}: {value!r} is not a number") from None


def column_to_float(column: Sequence[Any], feature: str) -> np.ndarray:
    """A float64 array of the column; raises ValueError naming the feature."""
    try:
        return np.array(column, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        for value in column:
            to_float(value, feature)
        raise ValueError(f"feature {feature!r}: values are not numbers") from None


def kind_of(column: Sequence[Any] | CategoryCodes) -> str:
    """:func:`infer_kind` of a column; codes are strings, some perhaps NULL."""
    if isinstance(column, CategoryCodes):
        return "object" if column.only_null() else "str"
    return infer_kind(column)[0]


def kind_one(value: Any) -> str:
    """:func:`infer_kind` of a one-row column."""
    cls = value.__class__
    if cls is float:
        return "float"
    if cls is int:
        return "int"
    if cls is bool:
        return "bool"
    if cls is str:
        return "str"
    return "object"


# np.can_cast(from, to, casting="same_kind") for the kinds a block can have.
SAME_KIND = {
    "b": {"b", "i", "u", "f", "O"},
    "i": {"i", "f", "O"},
    "u": {"i", "u", "f", "O"},
    "f": {"f", "O"},
    "O": {"O"},
}

