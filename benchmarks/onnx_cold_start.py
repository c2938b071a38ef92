"""P6 of the 'onnx' path beside the compiled and sql paths, in one run.

``python -m pgscore.bench.onnx_cold_start [--dsn SUPERUSER_DSN] [--starts N]``

The same demo pipelines (logistic regression, 100-tree GBM) pushed twice to a
fresh database ``pgscore_bench_onnx``: as scikit-learn pipelines (compiled /
sql paths) and converted by skl2onnx (the 'onnx' path, approved by the
superuser). For each, N brand-new connections each time ``SELECT
scoring.score(1::bigint)``, the first score of a new backend; the median time
and the backend's VmRSS growth (with its private / libraries / shared-buffers
parts, read from /proc, so the server must run on this machine) are printed
and written as JSON. The server's runtime needs the onnx extra (``pgscore
runtime add onnx``; the local server when no DSN is given). Not part of
``pgscore bench`` (whose families are compiled models): docs/performance.md
quotes its output.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from .. import api
from ..dev import localdb
from ..dev.demo_data import PROFILE_COLUMNS, TEXT_COLUMNS, train_demo_model
from ..dev.seed import seed_profiles
from ..migrate import migrate
from .memory import first_score

DATABASE = "pgscore_bench_onnx"


def onnx_bytes(pipeline) -> bytes:
    """skl2onnx's conversion, one input per profile column (strings; float32 otherwise)."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    types = [(c, StringTensorType([None, 1]) if c in TEXT_COLUMNS else FloatTensorType([None, 1]))
             for c in PROFILE_COLUMNS]
    return to_onnx(pipeline, initial_types=types).SerializeToString()


def measure(admin_dsn: str, starts: int = 5, folder: Path | None = None) -> list[dict]:
    """[{model, path, seconds, rss_mib, parts}] for each model on each path, medians of ``starts``."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DATABASE}")
    dsn = make_conninfo(admin_dsn, dbname=DATABASE)
    migrate(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        seed_profiles(conn, 2000, seed=7)
        info = conn.execute("SELECT scoring.runtime_info()").fetchone()[0]
    if not info.get("onnxruntime"):
        raise SystemExit("the server's runtime has no onnxruntime: pgscore runtime add onnx, then pgscore db start")
    folder = folder or Path("/tmp")
    runs = []
    for kind, label in (("logreg", "LR"), ("gbm", "GBM (100 trees)")):
        pipeline, _ = train_demo_model(rows=3000, kind=kind)
        pushed = api.push_model(dsn, pipeline, name="churn")
        path = folder / f"pgscore-bench-{kind}.onnx"
        path.write_bytes(onnx_bytes(pipeline))
        api.approve(dsn, hashlib.sha256(path.read_bytes()).hexdigest(), "bench")
        converted = api.push_model(dsn, path, name="churn")
        paths = [(pushed.version, pushed.scoring_path)]
        if pushed.scoring_path == "sql":
            paths.append((pushed.version, "compiled"))
        paths.append((converted.version, "onnx"))
        for version, scoring_path in paths:
            with psycopg.connect(dsn, autocommit=True) as conn:
                if scoring_path != "onnx":
                    conn.execute("SELECT scoring.set_scoring_path('churn', %s, %s)", [version, scoring_path])
                conn.execute("SELECT scoring.activate('churn', %s)", [version])
            first_score(dsn)  # the first backend after an activation also rewrites nothing: discard it anyway
            samples = [first_score(dsn) for _ in range(starts)]
            keys = samples[0][1].keys()
            runs.append({"model": label, "path": scoring_path,
                         "seconds": statistics.median(s[0] for s in samples),
                         "rss_mib": statistics.median(s[1]["rss"] for s in samples) if "rss" in keys else None,
                         "parts_mib": {k: statistics.median(s[1][k] for s in samples) for k in keys}})
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pgscore.bench.onnx_cold_start", description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", help="a superuser DSN (default: the local server, started if needed)")
    parser.add_argument("--starts", type=int, default=5, help="new connections per model and path (median)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    dsn = args.dsn or localdb.local_database(None).start()
    runs = measure(dsn, args.starts)
    print(f"{'model':<16} {'path':<9} {'first score':>12} {'RSS growth':>11}  private + libraries + shared buffers")
    for run in runs:
        parts = run["parts_mib"]
        split = (f"{parts['private']:.1f} + {parts['libraries']:.1f} + {parts['shared_buffers']:.1f}"
                 if "private" in parts else "-")
        rss = f"+{run['rss_mib']:.1f} MiB" if run["rss_mib"] is not None else "-"
        print(f"{run['model']:<16} {run['path']:<9} {run['seconds']:>10.3f} s {rss:>11}  {split}")
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
