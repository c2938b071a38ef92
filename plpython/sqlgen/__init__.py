"""Plain-SQL scoring of compiled linear and tree models: no plpython3u needed.

:func:`to_sql` turns a compiled model (its :class:`pgscore_server.compiled.ir.Model`,
or a :class:`pgscore.compile.CompiledModel` or server
:class:`pgscore_server.compiled.Evaluator`, which hold one) into one SQL
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

One module per part: :mod:`.generator` (the model's inputs, the guard of
rejected rows), :mod:`.columns` (column types, numeric and one-hot
features), :mod:`.thresholds` (the exact inversion of a tree test),
:mod:`.linear` and :mod:`.trees` (the classifier), :mod:`.text` (quoting,
constants, the logistic link).
"""

from __future__ import annotations

from typing import Any, Mapping

from pgscore_server.compiled import ir

from .columns import PROFILE_COLUMN_TYPES
from .generator import Generator
from .text import EXP_CLAMP, SqlUnsupported, quote_ident
from .text import quote_literal as _quote_literal  # noqa: F401 - tests quote with it

__all__ = ["SqlUnsupported", "PROFILE_COLUMN_TYPES", "EXP_CLAMP", "to_sql", "sql_function"]


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
    return Generator(_model(compiled), alias, column_types or PROFILE_COLUMN_TYPES, invalid, reject,
                     overrides or {}).build()


def _model(compiled: Any) -> ir.Model:
    """The IR of ``compiled``; an archive the IR refuses cannot be written as SQL either."""
    try:
        return ir.model_of(compiled)
    except ValueError as exc:
        raise SqlUnsupported(str(exc)) from None


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
    source = _model(compiled).source
    comment = " ".join(f"pgscore plain-SQL scoring of {source.get('estimator', 'a compiled model')}".split())
    return (
        f"CREATE OR REPLACE FUNCTION scoring.{quote_ident(name)}(p public.customer_profiles)\n"
        "RETURNS double precision\n"
        "LANGUAGE sql IMMUTABLE PARALLEL SAFE\n"
        f"{setting}"
        f"-- {comment}\n"
        f"RETURN {expression};\n"
    )
