"""Linear classifiers as SQL: a sum of terms, then the link."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from pgscore_server.compiled import ir

from .columns import NumFeature
from .text import SqlUnsupported, f8, logistic

if TYPE_CHECKING:
    from .generator import Generator


def numeric_sql(g: Generator, feature: NumFeature) -> str:
    column = feature.column
    status, _ = g.missing(feature)
    expr = column.float_sql()
    if status == "value" and column.kind == "num":
        expr = f"NULLIF({expr}, 'NaN'::float8)"
    for code, c in feature.ops:
        if code == "fill":
            if status == "value":
                expr = f"COALESCE({expr}, {f8(c)})"
        elif code == "sub":
            expr = f"({expr} - {f8(c)})"
        else:
            expr = f"({expr} / {f8(c)})"
    return expr

def folded_term(g: Generator, feature: NumFeature, weight: float) -> tuple[str, float] | None:
    """``weight * transform(x)`` as ``a * COALESCE(x, fill)`` plus a constant,
    when the transform is an optional fill then sub/div steps (the usual
    imputer + scaler): fewer operations per row, which PostgreSQL sets up
    again in every statement. Rounds differently from the step-by-step form
    by about 1e-16 (the push-time parity check bounds it by 1e-9)."""
    ops = feature.ops
    fill = None
    if ops and ops[0][0] == "fill":
        fill, ops = ops[0][1], ops[1:]
    if any(code not in ("sub", "div") for code, _ in ops):
        return None
    scale, shift = 1.0, 0.0  # transform(x) = scale * x + shift
    for code, c in ops:
        if code == "sub":
            shift -= c
        else:
            scale, shift = scale / c, shift / c
    a, b = weight * scale, weight * shift
    if not (math.isfinite(a) and math.isfinite(b)):
        return None
    column = feature.column
    status, _ = g.missing(feature)
    x = column.float_sql()
    if status == "value" and column.kind == "num":
        x = f"NULLIF({x}, 'NaN'::float8)"
    if status == "value" and fill is not None:
        x = f"COALESCE({x}, {f8(fill)})"
    return f"{f8(a)} * {x}", b

def expression(g: Generator) -> str:
    """P(class 1) of a linear classifier (:class:`ir.Linear`) as SQL."""
    linear: ir.Linear = g.classifier
    coef = np.asarray(linear.coef, dtype=np.float64).reshape(-1)
    intercept = float(np.asarray(linear.intercept, dtype=np.float64).reshape(-1)[0])
    if coef.shape[0] != g.n_outputs:
        raise SqlUnsupported("coefficient count does not match the transform")
    terms = []
    for j, feature in enumerate(g.outputs):
        if isinstance(feature, NumFeature) and coef[j] != 0.0:
            folded = folded_term(g, feature, float(coef[j]))
            if folded is None:
                terms.append(f"{f8(float(coef[j]))} * {numeric_sql(g, feature)}")
            else:
                terms.append(folded[0])
                intercept += folded[1]
    for hot in g.hot:
        whens = [
            f"WHEN {hot.literal(v)} THEN {f8(float(coef[out]))}"
            for v, out in hot.table
            if out >= 0 and coef[out] != 0.0
        ]
        if whens:
            terms.append(f"CASE {hot.column.ref} " + " ".join(whens) + " ELSE 0::float8 END")
    z = "\n    + ".join(terms + [f8(intercept)])
    z = f"(\n    {z}\n  )"
    if linear.link == "logistic":
        return logistic(z)
    return f"(LEAST(GREATEST({z}, -1::float8), 1::float8) + 1::float8) / 2::float8"
