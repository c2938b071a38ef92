"""Code sets: pgscore's in-database code is installed after the revisions,
by content (pgscore.migrations.codesets), instead of frozen into each
revision. This revision adds the tables that keep the code sets
(sql/incremental/0010-code-sets.sql); env.py then installs the package's
code set. Its downgrade restores the code revision 0009 released.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

from pgscore import render
from pgscore.migrations import codesets
from pgscore.migrations.sqlops import run_sql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


SCHEMA_CHECK = ("idempotent", "005-schema-check.sql")


def upgrade() -> None:
    run_sql(render.sql_file(*SCHEMA_CHECK))
    run_sql(render.sql_file("incremental", "0010-code-sets.sql"))


def downgrade() -> None:
    run_sql(render.sql_file(*SCHEMA_CHECK))
    # 0009 installed its code before code sets were recorded: it comes from the package.
    run_sql(codesets.install_sql(render.released_code_set("0009"), "0009"))
    run_sql(render.sql_file("incremental", "0010-code-sets.down.sql"))
