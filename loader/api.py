"""pgscore's Python API: what the ``pgscore`` command does, one function per
operation. The command (:mod:`pgscore.cli`) is a thin layer over it, and the
package re-exports it (``pgscore.push_model``, ``pgscore.rescore``, ...).

Every function takes ``dsn`` first: a libpq connection string or URL, or
None for ``DATABASE_URL`` and then libpq's own environment
(:mod:`pgscore.connection`). What pgscore refuses raises one of its own
errors (:mod:`pgscore.errors`, each a ``PgscoreError``); what the database
refuses raises psycopg's class for that SQLSTATE (``psycopg.errors.*``).

The work itself is done where each function lives: pushing, checking and
activating models in :mod:`pgscore.models`, scorers (a model name bound to
a table of your own: attach, detach, list) in :mod:`pgscore.scorers`, approvals of pickles in
:mod:`pgscore.approvals`, migrations in :mod:`pgscore.migrate`. The
development tools (a local server, the demo, synthetic data) are in
:mod:`pgscore.dev`, the benchmark in :mod:`pgscore.bench`.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable

import psycopg

from .approvals import approve, list_approvals, revoke
from . import connection
from .connection import connect, resolve_conninfo
from .migrate import migrate
from .models import SCORING_PATHS, PushResult, activate, export_sql, list_models, push_model, rollback
from .scorers import attach, detach, list_scorers

__all__ = ["SCORING_PATHS", "PushResult", "activate", "approve", "attach", "detach", "export_sql", "list_approvals",
           "list_models", "list_scorers", "migrate", "push_model", "rescore", "revoke", "rollback", "runtime_info",
           "score"]

# The NOTICE scoring.rescore sends after each committed batch.
RESCORE_PROGRESS = re.compile(r"pgscore rescore: (\d+)/(\d+) profiles")


def runtime_info(dsn: str | None = None) -> dict:
    """``scoring.runtime_info()``: the schema revision and the versions of the
    server's Python and pinned libraries (``python``, ``scikit-learn``, ...)."""
    with connect(dsn) as conn:
        return conn.execute("SELECT scoring.runtime_info()").fetchone()[0]


def plpython_preloaded(dsn: str | None = None) -> bool | None:
    """Whether the server preloads PL/Python (:func:`pgscore.connection.plpython_preloaded`),
    asked as the DSN's own role: pgscore's roles may not read the setting."""
    with psycopg.connect(resolve_conninfo(dsn), autocommit=True) as conn:
        return connection.plpython_preloaded(conn)


def score(dsn: str | None, customer_ids: Iterable[int], model: str = "churn") -> dict[int, float]:
    """Customer id -> the churn score of that profile by ``model``'s active
    version, computed now in the database (``scoring.score_many``); nothing is
    written. Raises psycopg.errors.NoDataFound naming ids without a profile."""
    with connect(dsn) as conn:
        return dict(conn.execute("SELECT customer_id, score FROM scoring.score_many(%s, %s)",
                                 [list(customer_ids), model]).fetchall())


def rescore(dsn: str | None = None, name: str = "churn", batch_size: int = 10_000,
            progress: Callable[[int, int], None] | None = None) -> int:
    """``CALL scoring.rescore``: rescores every profile with ``name``'s active
    model, committing per batch; returns how many profiles were rescored.
    ``progress(done, total)`` is called after each batch."""
    done = 0

    def on_notice(diag: psycopg.errors.Diagnostic) -> None:
        nonlocal done
        found = RESCORE_PROGRESS.match(diag.message_primary or "")
        if found:
            done = int(found.group(1))
            if progress is not None:
                progress(done, int(found.group(2)))

    with connect(dsn, autocommit=True) as conn:
        conn.add_notice_handler(on_notice)
        conn.execute("CALL scoring.rescore(%s, %s)", [name, batch_size])
    return done
