"""Initial schema: reference tables, scoring schema, roles, functions, trigger.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from pgscore import render
from pgscore.migrations.sqlops import run_sql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql(render.sql_file("incremental", "0001-roles.sql"))
    run_sql(render.sql_file("incremental", "0001-tables.sql"))
    run_sql("CREATE EXTENSION IF NOT EXISTS plpython3u;")
    # As 0001 shipped it: later revisions change the working files.
    run_sql(render.released_code("0001"))


def downgrade() -> None:
    # The extension stays: other schemas may use plpython3u.
    run_sql(render.sql_file("incremental", "0001-tables.down.sql"))
    run_sql(render.sql_file("incremental", "0001-roles.down.sql"))
