"""Models from other tools: format 'compiled' (the blob is the compiled
archive: XGBoost, LightGBM) and scoring path 'onnx' (onnxruntime in the
server) (sql/incremental/0012-model-formats.sql). Its downgrade stops,
naming them, while any model uses either, and restores the code recorded
at 0011 (or the code 0011 released).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04
"""

from pgscore import render
from pgscore.migrations import codesets
from pgscore.migrations.sqlops import run_sql

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql(render.sql_file("incremental", "0012-model-formats.sql"))


def downgrade() -> None:
    run_sql(render.sql_file("incremental", "0012-model-formats.down.sql"))
    run_sql(codesets.restore_recorded_or_released(down_revision))
