"""Security (issue 18): the server unpickles a model blob only when a
superuser approved its sha256 (scoring_trusted.approved_pickles, written by
`pgscore approve`); the in-database Python and its loader move from schema
scoring, which scoring_owner owns and may drop objects in, to
scoring_trusted, owned by the migrating superuser. Joblib models in use are
not approved automatically: the upgrade warns about each one.

Before anything reads or writes schema scoring as the migrating superuser,
sql/idempotent/005-schema-check.sql refuses when scoring holds objects
pgscore did not create (a view, rule or trigger of scoring_owner's would
run its code as the superuser); later revisions run it first too. The
installed code ends by recording the functions it installed
(scoring_trusted.installed_functions), which that check compares.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-24
"""

from pgscore import render
from pgscore.migrations.sqlops import run_sql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


SCHEMA_CHECK = ("idempotent", "005-schema-check.sql")


def upgrade() -> None:
    run_sql(render.sql_file(*SCHEMA_CHECK))
    run_sql(render.sql_file("incremental", "0009-trusted-code.sql"))
    run_sql(render.released_code("0009"))


def downgrade() -> None:
    run_sql(render.sql_file(*SCHEMA_CHECK))
    run_sql(render.sql_file("incremental", "0009-trusted-code.down.sql"))
    run_sql(render.released_code("0008"))
