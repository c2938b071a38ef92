"""Plain-SQL scoring of compiled linear and tree models: no plpython3u needed.

:func:`to_sql` turns a compiled model (:class:`pgscore.compile.CompiledModel`
or the server's :class:`pgscore_server.compiled.Evaluator`) into one SQL
expression of type double precision, P(class 1), over the columns
``alias.<feature>`` of ``public.customer_profiles``; :func:`sql_function`
wraps it in ``CREATE OR REPLACE FUNCTION scoring.<name>(p public.customer_profiles)``,
a ``LANGUAGE sql`` function with a SQL-standard body (PostgreSQL 14+), so
it runs on managed PostgreSQL where plpython3u is not allowed::

    SELECT p.customer_id, scoring.churn_sql(p) FROM public.customer_profiles p;

The expression reproduces ``pipeline.predict_proba(to_frame(rows))[:, 1]``
on rows read as the server reads them (numeric columns as float8), which
is what the plpython path (``pgscore_server.compiled``) computes:

- OneHotEncoder on text columns (str categories), boolean columns (bool
  categories) and integer columns (int categories); ``handle_unknown`` =
  'ignore' gives zeros for an unknown or NULL value, 'error' is a rejected
  row (below). Dropped categories (``drop=``) are supported.
- SimpleImputer with a numeric statistic (mean, median, ...: scikit-learn
  works on float64 there), StandardScaler, passthrough; NULL and NaN are
  missing, as in pandas.
- LogisticRegression(CV) and SGDClassifier (log_loss, modified_huber);
  the logistic link is ``1/(1+exp(-z))`` with the exponent clamped to
  [-700, 700] (PostgreSQL's exp() raises on overflow and underflow; the
  clamp changes the result by less than 1e-300).
- DecisionTree/ExtraTree, RandomForest/ExtraTrees (mean of the leaves'
  P(class 1), in estimator order), GradientBoosting (init + sum of
  learning_rate * leaf, then the logistic link), HistGradientBoosting
  (numeric splits), as nested CASE expressions, one per tree, summed in
  estimator order so the sums round as scikit-learn's do.

Trees compare the float32-rounded transformed feature with the float64
threshold. Instead of evaluating the transform and the float32 rounding at
every node, the generator inverts them exactly: the transform (sub, div by
a positive scale) and the rounding are monotone, so "float32(f(x)) <= t"
holds exactly for the raw values x up to some x*, which is found by a
binary search over all doubles with numpy doing the same float64 and
float32 operations as the evaluator. A node then reads
``p.tenure_months <= 12`` or ``p.total_charges <= 1520.35`` (for
numeric(p,s) columns: the largest s-decimal whose float8 value is <= x*),
with no arithmetic and no cast at all. NULL / NaN go where the Python
evaluator sends them (the imputed value's branch, or the tree's missing
branch for estimators that route missing values).

Rejected rows. Where the Python evaluator raises for a row (an unknown or
NULL category under handle_unknown='error', a missing value reaching a
model without imputation, a value that overflows float32 for a tree),
the expression gives NULL with ``invalid='null'`` (the default: one bad row
does not abort a whole ``SELECT``), or raises with ``invalid='raise'``: it
casts a message naming the feature to float8, so the error reads
``invalid input syntax for type double precision: "pgscore: feature ..."``
(SQLSTATE 22P02).

Not supported (:class:`SqlUnsupported`, with the reason): value-level
imputers (most_frequent / constant before any float conversion) and
categories that are None/NaN (whether pandas turns a NULL into NaN there
depends on the whole batch's dtype, which a per-row expression cannot
know), one-hot encoding of numeric columns or of values of another type,
transforms of text columns into numbers, columns of other types, and any
manifest kind this module does not know.

Known, documented differences: PostgreSQL raises 'value out of range' for
float8 overflow/underflow inside arithmetic where numpy would saturate
(reachable only with values near 1e±300, not with the reference table's
numeric(10,2)/numeric(12,2)/integer columns), and the linear sum runs left
to right where BLAS may sum in another order (about 1e-16).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any, Callable, Mapping

import numpy as np

from .compiled import NAN_KEY, decode_value

__all__ = ["SqlUnsupported", "PROFILE_COLUMN_TYPES", "to_sql", "sql_function"]


class SqlUnsupported(Exception):
    """The compiled model cannot be expressed exactly in plain SQL; ``reason`` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


#: Column types of the reference ``public.customer_profiles`` (docs/contract.md), with typmods.
PROFILE_COLUMN_TYPES: dict[str, str] = {
    "customer_id": "bigint",
    "gender": "text",
    "senior_citizen": "boolean",
    "partner": "boolean",
    "dependents": "boolean",
    "tenure_months": "integer",
    "phone_service": "boolean",
    "multiple_lines": "text",
    "internet_service": "text",
    "online_security": "text",
    "online_backup": "text",
    "device_protection": "text",
    "tech_support": "text",
    "streaming_tv": "text",
    "streaming_movies": "text",
    "contract": "text",
    "paperless_billing": "boolean",
    "payment_method": "text",
    "monthly_charges": "numeric(10,2)",
    "total_charges": "numeric(12,2)",
    "complaint_count": "integer",
    "churn_score": "double precision",
    "churn_model_id": "bigint",
}

#: The exponent of the logistic link is clamped to +-this (exp() in PostgreSQL raises beyond ~708).
EXP_CLAMP = 700.0

_IDENT = re.compile(r"[a-z_][a-z0-9_$]*\Z")
_INT_BITS = {"smallint": 16, "integer": 32, "bigint": 64}


def to_sql(
    compiled: Any,
    alias: str = "p",
    *,
    column_types: Mapping[str, str] | None = None,
    invalid: str = "null",
    reject: str | None = None,
    overrides: Mapping[str, str] | None = None,
) -> str:
    """One SQL expression (double precision): P(class 1) of the row ``alias``.

    ``column_types`` maps feature names to their PostgreSQL types as
    ``format_type(atttypid, atttypmod)`` spells them (default: the
    reference table, :data:`PROFILE_COLUMN_TYPES`); numeric typmods make
    tree splits plain numeric comparisons. ``invalid`` is 'null' or
    'raise': what a row gets that the Python evaluator rejects. ``reject``,
    when given, replaces both: a SQL template with a ``{message}``
    placeholder (a text expression naming the feature and the value), e.g.
    ``scoring._score_rejected(7, p.customer_id, {message}, 'raise')``.
    ``overrides`` maps a feature to the SQL that stands for it instead of
    ``alias.feature`` (the complaint trigger scores complaint_count as it
    will be after the insert).

    Raises SqlUnsupported for anything it cannot express exactly.
    """
    if invalid not in ("null", "raise"):
        raise ValueError(f"invalid must be 'null' or 'raise', not {invalid!r}")
    if reject is not None and "{message}" not in reject:
        raise ValueError("reject must contain a {message} placeholder")
    return _Generator(compiled.manifest, compiled.arrays, alias, column_types or PROFILE_COLUMN_TYPES, invalid,
                      reject, overrides or {}).build()


def sql_function(
    compiled: Any,
    name: str,
    *,
    column_types: Mapping[str, str] | None = None,
    invalid: str = "null",
    pin_search_path: bool = False,
) -> str:
    """``CREATE OR REPLACE FUNCTION scoring.<name>(p public.customer_profiles)`` for :func:`to_sql`.

    LANGUAGE sql, IMMUTABLE, PARALLEL SAFE, with a SQL-standard body
    (``RETURN ...``, PostgreSQL 14+): names in it are resolved when the
    statement runs, so run it with a safe search_path (pg_catalog first).
    ``pin_search_path`` adds ``SET search_path = pg_catalog, pg_temp``;
    PostgreSQL never inlines a function that has a SET clause, so
    ``pin_search_path=False`` gives a function the planner inlines into the
    calling query; the body is already bound, so the SET adds no safety to
    a SQL-standard body. Not inlined, PostgreSQL sets the whole expression
    up again on every call: scoring 3,000 profiles took about 1 s instead
    of 40 ms for the 100-tree GradientBoosting demo model, and 37 s
    instead of 0.3 s for the 100-tree RandomForest (PostgreSQL 15, jit off).
    """
    expression = to_sql(compiled, "p", column_types=column_types, invalid=invalid)
    setting = "SET search_path = pg_catalog, pg_temp\n" if pin_search_path else ""
    source = compiled.manifest.get("source", {})
    comment = " ".join(f"pgscore plain-SQL scoring of {source.get('estimator', 'a compiled model')}".split())
    return (
        f"CREATE OR REPLACE FUNCTION scoring.{_quote_ident(name)}(p public.customer_profiles)\n"
        "RETURNS double precision\n"
        "LANGUAGE sql IMMUTABLE PARALLEL SAFE\n"
        f"{setting}"
        f"-- {comment}\n"
        f"RETURN {expression};\n"
    )


# -- SQL text helpers ----------------------------------------------------------

def _quote_ident(name: str) -> str:
    if _IDENT.match(name):
        return name
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(text: str) -> str:
    """A string constant that reads back as ``text`` whatever the session's
    standard_conforming_strings (any role may turn it off, and a generated
    PL/pgSQL body is parsed in the caller's session): as PostgreSQL's own
    quote_literal writes it, an E'' constant with backslashes doubled where
    ``text`` has one, a plain constant otherwise."""
    if "\x00" in text:
        raise SqlUnsupported(f"category {text!r} contains a NUL character")
    quoted = "'" + text.replace("'", "''") + "'"
    if "\\" in text:
        return "E" + quoted.replace("\\", "\\\\")
    return quoted


def _message(before: str, ref: str, after: str) -> str:
    """Text SQL of a rejected row's message: ``before``, the column's value
    (quoted, or NULL), ``after``; the constant parts quoted as literals, since
    column, step and estimator names come from the model."""
    return f"{_quote_literal(before)} || pg_catalog.quote_nullable({ref}::text) || {_quote_literal(after)}"


def _f8(value: float) -> str:
    """A float8 constant that reads back as exactly ``value``."""
    value = float(value)
    if math.isnan(value):
        return "'NaN'::float8"
    if math.isinf(value):
        return "'Infinity'::float8" if value > 0 else "'-Infinity'::float8"
    return f"'{value!r}'::float8"


# -- doubles as ordered integer keys (for the exact threshold inversion) -----

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


def _largest_true(pred: Callable[[np.ndarray], np.ndarray], n: int) -> np.ndarray:
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


# -- columns -------------------------------------------------------------------

@dataclass(frozen=True)
class _Column:
    """A profile column as the Python evaluator sees it (numeric read as float8)."""

    name: str
    ref: str  # alias.column
    kind: str  # text | bool | int | num
    int_bits: int = 0
    precision: int | None = None  # numeric(p, s) with a usable typmod
    scale: int | None = None

    @property
    def missing_sql(self) -> str:
        """TRUE for a missing value (NULL, or NaN where the type has one), never NULL."""
        if self.kind == "num":
            return f"({self.ref} IS NULL OR {self.ref} = 'NaN')"
        return f"{self.ref} IS NULL"

    def domain(self) -> tuple[float, float]:
        """Smallest and largest non-missing value as a Python float."""
        if self.kind == "bool":
            return 0.0, 1.0
        if self.kind == "int":
            top = 2 ** (self.int_bits - 1)
            return float(-top), float(top - 1)
        if self.precision is not None:
            top = float(Decimal(10) ** (self.precision - self.scale) - Decimal(10) ** (-self.scale))
            return -top, top
        return -math.inf, math.inf

    def float_sql(self) -> str:
        """The value as float8, as the evaluator converts it."""
        if self.kind == "bool":
            return f"{self.ref}::int::float8"
        return f"{self.ref}::float8"


def _parse_column(name: str, type_name: str, alias: str, ref: str | None = None) -> _Column:
    ref = ref or f"{alias}.{_quote_ident(name)}"
    t = type_name.strip().lower()
    if t in ("text", "character varying") or t.startswith("character varying("):
        return _Column(name, ref, "text")
    if t == "boolean":
        return _Column(name, ref, "bool")
    if t in _INT_BITS:
        return _Column(name, ref, "int", int_bits=_INT_BITS[t])
    if t in ("real", "double precision", "numeric"):
        return _Column(name, ref, "num")
    m = re.fullmatch(r"numeric\(\s*(\d+)\s*(?:,\s*(-?\d+)\s*)?\)", t)
    if m:
        precision, scale = int(m.group(1)), int(m.group(2) or 0)
        if precision - scale <= 300:  # its values stay far inside float8's range
            return _Column(name, ref, "num", precision=precision, scale=scale)
        return _Column(name, ref, "num")
    raise SqlUnsupported(f"feature {name!r} has type {type_name}, which the SQL generator does not handle")


@dataclass
class _Cut:
    """The test "x <= x*" over the non-missing values of a column, as SQL.

    ``const`` is True/False when the answer is the same for every
    non-missing value; otherwise ``le`` is TRUE exactly for the values
    <= x* and ``gt`` exactly for the values > x* (both NULL for NULL and
    FALSE for NaN).
    """

    const: bool | None
    le: str = ""
    gt: str = ""


def _cut(column: _Column, xstar: float) -> _Cut:
    if math.isnan(xstar):
        return _Cut(False)
    low, high = column.domain()
    if xstar >= high:
        return _Cut(True)
    if xstar < low:
        return _Cut(False)
    ref = column.ref
    if column.kind == "bool":
        # Only 0 <= x* < 1 is left: false goes left, true goes right.
        return _Cut(None, le=f"NOT {ref}", gt=ref)
    if column.kind == "int":
        if column.int_bits < 64 or abs(xstar) < 2.0 ** 53:
            k = math.floor(xstar)
            return _Cut(None, le=f"{ref} <= {k}", gt=f"{ref} > {k}")
        lit = _f8(xstar)
        return _Cut(None, le=f"{ref}::float8 <= {lit}", gt=f"{ref}::float8 > {lit}")
    if column.precision is not None:
        lit = _decimal_cut(xstar, column.scale)
        return _Cut(None, le=f"{ref} <= {lit}", gt=f"({ref} > {lit} AND {ref} <> 'NaN')")
    lit = _f8(xstar)
    return _Cut(None, le=f"{ref}::float8 <= {lit}", gt=f"({ref}::float8 > {lit} AND {ref} <> 'NaN')")


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


# -- the model's inputs ----------------------------------------------------------

@dataclass
class _NumFeature:
    column: _Column
    ops: list[tuple[str, float]]  # fill / sub / div, in pipeline order

    def transform(self, x: np.ndarray) -> np.ndarray:
        """What the evaluator computes from raw values (float64; NaN is missing)."""
        v = np.array(x, dtype=np.float64)
        with np.errstate(all="ignore"):
            for code, c in self.ops:
                if code == "fill":
                    v = np.where(np.isnan(v), c, v)
                elif code == "sub":
                    v = v - c
                else:
                    v = v / c
        return v


@dataclass
class _HotColumn:
    column: _Column
    step: str
    table: list[tuple[Any, int]]  # (category, model column or -1 if dropped)
    unknown: str  # ignore | error

    def is_sql(self, value: Any) -> str:
        """TRUE when the column holds this category (NULL when the column is NULL)."""
        ref = self.column.ref
        if self.column.kind == "bool":
            return ref if value else f"NOT {ref}"
        if self.column.kind == "int":
            return f"{ref} = {int(value)}"
        return f"{ref} = {_quote_literal(value)}"

    def literal(self, value: Any) -> str:
        if self.column.kind == "bool":
            return "true" if value else "false"
        if self.column.kind == "int":
            return str(int(value))
        return _quote_literal(value)


def _hot_table(column: _Column, spec: Mapping[str, Any]) -> list[tuple[Any, int]]:
    step = spec["step"]
    if spec["fills"]:
        raise SqlUnsupported(
            f"feature {column.name!r}: a most_frequent/constant SimpleImputer before the OneHotEncoder "
            f"in step {step!r} treats NULL as missing or not depending on the whole batch's pandas dtype, "
            "which a per-row SQL expression cannot know"
        )
    table = []
    for tagged, out in zip(spec["categories"], spec["outputs"]):
        value = decode_value(tagged)
        if value is None or value is NAN_KEY:
            raise SqlUnsupported(
                f"feature {column.name!r}: the OneHotEncoder in step {step!r} has a missing-value category; "
                "whether a NULL matches it depends on the whole batch's pandas dtype"
            )
        kind = column.kind
        if kind == "text":
            if type(value) is not str:
                continue  # a text value never equals a number or a bool
        elif kind == "bool":
            if type(value) is not bool:
                raise SqlUnsupported(f"feature {column.name!r}: boolean column one-hot encoded with {value!r}")
        elif kind == "int":
            if type(value) is not int:
                raise SqlUnsupported(f"feature {column.name!r}: integer column one-hot encoded with {value!r}")
            top = 2 ** (column.int_bits - 1)
            if not -top <= value < top:
                continue  # the column cannot hold it
        else:
            raise SqlUnsupported(
                f"feature {column.name!r}: one-hot encoding a {kind} column is not supported by the SQL generator"
            )
        table.append((value, int(out)))
    return table


# -- the generator -------------------------------------------------------------------

_LEFT, _RIGHT, _ANY = "L", "R", "X"


class _Generator:
    def __init__(self, manifest: Mapping[str, Any], arrays: Mapping[str, np.ndarray], alias: str,
                 column_types: Mapping[str, str], invalid: str, reject: str | None = None,
                 overrides: Mapping[str, str] | None = None):
        if manifest.get("format") != "pgscore-compiled":
            raise SqlUnsupported(f"not a compiled pgscore model: format {manifest.get('format')!r}")
        if manifest.get("format_version") != 1:
            raise SqlUnsupported(f"compiled format version {manifest.get('format_version')!r} is not known here")
        self.arrays = arrays
        self.invalid = invalid
        self.reject = reject
        self.alias = _quote_ident(alias)
        overrides = overrides or {}
        names = [str(n) for n in manifest["feature_names"]]
        columns = []
        for name in names:
            if name not in column_types:
                raise SqlUnsupported(f"feature {name!r} is not a column of public.customer_profiles")
            columns.append(_parse_column(name, column_types[name], self.alias, overrides.get(name)))
        transform = manifest["transform"]
        if transform.get("dtype_checks"):
            raise SqlUnsupported(
                "a most_frequent/constant SimpleImputer accepts or refuses a batch by its pandas dtypes, "
                "which a per-row SQL expression cannot reproduce"
            )
        self.n_outputs = int(transform["n_outputs"])
        self.outputs: list[Any] = [None] * self.n_outputs  # _NumFeature | (_HotColumn, category)
        self.numeric: list[_NumFeature] = []
        for block in transform["numeric"]:
            if block["fills"]:
                raise SqlUnsupported(
                    f"step {block['step']!r}: a most_frequent/constant SimpleImputer on numbers treats NULL "
                    "as missing or not depending on the whole batch's pandas dtype"
                )
            op_values = [(code, np.asarray(arrays[array], dtype=np.float64)) for code, array in block["ops"]]
            for k, (source, out) in enumerate(zip(block["inputs"], block["outputs"])):
                column = columns[int(source)]
                if column.kind == "text":
                    raise SqlUnsupported(
                        f"feature {column.name!r}: a text column turned into a number (step {block['step']!r})"
                    )
                ops = []
                for code, values in op_values:
                    if code not in ("fill", "sub", "div"):
                        raise SqlUnsupported(f"unknown numeric operation {code!r}")
                    value = float(values[k])
                    if code == "sub" and not math.isfinite(value):
                        raise SqlUnsupported(f"feature {column.name!r}: non-finite offset {value!r}")
                    if code == "div" and not (math.isfinite(value) and value > 0):
                        raise SqlUnsupported(f"feature {column.name!r}: scale {value!r} is not positive and finite")
                    ops.append((code, value))
                feature = _NumFeature(column, ops)
                self.numeric.append(feature)
                self.outputs[int(out)] = feature
        self.hot: list[_HotColumn] = []
        for spec in transform["onehot"]:
            column = columns[int(spec["input"])]
            if spec["unknown"] not in ("ignore", "error"):
                raise SqlUnsupported(f"unknown handle_unknown {spec['unknown']!r}")
            hot = _HotColumn(column, spec["step"], _hot_table(column, spec), spec["unknown"])
            self.hot.append(hot)
            for value, out in hot.table:
                if out >= 0:
                    self.outputs[out] = (hot, value)
        if any(o is None for o in self.outputs):
            raise SqlUnsupported("the compiled transform does not cover every model column")
        self.model = manifest["model"]
        kind = self.model.get("kind")
        if kind == "linear":
            if self.model.get("link") not in ("logistic", "modified_huber"):
                raise SqlUnsupported(f"unknown link {self.model.get('link')!r}")
            self.cast32, self.allow_inf, self.route = False, False, False
        elif kind == "trees":
            if self.model.get("combine") not in ("average", "boosting", "hist_boosting"):
                raise SqlUnsupported(f"unknown tree combination {self.model.get('combine')!r}")
            self.cast32 = bool(self.model["cast_float32"])
            self.allow_inf = bool(self.model["allow_inf"])
            self.route = self.model["missing"] == "route"
        else:
            raise SqlUnsupported(f"model kind {kind!r} is not supported by the SQL generator")
        self.estimator = str(self.model.get("estimator", kind))

    # -- what the model sees -------------------------------------------------------

    def _seen(self, v: np.ndarray) -> np.ndarray:
        """The transformed value as the model compares it (float32-rounded for sklearn trees)."""
        if self.cast32:
            with np.errstate(over="ignore"):
                return v.astype(np.float32).astype(np.float64)
        return v

    def _missing(self, feature: _NumFeature) -> tuple[str, float]:
        """('value', w) when a missing input becomes w, ('route', nan) or ('invalid', nan)."""
        w = float(self._seen(feature.transform(np.array([math.nan])))[0])
        if math.isnan(w):
            return ("route", w) if self.route else ("invalid", w)
        if math.isinf(w) and not self.allow_inf:
            return "invalid", w
        return "value", w

    # -- validity guard -------------------------------------------------------------

    def _guards(self) -> list[tuple[str, str]]:
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
            message = _message(f"pgscore: feature '{hot.column.name}': unknown category ", ref,
                               f" (OneHotEncoder in step {hot.step}: handle_unknown='error')")
            guards.append((cond, message))
        for feature in self.numeric:
            column = feature.column
            prefix = f"pgscore: feature '{column.name}': value "
            status, _ = self._missing(feature)
            if status == "invalid":
                guards.append((
                    column.missing_sql,
                    _message(prefix, column.ref,
                             f" is missing and {self.estimator} does not accept missing values here"),
                ))
            if self.allow_inf:
                # SimpleImputer and StandardScaler refuse infinite input
                # (ensure_all_finite='allow-nan') before the model sees it.
                if feature.ops and column.kind == "num" and column.precision is None:
                    guards.append((
                        f"({column.ref} = 'Infinity' OR {column.ref} = '-Infinity')",
                        _message(prefix, column.ref,
                                 " is infinite, which the pipeline's SimpleImputer/StandardScaler refuses"),
                    ))
                continue
            # The valid non-missing values form an interval (the transform is monotone).
            seen = lambda x: self._seen(feature.transform(x))  # noqa: E731
            below = _largest_true(lambda x: seen(x) == -math.inf, 1)[0]  # largest x mapped to -inf
            top = _largest_true(lambda x: seen(x) < math.inf, 1)[0]  # largest x mapped below +inf
            conds = []
            low_cut = _cut(column, below)
            if low_cut.const is True:
                conds.append("true")
            elif low_cut.const is None:
                conds.append(low_cut.le)
            high_cut = _cut(column, top)
            if high_cut.const is False:
                conds.append(f"NOT {column.missing_sql}")
            elif high_cut.const is None:
                conds.append(high_cut.gt)
            if conds:
                guards.append((
                    " OR ".join(f"({c})" for c in conds),
                    _message(prefix, column.ref, f" is infinite or too large for {self.estimator}"),
                ))
        return guards

    def build(self) -> str:
        body = self._linear() if self.model["kind"] == "linear" else self._trees()
        guards = self._guards()
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

    # -- linear -----------------------------------------------------------------------

    def _numeric_sql(self, feature: _NumFeature) -> str:
        column = feature.column
        status, _ = self._missing(feature)
        expr = column.float_sql()
        if status == "value" and column.kind == "num":
            expr = f"NULLIF({expr}, 'NaN'::float8)"
        for code, c in feature.ops:
            if code == "fill":
                if status == "value":
                    expr = f"COALESCE({expr}, {_f8(c)})"
            elif code == "sub":
                expr = f"({expr} - {_f8(c)})"
            else:
                expr = f"({expr} / {_f8(c)})"
        return expr

    def _folded_term(self, feature: _NumFeature, weight: float) -> tuple[str, float] | None:
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
        status, _ = self._missing(feature)
        x = column.float_sql()
        if status == "value" and column.kind == "num":
            x = f"NULLIF({x}, 'NaN'::float8)"
        if status == "value" and fill is not None:
            x = f"COALESCE({x}, {_f8(fill)})"
        return f"{_f8(a)} * {x}", b

    def _linear(self) -> str:
        coef = np.asarray(self.arrays["coef"], dtype=np.float64).reshape(-1)
        intercept = float(np.asarray(self.arrays["intercept"], dtype=np.float64).reshape(-1)[0])
        if coef.shape[0] != self.n_outputs:
            raise SqlUnsupported("coefficient count does not match the transform")
        terms = []
        for j, feature in enumerate(self.outputs):
            if isinstance(feature, _NumFeature) and coef[j] != 0.0:
                folded = self._folded_term(feature, float(coef[j]))
                if folded is None:
                    terms.append(f"{_f8(float(coef[j]))} * {self._numeric_sql(feature)}")
                else:
                    terms.append(folded[0])
                    intercept += folded[1]
        for hot in self.hot:
            whens = [
                f"WHEN {hot.literal(v)} THEN {_f8(float(coef[out]))}"
                for v, out in hot.table
                if out >= 0 and coef[out] != 0.0
            ]
            if whens:
                terms.append(f"CASE {hot.column.ref} " + " ".join(whens) + " ELSE 0::float8 END")
        z = "\n    + ".join(terms + [_f8(intercept)])
        z = f"(\n    {z}\n  )"
        if self.model["link"] == "logistic":
            return (
                f"1::float8 / (1::float8 + pg_catalog.exp(LEAST(GREATEST(-{z}, "
                f"{_f8(-EXP_CLAMP)}), {_f8(EXP_CLAMP)})))"
            )
        return f"(LEAST(GREATEST({z}, -1::float8), 1::float8) + 1::float8) / 2::float8"

    # -- trees ------------------------------------------------------------------------

    def _trees(self) -> str:
        a = self.arrays
        feature = np.asarray(a["tree_feature"], dtype=np.int64)
        threshold = np.asarray(a["tree_threshold"], dtype=np.float64)
        left = np.asarray(a["tree_left"], dtype=np.int64)
        right = np.asarray(a["tree_right"], dtype=np.int64)
        missing_left = np.asarray(a["tree_missing_left"], dtype=bool)
        value = np.asarray(a["tree_value"], dtype=np.float64)
        roots = np.asarray(a["tree_roots"], dtype=np.int64).tolist()
        init = float(np.asarray(a["init"]).reshape(()))
        rate = float(np.asarray(a["learning_rate"]).reshape(()))
        combine = self.model["combine"]
        n_nodes = feature.shape[0]
        if (feature >= self.n_outputs).any():
            raise SqlUnsupported("tree arrays refer to a model column that does not exist")

        # Per inner node: SQL condition pieces and where missing values go.
        cuts: dict[int, _Cut] = {}
        missing_dir: dict[int, str] = {}
        for j in sorted(set(feature[feature >= 0].tolist())):
            nodes = np.flatnonzero(feature == j)
            out = self.outputs[j]
            t = threshold[nodes]
            if isinstance(out, _NumFeature):
                status, w = self._missing(out)
                xs = _largest_true(lambda x, t=t, out=out: self._seen(out.transform(x)) <= t, len(nodes))
                for k, node in enumerate(nodes.tolist()):
                    cuts[node] = _cut(out.column, float(xs[k]))
                    if status == "value":
                        missing_dir[node] = _LEFT if w <= t[k] else _RIGHT
                    elif status == "route":
                        missing_dir[node] = _LEFT if missing_left[node] else _RIGHT
                    else:
                        missing_dir[node] = _ANY
            else:
                hot, category = out
                one = self._seen(np.array([1.0]))[0]
                zero = self._seen(np.array([0.0]))[0]
                for k, node in enumerate(nodes.tolist()):
                    left1, left0 = bool(one <= t[k]), bool(zero <= t[k])
                    if left1 == left0:
                        cuts[node] = _Cut(left1)
                    elif left0:  # the category goes right
                        cuts[node] = _Cut(None, le=f"NOT ({hot.is_sql(category)})", gt=hot.is_sql(category))
                    else:
                        raise SqlUnsupported("a split sends 1 left and 0 right (thresholds are not monotone)")
                    # A NULL (or unknown) category is a 0: it goes with the others.
                    missing_dir[node] = _LEFT if left0 else _RIGHT

        scale = rate if combine == "boosting" else 1.0

        def leaf(node: int) -> str:
            return _f8(scale * float(value[node]) if combine == "boosting" else float(value[node]))

        def emit(node: int, depth: int) -> str:
            if depth > 200:
                raise SqlUnsupported("a tree deeper than 200 levels")
            if not 0 <= node < n_nodes:
                raise SqlUnsupported("tree arrays are inconsistent")
            if feature[node] < 0:
                return leaf(node)
            cut = cuts[node]
            md = missing_dir[node]
            if cut.const is not None:
                direction = _LEFT if cut.const else _RIGHT
                chosen = emit(int(left[node] if cut.const else right[node]), depth + 1)
                if md in (_ANY, direction):
                    return chosen
                other = emit(int(left[node] if md == _LEFT else right[node]), depth + 1)
                column = self.outputs[int(feature[node])].column
                return _case(column.missing_sql, other, chosen, depth)
            lsql = emit(int(left[node]), depth + 1)
            rsql = emit(int(right[node]), depth + 1)
            if lsql == rsql:
                return lsql
            if md == _LEFT:
                return _case(cut.gt, rsql, lsql, depth)
            return _case(cut.le, lsql, rsql, depth)

        trees = [emit(int(r), 1) for r in roots]
        if not trees:
            raise SqlUnsupported("an ensemble without trees")
        joined = "\n  + ".join(trees)
        if combine == "average":
            return f"(\n  {joined}\n  ) / {_f8(float(len(trees)))}"
        raw = f"(\n  {_f8(init)}\n  + {joined}\n  )"
        return (
            f"1::float8 / (1::float8 + pg_catalog.exp(LEAST(GREATEST(-{raw}, "
            f"{_f8(-EXP_CLAMP)}), {_f8(EXP_CLAMP)})))"
        )


def _case(condition: str, then: str, otherwise: str, depth: int) -> str:
    if "\n" not in then and "\n" not in otherwise and len(then) + len(otherwise) + len(condition) < 120:
        return f"CASE WHEN {condition} THEN {then} ELSE {otherwise} END"
    pad = "  " * depth
    return f"CASE WHEN {condition}\n{pad}  THEN {then}\n{pad}  ELSE {otherwise}\n{pad}END"
