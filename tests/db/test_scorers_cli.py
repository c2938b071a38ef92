"""Scorers on the client (issue 20): `pgscore attach` / `scorers` / `detach`,
and `pgscore push` against the entity table of the scorer(s) of a model name.

Tables written as a user's own would be (a quoted schema, CamelCase quoted
columns, keys of each supported type), on a fresh migrated database; the
loader role pushes, as a data scientist would.
"""

from __future__ import annotations

import uuid

import pytest

from pgscore import PushError, ScorerNotFound, cli, list_scorers, push_model
from pgscore.scorers import entities_for_model
from pgscore.verify import PARITY_TOLERANCE, fetch_feature_rows
from pgscore_server.features import to_frame

NO_SCORER = ("no scorer scores with model name 'nobody'; attach one first: pgscore attach nobody --entity TABLE "
             "--key COLUMN (list them: pgscore scorers)")
PLANS = '"CRM"."Plans"'


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return status, out, err


def one_line_error(err: str) -> str:
    """The CLI's error: 'pgscore: ...' on one line (and PostgreSQL's hint, if any, on a second)."""
    lines = err.splitlines()
    assert lines and lines[0].startswith("pgscore: ") and len(lines) <= 2, err
    assert len(lines) == 1 or lines[1].startswith("hint: "), err
    return lines[0]


def model_count(db) -> int:
    with db.connect() as conn:
        return conn.execute("SELECT count(*) FROM scoring.models").fetchone()[0]


@pytest.fixture
def plans(db):
    """``db`` with "CRM"."Plans" (integer key, a score column, a counter) and "CRM".calls, its events."""
    with db.connect() as admin:
        admin.execute('CREATE SCHEMA "CRM"')
        admin.execute('CREATE TABLE "CRM"."Plans" ("PlanID" integer PRIMARY KEY, "Tenure" integer NOT NULL,'
                      ' "Contract" text NOT NULL, "CallCount" integer NOT NULL DEFAULT 0, "Score" double precision,'
                      ' "ScoreModel" bigint, "ScoredAt" timestamptz)')
        admin.execute('CREATE TABLE "CRM".calls (call_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,'
                      ' "PlanID" integer NOT NULL REFERENCES "CRM"."Plans")')
        admin.execute('INSERT INTO "CRM"."Plans" ("PlanID", "Tenure", "Contract")'
                      " SELECT i, i * 3, (ARRAY['Month-to-month', 'One year'])[1 + i % 2] FROM generate_series(1, 20) i")
    return db


def test_attach_scorers_detach_round_trip_on_the_cli(plans, capsys):
    dsn = plans.dsn()
    status, out, err = run_cli(
        capsys, "attach", "plan_risk", "--entity", PLANS, "--key", "PlanID", "--score-column", "Score",
        "--model-id-column", "ScoreModel", "--scored-at-column", "ScoredAt", "--model", "plans",
        "--features", "Tenure, Contract,CallCount", "--no-score-on-insert",
        "--events", '"CRM".calls:PlanID:CallCount', "--dsn", dsn)
    assert status == 0, err
    assert len(out.splitlines()) == 2  # the server's summary of attach, then of attach_events
    # A second scorer of the same entity, into pgscore's own score table.
    status, out, err = run_cli(capsys, "attach", "plan_narrow", "--entity", PLANS, "--key", "PlanID",
                               "--features", "Tenure", "--dsn", dsn)
    assert status == 0 and len(out.splitlines()) == 1, err

    rows = {row["scorer"]: row for row in list_scorers(plans.dsn("loader"))}
    assert set(rows) == {"churn", "plan_risk", "plan_narrow"}
    risk = rows["plan_risk"]
    assert (risk["model_name"], risk["entity"], risk["key_column"], risk["key_type"], risk["score_target"]) == \
        ("plans", PLANS, "PlanID", "integer", "columns")
    assert (risk["score_column"], risk["model_id_column"], risk["scored_at_column"]) == ("Score", "ScoreModel", "ScoredAt")
    assert risk["features"] == ["Tenure", "Contract", "CallCount"] and risk["score_on_insert"] is False
    assert [(e["events"], e["entity_key"], e["counter"]) for e in risk["events"]] == [('"CRM".calls', "PlanID", "CallCount")]
    narrow = rows["plan_narrow"]
    assert (narrow["model_name"], narrow["score_target"], narrow["score_table"]) == \
        ("plan_narrow", "table", "scoring_scores.plan_narrow")

    status, out, err = run_cli(capsys, "scorers", "--dsn", plans.dsn("loader"))
    assert status == 0, err
    header, _rule, *lines = out.splitlines()
    assert header.split() == ["scorer", "entity", "key", "target", "events", "active", "model", "path"]
    by_scorer = {line.split()[0]: line for line in lines}
    assert set(by_scorer) == {"churn", "plan_risk", "plan_narrow"}
    for text in (PLANS, "PlanID (integer)", "Score, ScoreModel, ScoredAt", '"CRM".calls(PlanID) -> CallCount',
                 "plans: none"):
        assert text in by_scorer["plan_risk"], (text, by_scorer["plan_risk"])
    assert "scoring_scores.plan_narrow" in by_scorer["plan_narrow"] and "plan_narrow: none" in by_scorer["plan_narrow"]
    assert "public.customer_profiles" in by_scorer["churn"] and "customer_id (bigint)" in by_scorer["churn"]

    for scorer in ("plan_risk", "plan_narrow"):
        status, out, err = run_cli(capsys, "detach", scorer, "--dsn", dsn)
        assert status == 0 and len(out.splitlines()) == 1, err
    assert [row["scorer"] for row in list_scorers(dsn)] == ["churn"]
    with plans.connect() as admin:
        # The user's tables, columns and rows stay; pgscore's triggers and score table go.
        assert admin.execute('SELECT count(*) FROM "CRM"."Plans"').fetchone()[0] == 20
        assert admin.execute('SELECT "CallCount", "Score" FROM "CRM"."Plans" WHERE "PlanID" = 1').fetchone() == (0, None)
        triggers = admin.execute("SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal"
                                 " AND tgrelid IN (%s::regclass, '\"CRM\".calls'::regclass)", [PLANS]).fetchone()[0]
        assert triggers == 0
        assert admin.execute("SELECT to_regclass('scoring_scores.plan_narrow')").fetchone()[0] is None
    status, out, err = run_cli(capsys, "scorers", "--dsn", dsn)
    assert status == 0 and [line.split()[0] for line in out.splitlines()[2:]] == ["churn"]


def test_attach_with_events_is_one_transaction_and_errors_are_one_line(plans, capsys):
    dsn = plans.dsn()
    status, _, err = run_cli(capsys, "attach", "plan_risk", "--entity", PLANS, "--key", "PlanID",
                             "--events", '"CRM".calls:PlanID', '"CRM".nowhere:PlanID', "--dsn", dsn)
    assert status == 1
    assert "nowhere" in one_line_error(err)
    assert [row["scorer"] for row in list_scorers(dsn)] == ["churn"]  # attach itself was rolled back too

    status, _, err = run_cli(capsys, "attach", "plan_risk", "--entity", '"CRM".plans', "--key", "PlanID", "--dsn", dsn)
    assert status == 1 and '"CRM.plans" does not exist' in one_line_error(err)  # plans unquoted: another table
    status, _, err = run_cli(capsys, "detach", "no_such_scorer", "--dsn", dsn)
    assert status == 1 and "no_such_scorer" in one_line_error(err)
    with pytest.raises(SystemExit) as usage:  # a usage error, before any connection: argparse exits with 2
        cli.main(["attach", "plan_risk", "--entity", PLANS, "--key", "PlanID", "--events", "just_a_table", "--dsn", dsn])
    assert usage.value.code == 2 and "'just_a_table' is not TABLE:KEYCOLUMN" in capsys.readouterr().err


def test_attach_and_detach_run_as_the_tables_owner(plans, capsys):
    """Not as the role pgscore's other commands run in: the owner of the
    tables (here a login role that is no superuser) may attach and detach,
    any other role is refused in one line."""
    owner = plans.users["app"]
    with plans.connect() as admin:
        # The schema's owner lets the owner of the tables and pgscore's owner role in (attach says so otherwise).
        admin.execute(f'GRANT USAGE ON SCHEMA "CRM" TO {owner}, {plans.users["analyst"]}, scoring_owner')
        admin.execute(f'ALTER TABLE "CRM"."Plans" OWNER TO {owner}')
        admin.execute(f'ALTER TABLE "CRM".calls OWNER TO {owner}')
    status, _, err = run_cli(capsys, "attach", "plan_risk", "--entity", PLANS, "--key", "PlanID",
                             "--dsn", plans.dsn("analyst"))
    assert status == 1 and "owner" in one_line_error(err)
    status, out, err = run_cli(capsys, "attach", "plan_risk", "--entity", PLANS, "--key", "PlanID",
                               "--score-column", "Score", "--events", '"CRM".calls:PlanID:CallCount',
                               "--dsn", plans.dsn("app"))
    assert status == 0 and len(out.splitlines()) == 2, err
    with plans.connect("app") as app:
        app.execute('INSERT INTO "CRM".calls ("PlanID") VALUES (3), (3)')
        assert app.execute('SELECT "CallCount" FROM "CRM"."Plans" WHERE "PlanID" = 3').fetchone()[0] == 2
    status, _, err = run_cli(capsys, "detach", "plan_risk", "--dsn", plans.dsn("analyst"))
    assert status == 1 and "owner" in one_line_error(err)
    status, _, err = run_cli(capsys, "detach", "plan_risk", "--dsn", plans.dsn("app"))
    assert status == 0, err
    assert [row["scorer"] for row in list_scorers(plans.dsn("analyst"))] == ["churn"]


def test_push_refuses_a_model_name_no_scorer_scores_with(db, model_files, capsys):
    with pytest.raises(ScorerNotFound) as refused:
        push_model(db.dsn("loader"), model_files["logreg"], name="nobody")
    assert str(refused.value) == NO_SCORER and isinstance(refused.value, PushError)
    status, out, err = run_cli(capsys, "push", str(model_files["logreg"]), "--name", "nobody", "--dsn", db.dsn("loader"))
    assert (status, out, err) == (1, "", f"pgscore: {NO_SCORER}\n")
    assert model_count(db) == 0


# -- push to a scorer of a table of the user's own, keys of every type

KEYS = {
    "text": lambda i: f"{7590 + i:04d}-VHVEG",
    "uuid": lambda i: uuid.UUID(int=(i + 1) * 7919),
    "integer": lambda i: i + 1,
    "bigint": lambda i: 10**12 + i,
}
SUBSCRIBERS = '"CRM"."Subscribers"'
FEATURES = ["TenureMonths", "MonthlyCharges", "Contract"]
N_SUBSCRIBERS = 150


def _subscribers(db, key_type: str) -> dict:
    """"CRM"."Subscribers" with a ``key_type`` key "SubscriberID"; returns key -> churn label."""
    key_of = KEYS[key_type]
    labels = {}
    with db.connect() as admin:
        admin.execute('CREATE SCHEMA "CRM"')
        admin.execute(f'CREATE TABLE "CRM"."Subscribers" ("SubscriberID" {key_type} PRIMARY KEY,'
                      ' "TenureMonths" integer NOT NULL, "MonthlyCharges" numeric(10,2), "Contract" text NOT NULL)')
        with admin.cursor() as cur:
            for i in range(N_SUBSCRIBERS):
                tenure, contract = (i * 7) % 72, ("Month-to-month", "One year", "Two year")[i % 3]
                charges = None if i % 17 == 0 else 20 + (i * 13) % 100 + 0.25
                cur.execute('INSERT INTO "CRM"."Subscribers" VALUES (%s, %s, %s, %s)',
                            [key_of(i), tenure, charges, contract])
                labels[str(key_of(i))] = int((contract == "Month-to-month" and tenure < 30) or i % 5 == 0)
    return labels


def _pipeline():
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    return make_pipeline(
        ColumnTransformer([("text", OneHotEncoder(handle_unknown="ignore"), ["Contract"]),
                           ("numbers", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()),
                            ["TenureMonths", "MonthlyCharges"])]),
        LogisticRegression(max_iter=500))


@pytest.mark.parametrize("key_type", list(KEYS))
def test_push_checks_and_test_scores_on_the_scorers_own_table(db, key_type, capsys):
    labels = _subscribers(db, key_type)
    status, _, err = run_cli(capsys, "attach", "crm_churn", "--entity", SUBSCRIBERS, "--key", "SubscriberID",
                             "--dsn", db.dsn())
    assert status == 0, err
    with db.connect("loader") as loader:
        entity, = entities_for_model(loader, "crm_churn")
    assert (entity.table, entity.key, entity.key_type) == (SUBSCRIBERS, "SubscriberID", key_type)

    # The features are read as the server reads them (as the owner here: the loader may not read them yet).
    with db.connect() as admin:
        rows = fetch_feature_rows(admin, FEATURES, [KEYS[key_type](i) for i in range(N_SUBSCRIBERS)], entity)
    assert len(rows) == N_SUBSCRIBERS
    model = _pipeline().fit(to_frame(rows, FEATURES), [labels[str(row["SubscriberID"])] for row in rows])

    with pytest.raises(PushError, match=r'GRANT SELECT \("SubscriberID", "TenureMonths", "MonthlyCharges", '
                                        r'"Contract"\) ON "CRM"."Subscribers"'):
        push_model(db.dsn("loader"), model, name="crm_churn")
    with db.connect() as admin:
        admin.execute('GRANT USAGE ON SCHEMA "CRM" TO scoring_loader')
        admin.execute('GRANT SELECT ON "CRM"."Subscribers" TO scoring_loader')

    # A feature that is not a column of the entity is refused, naming both.
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    shoes = LogisticRegression().fit(pd.DataFrame({"TenureMonths": [1, 5, 30, 60], "ShoeSize": [40, 42, 44, 46]}),
                                     [1, 1, 0, 0])
    with pytest.raises(PushError, match=r'not columns of "CRM"."Subscribers": ShoeSize; .*scorer \'crm_churn\''):
        push_model(db.dsn("loader"), shoes, name="crm_churn")
    assert model_count(db) == 0

    # A second scorer with the same model name, into pgscore's own table: push test-scores for both.
    status, _, err = run_cli(capsys, "attach", "crm_narrow", "--entity", SUBSCRIBERS, "--key", "SubscriberID",
                             "--model", "crm_churn", "--dsn", db.dsn())
    assert status == 0, err
    result = push_model(db.dsn("loader"), model, name="crm_churn", activate=True)
    assert result.scored_tables == [SUBSCRIBERS, SUBSCRIBERS]
    assert result.sample_size == 2 * N_SUBSCRIBERS and result.max_abs_diff <= PARITY_TOLERANCE
    assert result.scoring_path in ("sql", "compiled"), result.path_note

    keys = [str(KEYS[key_type](i)) for i in range(0, N_SUBSCRIBERS, 7)]
    expected = dict(zip([str(row["SubscriberID"]) for row in rows], model.predict_proba(to_frame(rows, FEATURES))[:, 1]))
    with db.connect("analyst") as analyst:
        scored = analyst.execute("SELECT key, score FROM scoring.score_keys('crm_churn', %s::text[])", [keys]).fetchall()
    assert [key for key, _ in scored] == keys
    assert max(abs(score - expected[key]) for key, score in scored) <= PARITY_TOLERANCE

    with db.connect("analyst") as analyst:
        narrow = analyst.execute("SELECT key, score FROM scoring.score_keys('crm_narrow', %s::text[])",
                                 [keys]).fetchall()
    assert narrow == scored

    status, out, err = run_cli(capsys, "scorers", "--dsn", db.dsn("loader"))
    assert status == 0 and out.count(f"crm_churn v{result.version} (model_id {result.model_id})") == 2, err
