"""The scoring-path policy, in one place: which paths there are, which of
them use the compiled arrays, when generated SQL pays off, and which
scoring functions the active churn model gets.

Every model version is scored on one of four paths
(``scoring.models.scoring_path``):

- 'sql': its compiled arrays written as one SQL expression
  (pgscore_server.sqlgen) into the complaint trigger, scoring.score(bigint)
  and scoring.score_many, so that scoring it needs no Python
  (pgscore_server.sqlpath); where SQL would be slower, Python scores it
  with the compiled arrays;
- 'compiled': the compiled arrays, evaluated with numpy
  (pgscore_server.compiled); nothing is unpickled;
- 'sklearn': the scikit-learn estimator rebuilt from its blob;
- 'onnx': an ONNX graph run by onnxruntime (pgscore_server.onnxpath).

``pgscore push`` chooses one ('auto': the fastest path whose scores equal
predict_proba) and scoring.set_scoring_path forces one; :func:`install` puts
the active churn model's path into the scoring functions.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (package docstring)
if TYPE_CHECKING:
    from typing import Any

PATHS = ("sql", "compiled", "sklearn", "onnx")
# The path of an ONNX graph (format 'onnx', and only that format: the
# models_path_reads_format CHECK), scored by onnxruntime (pgscore_server.onnxpath).
ONNX_PATH = "onnx"
# Paths scored with the compiled arrays wherever Python scores them.
COMPILED_PATHS = ("compiled", "sql")

# Push's 'auto' puts a model on the sql path only when its SQL is at most
# this long. PostgreSQL sets the expression up again in every statement
# (about 4 ns per character measured here): the 100-tree demo GBM (68 kB)
# still beats the compiled Python path on the figures where SQL is used for
# it (bulk inserts, score(bigint) in a new connection; its batches are
# scored in Python either way, see BATCH_SQL_MAX_CHARS), a 100-tree random
# forest (1.4 MB) loses on all of them.
SQL_PATH_MAX_CHARS = 200_000

# Longer expressions score one customer faster through scoring._score_profile:
# PostgreSQL sets an expression up anew in every statement, about 3.5 us per
# 1,000 characters here, where the Python call costs about 60 us.
SQL_ONE_ROW_MAX_CHARS = 16_000

# A longer expression scores batches (score_many, rescore) slower than the
# compiled arrays in Python: PostgreSQL evaluates every split of it in its
# expression interpreter (~10 us per profile for the 100-tree demo GBM,
# 68 kB). Side by side on 1M profiles the GBM's score_many took 7.2-8.1 s
# through Python against 9.2-12.1 s as SQL in parallel workers, and its
# rescore 14.8-16.8 s against 20.8-23.0 s. Such a model keeps its SQL where
# one statement's set-up is shared by many rows (the trigger's
# multi-customer branch: a bulk insert of 100k complaints took 4.6-6.6 s
# against 6.8-7.5 s) and in score(bigint), which imports no Python.
BATCH_SQL_MAX_CHARS = 16_000

# The model name the complaint trigger and score(bigint) score with.
TRIGGER_MODEL = "churn"

# One writer at a time: CREATE OR REPLACE of one function in two
# transactions at once fails with "tuple concurrently updated".
INSTALL_LOCK_SQL = "SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('scoring._install_scoring_functions'))"


def install(plpy: Any, cache: dict) -> str:
    """scoring._install_scoring_functions(): writes the complaint trigger,
    score(bigint) and score_many for the active churn model (the triggers on
    scoring.deployments and scoring.models and the profiles' ALTER TABLE
    call it, in the same transaction). The Python path first; a model with
    a compiled form then gets its generated versions (pgscore_server.sqlpath).
    Returns what it wrote, in words."""
    # Here, not at the top: the scoring modules import this one for its constants.
    from . import plpgsql, registry, sqlpath

    plpy.execute(INSTALL_LOCK_SQL)
    active = registry.active_model_id(plpy, cache, TRIGGER_MODEL)
    plpgsql.write(plpy, plpgsql.TRIGGER_SIGNATURE, plpgsql.PYTHON_TRIGGER_BODY)
    plpgsql.write(plpy, plpgsql.SCORE_SIGNATURE, plpgsql.PYTHON_SCORE_BODY)
    plpgsql.write(plpy, plpgsql.PYTHON_SCORE_MANY_SIGNATURE, plpgsql.PYTHON_SCORE_MANY_BODY)
    if active is not None and active[2] in COMPILED_PATHS:
        return sqlpath.install(plpy, cache, active[0])
    return "scored in Python"
