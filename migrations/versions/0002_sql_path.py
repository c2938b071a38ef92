"""The 'sql' scoring path: generated SQL in the complaint trigger and score(bigint).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from pgscore import render
from pgscore.migrations.sqlops import run_sql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql(render.sql_file("incremental", "0002-sql-path.sql"))
    run_sql(render.released_code("0002"))


def downgrade() -> None:
    run_sql(render.sql_file("incremental", "0002-sql-path.down.sql"))
    run_sql(render.released_code("0001"))
