"""One customer's complaint is scored in Python without SPI round trips
(compiled models, long SQL expressions); an ALTER TABLE of the profiles
rewrites the generated functions; +-inf refused where scikit-learn's
imputer or scaler refuses it.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from pgscore import render
from pgscore.migrations.sqlops import run_sql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql(render.sql_file("incremental", "0003-row-scorer.sql"))
    run_sql(render.released_code("0003"))


def downgrade() -> None:
    run_sql(render.sql_file("incremental", "0003-row-scorer.down.sql"))
    run_sql(render.released_code("0002"))
