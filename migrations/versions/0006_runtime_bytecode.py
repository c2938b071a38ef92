"""The in-database Python is stored compiled too (scoring.runtime_modules.
bytecode, filled by the server's own Python), so that a new backend
unmarshals code objects instead of compiling every module from source; a
compiled model's first score imports neither typing nor json. In-database
code: rescore of a 'sql' model writes each batch with one UPDATE that walks
the primary key, without a separate row-locking pass.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22
"""

from pgscore import render
from pgscore.migrations.sqlops import run_sql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql(render.sql_file("incremental", "0006-runtime-bytecode.sql"))
    run_sql(render.released_code("0006"))


def downgrade() -> None:
    run_sql(render.sql_file("incremental", "0006-runtime-bytecode.down.sql"))
    run_sql(render.released_code("0005"))
