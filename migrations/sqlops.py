"""Running a block of SQL text from a revision, online or as --sql output.

Function bodies are Python full of ':' and '%', so the text goes to the
driver untouched (no bind-parameter parsing) rather than through op.execute.
"""

from __future__ import annotations

from alembic import context, op


def run_sql(sql: str) -> None:
    if context.is_offline_mode():
        op.get_context().impl.static_output(sql.strip() + "\n")
    else:
        op.get_bind().exec_driver_sql(sql, execution_options={"no_parameters": True})
