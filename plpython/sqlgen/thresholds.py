"""Tree thresholds on raw column values: a tree tests the transformed,
float32-rounded feature against a float64 threshold; the generator inverts
the (monotone) transform and rounding exactly, by a binary search over all
doubles (:func:`largest_true`), and writes the test as a plain comparison
of the column (:func:`cut`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any, Callable

import numpy as np

from .text import f8

_SIGN = np.uint64(1 << 63)
_MAG = np.uint64((1 << 63) - 1)


def _keys(x: np.ndarray) -> np.ndarray:
    """uint64 keys ordered as the doubles are (-0.0 and 0.0 share a key)."""
    bits = np.ascontiguousarray(x, dtype=np.float64).view(np.uint64)
    negative = (bits & _SIGN) != 0
    mag = bits & _MAG
    with np.errstate(over="ignore"):
        return np.where(negative, _SIGN - mag, _SIGN + mag)


def _doubles(keys: np.ndarray) -> np.ndarray:
    keys = np.asarray(keys, dtype=np.uint64)
    negative = keys < _SIGN
    with np.errstate(over="ignore"):
        bits = np.where(negative, (_SIGN - keys) | _SIGN, keys - _SIGN)
    return bits.view(np.float64)


_KEY_MIN = int(_keys(np.array([-math.inf]))[0])
_KEY_MAX = int(_keys(np.array([math.inf]))[0])


def largest_true(pred: Callable[[np.ndarray], np.ndarray], n: int) -> np.ndarray:
    """Per problem, the largest double x (-inf..inf) with pred(x) true; NaN if none.

    ``pred`` maps an array of n doubles (one per problem) to n booleans and
    must be monotone per problem: true, then false, in the doubles' order.
    """
    lo = np.full(n, _KEY_MIN - 1, dtype=np.uint64)  # virtually true
    hi = np.full(n, _KEY_MAX + 1, dtype=np.uint64)  # virtually false
    while True:
        active = hi - lo > 1
        if not active.any():
            break
        mid = lo + (hi - lo) // np.uint64(2)
        ok = pred(_doubles(mid))
        lo = np.where(active & ok, mid, lo)
        hi = np.where(active & ~ok, mid, hi)
    out = _doubles(np.maximum(lo, np.uint64(_KEY_MIN)))
    out[lo < np.uint64(_KEY_MIN)] = math.nan
    return out


@dataclass
class Cut:
    """The test "x <= x*" over the non-missing values of a column, as SQL.

    ``const`` is True/False when the answer is the same for every
    non-missing value; otherwise ``le`` is TRUE exactly for the values
    <= x* and ``gt`` exactly for the values > x* (both NULL for NULL and
    FALSE for NaN).
    """

    const: bool | None
    le: str = ""
    gt: str = ""


def cut(column: Any, xstar: float) -> Cut:
    if math.isnan(xstar):
        return Cut(False)
    low, high = column.domain()
    if xstar >= high:
        return Cut(True)
    if xstar < low:
        return Cut(False)
    ref = column.ref
    if column.kind == "bool":
        # Only 0 <= x* < 1 is left: false goes left, true goes right.
        return Cut(None, le=f"NOT {ref}", gt=ref)
    if column.kind == "int":
        if column.int_bits < 64 or abs(xstar) < 2.0 ** 53:
            k = math.floor(xstar)
            return Cut(None, le=f"{ref} <= {k}", gt=f"{ref} > {k}")
        lit = f8(xstar)
        return Cut(None, le=f"{ref}::float8 <= {lit}", gt=f"{ref}::float8 > {lit}")
    if column.precision is not None:
        lit = _decimal_cut(xstar, column.scale)
        return Cut(None, le=f"{ref} <= {lit}", gt=f"({ref} > {lit} AND {ref} <> 'NaN')")
    lit = f8(xstar)
    return Cut(None, le=f"{ref}::float8 <= {lit}", gt=f"({ref}::float8 > {lit} AND {ref} <> 'NaN')")


def _decimal_cut(xstar: float, scale: int) -> str:
    """The largest decimal d with ``scale`` digits whose float8 value is <= x*, as SQL text.

    float8(d) rounds to nearest, ties to even: float8(d) <= x* exactly when
    d < m, or d == m and the tie goes to x*, m being the midpoint between x*
    and the next double up.
    """
    up = math.nextafter(xstar, math.inf)
    mid = (Fraction(xstar) + Fraction(up)) / 2
    step = Fraction(10) ** (-scale)
    q = math.floor(mid / step)
    tie_goes_up = (int(np.array(xstar, dtype=np.float64).view(np.uint64)) & 1) == 1 and xstar != 0.0
    if q * step == mid and tie_goes_up:
        q -= 1
    return format(Decimal(q).scaleb(-scale), "f")
