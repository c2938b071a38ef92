"""A schema written like a real CRM (not pgscore's reference tables), the
models trained on its columns, and what the scorer tests check on it.

The entity is ``"CRM"."Subscribers"`` (text keys such as ``'7590-VHVEG'``,
CamelCase quoted columns), the events ``support.tickets``; both are owned by
a NOLOGIN role of the test's own, and a login application role of the
test's own has only table rights on them (:func:`crm_schema`).
:func:`crm_pipeline` is a scikit-learn pipeline fitted on those column
names; :func:`expected_scores` is its ``predict_proba`` of rows read as the
server reads them (numeric as float8), which every stored score must equal;
:func:`check` asserts that, and exact counters, for the two scorers
:func:`attach_both` attaches.
"""

from __future__ import annotations

import contextlib
import functools
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import psycopg
from psycopg import sql
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

# The features of the CRM model, as the entity's columns are named.
FEATURES = ("Tenure", "MonthlyCharges", "Contract", "TicketCount")
CONTRACTS = ("Month-to-month", "One year", "Two year")
NUMERIC = ("MonthlyCharges",)  # numeric(10,2): the server reads it as float8
TOLERANCE = 1e-9

CRM_SCHEMA = """
CREATE SCHEMA "CRM";
CREATE TABLE "CRM"."Subscribers" (
    "customerID"     text PRIMARY KEY,
    "Tenure"         integer,
    "MonthlyCharges" numeric(10,2),
    "Contract"       text,
    "TicketCount"    integer NOT NULL DEFAULT 0,
    "ChurnRisk"      double precision,
    "ScoredBy"       bigint,
    "ScoredAt"       timestamptz,
    "Email"          text,
    "SignedUp"       date DEFAULT current_date
);
CREATE SCHEMA support;
CREATE TABLE support.tickets (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    "customerID" text NOT NULL REFERENCES "CRM"."Subscribers",
    opened_at    timestamptz DEFAULT now()
);
"""
ENTITY = '"CRM"."Subscribers"'
EVENTS = "support.tickets"
KEYS = ("7590-VHVEG", "5575-GNVDE", "3668-QPYBK", "7795-CFOCW", "9237-HQITU", "9305-CDSKC", "1452-KIOVK",
        "6713-OKOMC")


def training_frame(n: int, seed: int, features: Sequence[str] = FEATURES) -> tuple[Any, np.ndarray]:
    """``n`` synthetic subscribers (a DataFrame of ``features``: FEATURES and "TotalCharges")
    and their 0/1 churn labels."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    tenure = rng.integers(0, 73, n)
    charges = np.round(rng.uniform(18, 120, n), 2)
    contract = rng.choice(CONTRACTS, n)
    tickets = rng.poisson(1.5, n)
    logit = (1.2 - 0.05 * tenure + 0.02 * (charges - 60) + 0.6 * tickets
             + np.select([contract == "Month-to-month", contract == "One year"], [1.0, -0.5], -1.5))
    labels = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    frame = pd.DataFrame({"Tenure": tenure, "MonthlyCharges": charges, "Contract": contract, "TicketCount": tickets,
                          "TotalCharges": np.round(tenure * charges, 2)})
    return frame[list(features)], labels


@functools.cache
def crm_pipeline(features: tuple[str, ...] = FEATURES, seed: int = 0, c: float = 1.0,
                 renamed: tuple[tuple[str, str], ...] = ()) -> Pipeline:
    """OneHotEncoder for "Contract", StandardScaler for the rest, LogisticRegression:
    fitted once per session for these arguments (treat it as read-only).
    ``renamed`` gives other column names to features ((from, to), ...)."""
    frame, labels = training_frame(2000, seed, features)
    names = dict(renamed)
    frame = frame.rename(columns=names)
    text = [names.get("Contract", "Contract")] if "Contract" in features else []
    numbers = [names.get(f, f) for f in features if f != "Contract"]
    model = Pipeline([
        ("prepare", ColumnTransformer([("text", OneHotEncoder(handle_unknown="ignore"), text),
                                       ("numbers", StandardScaler(), numbers)])),
        ("classify", LogisticRegression(C=c, max_iter=1000)),
    ])
    return model.fit(frame, labels)


def read_features(conn: psycopg.Connection, entity: str, key: str, features: Sequence[str],
                  keys: Sequence[Any] | None = None) -> dict[Any, dict]:
    """key -> {feature: value} of the entity's rows (``entity`` is SQL text,
    e.g. '"CRM"."Subscribers"'), numeric columns read as float8 as the server does."""
    types = dict(conn.execute(
        "SELECT attname::text, format_type(atttypid, NULL) FROM pg_attribute"
        " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped", [entity]).fetchall())
    items = []
    for name in features:
        column = sql.Identifier(name)
        if types[name] in ("numeric", "real", "double precision"):
            column = sql.SQL("{}::float8").format(column)
        items.append(column)
    query = sql.SQL("SELECT {key}, {items} FROM {entity}").format(
        key=sql.Identifier(key), items=sql.SQL(", ").join(items), entity=sql.SQL(entity))
    if keys is not None:
        query = sql.SQL("{} WHERE {} = ANY(%s)").format(query, sql.Identifier(key))
    rows = conn.execute(query, [list(keys)] if keys is not None else None).fetchall()
    return {row[0]: dict(zip(features, row[1:])) for row in rows}


def expected_scores(conn: psycopg.Connection, model: Pipeline, entity: str, key: str,
                    keys: Sequence[Any] | None = None) -> dict[Any, float]:
    """key -> the model's predict_proba of the entity's row as it is now (read through ``conn``)."""
    from pgscore_server.features import to_frame

    names = [str(name) for name in model.feature_names_in_]
    rows = read_features(conn, entity, key, names, keys)
    if not rows:
        return {}
    proba = model.predict_proba(to_frame(list(rows.values()), names))[:, 1]
    return {k: float(p) for k, p in zip(rows, proba)}


def stored_scores(conn: psycopg.Connection, scorer: str) -> dict[Any, float | None]:
    """key -> the score ``scorer`` stored (its entity's score column, or its narrow table),
    as scoring.scorers describes it."""
    entity, key, column, table = conn.execute(
        "SELECT entity::text, key_column, score_column, score_table::text FROM scoring.scorers WHERE scorer = %s",
        [scorer]).fetchone()
    if column is not None:
        query = sql.SQL("SELECT {}, {} FROM {}").format(sql.Identifier(key), sql.Identifier(column), sql.SQL(entity))
    else:
        query = sql.SQL("SELECT {}, score FROM {}").format(sql.Identifier(key), sql.SQL(table))
    return dict(conn.execute(query).fetchall())


def score_differences(expected: dict, stored: dict) -> dict:
    """key -> (stored, expected) for every key whose stored score is missing or off by more than TOLERANCE."""
    return {k: (stored.get(k), p) for k, p in expected.items()
            if stored.get(k) is None or not abs(stored[k] - p) <= TOLERANCE}


def counter_differences(conn: psycopg.Connection, entity: str, key: str, counter: str, events: str,
                        events_key: str) -> dict:
    """key -> (counter, event rows) for every entity row whose counter differs from its number of event rows."""
    rows = conn.execute(sql.SQL(
        "SELECT e.{key}, e.{counter}, (SELECT count(*) FROM {events} v WHERE v.{events_key} = e.{key})"
        " FROM {entity} e").format(key=sql.Identifier(key), counter=sql.Identifier(counter),
                                    events=sql.SQL(events), events_key=sql.Identifier(events_key),
                                    entity=sql.SQL(entity))).fetchall()
    return {k: (count, actual) for k, count, actual in rows if count != actual}


def suffix() -> str:
    return uuid.uuid4().hex[:6]


@contextlib.contextmanager
def owned_roles(admin_dsn: str, *names: str, login: Sequence[str] = ()) -> Iterator[dict[str, str]]:
    """Roles ``names`` (NOLOGIN) and ``login`` (LOGIN, the tests' password) for
    one test database: yields login name -> its DSN. Afterwards what they own
    there is dropped, and the roles with it (roles are cluster-wide)."""
    from psycopg.conninfo import make_conninfo

    from tests.conftest import PASSWORD

    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        for name in names:
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(name)))
        for name in login:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(name),
                                                                           sql.Literal(PASSWORD)))
    names = (*names, *login)
    try:
        yield {name: make_conninfo(admin_dsn, user=name, password=PASSWORD) for name in login}
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            for name in names:
                conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(name)))
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def may_create_schemas(conn: psycopg.Connection, role: str) -> None:
    """Lets ``role`` create schemas in the connection's database (as the owner of an application's tables may)."""
    conn.execute(sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
        sql.Identifier(conn.info.dbname), sql.Identifier(role)))


def create_crm(conn: psycopg.Connection, owner: str, app: str) -> None:
    """The CRM schema, owned by ``owner``; ``app`` may read and write its tables and nothing else;
    the loader may read the subscribers (push test-scores a model on them)."""
    may_create_schemas(conn, owner)
    conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(owner)))
    conn.execute(CRM_SCHEMA)
    grant_app(conn, app, ["CRM", "support"], [ENTITY, EVENTS])
    let_loader_read(conn, "CRM", ENTITY)
    conn.execute("RESET ROLE")


def let_loader_read(conn: psycopg.Connection, schema: str, table: str) -> None:
    """What push asks of an entity's owner: scoring_loader may read the table it test-scores on."""
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO scoring_loader").format(sql.Identifier(schema)))
    conn.execute(sql.SQL("GRANT SELECT ON {} TO scoring_loader").format(sql.SQL(table)))


def grant_app(conn: psycopg.Connection, app: str, schemas: Sequence[str], tables: Sequence[str]) -> None:
    """What an application role has on its own tables: USAGE on their schemas and
    SELECT, INSERT, UPDATE, DELETE (and TRUNCATE) on the tables, nothing more."""
    role = sql.Identifier(app)
    for schema in schemas:
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), role))
    for table in tables:
        conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON {} TO {}").format(
            sql.SQL(table), role))


def subscriber_rows(keys: Sequence[str], seed: int) -> list[tuple]:
    """("customerID", "Tenure", "MonthlyCharges", "Contract", "Email") for ``keys``."""
    rng = np.random.default_rng(seed)
    return [(key, int(rng.integers(0, 73)), round(float(rng.uniform(18, 120)), 2), str(rng.choice(CONTRACTS)),
             f"{key.lower()}@example.com") for key in keys]


def as_role(conn: psycopg.Connection, role: str) -> None:
    conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))


NARROW_FEATURES = ("Tenure", "Contract", "TicketCount")


@dataclass
class Crm:
    db: object  # tests.conftest.Database
    owner: str
    app: str
    app_dsn: str
    entity: str = ENTITY  # as SQL text; a test that renames the table changes it
    events: str = EVENTS
    models: dict = field(default_factory=dict)  # scorer -> fitted pipeline
    model_ids: dict = field(default_factory=dict)  # scorer -> model_id of its active model

    def app_connect(self) -> psycopg.Connection:
        conn = psycopg.connect(self.app_dsn, autocommit=True)
        conn.execute("SET scoring.on_error = 'raise'")  # a scoring failure must surface in the statement
        return conn

    def owner_connect(self) -> psycopg.Connection:
        conn = self.db.connect()
        as_role(conn, self.owner)
        return conn


@contextlib.contextmanager
def crm_schema(db: Any) -> Iterator[Crm]:
    """The CRM schema in ``db`` (a tests.conftest.Database), owned by crm_owner_*,
    written by the login crm_app_*, which has no right in schema scoring."""
    owner, app = f"crm_owner_{suffix()}", f"crm_app_{suffix()}"
    with owned_roles(db.admin, owner, login=[app]) as dsns:
        with db.connect() as admin:
            create_crm(admin, owner, app)
        yield Crm(db, owner, app, dsns[app])


def attach_both(crm: Crm, features: bool = False, path: str = "auto") -> None:
    """Scorer 'crm' (score columns on the row, counter "TicketCount") and 'crm_narrow'
    (pgscore's narrow table, same tickets, no counter), attached by the table's owner;
    then their models pushed and activated by the loader. ``features``: name each
    scorer's features (its model's) instead of letting pgscore take every column."""
    crm.models = {"crm": crm_pipeline(FEATURES), "crm_narrow": crm_pipeline(NARROW_FEATURES, seed=1, c=0.3)}
    with crm.owner_connect() as owner:
        summary = owner.execute(
            "SELECT scoring.attach('crm', %s, 'customerID', score_column => 'ChurnRisk',"
            " model_id_column => 'ScoredBy', scored_at_column => 'ScoredAt', features => %s)",
            [ENTITY, list(FEATURES) if features else None]).fetchone()[0]
        assert isinstance(summary, str) and "crm" in summary
        owner.execute("SELECT scoring.attach_events('crm', %s, 'customerID', 'TicketCount')", [EVENTS])
        owner.execute("SELECT scoring.attach('crm_narrow', %s, 'customerID', features => %s)",
                      [ENTITY, list(NARROW_FEATURES) if features else None])
        owner.execute("SELECT scoring.attach_events('crm_narrow', %s, 'customerID', NULL)", [EVENTS])
    for scorer, model in crm.models.items():
        crm.model_ids[scorer] = push(crm.db, model, scorer, path)


def check(crm: Crm, step: str) -> dict[str, dict]:
    """Asserts the invariants after ``step``; returns scorer -> key -> stored score."""
    stored = {}
    with crm.db.connect() as admin:
        counters = counter_differences(admin, crm.entity, "customerID", "TicketCount", crm.events, "customerID")
        assert counters == {}, f"{step}: key: (counter, event rows) {counters}"
        keys = [row[0] for row in admin.execute(sql.SQL("SELECT {} FROM {} ORDER BY 1").format(
            sql.Identifier("customerID"), sql.SQL(crm.entity)))]
        expected, differences = {}, {}
        for scorer, model in crm.models.items():
            expected[scorer] = expected_scores(admin, model, crm.entity, "customerID")
            stored[scorer] = stored_scores(admin, scorer)
            differences[scorer] = score_differences(expected[scorer], stored[scorer])
        assert differences == {scorer: {} for scorer in crm.models}, f"{step}: key: (stored, expected) {differences}"
        for scorer in crm.models:
            assert set(stored[scorer]) == set(keys), f"{step}: {scorer} stores exactly one score per subscriber"
        unscored = admin.execute(sql.SQL(
            'SELECT "customerID" FROM {} WHERE "ScoredBy" IS DISTINCT FROM %s OR "ScoredAt" IS NULL').format(
            sql.SQL(crm.entity)), [crm.model_ids["crm"]]).fetchall()
        assert unscored == [], step
        if "crm_narrow" in crm.models:
            narrow_models = admin.execute("SELECT DISTINCT model_id FROM scoring_scores.crm_narrow").fetchall()
            assert narrow_models in ([], [(crm.model_ids["crm_narrow"],)]), step
        errors = admin.execute("SELECT count(*) FROM scoring.errors WHERE scorer = ANY(%s)", [list(crm.models)])
        assert errors.fetchone()[0] == 0, step
    with crm.db.connect("analyst") as analyst:
        for scorer in crm.models:
            fresh = analyst.execute("SELECT key, score FROM scoring.score_keys(%s, %s)", [scorer, keys]).fetchall()
            assert [key for key, _ in fresh] == keys, f"{step}: score_keys keeps the input order"
            assert score_differences(expected[scorer], dict(fresh)) == {}, f"{step}: score_keys({scorer})"
            for key in keys:
                one = analyst.execute("SELECT scoring.score_key(%s, %s)", [scorer, key]).fetchone()[0]
                assert one is not None and abs(one - expected[scorer][key]) <= TOLERANCE, \
                    f"{step}: score_key({scorer}, {key})"
    return stored


def push(db: Any, model: Pipeline, name: str, path: str = "auto") -> int:
    """Pushes and activates ``model`` as ``name`` (as the loader) on scoring ``path``
    (push's: 'auto', 'sklearn', 'compiled', 'sql'); returns its model_id. Push
    checks the features against the entity of the scorer of that name and
    test-scores its rows."""
    from pgscore import push_model

    return push_model(db.dsn("loader"), model, name=name, activate=True, scoring_path=path).model_id
