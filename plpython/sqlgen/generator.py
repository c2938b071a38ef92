"""The SQL expression of a compiled model: its inputs (:mod:`.columns`), the
classifier's SQL (:mod:`.linear`, :mod:`.trees`) and the guard that rejects
the rows the Python evaluator rejects."""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from pgscore_server.compiled import ir

from . import linear, trees
from .columns import HotColumn, NumFeature, OrdinalFeature, hot_table, parse_column
from .text import SqlUnsupported, message, quote_ident
from .thresholds import cut, largest_true

# The SQL of each classifier kind of the IR.
_EXPRESSIONS = {ir.Linear.kind: linear.expression, ir.TreeEnsemble.kind: trees.expression}


class Generator:
    """What the SQL of one model needs: its columns as SQL, the model columns
    they become (:attr:`outputs`), and the classifier."""

    def __init__(self, model: ir.Model, alias: str, column_types: Mapping[str, str], invalid: str,
                 reject: str | None = None, overrides: Mapping[str, str] | None = None):
        self.invalid = invalid
        self.reject = reject
        self.alias = quote_ident(alias)
        overrides = overrides or {}
        columns = []
        for name in model.feature_names:
            if name not in column_types:
                raise SqlUnsupported(f"feature {name!r} is not a column of public.customer_profiles")
            columns.append(parse_column(name, column_types[name], self.alias, overrides.get(name)))
        transform = model.transform
        if transform.dtype_checks:
            raise SqlUnsupported(
                "a most_frequent/constant SimpleImputer accepts or refuses a batch by its pandas dtypes, "
                "which a per-row SQL expression cannot reproduce"
            )
        self.n_outputs = transform.n_outputs
        self.outputs: list[Any] = [None] * self.n_outputs  # NumFeature | OrdinalFeature | (HotColumn, category)
        self.numeric: list[NumFeature] = []
        for block in transform.numeric:
            if block.fills:
                raise SqlUnsupported(
                    f"step {block.step!r}: a most_frequent/constant SimpleImputer on numbers treats NULL "
                    "as missing or not depending on the whole batch's pandas dtype"
                )
            for k, (source, out) in enumerate(zip(block.inputs, block.outputs)):
                column = columns[source]
                if column.kind == "text":
                    raise SqlUnsupported(
                        f"feature {column.name!r}: a text column turned into a number (step {block.step!r})"
                    )
                ops = []
                for code, values in block.ops:
                    value = float(values[k])
                    if code == "sub" and not math.isfinite(value):
                        raise SqlUnsupported(f"feature {column.name!r}: non-finite offset {value!r}")
                    if code == "div" and not (math.isfinite(value) and value > 0):
                        raise SqlUnsupported(f"feature {column.name!r}: scale {value!r} is not positive and finite")
                    ops.append((code, value))
                feature = NumFeature(column, ops)
                self.numeric.append(feature)
                self.outputs[out] = feature
        self.hot: list[HotColumn] = []
        for onehot in transform.onehot:
            column = columns[onehot.input]
            hot = HotColumn(column, onehot.step, hot_table(column, onehot), onehot.unknown)
            self.hot.append(hot)
            for value, out in hot.table:
                if out >= 0:
                    self.outputs[out] = (hot, value)
        for ordinal in transform.ordinal:
            self.outputs[ordinal.output] = OrdinalFeature(columns[ordinal.input], list(ordinal.categories))
        if any(o is None for o in self.outputs):
            raise SqlUnsupported("the compiled transform does not cover every model column")
        self.classifier = model.classifier
        if isinstance(self.classifier, ir.TreeEnsemble):
            self.cast32 = self.classifier.cast_float32
            self.allow_inf = self.classifier.allow_inf
            self.route = self.classifier.route_missing
        else:
            self.cast32, self.allow_inf, self.route = False, False, False
        self.estimator = str(self.classifier.estimator)

    # -- what the model sees -------------------------------------------------------

    def seen(self, v: np.ndarray) -> np.ndarray:
        """The transformed value as the model compares it (float32-rounded for sklearn trees)."""
        if self.cast32:
            with np.errstate(over="ignore"):
                return v.astype(np.float32).astype(np.float64)
        return v

    def missing(self, feature: NumFeature) -> tuple[str, float]:
        """('value', w) when a missing input becomes w, ('route', nan) or ('invalid', nan)."""
        w = float(self.seen(feature.transform(np.array([math.nan])))[0])
        if math.isnan(w):
            return ("route", w) if self.route else ("invalid", w)
        if math.isinf(w) and not self.allow_inf:
            return "invalid", w
        return "value", w

    # -- validity guard -------------------------------------------------------------

    def guards(self) -> list[tuple[str, str]]:
        """(condition, message SQL) per way a row can be rejected by the Python evaluator."""
        guards = []
        for hot in self.hot:
            if hot.unknown != "error":
                continue
            ref = hot.column.ref
            known = [hot.literal(v) for v, _ in hot.table]
            if hot.column.kind == "bool":
                values = {v for v, _ in hot.table}
                cond = f"{ref} IS NULL" + ("" if True in values else f" OR {ref}") + ("" if False in values else f" OR NOT {ref}")
            elif known:
                cond = f"{ref} IS NULL OR {ref} NOT IN ({', '.join(known)})"
            else:
                cond = "true"
            says = message(f"pgscore: feature '{hot.column.name}': unknown category ", ref,
                           f" (OneHotEncoder in step {hot.step}: handle_unknown='error')")
            guards.append((cond, says))
        for feature in self.numeric:
            column = feature.column
            prefix = f"pgscore: feature '{column.name}': value "
            status, _ = self.missing(feature)
            if status == "invalid":
                guards.append((
                    column.missing_sql,
                    message(prefix, column.ref,
                             f" is missing and {self.estimator} does not accept missing values here"),
                ))
            if self.allow_inf:
                # SimpleImputer and StandardScaler refuse infinite input
                # (ensure_all_finite='allow-nan') before the model sees it.
                if feature.ops and column.kind == "num" and column.precision is None:
                    guards.append((
                        f"({column.ref} = 'Infinity' OR {column.ref} = '-Infinity')",
                        message(prefix, column.ref,
                                 " is infinite, which the pipeline's SimpleImputer/StandardScaler refuses"),
                    ))
                continue
            # The valid non-missing values form an interval (the transform is monotone).
            seen = lambda x: self.seen(feature.transform(x))  # noqa: E731
            below = largest_true(lambda x: seen(x) == -math.inf, 1)[0]  # largest x mapped to -inf
            top = largest_true(lambda x: seen(x) < math.inf, 1)[0]  # largest x mapped below +inf
            conds = []
            low_cut = cut(column, below)
            if low_cut.const is True:
                conds.append("true")
            elif low_cut.const is None:
                conds.append(low_cut.le)
            high_cut = cut(column, top)
            if high_cut.const is False:
                conds.append(f"NOT {column.missing_sql}")
            elif high_cut.const is None:
                conds.append(high_cut.gt)
            if conds:
                guards.append((
                    " OR ".join(f"({c})" for c in conds),
                    message(prefix, column.ref, f" is infinite or too large for {self.estimator}"),
                ))
        return guards

    def build(self) -> str:
        body = _EXPRESSIONS[self.classifier.kind](self)
        guards = self.guards()
        if not guards:
            return body
        if self.reject is not None:
            whens = "\n".join(f"  WHEN {c}\n    THEN {self.reject.format(message=m)}" for c, m in guards)
            return f"CASE\n{whens}\nELSE\n{body}\nEND"
        if self.invalid == "null":
            conds = "\n  OR ".join(f"({c})" for c, _ in guards)
            return f"CASE WHEN {conds}\n  THEN NULL::float8\nELSE\n{body}\nEND"
        # Each message names the row's value: a constant would be cast (and
        # raise) when the function is created or planned, not when it runs.
        whens = "\n".join(f"  WHEN {c}\n    THEN ({m})::float8" for c, m in guards)
        return f"CASE\n{whens}\nELSE\n{body}\nEND"

