"""In-database code only: scores cross from PL/Python to SQL as the bit
patterns of their float8 values (bigint), decoded exactly by
scoring._float8_from_bits. PL/Python passes a float through its text form,
~1 us a score (about 1 s per 1M profiles, in rescore and in score_many);
an integer costs a fraction of that. scoring._score_bits_py replaces
scoring._scores_py. No table changes.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23
"""

from pgscore import render
from pgscore.migrations.sqlops import run_sql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Replaced by scoring._score_bits_py, which score_many decodes.
    run_sql("DROP FUNCTION IF EXISTS scoring._scores_py(bigint[], text);")
    run_sql(render.released_code("0008"))


def downgrade() -> None:
    # 0007's rendering has neither function; drop them first.
    run_sql("DROP FUNCTION IF EXISTS scoring._score_bits_py(bigint[], text);")
    run_sql("DROP FUNCTION IF EXISTS scoring._float8_from_bits(bigint);")
    run_sql(render.released_code("0007"))
