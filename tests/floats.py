"""How the tests compare scores: the 1e-9 contract, or a stated ulp bound.

Float bits are a property of the machine, not of the code: SIMD width, FMA
and the BLAS and libm kernels round sums, dot products and ``exp``
differently, and numpy may take a vector kernel for the body of an array
and a scalar one for its tail, so one row can round differently alone and
in a batch. Tests therefore never assert identical bits for anything
computed in floating point. Identity is asserted only where it holds by
construction on every machine (a tree's leaf choice, from float32
comparisons; the bits of a float8 carried as an integer), with the reason
beside the assertion.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# In-database scores equal the loader-side predict_proba to this (docs/contract.md).
CONTRACT = 1e-9

# Two evaluation orders of the same float operations (a batch and one row,
# one thread and three, numpy and scalar Python, pgscore and scikit-learn)
# differ by a few roundings of sums of at most a few hundred terms and of
# one exp: 64 units in the last place of 1.0 (1.4e-14) bounds that with room,
# and is still 70,000 times tighter than the contract.
REORDER_ULPS = 64


def assert_within_ulps(got: Any, expected: Any, ulps: int = REORDER_ULPS, what: str = "scores") -> None:
    """``got`` equals ``expected`` to ``ulps`` units in the last place of
    max(1, |value|), element by element; NaN matches NaN."""
    got = np.asarray(got, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert got.shape == expected.shape, f"{what}: shapes {got.shape} and {expected.shape}"
    scale = np.maximum(1.0, np.maximum(np.abs(got), np.abs(expected)))
    bound = ulps * np.spacing(scale)
    same = (np.abs(got - expected) <= bound) | (np.isnan(got) & np.isnan(expected))
    if not same.all():
        bad = np.flatnonzero(~same)
        k = bad[0]
        raise AssertionError(
            f"{what}: {len(bad)} of {same.size} differ by more than {ulps} ulps; first at {k}: "
            f"{got.flat[k]!r} vs {expected.flat[k]!r} (difference {abs(got.flat[k] - expected.flat[k]):.3g})")


def assert_within_contract(got: Any, expected: Any, what: str = "scores") -> None:
    """``got`` equals ``expected`` to the 1e-9 contract, element by element."""
    got = np.asarray(got, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert got.shape == expected.shape, f"{what}: shapes {got.shape} and {expected.shape}"
    worst = float(np.max(np.abs(got - expected))) if got.size else 0.0
    assert worst <= CONTRACT, f"{what}: max difference {worst:.3g} > {CONTRACT}"
