"""Synthetic Telco-like profiles and the demo churn model (no database needed)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest

from pgscore.dev.demo_data import (
    BOOLEAN_COLUMNS,
    LABEL_COLUMN,
    MODEL_KINDS,
    NUMERIC_COLUMNS,
    PROFILE_COLUMNS,
    TEXT_COLUMNS,
    build_pipeline,
    save_model,
    synthetic_columns,
    synthetic_profiles,
    train_demo_model,
)
from pgscore_server.features import to_frame
from tests.floats import assert_within_ulps

ADDONS = (
    "online_security",
    "online_backup",
    "device_protection",
    "tech_support",
    "streaming_tv",
    "streaming_movies",
)
ALLOWED_TEXT: dict[str, set[str]] = {
    "gender": {"Female", "Male"},
    "multiple_lines": {"Yes", "No", "No phone service"},
    "internet_service": {"DSL", "Fiber optic", "No"},
    **{c: {"Yes", "No", "No internet service"} for c in ADDONS},
    "contract": {"Month-to-month", "One year", "Two year"},
    "payment_method": {
        "Electronic check",
        "Mailed check",
        "Bank transfer (automatic)",
        "Credit card (automatic)",
    },
}


@pytest.fixture(scope="module")
def profiles() -> list[dict[str, Any]]:
    return synthetic_profiles(20_000, seed=7)


@pytest.fixture(scope="module")
def trained() -> dict[str, tuple[Any, dict[str, Any]]]:
    # Train every kind once per module: the tests below share the fits.
    return {kind: train_demo_model(kind=kind) for kind in MODEL_KINDS}


def test_profile_columns_are_the_contract_order() -> None:
    assert PROFILE_COLUMNS[0] == "gender" and PROFILE_COLUMNS[-1] == "complaint_count"
    assert len(PROFILE_COLUMNS) == 20
    assert set(TEXT_COLUMNS) | set(BOOLEAN_COLUMNS) | set(NUMERIC_COLUMNS) == set(PROFILE_COLUMNS)
    assert len(TEXT_COLUMNS) + len(BOOLEAN_COLUMNS) + len(NUMERIC_COLUMNS) == len(PROFILE_COLUMNS)


def test_deterministic_for_a_seed() -> None:
    assert synthetic_profiles(300, seed=3) == synthetic_profiles(300, seed=3)
    assert synthetic_profiles(300, seed=3) != synthetic_profiles(300, seed=4)


def test_start_id_only_shifts_ids() -> None:
    a = synthetic_profiles(50, seed=1)
    b = synthetic_profiles(50, seed=1, start_id=1001)
    assert [r["customer_id"] for r in b] == list(range(1001, 1051))
    strip = lambda rows: [{k: v for k, v in r.items() if k != "customer_id"} for r in rows]  # noqa: E731
    assert strip(a) == strip(b)


def test_rows_are_the_columns_zipped() -> None:
    cols = synthetic_columns(100, seed=2, start_id=10)
    rows = synthetic_profiles(100, seed=2, start_id=10)
    assert list(cols) == ["customer_id", *PROFILE_COLUMNS, LABEL_COLUMN]
    assert all(len(v) == 100 for v in cols.values())
    assert rows == [dict(zip(cols, values)) for values in zip(*cols.values())]


def test_empty_and_negative_n() -> None:
    assert synthetic_profiles(0) == []
    with pytest.raises(ValueError, match="n must be >= 0"):
        synthetic_profiles(-1)


def test_value_domains(profiles: list[dict[str, Any]]) -> None:
    for r in profiles:
        assert list(r) == ["customer_id", *PROFILE_COLUMNS, LABEL_COLUMN]
        for c, allowed in ALLOWED_TEXT.items():
            assert r[c] in allowed, (c, r[c])
        for c in (*BOOLEAN_COLUMNS, LABEL_COLUMN):
            assert type(r[c]) is bool, c
        assert type(r["tenure_months"]) is int and 0 <= r["tenure_months"] <= 72
        assert type(r["complaint_count"]) is int and r["complaint_count"] >= 0
        m = r["monthly_charges"]
        assert type(m) is float and 18.0 <= m <= 120.0 and round(m, 2) == m
        t = r["total_charges"]
        if t is not None:
            assert type(t) is float and round(t, 2) == t


def test_consistency_rules(profiles: list[dict[str, Any]]) -> None:
    for r in profiles:
        assert (r["multiple_lines"] == "No phone service") == (not r["phone_service"])
        no_internet = r["internet_service"] == "No"
        for c in ADDONS:
            assert (r[c] == "No internet service") == no_internet, c
        if r["tenure_months"] == 0:
            assert r["total_charges"] is None
        else:
            # About tenure * monthly (prices drift a little over time).
            assert r["total_charges"] == pytest.approx(
                r["tenure_months"] * r["monthly_charges"], rel=0.2
            )
    assert any(r["tenure_months"] == 0 for r in profiles)  # new customers exist


def test_distributions_are_telco_like(profiles: list[dict[str, Any]]) -> None:
    churned = np.array([r[LABEL_COLUMN] for r in profiles])
    assert 0.15 < churned.mean() < 0.40

    def rate(pred: Any) -> float:
        return float(np.mean([r[LABEL_COLUMN] for r in profiles if pred(r)]))

    assert rate(lambda r: r["contract"] == "Month-to-month") > 3 * rate(lambda r: r["contract"] == "Two year")
    assert rate(lambda r: r["complaint_count"] >= 2) > 2 * rate(lambda r: r["complaint_count"] == 0)
    assert rate(lambda r: r["tenure_months"] <= 6) > rate(lambda r: r["tenure_months"] >= 48)
    fiber = [r["complaint_count"] for r in profiles if r["internet_service"] == "Fiber optic"]
    dsl = [r["complaint_count"] for r in profiles if r["internet_service"] == "DSL"]
    assert np.mean(fiber) > np.mean(dsl)
    no_internet = [r["monthly_charges"] for r in profiles if r["internet_service"] == "No"]
    assert max(no_internet) < 35.0  # phone-only plans are cheap


def test_unknown_kind_raises() -> None:
    with pytest.raises(ValueError, match="logreg, gbm, rf"):
        build_pipeline("svm")
    with pytest.raises(ValueError, match="allowed kinds"):
        train_demo_model(rows=100, kind="xgboost")


def test_build_pipeline_is_unfitted() -> None:
    from sklearn.exceptions import NotFittedError
    from sklearn.pipeline import Pipeline

    pipe = build_pipeline()
    assert isinstance(pipe, Pipeline)
    with pytest.raises(NotFittedError):
        pipe.predict_proba(to_frame(synthetic_profiles(2), PROFILE_COLUMNS))


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_trained_model(kind: str, trained: dict[str, tuple[Any, dict[str, Any]]]) -> None:
    pipe, metrics = trained[kind]
    assert metrics["kind"] == kind
    assert metrics["rows"] == 5000 and metrics["holdout_rows"] == 1250
    assert isinstance(metrics["roc_auc"], float)
    assert metrics["roc_auc"] >= 0.75
    assert tuple(pipe.feature_names_in_) == PROFILE_COLUMNS
    proba = pipe.predict_proba(to_frame(synthetic_profiles(50, seed=99), PROFILE_COLUMNS))[:, 1]
    assert np.all((proba >= 0.0) & (proba <= 1.0))


def test_logreg_auc_is_realistic(trained: dict[str, tuple[Any, dict[str, Any]]]) -> None:
    # Good enough to demo, not suspiciously perfect.
    assert 0.75 <= trained["logreg"][1]["roc_auc"] < 0.95


def test_complaints_raise_the_score(trained: dict[str, tuple[Any, dict[str, Any]]]) -> None:
    pipe = trained["logreg"][0]
    typical = {
        "gender": "Female",
        "senior_citizen": False,
        "partner": True,
        "dependents": False,
        "tenure_months": 24,
        "phone_service": True,
        "multiple_lines": "No",
        "internet_service": "DSL",
        "online_security": "No",
        "online_backup": "Yes",
        "device_protection": "No",
        "tech_support": "No",
        "streaming_tv": "No",
        "streaming_movies": "No",
        "contract": "One year",
        "paperless_billing": True,
        "payment_method": "Mailed check",
        "monthly_charges": 55.5,
        "total_charges": 1332.0,
        "complaint_count": 0,
    }
    before = pipe.predict_proba(to_frame([typical], PROFILE_COLUMNS))[0, 1]
    after = pipe.predict_proba(to_frame([{**typical, "complaint_count": 5}], PROFILE_COLUMNS))[0, 1]
    assert after > before + 0.2, (before, after)


def test_new_customer_without_total_charges_scores(
    trained: dict[str, tuple[Any, dict[str, Any]]],
) -> None:
    # One row with total_charges None gives an object column, not float64.
    row = {**synthetic_profiles(1)[0], "tenure_months": 0, "total_charges": None}
    for pipe, _ in trained.values():
        p = pipe.predict_proba(to_frame([row], PROFILE_COLUMNS))[0, 1]
        assert 0.0 <= p <= 1.0 and not math.isnan(p)


def test_save_model_round_trip(tmp_path: Path, trained: dict[str, tuple[Any, dict[str, Any]]]) -> None:
    pipe = trained["logreg"][0]
    target = tmp_path / "churn.joblib"
    assert save_model(pipe, target) == str(target)
    loaded = joblib.load(target)
    X = to_frame(synthetic_profiles(100, seed=5), PROFILE_COLUMNS)
    assert_within_ulps(loaded.predict_proba(X), pipe.predict_proba(X))
