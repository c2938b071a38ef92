"""What pgscore reads of a server's settings, outside the database."""

from __future__ import annotations

import pytest

from pgscore.connection import preloaded_names


@pytest.mark.parametrize(("setting", "names"), [
    ("plpgsql,plpython3", ["plpgsql", "plpython3"]),
    ('pg_stat_statements, "$libdir/plpython3.so"', ["pg_stat_statements", "plpython3"]),
    ("$libdir/plpython3", ["plpython3"]),
    ("pg_cron", ["pg_cron"]),
    ("", []),
])
def test_preloaded_libraries_by_bare_name(setting, names):
    assert preloaded_names(setting) == names
