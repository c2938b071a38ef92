"""In-database code only: scoring.score_many on the Python paths takes the
scores from Python as one float8[] in input order and pairs them with the
ids in SQL (scoring._scores_py, which replaces the set-returning
scoring._score_many_py: PL/Python converted each (id, score) row on its
own). No table changes.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22
"""

from pgscore import render
from pgscore.migrations.sqlops import run_sql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Replaced by scoring._scores_py, which score_many pairs with the ids.
    run_sql("DROP FUNCTION IF EXISTS scoring._score_many_py(bigint[], text);")
    run_sql(render.released_code("0005"))


def downgrade() -> None:
    # 0004's rendering has no scoring._scores_py; drop it first.
    run_sql("DROP FUNCTION IF EXISTS scoring._scores_py(bigint[], text);")
    run_sql(render.released_code("0004"))
