"""The ``pgscore`` command: a thin layer over the Python API (:mod:`pgscore.api`).

Connection: ``--dsn``, else ``DATABASE_URL``, else libpq's environment.
An error prints one line that says what to do (plus PostgreSQL's hint, if
it gave one) and exits with status 1 (EXIT_STATUS); never a traceback,
unless PGSCORE_DEBUG=1 asks for one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import psycopg

from . import api, mlflow_source
from .console import print_table, rescore_with_progress
from .dev import localdb, runtime
from .errors import PgscoreError

# How PL/Python prefixes an error raised in (or passed through) its Python.
PLPYTHON_PREFIX = re.compile(r"^(plpy\.Error|plpy\.SPIError|spiexceptions\.\w+): ")

# What the command exits with (docs/contract.md, "Exit status"). Every error
# is 1: a PgscoreError's exit_status, a database error, a failed connection,
# an unexpected exception.
EXIT_ERROR = 1
EXIT_USAGE = 2            # argparse's, and a missing argument argparse cannot see
EXIT_NOT_RUNNING = 3      # `pgscore db status`: the local server does not run
EXIT_INTERRUPTED = 130    # Ctrl-C (128 + SIGINT), as a shell reports it
EXIT_STATUS = """\
exit status:
  0    done
  1    an error, printed as one line ("pgscore: ...", then PostgreSQL's hint if any)
  2    a usage error (an unknown option, a missing argument)
  3    pgscore db status: the local server does not run
  130  interrupted (Ctrl-C)"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print("pgscore: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # the one place where any error becomes a line and an exit status
        if os.environ.get("PGSCORE_DEBUG"):
            raise
        for line in error_lines(exc):
            print(line, file=sys.stderr)
        return exc.exit_status if isinstance(exc, PgscoreError) else EXIT_ERROR


def error_lines(exc: Exception) -> list[str]:
    """What the CLI prints for an error: 'pgscore: ...' in one line, then
    PostgreSQL's hint, if any, on a line of its own."""
    if isinstance(exc, PgscoreError):  # pgscore's own: the message names the problem and the next step
        return [f"pgscore: {one_line(str(exc))}"]
    if isinstance(exc, psycopg.Error):
        diag = exc.diag
        if diag.sqlstate is None and isinstance(exc, psycopg.OperationalError):
            # No SQLSTATE: the connection itself failed (libpq's message, often two lines).
            return [f"pgscore: cannot connect to PostgreSQL: {' '.join(str(exc).split())}",
                    "hint: pass --dsn, set DATABASE_URL, or start a local server with `pgscore db start` "
                    "and export the DATABASE_URL it prints"]
        message = PLPYTHON_PREFIX.sub("", diag.message_primary or one_line(str(exc)))
        lines = [f"pgscore: {one_line(message)}"]
        if diag.message_hint:
            lines.append(f"hint: {one_line(diag.message_hint)}")
        return lines
    if isinstance(exc, OSError) and exc.strerror:
        return [f"pgscore: {exc.filename + ': ' if exc.filename else ''}{exc.strerror}"]
    return [f"pgscore: unexpected error: {type(exc).__name__}: {one_line(str(exc))} "
            "(PGSCORE_DEBUG=1 shows the traceback)"]


def one_line(text: str) -> str:
    """A message on one line: a multi-line one (a command's output, say) is
    cut to its first line and its last, which usually says what failed."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if len(lines) <= 2:
        return " ".join(lines)
    return f"{lines[0]} ... {lines[-1]}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pgscore", description="Churn scoring inside PostgreSQL.",
                                     epilog=EXIT_STATUS, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(func=lambda _args: parser.print_help())
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    def command(name: str, func: Callable[[argparse.Namespace], Any], help: str, dsn: bool = True) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        if dsn:
            sub.add_argument("--dsn", help="libpq connection string or URL (default: DATABASE_URL, then PG* variables)")
        sub.set_defaults(func=func)
        return sub

    db = command("db", lambda a: db.print_help(), "a local PostgreSQL for development, the demo and tests", dsn=False)
    db_commands = db.add_subparsers(title="db commands", metavar="ACTION")
    for action, func, text in (
        ("start", cmd_db_start, "initdb on first use, start on 127.0.0.1, print the DSN"),
        ("stop", cmd_db_stop, "stop the local server"),
        ("status", cmd_db_status, "say whether it runs, and its DSN"),
    ):
        sub = db_commands.add_parser(action, help=text, description=text)
        sub.add_argument("--dir", help="its folder (default: $PGSCORE_HOME or ./.pgscore)")
        if action == "start":
            sub.add_argument("--port", type=int, help="TCP port on 127.0.0.1 (default: 54329 or a free one)")
        sub.set_defaults(func=func)

    command("migrate", cmd_migrate, "alembic upgrade head on the target database")

    server_runtime = command("runtime", lambda a: server_runtime.print_help(),
                             "the server's Python runtime: its pinned extras", dsn=False)
    runtime_commands = server_runtime.add_subparsers(title="runtime commands", metavar="ACTION")
    for action, func, text in (
        ("add", cmd_runtime_add, "as a DBA: add a server extra (onnx) or a pinned package NAME==VERSION to the "
                                 "server's runtime, then restart the server; every package there runs as the "
                                 "server's OS account in every session"),
        ("show", cmd_runtime_show, "list the server's runtime extras"),
    ):
        sub = runtime_commands.add_parser(action, help=text, description=text)
        if action == "add":
            sub.add_argument("specs", nargs="+", metavar="onnx|NAME==VERSION")
        where = sub.add_mutually_exclusive_group()
        where.add_argument("--dir", help="the local server's folder (default: $PGSCORE_HOME or ./.pgscore)")
        where.add_argument("--file", help="an extras file instead, e.g. docker/runtime-extras.txt for the image")
        sub.set_defaults(func=func)

    attach = command("attach", cmd_attach,
                     "bind a scorer to a table of yours, whose scores then follow every change of its rows and "
                     "events (as the table's owner or a superuser)")
    attach.add_argument("scorer", help="the scorer's name: a lowercase letter, then up to 39 lowercase letters, "
                                       "digits or underscores")
    attach.add_argument("--entity", required=True, metavar="TABLE",
                        help="the table with one row per scored thing, as SQL names it "
                             "(e.g. '\"CRM\".\"Subscribers\"' or public.customer_profiles)")
    attach.add_argument("--key", required=True, metavar="COLUMN",
                        help="its key column (bigint, integer, text or uuid), spelled as it is, without quotes")
    attach.add_argument("--score-column", metavar="COLUMN",
                        help="write the score into this column of TABLE (default: into pgscore's own table "
                             "scoring_scores.SCORER, so that TABLE is never written)")
    attach.add_argument("--model-id-column", metavar="COLUMN",
                        help="with --score-column: a column for the model_id that produced the score")
    attach.add_argument("--scored-at-column", metavar="COLUMN",
                        help="with --score-column: a column for when the score was written")
    attach.add_argument("--model", metavar="NAME", help="the model name it scores with (default: SCORER)")
    attach.add_argument("--features", metavar="A,B,C", type=_column_list,
                        help="the columns a model may read, comma-separated (default: every column of a "
                             "supported type but the key and score columns)")
    attach.add_argument("--no-score-on-insert", dest="score_on_insert", action="store_false",
                        help="do not score a row when it is inserted (only when it or its events change)")
    attach.add_argument("--events", nargs="+", action="extend", default=[], type=_event_source,
                        metavar="TABLE:KEYCOLUMN[:COUNTER]",
                        help="an event table whose rows rescore the entity they name in KEYCOLUMN; COUNTER, a "
                             "column of the entity kept equal to its number of event rows (a name holding ':' "
                             "goes in double quotes)")

    detach = command("detach", cmd_detach,
                     "remove a scorer's triggers, functions and score table; your tables and columns stay")
    detach.add_argument("scorer")

    command("scorers", cmd_scorers, "list the scorers: tables, key, where scores go, events, active model")

    push = command("push", cmd_push, "validate, upload and test-score a model")
    push.add_argument("file", help="a fitted scikit-learn classifier saved with skops.io.dump (.skops) or joblib.dump "
                                   "(.joblib: a pickle, unpickled in a child process without database credentials), "
                                   "or an MLflow model: a local model directory or models:/NAME/VERSION or "
                                   "models:/NAME@ALIAS (resolved against MLFLOW_TRACKING_URI; needs "
                                   "pip install 'pgscore[mlflow]')")
    push.add_argument("--name", required=True,
                      help="model name, e.g. churn: the scorers that score with it (pgscore scorers) give the tables "
                           "whose columns its features must be and whose rows it is test-scored on")
    push.add_argument("--activate", action="store_true", help="make it the active version")
    push.add_argument("--note", help="free text kept with the version")
    push.add_argument("--path", choices=api.SCORING_PATHS, default="auto",
                      help="how the server evaluates it: sql (generated SQL in the trigger and score(); "
                           "compiled elsewhere), compiled (numpy, nothing unpickled), sklearn, or auto "
                           "(sql or compiled when supported and exact, sql only when short; default)")
    push.add_argument("--format", choices=("skops", "joblib"), default="skops",
                      help="how the blob is stored: skops (default; only trusted types are rebuilt) or "
                           "joblib (a pickle: loading it runs code; push only models you trust)")
    push.add_argument("--original", metavar="FILE",
                      help="for a .onnx file: the model it was converted from (.skops or .joblib); push compares "
                           "onnxruntime's scores with its predict_proba and reports both parities")
    push.add_argument("--features", metavar="A,B,C", type=_column_list,
                      help="for a .onnx file with one tensor input: the entity columns it takes, in order")
    push.add_argument("--i-trust-this-pickle", action="store_true",
                      help="unpickle a joblib file in this process (runs its code here), for pipelines skops "
                           "cannot rebuild; the server still loads a joblib blob only once a superuser approved it")

    approve = command("approve", cmd_approve,
                      "as a superuser: let the server unpickle a model blob with this sha256 (runs its code)")
    approve.add_argument("sha256", nargs="?", help="the blob's sha256 (64 hex digits), as the refusal shows it")
    approve.add_argument("--note", help="why it is trusted, kept with the approval")
    approve.add_argument("--revoke", action="store_true", help="withdraw the approval of SHA256 instead")
    approve.add_argument("--list", action="store_true", help="list the approved sha256s and their models")

    listing = command("models", cmd_models, "list model versions, which is active, metrics")
    listing.add_argument("--name", help="only this model name")

    activate = command("activate", cmd_activate, "activate a pushed version")
    activate.add_argument("name")
    activate.add_argument("version", type=int)

    rollback = command("rollback", cmd_rollback, "re-activate the previous deployment")
    rollback.add_argument("name")

    export = command("export-sql", cmd_export_sql,
                     "print a model version as a plain-SQL function (for servers without plpython3u)")
    export.add_argument("name")
    export.add_argument("version", type=int)
    export.add_argument("--function", help="function name in schema scoring (default: NAME_vVERSION_sql)")

    rescore = command("rescore", cmd_rescore, "rescore every row of a scorer (default churn) with its active model")
    rescore.add_argument("name", nargs="?", default="churn")
    rescore.add_argument("--batch-size", type=int, default=10000)

    train = command("train-demo", cmd_train_demo, "train a demo churn pipeline on synthetic profiles", dsn=False)
    train.add_argument("--out", default="churn.joblib", help="where to save it (default: churn.joblib)")
    train.add_argument("--rows", type=int, default=5000)
    train.add_argument("--kind", choices=("logreg", "gbm", "rf", "xgb", "lgbm"), default="logreg",  # demo_data.MODEL_KINDS
                       help="the classifier (default: logreg); xgb and lgbm need the boosting extra")
    train.add_argument("--seed", type=int, default=0)

    demo = command("demo", cmd_demo, "the whole flow, on a throwaway local PostgreSQL unless --dsn is given")
    demo.add_argument("--profiles", type=int, default=5000)
    demo.add_argument("--keep", action="store_true", help="leave the local server running afterwards")

    bench = command("bench", cmd_bench, "the benchmark suite: prints a table, saves JSON")
    bench.add_argument("--quick", action="store_true",
                       help="small sizes: 50,000 profiles, about a minute (default: 1,000,000, 6-9 minutes)")
    bench.add_argument("--out", default="bench-results/bench.json")
    bench.add_argument("--floors", action="store_true",
                       help="also measure P1, P2 and P8 of the trigger designs without a model's cost"
                            " (about 1.5 minutes more)")
    bench.add_argument("--families", type=_bench_families, default=None,
                       help="the demo models to measure side by side, comma-separated, e.g. xgb,lgbm,gbm"
                            " (default: all; an unknown name lists them; xgb and lgbm need the boosting extra)")
    return parser


# -- commands

def cmd_db_start(args: argparse.Namespace) -> None:
    print(localdb.local_database(args.dir).start(port=args.port))


def cmd_db_stop(args: argparse.Namespace) -> None:
    stopped = localdb.local_database(args.dir).stop()
    print("stopped" if stopped else "not running")


def cmd_db_status(args: argparse.Namespace) -> int:
    database = localdb.local_database(args.dir)
    if database.is_running():
        print(f"running: {database.dsn()}")
        return 0
    print("not running" + (" (initialised; `pgscore db start` starts it)" if database.state() else ""))
    return EXIT_NOT_RUNNING


def _extras_file(args: argparse.Namespace) -> Path:
    if args.file:
        return Path(args.file)
    return localdb.local_database(args.dir).dir / runtime.EXTRAS_FILE


def cmd_runtime_add(args: argparse.Namespace) -> None:
    target = _extras_file(args)
    added = runtime.add(target, args.specs)
    print(f"added {', '.join(added)} to {target}" if added else f"{target} already has {' '.join(args.specs)}")
    restart = ("rebuild the image (docker build reads docker/runtime-extras.txt)" if args.file else
               "restart the local server on it: pgscore db start" + (f" --dir {args.dir}" if args.dir else ""))
    print(f"next: {restart}. Every package in the server's runtime runs as the server's OS account in every "
          "session that imports it")


def cmd_runtime_show(args: argparse.Namespace) -> None:
    target = _extras_file(args)
    pins = [line for line in runtime.extras_text(target).splitlines() if line.strip() and not line.startswith("#")]
    print(f"{target}: " + (", ".join(pins) if pins else "no extras (the base runtime-requirements.txt only)"))


def cmd_migrate(args: argparse.Namespace) -> None:
    api.migrate(args.dsn)
    info = api.runtime_info(args.dsn)
    print(f"migrated to revision {info['schema_revision']}; server runtime: "
          f"Python {info['python']}, scikit-learn {info['scikit-learn']}, numpy {info['numpy']}")
    if api.plpython_preloaded(args.dsn) is False:
        print("note: the server does not preload PL/Python, so every new connection loads it on its first score "
              "(2-4 MiB more per backend): add plpgsql,plpython3 to shared_preload_libraries in postgresql.conf "
              "and restart (docs/migrations.md, \"The server's Python runtime\")")


def cmd_attach(args: argparse.Namespace) -> None:
    lines = api.attach(args.dsn, args.scorer, args.entity, args.key, score_column=args.score_column,
                       model_id_column=args.model_id_column, scored_at_column=args.scored_at_column,
                       model_name=args.model, features=args.features, score_on_insert=args.score_on_insert,
                       events=args.events)
    for line in lines:
        print(line)


def cmd_detach(args: argparse.Namespace) -> None:
    print(api.detach(args.dsn, args.scorer))


def cmd_scorers(args: argparse.Namespace) -> None:
    rows = api.list_scorers(args.dsn)
    if not rows:
        print("no scorers: attach one with pgscore attach SCORER --entity TABLE --key COLUMN")
        return
    print_table(["scorer", "entity", "key", "target", "events", "active model", "path"],
                [[r["scorer"], r["entity"], f"{r['key_column']} ({r['key_type']})", _score_target(r),
                  _events(r["events"]), _active_model(r), r["scoring_path"] or "-"] for r in rows])


def cmd_push(args: argparse.Namespace) -> None:
    result = api.push_model(args.dsn, args.file, name=args.name, activate=args.activate, note=args.note,
                            scoring_path=args.path, format=args.format, trust_pickle=args.i_trust_this_pickle,
                            original=args.original, features=args.features)
    state = "active" if result.activated else f"not active (pgscore activate {result.name} {result.version})"
    print(f"pushed {result.name} v{result.version} (model_id {result.model_id}, sha256 {result.sha256[:12]}), {state}")
    print(f"stored as {result.format}; scoring path: {result.scoring_path} ({result.path_note})")
    if result.sample_size:
        rows = "profiles" if result.scored_tables == ["public.customer_profiles"] else \
            "rows of " + ", ".join(result.scored_tables)
        print(f"test-scored {result.sample_size} {rows} in the database: max difference {result.max_abs_diff:.2g}")
    for note in result.notes:
        print(f"note: {note}")


def cmd_approve(args: argparse.Namespace) -> int:
    if args.list:
        rows = api.list_approvals(args.dsn)
        if not rows:
            print("no pickle is approved: the server unpickles no model blob")
            return 0
        print_table(["sha256", "approved", "by", "models", "note"],
                    [[r["sha256"], f"{r['approved_at']:%Y-%m-%d %H:%M}", r["approved_by"], r["models"] or "-",
                      r["note"] or ""] for r in rows])
        return 0
    if not args.sha256:
        print("pgscore: give the SHA256 to approve (or --list)", file=sys.stderr)
        return EXIT_USAGE
    if args.revoke:
        found = api.revoke(args.dsn, args.sha256)
        print(f"revoked {args.sha256}" if found else f"{args.sha256} was not approved")
        return 0
    pushed = api.approve(args.dsn, args.sha256, args.note)
    print(f"approved {args.sha256.strip().lower()}: the server may now load it (unpickle a pickle, which runs its "
          "code as the server's OS user; hand an ONNX graph to onnxruntime)")
    print(f"models with this blob: {', '.join(pushed)}" if pushed else
          "no pushed model has this blob yet: push it (a pickle with --format joblib; a .onnx file as it is)")
    return 0


def cmd_models(args: argparse.Namespace) -> None:
    rows = api.list_models(args.dsn, args.name)
    if not rows:
        print("no models pushed yet: pgscore push FILE --name churn --activate")
        return
    print_table(
        ["name", "version", "model_id", "active", "format", "path", "created", "by", "metrics", "note", "path note"],
        [[r["name"], r["version"], r["model_id"], "*" if r["active"] else "", r["format"], r["scoring_path"],
          f"{r['created_at']:%Y-%m-%d %H:%M}", r["created_by"], _metrics(r["metrics"]), r["note"] or "",
          r["path_note"] or ""] for r in rows],
    )


def cmd_activate(args: argparse.Namespace) -> None:
    model_id = api.activate(args.dsn, args.name, args.version)
    print(f"{args.name} v{args.version} (model_id {model_id}) is active")


def cmd_rollback(args: argparse.Namespace) -> None:
    model_id, version = api.rollback(args.dsn, args.name)
    print(f"rolled back: {args.name} v{version} (model_id {model_id}) is active")


def cmd_export_sql(args: argparse.Namespace) -> None:
    print(api.export_sql(args.dsn, args.name, args.version, args.function))


def cmd_rescore(args: argparse.Namespace) -> None:
    rescore_with_progress(args.dsn, args.name, args.batch_size)


def cmd_train_demo(args: argparse.Namespace) -> None:
    from .dev.demo_data import save_model, train_demo_model

    pipeline, metrics = train_demo_model(rows=args.rows, seed=args.seed, kind=args.kind)
    save_model(pipeline, args.out)
    with open(args.out + ".metrics.json", "w") as sidecar:
        json.dump(metrics, sidecar)
    print(f"trained {args.kind} on {metrics['rows']} synthetic profiles: holdout ROC AUC {metrics['roc_auc']:.3f}")
    # A pickle of XGBoost or LightGBM objects is one skops will not rebuild: the loader must unpickle it.
    trust = " --i-trust-this-pickle" if args.kind in ("xgb", "lgbm") else ""
    print(f"saved {args.out} (metrics in {args.out}.metrics.json); push it with: "
          f"pgscore push {args.out} --name churn --activate{trust}")


def cmd_demo(args: argparse.Namespace) -> None:
    from .dev.demo import run_demo

    run_demo(args.dsn, profiles=args.profiles, keep=args.keep)


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import FAMILIES, check_families, run_bench

    try:
        families = check_families(args.families or FAMILIES, args.floors)
    except ValueError as error:  # --floors without the families its floors are built from
        print(f"pgscore: {error}", file=sys.stderr)
        return EXIT_USAGE
    run_bench(args.dsn, quick=args.quick, out=args.out, floors=args.floors, families=families)
    return 0


# -- arguments

def _column_list(text: str) -> list[str]:
    """--features a,b,c: column names as they are spelled (spaces around commas dropped)."""
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"empty column name in {text!r}: give names separated by commas")
    return names


def _bench_families(text: str) -> list[str]:
    """--families a,b: bench families (pgscore.bench.FAMILIES)."""
    from .bench import check_families

    try:
        return check_families(_column_list(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _event_source(text: str) -> tuple[str, str, str | None]:
    """--events TABLE:KEYCOLUMN[:COUNTER]. TABLE is SQL's spelling (the server
    resolves it); the columns are names as they are spelled, double-quoted
    when they hold a ':' (and then with "" for a quote)."""
    parts = _split_outside_quotes(text, ":")
    if len(parts) not in (2, 3) or not all(parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not TABLE:KEYCOLUMN or TABLE:KEYCOLUMN:COUNTER")
    table, key, *counter = parts
    return table, _unquote(key), _unquote(counter[0]) if counter else None


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    parts, current, quoted = [], [], False
    for char in text:
        if char == '"':
            quoted = not quoted  # "" inside quotes toggles twice: the text is kept as it is
        if char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _unquote(name: str) -> str:
    if len(name) >= 2 and name[0] == name[-1] == '"':
        return name[1:-1].replace('""', '"')
    return name


# -- output

def _score_target(row: dict) -> str:
    if row["score_target"] == "table":
        return row["score_table"] or "-"
    return ", ".join(c for c in (row["score_column"], row["model_id_column"], row["scored_at_column"]) if c)


def _events(events: Any) -> str:
    if not events:
        return "-"
    return "; ".join(f"{e['events']}({e['entity_key']})" + (f" -> {e['counter']}" if e.get("counter") else "")
                     for e in events)


def _active_model(row: dict) -> str:
    if row["active_model_id"] is None:
        return f"{row['model_name']}: none"
    return f"{row['model_name']} v{row['active_version']} (model_id {row['active_model_id']})"

def _metrics(metrics: Any) -> str:
    if not metrics:
        return ""
    return ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else
                     mlflow_source.summary(v) if k == "mlflow" and isinstance(v, dict) else f"{k}={v}"
                     for k, v in metrics.items())


if __name__ == "__main__":
    sys.exit(main())
