"""Fault injection: each way an active model can break x scoring.on_error.

The application (role scoring_app) inserts one complaint for customer 42
while the active 'churn' model is broken in one of these ways, planted as
superuser where push itself would (rightly) refuse the model:

- load failures (SQLSTATE 38000, scikit-learn path): a corrupt blob with a
  matching sha256; a blob that no longer matches its recorded sha256 (the
  table's CHECK dropped first); a pickle that needs a module only the client
  has; a pickle recorded as saved with another scikit-learn/numpy;
- model failures (SQLSTATE 39000): a feature that became NULL for a model
  without imputer, a category unseen in training for a OneHotEncoder with
  handle_unknown='error' (both on the compiled and on the scikit-learn
  path); a model whose predict_proba returns NaN (both paths); a pipeline
  whose transform raises.

'keep': the complaint is committed, complaint_count + 1, the old score and
model id stay, exactly one scoring.errors row names the cause and a WARNING
reaches the client. 'raise': the INSERT fails with pgscore's SQLSTATE and a
message naming the cause, and nothing at all is written.

Each test starts from a healthy model v1 whose scores were written by
``CALL scoring.rescore()``; the broken model is v2 and active, so an
unchanged churn_model_id proves the broken model wrote nothing.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import sys
from dataclasses import dataclass, field

import joblib
import numpy as np
import pandas as pd
import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb
from sklearn.compose import make_column_transformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from pgscore import PushError, push_model
from pgscore.compile import compile_model
from pgscore_server import runtime as server_runtime
from tests.conftest import profile_state as state

CUSTOMER = 42
LOAD_FAILED = "38000"  # external_routine_exception
MODEL_FAILED = "39000"  # external_routine_invocation_exception
CLIENT_ONLY_MODULE = "pgscore_client_only_ext"
NUMERIC = ["tenure_months", "monthly_charges"]


@dataclass
class Fault:
    """What the planted fault must produce: SQLSTATE and words in the message."""

    sqlstate: str
    all_of: list[str]
    any_of: list[str] = field(default_factory=list)
    model_id: int | None = None  # the broken, active model


# -- models --------------------------------------------------------------------

def training_frame(n: int = 60) -> tuple[pd.DataFrame, list[int]]:
    rng = np.random.default_rng(7)
    frame = pd.DataFrame({
        "tenure_months": rng.integers(0, 72, n),
        "monthly_charges": rng.uniform(18, 120, n).round(2),
        "contract": rng.choice(["Month-to-month", "One year"], n),  # never 'Two year'
    })
    y = ((frame["tenure_months"] < 20) ^ (np.arange(n) % 7 == 0)).astype(int).tolist()
    return frame, y


def numeric_model(seed_shift: float = 0.0):
    """StandardScaler + LogisticRegression on NUMERIC, no imputer."""
    frame, y = training_frame()
    frame = frame[NUMERIC].copy()
    frame["monthly_charges"] += seed_shift
    return make_pipeline(StandardScaler(), LogisticRegression()).fit(frame, y)


def category_model():
    """contract one-hot encoded with handle_unknown='error', trained without 'Two year'."""
    frame, y = training_frame()
    encoder = make_column_transformer(
        (OneHotEncoder(handle_unknown="error"), ["contract"]),
        (StandardScaler(), ["tenure_months"]),
    )
    return make_pipeline(encoder, LogisticRegression()).fit(frame[["contract", "tenure_months"]], y)


def nan_model():
    """A fitted pipeline whose coefficients are NaN: predict_proba returns NaN."""
    model = numeric_model()
    model[-1].coef_ = np.full_like(model[-1].coef_, np.nan)
    return model


def dumps(model) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    return buffer.getvalue()


def current_runtime() -> dict:
    return dict(server_runtime.versions())


def insert_model(admin, blob: bytes, feature_names: list[str], *, runtime: dict | None = None,
                 scoring_path: str = "sklearn", compiled: bytes | None = None) -> int:
    """Inserts (as superuser, bypassing push's checks) and activates a 'churn' version; its model_id.
    The superuser approves the pickle first (pgscore approve): these faults are trusted models that fail."""
    admin.execute("INSERT INTO scoring_trusted.approved_pickles (sha256, note) VALUES (%s, 'test_reliability_faults')"
                  " ON CONFLICT DO NOTHING", [hashlib.sha256(blob).hexdigest()])
    model_id, version = admin.execute(
        "INSERT INTO scoring.models (name, version, format, blob, sha256, feature_names, runtime,"
        " compiled, scoring_path, path_note)"
        " VALUES ('churn', 1, 'joblib', %b, %s, %s, %s, %b, %s, 'planted by test_reliability_faults')"
        " RETURNING model_id, version",
        [blob, hashlib.sha256(blob).hexdigest(), feature_names, Jsonb(runtime or current_runtime()),
         compiled, scoring_path],
    ).fetchone()
    admin.execute("SELECT scoring.activate('churn', %s)", [version])
    return model_id


def client_only_model(tmp_path, monkeypatch):
    """A fitted classifier whose class lives in a module that only this process has."""
    (tmp_path / f"{CLIENT_ONLY_MODULE}.py").write_text(
        "from sklearn.linear_model import LogisticRegression\n\n\n"
        "class ClientOnlyLogisticRegression(LogisticRegression):\n"
        "    '''Exists only on the client.'''\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, CLIENT_ONLY_MODULE, raising=False)
    module = importlib.import_module(CLIENT_ONLY_MODULE)
    frame, y = training_frame()
    model = module.ClientOnlyLogisticRegression().fit(frame[NUMERIC], y)
    assert type(model).__module__ == CLIENT_ONLY_MODULE
    blob = dumps(model)
    sys.modules.pop(CLIENT_ONLY_MODULE, None)
    return blob


# -- planting the faults -----------------------------------------------------------

def plant_corrupt_blob(db, admin, tmp_path, monkeypatch) -> Fault:
    garbage = b"this is not a joblib pickle at all \x00\xff" * 4
    model_id = insert_model(admin, garbage, NUMERIC)
    return Fault(LOAD_FAILED, ["could not be loaded"], model_id=model_id)


def plant_sha256_mismatch(db, admin, tmp_path, monkeypatch) -> Fault:
    model_id = insert_model(admin, dumps(numeric_model()), NUMERIC)
    recorded = admin.execute("SELECT sha256 FROM scoring.models WHERE model_id = %s", [model_id]).fetchone()[0]
    names = [row[0] for row in admin.execute(
        "SELECT conname FROM pg_constraint WHERE conrelid = 'scoring.models'::regclass AND contype = 'c'"
        " AND pg_get_constraintdef(oid) LIKE '%%sha256(blob)%%'")]
    assert len(names) == 1, names
    admin.execute(sql.SQL("ALTER TABLE scoring.models DROP CONSTRAINT {}").format(sql.Identifier(names[0])))
    # Another loadable model: only the digest betrays the swap.
    other = dumps(numeric_model(seed_shift=5.0))
    admin.execute("UPDATE scoring.models SET blob = %b WHERE model_id = %s", [other, model_id])
    return Fault(LOAD_FAILED, ["sha256", recorded, hashlib.sha256(other).hexdigest()], model_id=model_id)


def plant_missing_module(db, admin, tmp_path, monkeypatch) -> Fault:
    model_id = insert_model(admin, client_only_model(tmp_path, monkeypatch), NUMERIC)
    return Fault(LOAD_FAILED, [repr(CLIENT_ONLY_MODULE), "module"], model_id=model_id)


def plant_other_sklearn(db, admin, tmp_path, monkeypatch) -> Fault:
    model_id = insert_model(admin, dumps(numeric_model()), NUMERIC,
                            runtime={"scikit-learn": "1.2.1", "numpy": "1.24.2"})
    return Fault(LOAD_FAILED, ["scikit-learn 1.2.1", "numpy 1.24.2", "cannot load"], model_id=model_id)


def _push(db, model, path: str) -> int:
    result = push_model(db.dsn("loader"), model, name="churn", activate=True, scoring_path=path)
    assert result.scoring_path == path, result.path_note
    return result.model_id


def plant_null_feature(path: str):
    def plant(db, admin, tmp_path, monkeypatch) -> Fault:
        model_id = _push(db, numeric_model(), path)
        admin.execute("UPDATE customer_profiles SET tenure_months = NULL WHERE customer_id = %s", [CUSTOMER])
        return Fault(MODEL_FAILED, ["'tenure_months'"], any_of=["NULL", "missing", "NaN"], model_id=model_id)
    return plant


def plant_unknown_category(path: str):
    def plant(db, admin, tmp_path, monkeypatch) -> Fault:
        # Push's test-scoring sample must not meet the unseen category yet.
        admin.execute("UPDATE customer_profiles SET contract = 'One year' WHERE contract = 'Two year'")
        model_id = _push(db, category_model(), path)
        admin.execute("UPDATE customer_profiles SET contract = 'Two year' WHERE customer_id = %s", [CUSTOMER])
        return Fault(MODEL_FAILED, ["'contract'", "Two year"], model_id=model_id)
    return plant


def plant_nan_output_sklearn(db, admin, tmp_path, monkeypatch) -> Fault:
    model_id = insert_model(admin, dumps(nan_model()), NUMERIC)
    return Fault(MODEL_FAILED, ["not a probability"], any_of=["nan", "NaN"], model_id=model_id)


def plant_nan_output_compiled(db, admin, tmp_path, monkeypatch) -> Fault:
    model = nan_model()
    # pgscore.compile copies NaN coefficients as they are (push then refuses
    # the model: see test_push_refuses_nan_coefficients); planted directly.
    compiled = compile_model(model).to_bytes()
    model_id = insert_model(admin, dumps(model), NUMERIC, scoring_path="compiled", compiled=compiled)
    return Fault(MODEL_FAILED, ["not a probability"], any_of=["nan", "NaN"], model_id=model_id)


def plant_predict_raises(db, admin, tmp_path, monkeypatch) -> Fault:
    model = numeric_model()
    model[0].n_features_in_ = 99  # StandardScaler.transform now rejects every input
    model_id = insert_model(admin, dumps(model), NUMERIC)
    return Fault(MODEL_FAILED, ["failed to score", "StandardScaler", "99 features"], model_id=model_id)


FAULTS = {
    "corrupt_blob": plant_corrupt_blob,
    "sha256_mismatch": plant_sha256_mismatch,
    "missing_module": plant_missing_module,
    "other_sklearn_version": plant_other_sklearn,
    "null_feature-sql": plant_null_feature("sql"),
    "null_feature-compiled": plant_null_feature("compiled"),
    "null_feature-sklearn": plant_null_feature("sklearn"),
    "unknown_category-sql": plant_unknown_category("sql"),
    "unknown_category-compiled": plant_unknown_category("compiled"),
    "unknown_category-sklearn": plant_unknown_category("sklearn"),
    "nan_output-compiled": plant_nan_output_compiled,
    "nan_output-sklearn": plant_nan_output_sklearn,
    "predict_raises-sklearn": plant_predict_raises,
}


# -- checks ------------------------------------------------------------------------

def errors(db) -> list[tuple]:
    with db.connect() as conn:
        return conn.execute(
            "SELECT customer_id, model_id, sqlstate, message FROM scoring.errors ORDER BY error_id").fetchall()


def assert_names_cause(message: str, fault: Fault) -> None:
    assert "Traceback" not in message, message
    assert "model 'churn' v2" in message, message
    missing = [word for word in fault.all_of if word not in message]
    assert not missing, f"message does not name {missing}: {message!r}"
    if fault.any_of:
        assert any(word in message for word in fault.any_of), f"none of {fault.any_of} in {message!r}"


@pytest.fixture
def healthy(seeded):
    """``seeded`` with a healthy 'churn' v1 whose scores are on every profile."""
    first = push_model(seeded.dsn("loader"), numeric_model(), name="churn", activate=True)
    with seeded.connect() as admin:
        admin.execute("CALL scoring.rescore('churn')")
    count, score, model_id, scored_at, _ = state(seeded, CUSTOMER)
    assert score is not None and model_id == first.model_id and scored_at is not None
    return seeded


@pytest.mark.parametrize("policy", ["keep", "raise"])
@pytest.mark.parametrize("fault_name", list(FAULTS))
def test_fault(healthy, fault_name, policy, tmp_path, monkeypatch):
    with healthy.connect() as admin:
        fault = FAULTS[fault_name](healthy, admin, tmp_path, monkeypatch)
    assert fault.model_id is not None
    before = state(healthy, CUSTOMER)
    errors_before = errors(healthy)
    notices = []
    with healthy.connect("app") as app:
        app.add_notice_handler(lambda diag: notices.append((diag.severity_nonlocalized, diag.message_primary or "")))
        app.execute(f"SET scoring.on_error = '{policy}'")
        if policy == "raise":
            with pytest.raises(psycopg.Error) as caught:
                app.execute("INSERT INTO complaints (customer_id, channel, category, body)"
                            " VALUES (%s, 'phone', 'billing', 'fault injection')", [CUSTOMER])
            error = caught.value
            assert error.diag.sqlstate == fault.sqlstate, (error.diag.sqlstate, error.diag.message_primary)
            expected_class = {LOAD_FAILED: psycopg.errors.ExternalRoutineException,
                              MODEL_FAILED: psycopg.errors.ExternalRoutineInvocationException}[fault.sqlstate]
            assert isinstance(error, expected_class)
            assert_names_cause(error.diag.message_primary, fault)
            # PL/Python's own CONTEXT carries a two-frame "Traceback" of the
            # function shim; the message and the detail must not.
            assert "Traceback" not in (error.diag.message_detail or "")
            assert state(healthy, CUSTOMER) == before  # no complaint row, counter and score unchanged
            assert errors(healthy) == errors_before
            return
        app.execute("INSERT INTO complaints (customer_id, channel, category, body)"
                    " VALUES (%s, 'phone', 'billing', 'fault injection')", [CUSTOMER])
    count, score, model_id, scored_at, complaints = state(healthy, CUSTOMER)
    assert (count, complaints) == (before[0] + 1, before[4] + 1)  # complaint committed and counted
    assert (score, model_id, scored_at) == before[1:4]  # the old score stays
    new = errors(healthy)[len(errors_before):]
    assert len(new) == 1, new
    customer_id, error_model_id, sqlstate, message = new[0]
    assert (customer_id, error_model_id, sqlstate) == (CUSTOMER, fault.model_id, fault.sqlstate), new[0]
    assert_names_cause(message, fault)
    warnings = [msg for severity, msg in notices if severity == "WARNING"]
    assert len(warnings) == 1, notices
    assert f"customer_id {CUSTOMER}" in warnings[0] and message in warnings[0], warnings[0]


# -- around the matrix ----------------------------------------------------------------

def test_versions_are_checked_before_unpickling(healthy, tmp_path, monkeypatch):
    """A blob that would fail to unpickle (client-only module) but is recorded as
    saved with another scikit-learn is refused for its versions: nothing was unpickled."""
    with healthy.connect() as admin:
        insert_model(admin, client_only_model(tmp_path, monkeypatch), NUMERIC,
                     runtime={"scikit-learn": "1.2.1", "numpy": "1.24.2"})
    with healthy.connect("app") as app:
        app.execute("SET scoring.on_error = 'raise'")
        with pytest.raises(psycopg.errors.ExternalRoutineException) as caught:
            app.execute("INSERT INTO complaints (customer_id) VALUES (%s)", [CUSTOMER])
    message = caught.value.diag.message_primary
    assert "scikit-learn 1.2.1" in message and CLIENT_ONLY_MODULE not in message, message


def test_push_refuses_nan_coefficients(healthy):
    """Push never accepts a model whose probabilities are NaN, on either path; nothing is written."""
    with healthy.connect() as admin:
        models_before = admin.execute("SELECT count(*) FROM scoring.models").fetchone()[0]
    for path in ("auto", "sklearn"):
        with pytest.raises(PushError):
            push_model(healthy.dsn("loader"), nan_model(), name="churn", activate=True, scoring_path=path)
    with pytest.raises(PushError):
        push_model(healthy.dsn("loader"), nan_model(), name="churn", activate=True, scoring_path="compiled")
    with healthy.connect() as admin:
        assert admin.execute("SELECT count(*) FROM scoring.models").fetchone()[0] == models_before


def test_nan_compiled_model_writes_no_score_in_a_batch(healthy):
    """The compiled evaluator's NaN reaches no profile, also on the multi-row path."""
    model = nan_model()
    with healthy.connect() as admin:
        insert_model(admin, dumps(model), NUMERIC, scoring_path="compiled",
                     compiled=compile_model(model).to_bytes())
    ids = [41, 42, 43]
    before = {i: state(healthy, i) for i in ids}
    with healthy.connect("app") as app:
        app.execute("INSERT INTO complaints (customer_id) SELECT unnest(%s::bigint[])", [ids])
    for i in ids:
        after = state(healthy, i)
        assert after[0] == before[i][0] + 1 and after[1:4] == before[i][1:4]
    assert sorted(row[0] for row in errors(healthy)) == ids
    with healthy.connect() as admin:
        assert admin.execute("SELECT count(*) FROM customer_profiles WHERE churn_score = 'NaN'").fetchone()[0] == 0


@pytest.mark.parametrize("fault_name", ["predict_raises-sklearn", "corrupt_blob"])
def test_raised_error_has_no_literal_none_detail_or_hint(healthy, fault_name, tmp_path, monkeypatch):
    """Under 'raise' the application sees pgscore's error as sent: an absent
    DETAIL or HINT must be absent, not the text 'None'."""
    with healthy.connect() as admin:
        FAULTS[fault_name](healthy, admin, tmp_path, monkeypatch)
    with healthy.connect("app") as app:
        app.execute("SET scoring.on_error = 'raise'")
        with pytest.raises(psycopg.Error) as caught:
            app.execute("INSERT INTO complaints (customer_id) VALUES (%s)", [CUSTOMER])
    diag = caught.value.diag
    assert diag.message_detail != "None", str(caught.value)
    assert diag.message_hint != "None", str(caught.value)
