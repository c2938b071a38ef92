"""Crash safety: the whole PostgreSQL server is killed with SIGKILL (postmaster
and every backend, as in a power cut) while complaints are being inserted
or profiles rescored; after the restart PostgreSQL's crash recovery must
leave pgscore's data consistent.

(a) during a 200k-row INSERT ... SELECT plus single-row inserts: every
    counter equals its seeded count plus its complaint rows, no profile is
    half written, every acknowledged insert survived, the server scores new
    complaints afterwards.
(b) during CALL scoring.rescore('churn', 1000) over 50k profiles: committed
    batches are whole and form a prefix in customer_id order, every other
    profile keeps its old values, and rescore run again finishes.

These tests start a server of their own (one for the module), never the
shared one: killing it must not disturb other tests.
"""

from __future__ import annotations

import ctypes
import os
import random
import shutil
import signal
import threading
import time
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from pgscore import push_model
from pgscore.dev.localdb import LocalDatabase, local_database
from pgscore.migrate import migrate
from pgscore.dev.seed import seed_profiles
from tests.conftest import local_scores, own_server_folder

pytestmark = pytest.mark.slow

PR_SET_CHILD_SUBREAPER = 36
TIME_LIMIT = 45.0  # seconds any one load or wait may take; everything stops by itself


def _set_child_subreaper(on: bool) -> bool:
    """Orphaned descendants (the postmaster pg_ctl leaves behind, and its
    backends once it is killed) become this process's children, so that we
    can reap them by PID. PID 1 of a container does not always reap, and a
    zombie postmaster would look alive to the next start."""
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_SET_CHILD_SUBREAPER, 1 if on else 0, 0, 0, 0) == 0


def _ppid(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(text.rsplit(")", 1)[1].split()[1])


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _reap(pids: list[int], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    pending = set(pids)
    while pending and time.monotonic() < deadline:
        for pid in list(pending):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # not ours: wait until it is gone
                done = pid if not _alive(pid) else 0
            if done:
                pending.discard(pid)
        time.sleep(0.05)
    assert not pending, f"server processes still alive after SIGKILL: {sorted(pending)}"


def postmaster_pid(local: LocalDatabase) -> int:
    return int((local.data / "postmaster.pid").read_text().splitlines()[0])


def crash(local: LocalDatabase) -> list[int]:
    """SIGKILL the postmaster and all its children at once; returns their PIDs."""
    pid = postmaster_pid(local)
    os.kill(pid, signal.SIGSTOP)  # no new backends while we list them
    children = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _ppid(int(p.name)) == pid]
    os.kill(pid, signal.SIGKILL)
    for child in children:
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _reap([pid, *children])
    assert (local.data / "postmaster.pid").exists()  # a crash leaves its lock file behind
    return [pid, *children]


def restart(local: LocalDatabase) -> None:
    """Starts the crashed server; PostgreSQL must have run crash recovery."""
    before = local.log_file.stat().st_size if local.log_file.exists() else 0
    local.start()
    with open(local.log_file, "rb") as log:
        log.seek(before)
        text = log.read().decode(errors="replace")
    assert "automatic recovery in progress" in text, f"no crash recovery in the server log:\n{text[-2000:]}"


def stop_server(local: LocalDatabase) -> None:
    pid = postmaster_pid(local) if (local.data / "postmaster.pid").exists() else None
    local.stop()
    if pid is not None:
        _reap([pid])


@pytest.fixture(scope="module")
def crash_server():
    """A server of this module's own, in a folder the postgres OS user can
    reach, with the shared server's runtime folder linked in (no pip install)."""
    folder = own_server_folder("pgscore-crash-")
    subreaper = _set_child_subreaper(True)
    local = local_database(folder)
    try:
        dsn = local.start()
        yield local, dsn
    finally:
        try:
            stop_server(local)
        finally:
            if subreaper:
                _set_child_subreaper(False)
            shutil.rmtree(folder, ignore_errors=True)


def fresh_database(dsn: str, name: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    target = make_conninfo(dsn, dbname=name)
    migrate(target)
    return target


def check_indexes(conn: psycopg.Connection) -> None:
    """B-tree structure and heap/index agreement after recovery (amcheck)."""
    conn.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
    indexes = [row[0] for row in conn.execute(
        "SELECT i.indexrelid::regclass::text FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname IN ('public', 'scoring')")]
    for index in indexes:
        conn.execute("SELECT bt_index_check(%s::regclass, true)", [index])
    assert len(indexes) >= 4


BIG_ROWS = 200_000
PROFILES_A = 20_000


def test_kill_during_big_insert_keeps_counters_exact(crash_server, model_files):
    local, dsn = crash_server
    target = fresh_database(dsn, "crash_insert")
    with psycopg.connect(target, autocommit=True) as admin:
        seed_profiles(admin, PROFILES_A, seed=11)
    push_model(target, model_files["logreg"], name="churn", activate=True)
    with psycopg.connect(target, autocommit=True) as admin:
        seeded = dict(admin.execute("SELECT customer_id, complaint_count FROM customer_profiles").fetchall())

    outcome: dict = {}
    acknowledged: list[list[tuple[int, int]]] = [[] for _ in range(3)]
    stop = threading.Event()

    def big_insert() -> None:
        try:
            with psycopg.connect(target, autocommit=True) as conn:
                conn.execute("SET scoring.on_error = 'raise'")
                conn.execute("SELECT scoring.warmup()")
                outcome["started"] = time.monotonic()
                # Every 25,000th row sleeps 0.5 s: the statement runs for at least 4 s on
                # any machine, so the crash at 1.5 s always finds it running.
                conn.execute(
                    "INSERT INTO complaints (customer_id, channel, body)"
                    " SELECT 1 + g %% %s, 'batch', 'big' FROM generate_series(1, %s) g"
                    " WHERE g %% 25000 <> 0 OR pg_catalog.length(pg_catalog.pg_sleep(0.5)::text) = 0",
                    [PROFILES_A, BIG_ROWS])
                outcome["big"] = "committed"
        except psycopg.OperationalError as exc:
            outcome["big"] = exc
        except BaseException as exc:  # noqa: BLE001
            outcome["big_unexpected"] = exc

    def small_inserts(index: int) -> None:
        rng = random.Random(index)
        deadline = time.monotonic() + TIME_LIMIT
        try:
            with psycopg.connect(target, autocommit=True) as conn:
                while not stop.is_set() and time.monotonic() < deadline:
                    customer_id = rng.randint(1, PROFILES_A)
                    complaint_id = conn.execute(
                        "INSERT INTO complaints (customer_id, channel, body) VALUES (%s, 'phone', 'small')"
                        " RETURNING complaint_id", [customer_id]).fetchone()[0]
                    acknowledged[index].append((complaint_id, customer_id))  # committed: must survive
        except psycopg.OperationalError:
            pass
        except BaseException as exc:  # noqa: BLE001
            outcome[f"small_unexpected_{index}"] = exc

    threads = [threading.Thread(target=big_insert, daemon=True)]
    threads += [threading.Thread(target=small_inserts, args=(i,), daemon=True) for i in range(3)]
    for thread in threads:
        thread.start()
    # Crash once the big statement has been running for a while, well before it can finish.
    with psycopg.connect(target, autocommit=True) as monitor:
        deadline = time.monotonic() + TIME_LIMIT
        running_for = 0.0
        while running_for < 1.5 and time.monotonic() < deadline and "big" not in outcome:
            row = monitor.execute(
                "SELECT extract(epoch FROM clock_timestamp() - query_start) FROM pg_stat_activity"
                " WHERE state = 'active' AND query LIKE 'INSERT INTO complaints (customer_id, channel, body)%SELECT%'"
            ).fetchone()
            running_for = float(row[0]) if row else 0.0
            time.sleep(0.05)
    assert "big" not in outcome, f"the big insert ended before the crash ({outcome['big']}); make it bigger"
    killed = crash(local)
    stop.set()
    for thread in threads:
        thread.join(TIME_LIMIT)
    assert not [t for t in threads if t.is_alive()]
    unexpected = {k: v for k, v in outcome.items() if "unexpected" in k}
    assert unexpected == {}
    assert isinstance(outcome.get("big"), psycopg.OperationalError), outcome
    acked = [pair for client in acknowledged for pair in client]
    assert acked, "no single-row insert was acknowledged before the crash"

    restart(local)  # PostgreSQL replays its WAL
    with psycopg.connect(target, autocommit=True) as admin:
        big_rows = admin.execute("SELECT count(*) FROM complaints WHERE body = 'big'").fetchone()[0]
        rows = dict(admin.execute("SELECT customer_id, count(*) FROM complaints GROUP BY 1").fetchall())
        present = {row[0] for row in admin.execute("SELECT complaint_id FROM complaints")}
        profiles = {row[0]: row[1:] for row in admin.execute(
            "SELECT customer_id, complaint_count, churn_score, churn_model_id, churn_scored_at"
            " FROM customer_profiles").fetchall()}
        active = admin.execute("SELECT model_id FROM scoring.active_models WHERE name = 'churn'").fetchone()[0]
        check_indexes(admin)

        summary = (f"killed {len(killed)} server processes; {len(acked)} acknowledged single-row inserts;"
                   f" {sum(rows.values())} complaint rows after recovery ({big_rows} from the big insert)")
        print(summary)
        assert big_rows in (0, BIG_ROWS), summary
        assert big_rows == 0, f"the big insert was not acknowledged, yet it is there; {summary}"
        lost = [pair for pair in acked if pair[0] not in present]
        assert lost == [], f"acknowledged complaints lost in the crash: {lost[:10]}; {summary}"
        wrong = {c: (seeded[c], rows.get(c, 0), p[0]) for c, p in profiles.items() if p[0] != seeded[c] + rows.get(c, 0)}
        assert wrong == {}, f"(seeded, complaint rows, complaint_count) of wrong counters: {list(wrong.items())[:10]}"
        half = [c for c, p in profiles.items() if (p[1] is None) != (p[2] is None) or (p[2] is None) != (p[3] is None)]
        assert half == [], f"half-written profiles (score/model/scored_at not all set or all NULL): {half[:10]}"
        assert {p[2] for p in profiles.values()} <= {None, active}
        touched = sorted(rows)
        expected = local_scores(model_files["logreg"], admin, touched)
        off = {c: (profiles[c][1], expected[c]) for c in touched
               if profiles[c][1] is None or abs(profiles[c][1] - expected[c]) > 1e-9}
        assert off == {}, f"scores that do not belong to the recovered profile: {list(off.items())[:10]}"

        # The recovered server takes new complaints and scores them.
        admin.execute("SET scoring.on_error = 'raise'")
        admin.execute("INSERT INTO complaints (customer_id, channel) VALUES (77, 'phone'), (78, 'chat'), (77, 'store')")
        after = {row[0]: row[1:] for row in admin.execute(
            "SELECT customer_id, complaint_count, churn_score, churn_model_id FROM customer_profiles"
            " WHERE customer_id IN (77, 78)").fetchall()}
        fresh = local_scores(model_files["logreg"], admin, [77, 78])
    assert after[77][0] == profiles[77][0] + 2 and after[78][0] == profiles[78][0] + 1
    assert all(after[c][2] == active and abs(after[c][1] - fresh[c]) <= 1e-9 for c in (77, 78))


PROFILES_B = 50_000
BATCH = 1000


def test_kill_during_rescore_leaves_whole_batches_and_rescore_resumes(crash_server, model_files):
    local, dsn = crash_server
    if not local.is_running():
        local.start()
    target = fresh_database(dsn, "crash_rescore")
    with psycopg.connect(target, autocommit=True) as admin:
        seed_profiles(admin, PROFILES_B, seed=12)
    first = push_model(target, model_files["logreg"], name="churn", activate=True)
    with psycopg.connect(target, autocommit=True) as admin:
        admin.execute("CALL scoring.rescore('churn', 10000)")
        old = {row[0]: row[1:] for row in admin.execute(
            "SELECT customer_id, churn_score, churn_model_id, churn_scored_at FROM customer_profiles").fetchall()}
    assert len(old) == PROFILES_B and {v[1] for v in old.values()} == {first.model_id}
    second = push_model(target, model_files["gbm"], name="churn", activate=True)

    outcome: dict = {}

    def rescore() -> None:
        try:
            with psycopg.connect(target, autocommit=True) as conn:
                conn.execute("CALL scoring.rescore('churn', %s)", [BATCH])
                outcome["rescore"] = "finished"
        except psycopg.OperationalError as exc:
            outcome["rescore"] = exc
        except BaseException as exc:  # noqa: BLE001
            outcome["unexpected"] = exc

    thread = threading.Thread(target=rescore, daemon=True)
    thread.start()
    seen = 0
    with psycopg.connect(target, autocommit=True) as monitor:
        deadline = time.monotonic() + TIME_LIMIT
        while seen < 5 * BATCH and time.monotonic() < deadline and "rescore" not in outcome:
            seen = monitor.execute("SELECT count(*) FROM customer_profiles WHERE churn_model_id = %s",
                                   [second.model_id]).fetchone()[0]
            time.sleep(0.02)
    assert "rescore" not in outcome, f"rescore ended before the crash ({outcome['rescore']}); seen {seen}"
    assert seen >= 5 * BATCH
    crash(local)
    thread.join(TIME_LIMIT)
    assert not thread.is_alive() and "unexpected" not in outcome, outcome
    assert isinstance(outcome.get("rescore"), psycopg.OperationalError), outcome

    restart(local)
    with psycopg.connect(target, autocommit=True) as admin:
        rows = {row[0]: row[1:] for row in admin.execute(
            "SELECT customer_id, churn_score, churn_model_id, churn_scored_at FROM customer_profiles"
            " ORDER BY customer_id").fetchall()}
        check_indexes(admin)
        ordered = list(rows)
        rescored = [c for c in ordered if rows[c][1] == second.model_id]
        summary = f"{len(rescored)} of {PROFILES_B} profiles rescored before the crash ({seen} seen committed)"
        print(summary)
        assert len(rescored) >= seen, f"committed batches lost: {summary}"
        assert rescored == ordered[: len(rescored)], f"rescored ids are not a prefix in customer_id order: {summary}"
        assert len(rescored) % BATCH == 0 and len(rescored) < PROFILES_B, f"not whole batches: {summary}"
        kept = {c: rows[c] for c in ordered[len(rescored):]}
        changed = [c for c, value in kept.items() if value != old[c]]
        assert changed == [], f"profiles after the prefix were changed: {changed[:10]}; {summary}"
        expected = local_scores(model_files["gbm"], admin, rescored)
        off = [c for c in rescored if abs(rows[c][0] - expected[c]) > 1e-9 or rows[c][2] is None
               or rows[c][2] < old[c][2]]
        assert off == [], f"rescored profiles with a wrong score or timestamp: {off[:10]}; {summary}"

        admin.execute("CALL scoring.rescore('churn', %s)", [BATCH])  # resumes: finishes on the recovered server
        final = {row[0]: row[1:] for row in admin.execute(
            "SELECT customer_id, churn_score, churn_model_id FROM customer_profiles").fetchall()}
        expected = local_scores(model_files["gbm"], admin, list(final))
    assert {v[1] for v in final.values()} == {second.model_id}
    worst = max(abs(final[c][0] - expected[c]) for c in final)
    assert worst <= 1e-9, f"max difference from local predict_proba after the second rescore: {worst}"
