"""What tests score: synthetic profiles and fitted models.

One source of synthetic data: pgscore's own Telco-like generator
(``pgscore.dev.demo_data``), deterministic for a seed. Tests that need rows
shaped as the server hands them to a model take :func:`telco_rows` (the
profile columns of :data:`FEATURES`, no id, no label); tests that train
take :func:`training_rows` (rows and the generator's churn label) and put
a classifier behind :func:`preprocessing`. :func:`demo_model` is the demo's
pipeline of a kind, trained once per test session for given arguments.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from pgscore.dev.demo_data import LABEL_COLUMN, synthetic_profiles, train_demo_model

Row = dict[str, Any]

# The profile columns most tests score on: a subset of demo_data.PROFILE_COLUMNS.
TEXT = ["gender", "multiple_lines", "internet_service", "contract", "payment_method"]
BOOLS = ["senior_citizen", "partner", "dependents", "phone_service", "paperless_billing"]
NUMBERS = ["tenure_months", "monthly_charges", "total_charges", "complaint_count"]
FEATURES = list(TEXT) + BOOLS + NUMBERS


def telco_rows(n: int, seed: int) -> list[Row]:
    """``n`` synthetic profiles, the :data:`FEATURES` keys only (total_charges None for new customers)."""
    return [{name: row[name] for name in FEATURES} for row in synthetic_profiles(n, seed=seed)]


def training_rows(n: int, seed: int) -> tuple[list[Row], np.ndarray]:
    """:func:`telco_rows` and their 0/1 churn labels, as the generator drew them."""
    profiles = synthetic_profiles(n, seed=seed)
    rows = [{name: row[name] for name in FEATURES} for row in profiles]
    return rows, np.array([row[LABEL_COLUMN] for row in profiles], dtype=int)


def preprocessing(handle_unknown: str = "ignore") -> ColumnTransformer:
    """One-hot text; median-imputed, standardised booleans and numbers."""
    return ColumnTransformer([
        ("text", OneHotEncoder(handle_unknown=handle_unknown), list(TEXT)),
        ("numeric", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), BOOLS + NUMBERS),
    ])


@functools.cache
def demo_model(kind: str, rows: int = 3000, seed: int = 0) -> Pipeline:
    """The demo's fitted pipeline of ``kind`` (a pgscore.dev.demo_data.MODEL_KINDS kind), trained once
    per session for these arguments: treat it as read-only."""
    return train_demo_model(rows=rows, seed=seed, kind=kind)[0]


def untrusted_function_pipeline() -> Pipeline:
    """Fitted on profile columns, but with a FunctionTransformer of a function skops does not trust."""
    import operator

    import pandas as pd
    from sklearn.preprocessing import FunctionTransformer

    frame = pd.DataFrame({"tenure_months": [1.0, 5, 30, 60], "monthly_charges": [20.0, 50, 80, 100]})
    return make_pipeline(FunctionTransformer(operator.neg), LogisticRegression()).fit(frame, [1, 1, 0, 0])
