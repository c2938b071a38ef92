"""In-database code only: one generated function per small tree ensemble
from raw values to the leaves, one row of a tree model scored without numpy
(the server reads the compiled archive itself), a row scorer that reloads a
model cached for the scikit-learn path, and a failing score that PostgreSQL
evaluates twice under a concurrent insert (EvalPlanQual) recorded once. No
table changes.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from pgscore import render
from pgscore.migrations.sqlops import run_sql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql(render.released_code("0004"))


def downgrade() -> None:
    run_sql(render.released_code("0003"))
