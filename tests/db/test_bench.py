"""`pgscore bench` end to end, at a small size, on the local server.

The timings of so small a run mean nothing; what is checked is that every
figure of every family is measured and saved, and the two that are
correctness rather than speed: P7's parity with predict_proba (within the
model's bound) and P8's exact counters under eight concurrent clients.

It runs four of the bench's five families (TESTED): the GBM's figures take
the same code as the logistic regression's (the sql path, a model stored
with skops), and each family adds ~10-16 s to the run.
"""

from __future__ import annotations

import json
import math
import os

import psycopg
import pytest
from pgscore import cli
from pgscore.bench import FAMILIES, FLOORS, Sizes, backend_here, run_bench
from psycopg import sql
from psycopg.conninfo import make_conninfo

from tests.conftest import _server_dsn

FIGURES = {"P1", "P2", "P3", "P4", "P5", "P6", "P7", "P8"}
RESCORE_FIGURES = {"P5n", "P5g"}  # the scorers' figures for Sizes.scorer_families only
PER_FAMILY_SCORER_FIGURES = {"P9", "P9b"}
FLOOR_FIGURES = {"P1", "P2", "P8"}
COMPILED_ONLY = {"xgb", "lgbm"}  # pushed as format 'compiled'
# The floors need logreg and rf; xgb and lgbm are stored in compiled form, xgb with a float32 bound.
TESTED = ("logreg", "rf", "xgb", "lgbm")
RESCORED = [family for family in Sizes.scorer_families if family in TESTED]  # P5n/P5g's
TINY = Sizes(profiles=2_000, inserts=60, bulk=400, per_row=100, parity=1_000, concurrent=10, naive_starts=1,
             updates=60, bulk_updates=400, rescore_rounds=2)


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    database = f"pgscore_bench_t_{os.getpid()}"
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    with _server_dsn("local") as dsn:
        try:
            results = run_bench(dsn, out=str(out), floors=True, sizes=TINY, database=database, families=TESTED)
            yield results, json.loads(out.read_text()), _runs_here(dsn), make_conninfo(dsn, dbname=database)
        finally:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))


def _runs_here(dsn: str) -> bool:
    """Whether the server's backends are processes of this machine (PGSCORE_TEST_DSN may name another)."""
    with psycopg.connect(dsn) as conn:
        return backend_here(conn.execute("SELECT pg_backend_pid()").fetchone()[0], conn.info.dbname)


def test_every_figure_of_every_family_is_measured_and_saved(bench_run):
    results, saved, _, _ = bench_run
    assert saved == json.loads(json.dumps(results, default=str))
    assert saved["sizes"]["profiles"] == TINY.profiles
    assert saved["families"] == list(TESTED)
    measured = {(row["figure"], row["family"]) for row in saved["figures"]}
    assert measured == ({(figure, family) for figure in FIGURES | PER_FAMILY_SCORER_FIGURES for family in TESTED}
                        | {(figure, family) for figure in RESCORE_FIGURES for family in RESCORED}
                        | {(figure, floor) for figure in FLOOR_FIGURES for floor in FLOORS})
    # P4 has two rows per family: against out-of-DB scoring and against per-row score().
    assert len(saved["figures"]) == (len(FIGURES | PER_FAMILY_SCORER_FIGURES) * len(TESTED) + len(TESTED)
                                     + len(RESCORE_FIGURES) * len(RESCORED)
                                     + len(FLOOR_FIGURES) * len(FLOORS))
    timed_twice = [row for row in saved["figures"] if "in_db_runs" in row]
    assert {(row["figure"], row["family"]) for row in timed_twice} == {
        (figure, family) for figure in ("P4", "P5") for family in TESTED}
    for row in saved["figures"]:
        if row["figure"] in ("P4", "P5") and "in_db_runs" in row:
            # Best of two alternating runs on each side.
            assert len(row["in_db_runs"]) == len(row["out_of_db_runs"]) == 2, row
            assert row["ratio"] == round(min(row["out_of_db_runs"]) / min(row["in_db_runs"]), 4), row
        if row["figure"] != "P7":
            assert row["ratio"] is not None and math.isfinite(row["ratio"]) and row["ratio"] > 0, row
        assert row["met"] in (True, False, None), row


def test_scores_match_predict_proba_and_counters_stay_exact(bench_run):
    _, saved, _, _ = bench_run
    by_figure = {(row["figure"], row["family"]): row for row in saved["figures"]}
    for family in TESTED:
        # P7 is the largest difference against the model's own bound: 1e-9, or XGBoost's 1 float32 ulp.
        assert by_figure["P7", family]["met"] is True, by_figure["P7", family]
        assert by_figure["P7", family]["max_abs_diff"] <= (1e-6 if family == "xgb" else 1e-9), by_figure["P7", family]
        assert by_figure["P8", family]["counters_exact"] is True, by_figure["P8", family]


def test_the_scorer_figures_compare_what_they_say_and_leave_nothing_behind(bench_run):
    """P5n/P5g: three rescores of every profile, alternating, best of each
    (reference, generic on columns, generic into the narrow table); P9b: the
    bulk UPDATE rescored every row it changed. Afterwards the two extra
    scorers, their narrow table and their columns are gone and the
    reference scorer's features trigger is enabled again."""
    _, saved, _, database = bench_run
    by_figure = {(row["figure"], row["family"]): row for row in saved["figures"]}
    for family in RESCORED:
        narrow, generic = by_figure["P5n", family], by_figure["P5g", family]
        for runs in ("reference_runs", "wide_runs", "narrow_runs"):
            assert len(narrow[runs]) == TINY.rescore_rounds, narrow
        assert narrow["ratio"] == round(min(narrow["wide_runs"]) / min(narrow["narrow_runs"]), 4)
        assert generic["ratio"] == round(min(generic["reference_runs"]) / min(generic["wide_runs"]), 4)
    for family in TESTED:
        assert by_figure["P9b", family]["all_rescored"] is True, by_figure["P9b", family]
        assert by_figure["P9b", family]["rescored_rows"] == [TINY.bulk_updates] * 2
        assert by_figure["P9", family]["added_us"] == pytest.approx(
            by_figure["P9", family]["us_per_update"] - by_figure["P9", family]["baseline_us_per_update"])
    with psycopg.connect(database) as conn:
        assert [r[0] for r in conn.execute("SELECT scorer FROM scoring.scorers")] == ["churn"]
        assert conn.execute("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                            " WHERE n.nspname = 'scoring_scores'").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM pg_attribute WHERE attrelid = 'customer_profiles'::regclass"
                            " AND attname LIKE 'alt\\_%' AND NOT attisdropped").fetchone()[0] == 0
        assert conn.execute("SELECT tgenabled FROM pg_trigger WHERE tgrelid = 'customer_profiles'::regclass"
                            " AND tgname = 'pgscore_churn_features'").fetchone()[0] == "O"


def test_first_score_memory_is_split_into_its_parts_where_the_server_runs_here(bench_run):
    _, saved, here, _ = bench_run
    for row in saved["figures"]:
        if row["figure"] != "P6":
            continue
        parts = row["rss_parts_mib"]
        if not here:
            assert parts == {}, row  # another machine's backends: no memory figures, not wrong ones
            continue
        assert set(parts) == {"rss", "private", "libraries", "shared_buffers"}, row
        if row["family"] in COMPILED_ONLY:  # stored as the compiled archive: the server has no naive path
            assert row["naive_seconds"] is None and row["naive_rss_parts_mib"] is None, row
            continue
        # The naive path imports scikit-learn: far more private memory than the compiled or sql path.
        assert row["naive_rss_parts_mib"]["private"] > parts["private"] + 20, row


def test_the_floor_triggers_count_and_score_as_they_say(bench_run):
    """The floors are pgscore's trigger with constant scores, the same with
    a PL/Python call returning one, and a row trigger writing the LR's score:
    each counts the complaint, and row-lr's score is pgscore's."""
    _, _, _, database = bench_run
    with psycopg.connect(database, autocommit=True) as conn:
        lr_version = conn.execute("SELECT version FROM scoring.models WHERE note = 'bench logreg'").fetchone()[0]
        conn.execute("SELECT scoring.activate('churn', %s)", [lr_version])
        # Customers the bench's inserts did not reach (P8 hammers 1-10):
        # one complaint more still moves their score.
        customers = [row[0] for row in conn.execute(
            "SELECT customer_id FROM customer_profiles WHERE customer_id > 10 ORDER BY complaint_count, customer_id"
            " LIMIT %s", [len(FLOORS)])]
        for customer, trigger in zip(customers, FLOORS.values()):
            for name in ("complaints_rescore", "bench_count_complaint", *FLOORS.values()):
                action = "ENABLE" if name == trigger else "DISABLE"
                conn.execute(sql.SQL("ALTER TABLE complaints {} TRIGGER {}").format(sql.SQL(action),
                                                                                    sql.Identifier(name)))
            count, before = conn.execute("SELECT complaint_count, scoring.score(customer_id) FROM customer_profiles"
                                         " WHERE customer_id = %s", [customer]).fetchone()
            conn.execute("INSERT INTO complaints (customer_id, channel) VALUES (%s, 'test')", [customer])
            stored, new_count, after = conn.execute(
                "SELECT churn_score, complaint_count, scoring.score(customer_id) FROM customer_profiles"
                " WHERE customer_id = %s", [customer]).fetchone()
            assert new_count == count + 1, trigger
            if trigger == "bench_row_lr":
                assert abs(after - before) > 1e-6  # the complaint moved the score: the check below means something
                assert stored == pytest.approx(after, abs=1e-12)
            else:
                assert stored == 0.5, trigger


def test_families_are_checked_before_anything_runs(capsys):
    """``--families`` takes FAMILIES' names (default: all of them) and names
    them when one is unknown; ``--floors`` needs the two its floors are built
    from. Both are usage errors, before a database is touched."""
    assert FAMILIES == ("logreg", "gbm", "rf", "xgb", "lgbm")
    with pytest.raises(SystemExit) as exited:
        cli.main(["bench", "--families", "xgb,catboost"])
    assert exited.value.code == cli.EXIT_USAGE
    assert "unknown bench family 'catboost'; choose from logreg, gbm, rf, xgb, lgbm" in capsys.readouterr().err
    assert cli.main(["bench", "--families", "xgb,lgbm", "--floors"]) == cli.EXIT_USAGE
    assert "--floors needs the families logreg and rf" in capsys.readouterr().err
