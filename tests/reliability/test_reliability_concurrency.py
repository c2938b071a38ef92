"""Reliability under load: 16 application clients insert complaints for 10
hot and 1,000 cold customers for a bounded time (single-row INSERTs,
multi-row INSERTs of 5 random customers in random order, and COPY), with
scoring.on_error = 'raise', while the loader role flips the active model
between two versions and rolls back every ~0.5 s.

Afterwards: no client saw an error (a deadlock would surface as
psycopg.errors.DeadlockDetected), pg_stat_database counts no deadlock, every
counter is exact, every score was written by one of the two pushed models,
and every scored profile's churn_score is what the model named in its
churn_model_id gives for the profile as it is now (to 1e-9).
"""

from __future__ import annotations

import collections
import random
import threading
import time

import psycopg
import pytest

from pgscore import push_model
from pgscore.dev.seed import seed_profiles
from tests.conftest import local_scores

pytestmark = pytest.mark.slow

CLIENTS = 16
HOT = list(range(1, 11))
COLD = list(range(11, 1011))
PROFILES = 1010
DURATION = 20.0  # seconds of load; every client stops by itself
MAX_STATEMENTS_PER_CLIENT = 3000  # and never more than this many statements
FLIP_EVERY = 0.5  # seconds between the loader's activate/rollback calls
KINDS = ("single", "multi", "copy")


@pytest.fixture
def two_models(db, model_files):
    """``db`` with 1010 profiles, logreg pushed as v1 (active) and gbm as v2."""
    with db.connect() as admin:
        seed_profiles(admin, PROFILES, seed=5)
    first = push_model(db.dsn("loader"), model_files["logreg"], name="churn", activate=True)
    # logreg on the sql path, gbm on the compiled one: every switch rewrites the trigger.
    second = push_model(db.dsn("loader"), model_files["gbm"], name="churn", activate=False, scoring_path="compiled")
    assert (first.version, second.version) == (1, 2)
    return db, {first.model_id: model_files["logreg"], second.model_id: model_files["gbm"]}


def pick(rng: random.Random) -> int:
    return rng.choice(HOT) if rng.random() < 0.5 else rng.choice(COLD)


def test_sixteen_clients_with_model_flips_count_exactly_and_never_deadlock(two_models):
    db, model_paths = two_models
    with db.connect() as admin:
        counts_before = dict(admin.execute("SELECT customer_id, complaint_count FROM customer_profiles").fetchall())
    assert len(counts_before) == PROFILES

    errors: list[tuple[str, BaseException]] = []
    rows_sent = [collections.Counter() for _ in range(CLIENTS)]
    statements = [collections.Counter() for _ in range(CLIENTS)]
    loader_actions: collections.Counter = collections.Counter()
    stop = threading.Event()
    ready = threading.Barrier(CLIENTS + 1)

    def client(index: int) -> None:
        rng = random.Random(1000 + index)
        sent, done = rows_sent[index], statements[index]
        try:
            with psycopg.connect(db.dsn("app"), autocommit=True) as conn:
                conn.execute("SET scoring.on_error = 'raise'")  # any scoring failure must reach this client
                ready.wait(timeout=60)
                deadline = time.monotonic() + DURATION
                for _ in range(MAX_STATEMENTS_PER_CLIENT):
                    if time.monotonic() > deadline or stop.is_set():
                        break
                    kind = rng.choice(KINDS)
                    if kind == "single":
                        customers = [pick(rng)]
                        conn.execute("INSERT INTO complaints (customer_id, channel, category, body)"
                                     " VALUES (%s, 'phone', 'billing', 'single')", customers)
                    elif kind == "multi":
                        customers = rng.sample(HOT + COLD[:40], 5) if rng.random() < 0.5 else \
                            [pick(rng) for _ in range(5)]
                        rng.shuffle(customers)  # random order on purpose
                        conn.execute("INSERT INTO complaints (customer_id, channel, category, body) VALUES"
                                     + ", ".join(["(%s, 'chat', 'network', 'multi')"] * len(customers)),
                                     customers)
                    else:
                        customers = [pick(rng) for _ in range(rng.randint(1, 8))]
                        with conn.cursor().copy(
                                "COPY complaints (customer_id, channel, category, body) FROM STDIN") as copy:
                            for customer_id in customers:
                                copy.write_row((customer_id, "email", "service", "copy"))
                    sent.update(customers)
                    done[kind] += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append((f"client {index}", exc))
            stop.set()

    def loader() -> None:
        versions = {1: None, 2: None}
        try:
            with psycopg.connect(db.dsn("loader"), autocommit=True) as conn:
                ready.wait(timeout=60)
                step = 0
                while not stop.is_set():
                    action = step % 3
                    if action in (0, 1):
                        version = 1 if action == 0 else 2
                        versions[version] = conn.execute("SELECT scoring.activate('churn', %s)",
                                                         [version]).fetchone()[0]
                        loader_actions[f"activate v{version}"] += 1
                    else:
                        conn.execute("SELECT scoring.rollback('churn')")
                        loader_actions["rollback"] += 1
                    step += 1
                    stop.wait(FLIP_EVERY)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(("loader", exc))

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
    flipper = threading.Thread(target=loader, daemon=True)
    for thread in [*threads, flipper]:
        thread.start()
    started = time.monotonic()
    for thread in threads:
        thread.join(DURATION + 60)
    stop.set()
    flipper.join(30)
    elapsed = time.monotonic() - started
    hung = [t.name for t in [*threads, flipper] if t.is_alive()]

    per_kind = sum(statements, collections.Counter())
    sent = sum(rows_sent, collections.Counter())
    summary = (f"{sum(per_kind.values())} statements ({dict(per_kind)}), {sum(sent.values())} rows, "
               f"{len(sent)} distinct customers, loader {dict(loader_actions)}, {elapsed:.1f}s")
    print(summary)
    assert not hung, f"threads still running after the time limit: {hung}; {summary}"
    assert errors == [], f"{len(errors)} client errors, first: {errors[:3]!r}; {summary}"
    assert all(per_kind[kind] > 0 for kind in KINDS), summary
    assert loader_actions["rollback"] > 0 and loader_actions["activate v2"] > 0, summary

    time.sleep(1.0)  # let the closed backends' statistics reach pg_stat_database
    with db.connect() as admin:
        deadlocks = admin.execute(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()").fetchone()[0]
        complaint_rows = dict(admin.execute("SELECT customer_id, count(*) FROM complaints GROUP BY 1").fetchall())
        profiles = {row[0]: row[1:] for row in admin.execute(
            "SELECT customer_id, complaint_count, churn_score, churn_model_id, churn_scored_at"
            " FROM customer_profiles").fetchall()}

    assert deadlocks == 0, summary
    assert complaint_rows == dict(sent), f"complaint rows differ from what the clients inserted; {summary}"
    wrong_counts = {c: (counts_before[c], sent.get(c, 0), profiles[c][0]) for c in profiles
                    if profiles[c][0] != counts_before[c] + sent.get(c, 0)}
    assert wrong_counts == {}, f"(seeded, new rows, complaint_count) of wrong counters: {wrong_counts}; {summary}"

    written = {profile[2] for profile in profiles.values() if profile[2] is not None}
    assert written <= set(model_paths), f"churn_model_id values {written}, pushed {set(model_paths)}; {summary}"
    unscored = [c for c in sent if profiles[c][2] is None or profiles[c][1] is None or profiles[c][3] is None]
    assert unscored == [], f"customers with new complaints but no score: {unscored[:20]}; {summary}"
    untouched_scored = [c for c in profiles if c not in sent and profiles[c][2] is not None]
    assert untouched_scored == [], f"profiles without complaints were scored: {untouched_scored[:20]}"
    assert written == set(model_paths), f"both models should have produced final scores, got {written}; {summary}"

    # Every touched profile (the hot ones included) was last written by one
    # trigger call that read its final complaint_count: its score must be
    # that model's predict_proba on the profile as it is now.
    mismatches = {}
    for model_id, path in model_paths.items():
        ids = [c for c in sent if profiles[c][2] == model_id]
        expected = local_scores(path, db, ids)
        for customer_id in ids:
            if abs(profiles[customer_id][1] - expected[customer_id]) > 1e-9:
                mismatches[customer_id] = (model_id, profiles[customer_id][1], expected[customer_id])
    assert mismatches == {}, f"(model_id, stored, local) of scores that do not match: {mismatches}; {summary}"
    assert all(profiles[c][2] is not None for c in HOT), summary


def test_rollback_racing_an_uncommitted_activation_keeps_history_consistent(scored, model_files):
    """Two data scientists at once: one activates v3 in a transaction that
    commits a moment later, the other rolls back meanwhile. Whatever the
    outcome, the active model (the latest deployment row) must be the top of
    the history as rollback replays it, so that the next rollback undoes
    something instead of re-activating what is already active."""
    loader = scored.dsn("loader")
    push_model(loader, model_files["gbm"], name="churn", activate=True, scoring_path="compiled")  # v2; v1 came with `scored`
    push_model(loader, model_files["logreg"], name="churn", activate=False)  # v3
    result: dict = {}

    def roll_back() -> None:
        try:
            with psycopg.connect(loader, autocommit=True) as conn:
                conn.execute("SET lock_timeout = '20s'")
                result["rollback"] = conn.execute("SELECT scoring.rollback('churn')").fetchone()[0]
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            result["error"] = exc

    with psycopg.connect(loader) as activating:  # one transaction, committed below
        activating.execute("SELECT scoring.activate('churn', 3)")
        thread = threading.Thread(target=roll_back, daemon=True)
        thread.start()
        thread.join(1.0)  # the rollback either waits for this activation or runs past it
        activating.commit()
    thread.join(30)
    assert not thread.is_alive() and "error" not in result, result

    with scored.connect() as admin:
        history = admin.execute("SELECT action, model_id FROM scoring.deployments WHERE name = 'churn'"
                                " ORDER BY deployment_id").fetchall()
        active = admin.execute("SELECT model_id FROM scoring.active_models WHERE name = 'churn'").fetchone()[0]
    stack: list[int] = []
    for action, model_id in history:
        if action == "activate":
            stack.append(model_id)
        else:
            stack.pop()
    assert stack[-1] == active, (f"history {history} replays to {stack} (top {stack[-1]}), "
                                 f"but scoring.active_models says {active}; rollback returned {result['rollback']}")
