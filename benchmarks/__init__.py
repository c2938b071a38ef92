"""`pgscore bench`: pgscore against its baselines, side by side, in one run.

Installed as ``pgscore.bench`` from benchmarks/ (beside it: README.md and
results/, the runs the docs quote). It measures through pgscore's public
functions (:mod:`pgscore.api`, the SQL functions of schema scoring), except
for the floors' triggers (:mod:`.floors`).

Every figure is a ratio against a baseline measured in the same run on the
same database, because absolute times on a small shared machine are noisy.
Runs in a fresh database ``pgscore_bench`` (needs a superuser DSN, or the
local server when none is given), prints a table and writes JSON.

Figures (see docs/performance.md):
  P1 single-row complaint INSERTs, one client, durable commit (pgbench)
  P2 the same with synchronous_commit = off
  P3 one INSERT ... SELECT of many complaints
  P4 analyst scoring of every profile: score_many vs out-of-DB and per-row score()
  P5 CALL scoring.rescore() vs an out-of-DB rescoring pipeline
  P6 first score in a new connection, and that backend's RSS growth
  P7 max abs difference from the loader's predict_proba
  P8 8 clients inserting for 10 hot customers
the scorers' (issue 20):
  P5n  rescore into the narrow score table vs score columns on the profile row (both generic)
  P5g  rescore of a generic scorer's score columns vs the reference scorer's rescore
  P9   single-row profile UPDATEs of a feature, with the rescoring trigger vs without
  P9b  one UPDATE of many profiles' feature, the same both ways
and with --floors, P1, P2 and P8 of the trigger designs without a model's cost:
  floor    pgscore's statement trigger writing constant scores
  floorpy  the same calling PL/Python as the compiled path does, for a constant
  row-lr   a row trigger scoring with the LR's SQL expression instead
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from .. import api
from ..connection import resolve_conninfo
from ..dev import localdb
from ..dev.demo_data import train_demo_model
from ..dev.seed import seed_profiles
from .figures import BASELINE_TRIGGER_SQL, FAMILIES, Figures
from .floors import FLOORS
from .memory import backend_here
from .report import HEADER, Report, Sizes

__all__ = ["BENCH_DATABASE", "FAMILIES", "FLOORS", "Sizes", "backend_here", "check_families", "run_bench"]

BENCH_DATABASE = "pgscore_bench"


def run_bench(dsn: str | None, quick: bool = False, out: str = "bench-results/bench.json", *,
              floors: bool = False, sizes: Sizes | None = None, database: str = BENCH_DATABASE,
              families: Sequence[str] | None = None) -> dict:
    """Runs every figure in a fresh ``database`` (dropped first if it exists)
    and writes the results to ``out``; with ``floors``, the trigger designs'
    floors too (FLOORS). ``families`` (default: all of FAMILIES) picks the
    models measured, side by side in one run. ``sizes`` overrides the
    default or quick sizes (the tests run the whole bench small).

    Raises ValueError, before anything runs, for a family not in FAMILIES,
    or with ``floors`` when ``families`` lacks 'logreg' or 'rf' (the
    floors are built from their models)."""
    chosen = check_families(FAMILIES if families is None else families, floors)
    sizes = sizes or Sizes.for_run(quick)
    admin, stop_local = _server(dsn)
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="pgscore-bench-"))
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        target = make_conninfo(admin, dbname=database)
        print(f"pgscore bench ({'quick' if quick else 'full'}): {sizes.profiles} profiles, on {platform.node()}",
              flush=True)
        api.migrate(target)
        with psycopg.connect(target, autocommit=True) as conn:
            seed_profiles(conn, sizes.profiles, seed=11)
            conn.execute("VACUUM ANALYZE public.customer_profiles")
            conn.execute(BASELINE_TRIGGER_SQL)
            conn.execute("ALTER TABLE public.complaints DISABLE TRIGGER bench_count_complaint")
        models = {}
        for family in chosen:
            pipeline, metrics = train_demo_model(rows=5000, seed=0, kind=family)
            result = api.push_model(target, pipeline, name="churn", metrics=metrics, note=f"bench {family}")
            models[family] = (pipeline, result)
            print(f"{family}: scoring path {result.scoring_path} ({result.path_note})", flush=True)
        report = Report()
        print(HEADER)
        Figures(target, sizes, report, models, workdir).run_all(floors)
        results = {
            "quick": quick, "floors": floors, "families": chosen, "sizes": sizes.__dict__,
            "machine": {"cores": os.cpu_count(), "node": platform.node()},
            "seconds": round(time.perf_counter() - started, 1), "figures": report.rows,
        }
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(results, indent=2, default=str))
        print(f"\n{len(report.rows)} figures in {results['seconds']} s; saved {out}")
        return results
    finally:
        shutil.rmtree(workdir, ignore_errors=True)  # pgbench scripts and transaction logs
        if stop_local is not None:
            stop_local()


def check_families(families: Sequence[str], floors: bool = False) -> list[str]:
    """``families`` in FAMILIES' order, each once; raises ValueError naming
    what is wrong and what is allowed."""
    unknown = [family for family in families if family not in FAMILIES]
    if unknown or not families:
        raise ValueError(f"unknown bench famil{'y' if len(unknown) == 1 else 'ies'} {', '.join(map(repr, unknown))}"
                         f"; choose from {', '.join(FAMILIES)}" if unknown
                         else f"no bench family given; choose from {', '.join(FAMILIES)}")
    chosen = [family for family in FAMILIES if family in families]
    missing = [family for family in ("logreg", "rf") if family not in chosen]
    if floors and missing:
        raise ValueError(f"--floors needs the families logreg and rf (its floors are built from their models);"
                         f" add {', '.join(missing)} or drop --floors")
    return chosen


def _server(dsn: str | None) -> tuple[str, Callable[[], Any] | None]:
    """(superuser DSN, how to stop the local server afterwards or None)."""
    given = resolve_conninfo(dsn)
    if given:
        return given, None
    local = localdb.local_database()
    was_running = local.is_running()
    admin = local.start()
    return make_conninfo(admin, dbname="postgres"), (None if was_running else local.stop)
