"""Installing pgscore's in-database code as code sets (docs/migrations.md).

Revisions change tables and data; the code (sql/idempotent/ and plpython/,
rendered by pgscore.render) is installed after them, by env.py, when the
database ends at head and its installed code set is not this package's.
A revision's downgrade calls :func:`restore_recorded` with its
down_revision: the code set last installed at that revision comes back,
and whatever the newer code had beyond it is dropped
(sql/codeset/switch.sql).

Everything is emitted as SQL, so that ``alembic upgrade head --sql`` and
``alembic downgrade ... --sql`` print what would run, and run the same.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from pgscore import render

CODE_SET_QUOTE = "$pgscore_code_set$"
LAST_INSTALLED_SQL = (
    "SELECT h.revision, h.code_set_sha FROM scoring_trusted.code_history h ORDER BY h.seq DESC LIMIT 1"
)
REVISION = re.compile(r"[0-9A-Za-z_]+")


def _revision_literal(revision: str) -> str:
    if not REVISION.fullmatch(revision):
        raise ValueError(f"not an alembic revision id: {revision!r}")
    return f"'{revision}'"


def record_sql(code_set: render.CodeSet) -> str:
    """Stores ``code_set`` (its install SQL and its modules) unless it is stored already."""
    runtime_sha = f"'{code_set.runtime_sha}'" if code_set.runtime_sha else "NULL"
    statements = [
        render.modules_sql(code_set.runtime_sha, code_set.modules) if code_set.modules else "",
        "INSERT INTO scoring_trusted.code_sets (code_set_sha, install_sql, runtime_sha)"
        f" VALUES ('{code_set.sha}',\n"
        f"{render.dollar_quoted(code_set.install_sql, CODE_SET_QUOTE, 'the install SQL')},\n"
        f"{runtime_sha}) ON CONFLICT DO NOTHING;",
    ]
    return "\n".join(statement for statement in statements if statement)


def switch_sql(code_set_expression: str, revision: str) -> str:
    """Installs the recorded code set that ``code_set_expression`` (SQL) names, at ``revision``."""
    switch = render.sql_file("codeset", "switch.sql")
    switch = switch.replace("{{CODE_SET}}", code_set_expression).replace("{{REVISION}}", _revision_literal(revision))
    return switch + "\n" + render.with_policy(render.sql_file("codeset", "record-functions.sql"))


def install_sql(code_set: render.CodeSet, revision: str) -> str:
    """Records ``code_set`` and makes it the installed code, at ``revision``."""
    return record_sql(code_set) + "\n" + switch_sql(f"'{code_set.sha}'", revision)


def restore_recorded_or_released(revision: str) -> str:
    """For a revision's downgrade: the code set last installed at
    ``revision`` becomes the installed code again, or, where no code was
    ever installed at it (the database was upgraded past it in one go), the
    code that revision released (render.released_code_set)."""
    released = render.released_code_set(revision)
    return record_sql(released) + "\n" + switch_sql(
        "coalesce((SELECT h.code_set_sha FROM scoring_trusted.code_history h"
        f" WHERE h.revision = {_revision_literal(revision)} ORDER BY h.seq DESC LIMIT 1), '{released.sha}')",
        revision,
    )


def restore_recorded(revision: str) -> str:
    """For a revision's downgrade: the code set last installed at ``revision``
    (its down_revision) becomes the installed code again."""
    return switch_sql(
        "(SELECT h.code_set_sha FROM scoring_trusted.code_history h"
        f" WHERE h.revision = {_revision_literal(revision)} ORDER BY h.seq DESC LIMIT 1)",
        revision,
    )


def after_migrations(run_sql: Callable[[str], None], fetch_last: Callable[[], Any] | None,
                     at_head: bool, head: str) -> bool:
    """Installs this package's code set when the migrations left the database
    at ``head`` and its code is another (or was installed at another revision).

    ``fetch_last`` reads the last code_history row (online); offline it is
    None and the code set is emitted whenever the migrations reached head.
    Returns whether it installed."""
    if not at_head:
        return False
    code_set = render.current_code_set()
    if fetch_last is not None and fetch_last() == (head, code_set.sha):
        return False
    run_sql(install_sql(code_set, head))
    return True
