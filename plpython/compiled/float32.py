"""IEEE single-precision arithmetic for the tree ensembles whose library
computes in float32 (:data:`.ir.FLOAT32_RULES`: XGBoost).

XGBoost's CPU predictor starts each row's margin from the float32 base
margin and adds the leaf of every tree in the model's order, rounding to
float32 after each addition; ``predict_proba`` is then its float32
``Sigmoid`` (``src/common/math.h``)::

    x = min(-margin, 88.7f); denom = expf(x) + 1.0f + 1e-16f; p = 1.0f / denom

Here the same operations round the same way: a float32 addition, division
or comparison computed in float64 and rounded to float32 is exactly the
float32 operation (float64 has more than twice float32's precision), so
the margin is XGBoost's bit for bit. Only ``expf`` is another function:
``exp`` in float64 rounded to float32 (correctly rounded but for rare
ties), against the C library's ``expf`` (within 0.502 ulp in glibc); the
two differ by an ulp near a rounding tie, which ``1 / (1 + e)`` can make
two ulps of the probability: the bound push checks (``pgscore.verify.parity_bound``).

Standard library for one row; numpy (lazily) for a batch. The SQL generator
writes the same operations in float4 (``pgscore_server.sqlgen.text.logistic_float4``).
"""

from __future__ import annotations

import math
from array import array

from .lazy import Numpy

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (package docstring)
if TYPE_CHECKING:
    import numpy as np

if not TYPE_CHECKING:
    np = Numpy(globals())


def to_float32(value: float) -> float:
    """``value`` rounded to the nearest float32 (overflow to +-inf, as a C cast)."""
    return array("f", (value,))[0]


#: XGBoost's Sigmoid: the clamp of its exponent (88.7f) and the epsilon added to the denominator (1e-16f).
EXP_LIMIT = to_float32(88.7)
EPSILON = to_float32(1e-16)


def logistic(margin: float) -> float:
    """XGBoost's float32 Sigmoid of a float32 margin, as a Python float."""
    r = array("f", (0.0,))
    x = min(-margin, EXP_LIMIT)
    r[0] = math.exp(x)  # ~expf; <= 88.7 cannot overflow, an underflow gives 0.0
    r[0] = r[0] + 1.0
    r[0] = r[0] + EPSILON
    r[0] = 1.0 / r[0]
    return r[0]


def logistic_batch(margins: np.ndarray) -> np.ndarray:
    """:func:`logistic` of a float32 array, as float64."""
    x = np.minimum(-margins, np.float32(EXP_LIMIT))
    # exp in float64, then rounded: numpy's own float32 exp is a vector
    # kernel that may be an ulp off where the C library's expf is not.
    e = np.exp(x.astype(np.float64)).astype(np.float32)
    denominator = (e + np.float32(1.0)) + np.float32(EPSILON)
    return (np.float32(1.0) / denominator).astype(np.float64)


def sum_batch(start: float, leaves: np.ndarray) -> np.ndarray:
    """Per row, ``start`` plus the leaf of each tree in order (``leaves``: rows x trees), in float32."""
    margins = np.full(leaves.shape[0], np.float32(start), dtype=np.float32)
    for tree_values in np.ascontiguousarray(leaves.T, dtype=np.float32):
        margins += tree_values
    return margins


def sum_one(start: float, leaves: list[float]) -> float:
    """``start`` plus each leaf in order, rounding to float32 after each addition."""
    r = array("f", (start,))
    for v in leaves:
        r[0] = r[0] + v
    return r[0]
