"""In-database code only: batch reads of a compiled model send one-hot
encoded text features as one code character per profile (decoding and
looking up 1M strings cost ~0.4 s per feature), score_many reads a chunk of
consecutive ids as a range of the primary key, the vectorised tree walk
moves fewer bytes per level, rescore in Python reads its batches without
locking them (and writes only profiles that did not change meanwhile), and
a 'sql' model with a long expression scores its batches in Python. No
table changes.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23
"""

from pgscore import render
from pgscore.migrations.sqlops import run_sql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql(render.released_code("0007"))


def downgrade() -> None:
    run_sql(render.released_code("0006"))
