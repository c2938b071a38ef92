"""Running a block of SQL text from a revision, online or as --sql output.

Function bodies are Python full of ':' and '%', so the text goes to the
driver untouched (no bind-parameter parsing) rather than through op.execute.
"""

from __future__ import annotations

from alembic import context, op
from alembic.runtime.migration import MigrationContext


def run_sql(sql: str, migration_context: MigrationContext | None = None) -> None:
    """Runs ``sql`` in a revision, or (given its ``migration_context``) after
    the revisions, as env.py installs the code set."""
    migration_context = migration_context or op.get_context()
    if context.is_offline_mode():
        migration_context.impl.static_output(sql.strip() + "\n")
    else:
        migration_context.bind.exec_driver_sql(sql, execution_options={"no_parameters": True})
