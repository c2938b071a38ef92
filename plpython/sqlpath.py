"""Generated PL/pgSQL for the active churn model: the complaint trigger, and
for the 'sql' path score(bigint) and score_many.

A PL/Python call costs tens of microseconds before any scoring starts
(argument and result conversion, the Python frame, SPI round trips); a
small model written as one SQL expression costs a few. For an active churn
model with a compiled form, :func:`install` therefore replaces PL/pgSQL
functions with versions that have the model written in:

- ``scoring._on_complaints_inserted()``, the statement-level complaint
  trigger. One customer (the usual statement): one UPDATE that grows the
  counter and scores in the same row version, with the model's SQL
  expression ('sql' path, short expressions) or a call of
  ``scoring._score_profile`` (Python scores only; no SPI round trips), for
  'compiled' models and for 'sql' models whose expression is long:
  PostgreSQL sets an expression up anew in every statement, about 3.5 us
  per 1,000 characters here, where the Python call costs about 60 us.
  Several customers: for 'sql' models, a lock of the profiles in
  customer_id order (no deadlocks between concurrent inserts), then one
  UPDATE with the expression; for 'compiled' ones the vectorised Python
  path (``scoring._score_new_complaints``).
- ``scoring.score(bigint)`` and ``scoring.score_many(ids)`` for a 'sql'
  model: no Python in the backend at all (until a row is rejected:
  ``scoring._score_rejected`` raises or records it in Python). A long expression's batches
  (score_many, rescore) are scored with the compiled arrays in Python
  instead (paths.BATCH_SQL_MAX_CHARS).

The SQL is generated here, in the database, from the model's compiled
arrays (numbers and quoted category literals only), never taken from text
a loader supplied: these functions run as the schema owner. A body is
parsed in the session of whoever calls it first, under that session's
standard_conforming_strings: every literal in it reads back the same either
way (sqlgen writes E'' constants for text with a backslash; bodies and
queries are quoted by plpy.quote_literal, which does the same). Every other
model gets the Python path back (pgscore_server.paths.install, which is
``scoring._install_scoring_functions()``, writes it first, then calls
:func:`install` for models with a compiled form); the triggers on
scoring.deployments and scoring.models call it whenever the active model
or its path changes, in the same transaction. The bodies are the templates
of pgscore_server.plpgsql.
"""

from __future__ import annotations

from . import catalog, plans, registry
from .errors import NOT_IN_PREREQUISITE_STATE, UNDEFINED_OBJECT, ScoringError
from .paths import BATCH_SQL_MAX_CHARS, COMPILED_PATHS, SQL_ONE_ROW_MAX_CHARS
from .plpgsql import (
    ASSIGN_GUARDED,
    ASSIGN_TOTAL,
    MANY_IN_PYTHON,
    MANY_IN_SQL,
    SCORE_BODY,
    SCORE_MANY_JOIN,
    SCORE_MANY_RANGE,
    SCORE_MANY_SIGNATURE,
    SCORE_SIGNATURE,
    TRIGGER_BODY,
    TRIGGER_SIGNATURE,
    score_many_body,
    write,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (package docstring)
if TYPE_CHECKING:
    from typing import Any, Callable, Sequence

REJECT = "scoring._score_rejected({model_id}, p.customer_id, {{message}}, {mode})"

# complaint_count as it will be after the statement, in the one-customer branch.
ONE_CUSTOMER_COUNT = "(p.complaint_count + v_rows)"

MODEL_SQL = "SELECT compiled, scoring_path, feature_names FROM scoring.models WHERE model_id = $1"


def expression_for(plpy: Any, cache: dict, model_id: int, *, reject: str | None = None,
                   overrides: dict[str, str] | None = None) -> str:
    """The SQL expression of ``model_id`` over ``p`` (public.customer_profiles).

    Raises ScoringError when the model has no compiled form or SQL cannot
    express it exactly (the reason from the generator).
    """
    evaluator = _evaluator(plpy, cache, model_id, _model_row(plpy, cache, model_id))
    return _to_sql(plpy, cache, model_id, evaluator, reject=reject, overrides=overrides)


def install(plpy: Any, cache: dict, model_id: int) -> str:
    """Writes ``model_id`` into the complaint trigger, and for the 'sql'
    path into score(bigint) and score_many."""
    model_id = int(model_id)
    for key in ("pgscore.profile_columns", "pgscore.declared_types"):
        cache.pop(key, None)  # the profiles may just have been altered in this backend
    row = _model_row(plpy, cache, model_id)
    if row["scoring_path"] == "sql":
        return _install_sql(plpy, cache, model_id, _evaluator(plpy, cache, model_id, row))
    return _install_compiled(plpy, cache, model_id, list(row["feature_names"]))


def _install_sql(plpy: Any, cache: dict, model_id: int, evaluator: Any) -> str:
    def assignments(new_count: str) -> str:
        expression = _to_sql(plpy, cache, model_id, evaluator, reject=REJECT.format(model_id=model_id, mode="NULL"),
                             overrides={"complaint_count": new_count})
        form = ASSIGN_GUARDED if "scoring._score_rejected(" in expression else ASSIGN_TOTAL
        return form.format(expression=expression, model_id=model_id)

    one = assignments(ONE_CUSTOMER_COUNT)
    layout = catalog.row_layout(evaluator.feature_names, catalog.profile_columns(plpy, cache))
    if len(one) > SQL_ONE_ROW_MAX_CHARS and layout is not None:
        one = python_assignment(model_id, evaluator.feature_names, layout, plpy.quote_ident)
    many = MANY_IN_SQL.format(assign=assignments("(p.complaint_count + c.n)"))
    raising = _to_sql(plpy, cache, model_id, evaluator, reject=REJECT.format(model_id=model_id, mode="'raise'"))
    write(plpy, TRIGGER_SIGNATURE, TRIGGER_BODY.format(model_id=model_id, path="sql", one=one, many=many))
    write(plpy, SCORE_SIGNATURE, SCORE_BODY.format(model_id=model_id, expression=raising))
    if len(raising) > BATCH_SQL_MAX_CHARS:
        # score_many stays the Python path that paths.install wrote.
        return f"model_id {model_id} scored by generated SQL (batches in Python)"
    query = plpy.quote_literal(SCORE_MANY_JOIN.format(expression=raising))
    range_query = plpy.quote_literal(SCORE_MANY_RANGE.format(expression=raising))
    write(plpy, SCORE_MANY_SIGNATURE, score_many_body(model_id, query, range_query))
    return f"model_id {model_id} scored by generated SQL"


def batches_in_sql(plpy: Any, cache: dict, model: registry.LoadedModel) -> str | None:
    """The UPDATE that rescores a batch (an id range) of a 'sql' model, or
    None where the model's batches are scored in Python (BATCH_SQL_MAX_CHARS)."""
    if "rescore" not in model.plan_cache:
        expression = expression_for(plpy, cache, model.model_id,
                                    reject=REJECT.format(model_id=int(model.model_id), mode="'raise'"))
        model.plan_cache["rescore"] = None if len(expression) > BATCH_SQL_MAX_CHARS else (
            "UPDATE public.customer_profiles p"
            f" SET churn_score = {expression}, churn_model_id = {int(model.model_id)}, churn_scored_at = now()"
            " WHERE p.customer_id > $1 AND p.customer_id <= $2"
        )
    return model.plan_cache["rescore"]


def _install_compiled(plpy: Any, cache: dict, model_id: int, feature_names: list[str]) -> str:
    """The trigger of a 'compiled' model. Needs only the feature names: a
    compiled form that cannot be read fails at insert time, under
    scoring.on_error, as on the Python path."""
    columns = catalog.profile_columns(plpy, cache)
    layout = catalog.row_layout(feature_names, columns) if set(feature_names) <= columns.keys() else None
    if layout is None:
        return f"model_id {model_id} scored in Python (a feature is not a profile column of a plain type)"
    write(plpy, TRIGGER_SIGNATURE, compiled_trigger_body(model_id, feature_names, layout, plpy.quote_ident))
    return f"model_id {model_id} scored by generated PL/pgSQL calling Python"


def compiled_trigger_body(model_id: int, feature_names: Sequence[str], layout: str,
                          quote_ident: Callable[[str], str], score_function: str = "scoring._score_profile") -> str:
    """The complaint trigger's body for a 'compiled' model: one customer
    scored by :func:`python_assignment`, several by the vectorised Python
    path. The bench's floor passes a ``score_function`` that returns a constant."""
    one = python_assignment(model_id, feature_names, layout, quote_ident, score_function)
    return TRIGGER_BODY.format(model_id=int(model_id), path="compiled", one=one, many=MANY_IN_PYTHON)


def python_assignment(model_id: int, feature_names: Sequence[str], layout: str,
                      quote_ident: Callable[[str], str], score_function: str = "scoring._score_profile") -> str:
    """The one-customer score assignment through ``score_function``
    (scoring._score_profile's arguments: the features as one array per kind,
    cheaper to hand to Python than a whole row). ``layout`` is
    catalog.row_layout's; ``quote_ident`` is PostgreSQL's."""
    arrays = []
    for letter, kind in catalog.ROW_ARRAYS:
        items = [ONE_CUSTOMER_COUNT if name == "complaint_count" else f"p.{quote_ident(name)}"
                 for name, used in zip(feature_names, layout) if used == letter]
        arrays.append(f"ARRAY[{', '.join(items)}]::{kind}[]" if items else f"'{{}}'::{kind}[]")
    call = f"{score_function}({int(model_id)}, p.customer_id, '{layout}', {', '.join(arrays)})"
    return ASSIGN_GUARDED.format(expression=call, model_id=int(model_id))


def _model_row(plpy: Any, cache: dict, model_id: int) -> Any:
    rows = plans.run(plpy, cache, MODEL_SQL, ["bigint"], [model_id])
    if not rows:
        raise ScoringError(f"no model with model_id {model_id}", sqlstate=UNDEFINED_OBJECT,
                           hint="list the models with: pgscore models")
    return rows[0]


def _evaluator(plpy: Any, cache: dict, model_id: int, row: Any) -> Any:
    """The model's compiled arrays, read and checked against the profile table."""
    if row["compiled"] is None:
        raise ScoringError(f"model_id {model_id} has no compiled form, which the SQL path is written from",
                           sqlstate=NOT_IN_PREREQUISITE_STATE,
                           hint="see path_note in pgscore models for why it could not be compiled")
    # What a model_id's compiled form is never changes: the copy this backend
    # loaded to score it (push's test scoring, a compiled-path model) is
    # reused, so that push and activation read the archive once.
    loaded = registry.cached(cache, model_id)
    if loaded is not None and loaded.scoring_path in COMPILED_PATHS:
        evaluator = loaded.estimator
    else:
        evaluator = registry.load_compiled(bytes(row["compiled"]), f"model_id {model_id}")
    catalog.check_features(evaluator.feature_names, catalog.profile_columns(plpy, cache), f"model_id {model_id}")
    return evaluator


def _to_sql(plpy: Any, cache: dict, model_id: int, evaluator: Any, **options: Any) -> str:
    # Imported only to write SQL: sqlgen needs numpy, which a sql-path backend never loads.
    from . import sqlgen

    try:
        return sqlgen.to_sql(evaluator, "p", column_types=catalog.declared_types(plpy, cache), **options)
    except sqlgen.SqlUnsupported as exc:
        raise ScoringError(f"model_id {model_id} cannot be scored by plain SQL: {exc.reason}",
                           sqlstate=NOT_IN_PREREQUISITE_STATE,
                           hint="keep its scoring_path 'compiled'") from None
