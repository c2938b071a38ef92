"""Unit tests of pgscore_server outside the database, with a fake plpy.
(The same code runs inside PostgreSQL in every other test file.)"""

from __future__ import annotations

from collections import OrderedDict

import pytest

from pgscore_server import api, features, registry, settings, trigger
from pgscore_server.errors import ScoringError, describe
from tests.fake_plpy import Error, FakePlpy

COLUMNS = {"tenure_months": "integer", "monthly_charges": "numeric", "contract": "text", "partner": "boolean"}
NAMES = list(COLUMNS)


def test_from_document_converts_and_checks_types():
    row = features.from_document(
        {"tenure_months": 3.0, "monthly_charges": 20, "contract": "One year", "partner": False, "gender": "Male"},
        NAMES, {**COLUMNS, "gender": "text"}, "model 'churn' v1")
    assert row == {"tenure_months": 3, "monthly_charges": 20.0, "contract": "One year", "partner": False}
    assert type(row["tenure_months"]) is int and type(row["monthly_charges"]) is float


@pytest.mark.parametrize(("document", "message"), [
    ({"tenure_months": 1, "monthly_charges": 1, "contract": "x"}, "feature 'partner' is missing"),
    ({"tenure_months": True, "monthly_charges": 1, "contract": "x", "partner": True}, "'tenure_months' must be a whole number"),
    ({"tenure_months": 1, "monthly_charges": float("inf"), "contract": "x", "partner": True}, "'monthly_charges' must be a finite number"),
    ({"tenure_months": 1, "monthly_charges": 1, "contract": ["x"], "partner": True}, "'contract' must be a string"),
    ("just text", "must be a JSON object"),
])
def test_from_document_names_the_problem(document, message):
    with pytest.raises(ScoringError, match=message):
        features.from_document(document, NAMES, COLUMNS, "model 'churn' v1")


def test_on_error_setting():
    assert settings.on_error(FakePlpy([("scoring.on_error", [{"v": None}])]), {}) == "keep"
    assert settings.on_error(FakePlpy([("scoring.on_error", [{"v": " RAISE "}])]), {}) == "raise"
    with pytest.raises(ScoringError, match="must be 'keep' or 'raise'"):
        settings.on_error(FakePlpy([("scoring.on_error", [{"v": "ignore"}])]), {})


def test_sql_errors_become_plpy_errors_with_sqlstate_and_hint():
    plpy = FakePlpy([("FROM scoring.deployments", []), ("EXISTS", [{"pushed": False}])])
    with pytest.raises(Error) as raised:
        api.score_customer(plpy, {}, 1)
    assert str(raised.value) == "no model named 'churn' has been pushed"
    assert raised.value.sqlstate == "42704"
    assert "pgscore push FILE --name churn --activate" in raised.value.hint


class StubModel:
    """Probability = tenure / 100, failing on tenure None, like a model without an imputer."""

    def predict_proba(self, frame):
        import numpy as np

        tenure = frame["tenure_months"].astype(float).to_numpy()
        if np.isnan(tenure).any():
            raise ValueError("Input X contains NaN.")
        return np.column_stack([1 - tenure / 100, tenure / 100])


def loaded(estimator=None) -> registry.LoadedModel:
    return registry.LoadedModel(model_id=7, name="churn", version=2, sha256="s", feature_names=["tenure_months"],
                                estimator=estimator or StubModel())


def test_score_each_isolates_the_failing_row():
    rows = [{"tenure_months": 10}, {"tenure_months": None}, {"tenure_months": 50}]
    scores, failures = trigger._score_each(loaded(), [1, 2, 3], rows)
    assert scores == [0.1, None, 0.5]
    assert list(failures) == [2]
    assert "failed to score (NULL feature 'tenure_months'): ValueError: Input X contains NaN." in failures[2].message


def test_predict_refuses_values_that_are_not_probabilities():
    with pytest.raises(ScoringError, match="returned nan, which is not a probability"):
        loaded(type("NaNModel", (), {"predict_proba": lambda self, f: __import__("numpy").array([[0, float("nan")]])})()
               ).predict([{"tenure_months": 1}])


def test_trigger_keep_records_errors_and_warns():
    cache = {"pgscore.models": OrderedDict({7: loaded()})}
    cache["pgscore.profile_columns"] = {"tenure_months": "integer"}
    plpy = FakePlpy([
        ("scoring.on_error", [{"v": "keep"}]),
        ("FOR NO KEY UPDATE OF p", [{"customer_id": 1, "pgscore_new": 1, "tenure_months": 10,
                                     "pgscore_active": "7:s:sklearn"},
                                    {"customer_id": 2, "pgscore_new": 2, "tenure_months": None,
                                     "pgscore_active": "7:s:sklearn"}]),
        ("FROM scoring.deployments", [{"model_id": 7, "sha256": "s", "scoring_path": "sklearn"}]),
        ("pg_current_xact_id", [{"statement": "734 10:00:01"}]),
        ("AS kept FROM scoring.errors", [{"kept": []}]),
        ("INSERT INTO scoring.errors", [{"entity_key": "2", "error_id": 90}]),
    ])
    trigger.on_complaints_inserted(plpy, cache, "churn", [1, 2, 2])
    update = next(args for sql, args in plpy.executed if sql.startswith("UPDATE public.customer_profiles"))
    assert update == [[1, 2], [1, 2], [0.1, None], 7]
    recorded = next(args for sql, args in plpy.executed if sql.startswith("INSERT INTO scoring.errors"))
    assert recorded[:2] == [7, [2]]
    assert plpy.messages[0][0] == "WARNING" and "customer_id 2" in plpy.messages[0][1]
    # The next statement reuses that model, checked inside the locking query: no separate lookup.
    before = len(plpy.executed)
    trigger.on_complaints_inserted(plpy, cache, "churn", [1, 2, 2])
    assert not any(sql.startswith("SELECT d.model_id") for sql, _ in plpy.executed[before:])


def test_a_failure_is_recorded_once_per_statement_unless_rolled_back():
    """EvalPlanQual calls the row scorer again for the same statement: one record;
    a record rolled back since (a savepoint) is written again."""
    statement = [{"statement": "734 10:00:01"}]
    kept: list[int] = [90]
    plpy = FakePlpy([
        ("pg_current_xact_id", lambda args: statement),
        ("AS kept FROM scoring.errors", lambda args: [{"kept": [e for e in args[0] if e in kept]}]),
        ("INSERT INTO scoring.errors", [{"entity_key": "2", "error_id": 90}]),
    ])
    cache: dict = {}
    failure = {2: ScoringError("model failed to score")}

    def inserts() -> int:
        return sum(sql.startswith("INSERT INTO scoring.errors") for sql, _ in plpy.executed)

    trigger._record(plpy, cache, 7, failure)
    trigger._record(plpy, cache, 7, failure)  # the same statement, evaluated again
    assert inserts() == 1 and len(plpy.messages) == 1
    kept.clear()  # rolled back to a savepoint since
    trigger._record(plpy, cache, 7, failure)
    assert inserts() == 2
    statement[0] = {"statement": "734 10:00:02"}  # the next statement fails again: a new record
    trigger._record(plpy, cache, 7, failure)
    assert inserts() == 3 and len(plpy.messages) == 3


def test_describe_has_no_traceback():
    try:
        raise KeyError("x")
    except KeyError as exc:
        assert describe(exc) == "KeyError: 'x'"
