"""The settings pgscore reads (its scoring.* GUCs and PostgreSQL's own), in one place."""

from __future__ import annotations

import os

from . import plans
from .errors import INVALID_PARAMETER_VALUE, PROGRAM_LIMIT_EXCEEDED, ScoringError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (package docstring)
if TYPE_CHECKING:
    from typing import Any

ON_ERROR_CHOICES = ("keep", "raise")

# Largest number of rows handed to one model call by the set-based paths.
CHUNK_ROWS = 50_000

# scoring.max_batch_ids: most customer_ids one scoring.score_many call takes.
# A bound on what one call of the least trusted roles costs the server (5M
# ids grew a backend by ~770 MB on the compiled path); pgscore bench scores
# 1,000,000 profiles in one call. Like statement_timeout, any session may
# SET it: a guard against runaway calls, not against a hostile session.
MAX_BATCH_IDS = "scoring.max_batch_ids"
MAX_BATCH_IDS_DEFAULT = 1_000_000
_MAX_BATCH_IDS_DIGITS = 18  # any such number fits a bigint
TOO_MANY_IDS = "scoring.score_many was given {count} customer_ids; scoring.max_batch_ids allows at most {limit}"
TOO_MANY_IDS_HINT = ("score them in smaller batches, or raise the cap for this session: "
                     "SET scoring.max_batch_ids = {count}  (or ALTER ROLE your_login SET scoring.max_batch_ids = ...)")
BAD_MAX_BATCH_IDS = "scoring.max_batch_ids is {value}; it must be a positive whole number of customer_ids"
BAD_MAX_BATCH_IDS_HINT = f"RESET scoring.max_batch_ids  -- the default is {MAX_BATCH_IDS_DEFAULT}"


def on_error(plpy: Any, cache: dict, given: str | None = None) -> str:
    """``scoring.on_error``: 'keep' (default) or 'raise'; ``given`` (a
    caller's own mode) instead of the setting when it is not None.

    Raises ScoringError for any other value, naming the allowed ones.
    """
    if given is None:
        given = plans.run(plpy, cache, "SELECT pg_catalog.current_setting('scoring.on_error', true) AS v")[0]["v"]
    value = (given or "keep").strip().lower()
    if value not in ON_ERROR_CHOICES:
        raise ScoringError(
            f"scoring.on_error is {value!r}; it must be 'keep' or 'raise'",
            sqlstate=INVALID_PARAMETER_VALUE,
            hint="SET scoring.on_error = 'keep'  -- or 'raise'",
        )
    return value


def batch_threads(plpy: Any, cache: dict, rows: int) -> int:
    """Threads the tree walk of a batch of ``rows`` may use in this backend:
    the leader plus ``max_parallel_workers_per_gather`` (PostgreSQL's own
    bound for one query's parallelism, so 0 means one thread), at most one
    per CPU; one, without asking, for a batch too small to be walked in threads."""
    # Imported here: a backend on the sql path never loads compiled.
    from .compiled import THREADED_MIN_ROWS

    if rows < THREADED_MIN_ROWS:
        return 1
    setting = plans.run(plpy, cache, "SELECT current_setting('max_parallel_workers_per_gather')::int AS v")
    return max(1, min(1 + setting[0]["v"], os.cpu_count() or 1))


def check_batch_ids(plpy: Any, cache: dict, count: int) -> None:
    """Raises ScoringError (SQLSTATE 54000, program_limit_exceeded) when
    ``count`` ids exceed ``scoring.max_batch_ids``, naming the setting and
    how to raise it; 22023 when the setting is not a positive whole number.
    The generated score_many of the sql path checks the same in PL/pgSQL
    (:data:`BATCH_IDS_CHECK_PLPGSQL`)."""
    rows = plans.run(plpy, cache, f"SELECT pg_catalog.current_setting('{MAX_BATCH_IDS}', true) AS v")
    value = (rows[0]["v"] or "").strip()
    if not value:
        limit = MAX_BATCH_IDS_DEFAULT
    elif value.isdigit() and value.isascii() and len(value) <= _MAX_BATCH_IDS_DIGITS and int(value) >= 1:
        limit = int(value)
    else:
        raise ScoringError(BAD_MAX_BATCH_IDS.format(value=repr(value)), sqlstate=INVALID_PARAMETER_VALUE,
                           hint=BAD_MAX_BATCH_IDS_HINT)
    if count > limit:
        raise ScoringError(TOO_MANY_IDS.format(count=count, limit=limit), sqlstate=PROGRAM_LIMIT_EXCEEDED,
                           hint=TOO_MANY_IDS_HINT.format(count=count))


def _sql_text(text: str) -> str:
    assert "\\" not in text  # a plain constant reads back the same only without backslashes
    return "'" + text.replace("'", "''") + "'"


# The same check in the generated PL/pgSQL of score_many (pgscore_server.sqlpath):
# v_count holds cardinality(customer_ids), v_cap is a text variable. No
# backslash anywhere: the body is parsed under the caller's standard_conforming_strings.
BATCH_IDS_CHECK_PLPGSQL = f"""\
    v_cap := pg_catalog.btrim(coalesce(pg_catalog.current_setting('{MAX_BATCH_IDS}', true), ''));
    IF v_cap <> '' AND (v_cap !~ '^[0-9]{{1,{_MAX_BATCH_IDS_DIGITS}}}$' OR v_cap::bigint < 1) THEN
        RAISE EXCEPTION '%', format({_sql_text(BAD_MAX_BATCH_IDS.format(value='%L'))}, v_cap)
            USING ERRCODE = 'invalid_parameter_value', HINT = {_sql_text(BAD_MAX_BATCH_IDS_HINT)};
    END IF;
    IF v_count > coalesce(nullif(v_cap, '')::bigint, {MAX_BATCH_IDS_DEFAULT}) THEN
        RAISE EXCEPTION '%', format({_sql_text(TOO_MANY_IDS.format(count='%s', limit='%s'))}, v_count,
                                    coalesce(nullif(v_cap, '')::bigint, {MAX_BATCH_IDS_DEFAULT}))
            USING ERRCODE = 'program_limit_exceeded',
                  HINT = format({_sql_text(TOO_MANY_IDS_HINT.format(count='%s'))}, v_count);
    END IF;
"""
