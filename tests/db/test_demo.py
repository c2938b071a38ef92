"""`pgscore demo`, one of the README's two commands: it runs end to end on an
empty database, and never changes a database that already holds data."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.floats import CONTRACT

PGSCORE = [sys.executable, "-m", "pgscore.cli"]


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    environment.update(env or {})
    return subprocess.run(PGSCORE + args, capture_output=True, text=True, env=environment, timeout=600)


@pytest.mark.slow
def test_demo_runs_end_to_end_on_an_empty_database(db):
    result = _run(["demo", "--dsn", db.dsn(), "--profiles", "400"])
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for step in ("migrating", "pushing it", "the application inserts complaints", "an analyst scores in SQL",
                 "rolling back", "the model registry", "demo complete"):
        assert f"== {step}" in out or step in out, step
    difference = float(re.search(r"max difference from local predict_proba ([0-9.e+-]+)", out).group(1))
    assert difference <= CONTRACT
    assert "Traceback" not in result.stderr
    with db.connect() as conn:
        assert conn.execute("SELECT count(*) FROM scoring.models").fetchone()[0] == 2
        counts_match = conn.execute(
            "SELECT bool_and(p.complaint_count = (SELECT count(*) FROM complaints c"
            " WHERE c.customer_id = p.customer_id)) FROM customer_profiles p"
            " WHERE p.customer_id IN (SELECT customer_id FROM complaints)").fetchone()[0]
    assert counts_match


@pytest.mark.parametrize("source", ["DATABASE_URL", "--dsn"])
def test_demo_refuses_a_database_that_holds_data(seeded, source):
    args = ["demo", "--profiles", "100"]
    env = {}
    if source == "--dsn":
        args += ["--dsn", seeded.dsn()]
    else:
        env["DATABASE_URL"] = seeded.dsn()
    result = _run(args, env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"(from {source}) already holds 300 profile(s)" in lines[0]
    assert "env -u DATABASE_URL pgscore demo" in lines[0] and "--dsn of an empty database" in lines[0]
    with seeded.connect() as conn:
        assert conn.execute("SELECT count(*) FROM scoring.models").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM complaints").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM customer_profiles").fetchone()[0] == 300
