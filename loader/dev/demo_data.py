"""Synthetic Telco-like customer profiles and the demo churn model.

The profiles follow the public IBM "Telco Customer Churn" data set: the
same attributes in snake_case, the same categorical values, and the same
consistency rules (no phone service -> ``multiple_lines`` is
'No phone service', no internet -> every add-on is 'No internet service',
a new customer has no ``total_charges``). Each row also carries a
``churned`` label drawn from a known logistic model, so a model trained on
the data learns real, explainable effects; complaints weigh heavily, which
is what makes scores visibly move in the demo as complaints arrive.

Generation is columnwise with numpy (:func:`synthetic_columns`), so a
million rows take seconds; :func:`synthetic_profiles` turns the columns
into row dicts.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = [
    "PROFILE_COLUMNS",
    "TEXT_COLUMNS",
    "NUMERIC_COLUMNS",
    "BOOLEAN_COLUMNS",
    "LABEL_COLUMN",
    "MODEL_KINDS",
    "synthetic_columns",
    "synthetic_profiles",
    "build_pipeline",
    "train_demo_model",
    "save_model",
]

PROFILE_COLUMNS: tuple[str, ...] = (
    "gender",
    "senior_citizen",
    "partner",
    "dependents",
    "tenure_months",
    "phone_service",
    "multiple_lines",
    "internet_service",
    "online_security",
    "online_backup",
    "device_protection",
    "tech_support",
    "streaming_tv",
    "streaming_movies",
    "contract",
    "paperless_billing",
    "payment_method",
    "monthly_charges",
    "total_charges",
    "complaint_count",
)

TEXT_COLUMNS: tuple[str, ...] = (
    "gender",
    "multiple_lines",
    "internet_service",
    "online_security",
    "online_backup",
    "device_protection",
    "tech_support",
    "streaming_tv",
    "streaming_movies",
    "contract",
    "payment_method",
)
BOOLEAN_COLUMNS: tuple[str, ...] = (
    "senior_citizen",
    "partner",
    "dependents",
    "phone_service",
    "paperless_billing",
)
NUMERIC_COLUMNS: tuple[str, ...] = (
    "tenure_months",
    "monthly_charges",
    "total_charges",
    "complaint_count",
)

#: Key of the label in generated rows; not a ``customer_profiles`` column.
LABEL_COLUMN = "churned"

#: The demo's classifiers (:func:`build_pipeline`). 'xgb' and 'lgbm' need the
#: ``boosting`` extra (xgboost, lightgbm), imported only when one is built.
MODEL_KINDS: tuple[str, ...] = ("logreg", "gbm", "rf", "xgb", "lgbm")

ADDON_COLUMNS: tuple[str, ...] = (
    "online_security",
    "online_backup",
    "device_protection",
    "tech_support",
    "streaming_tv",
    "streaming_movies",
)

# Category tables: generated codes index these (object arrays, so a take
# hands back the same few str objects instead of a million copies).
_GENDER = np.array(["Female", "Male"], dtype=object)
_MULTIPLE_LINES = np.array(["No", "Yes", "No phone service"], dtype=object)
_INTERNET = np.array(["DSL", "Fiber optic", "No"], dtype=object)
_ADDON = np.array(["No", "Yes", "No internet service"], dtype=object)
_CONTRACT = np.array(["Month-to-month", "One year", "Two year"], dtype=object)
_PAYMENT = np.array(
    ["Electronic check", "Mailed check", "Bank transfer (automatic)", "Credit card (automatic)"],
    dtype=object,
)

_DSL, _FIBER, _NO_INTERNET = 0, 1, 2
_M2M, _ONE_YEAR, _TWO_YEAR = 0, 1, 2
_E_CHECK = 0

# P(add-on = 'Yes') for DSL / fiber customers, roughly as in the Telco data:
# fiber users stream more and buy less security/support.
_ADDON_P_YES: dict[str, tuple[float, float]] = {
    "online_security": (0.48, 0.27),
    "online_backup": (0.45, 0.43),
    "device_protection": (0.40, 0.47),
    "tech_support": (0.48, 0.27),
    "streaming_tv": (0.32, 0.62),
    "streaming_movies": (0.32, 0.62),
}
# Monthly price of each add-on; with phone + fiber + everything the bill
# reaches ~115, phone only ~20, as in the Telco data.
_ADDON_PRICE: dict[str, float] = {
    "online_security": 5.0,
    "online_backup": 5.0,
    "device_protection": 5.0,
    "tech_support": 5.0,
    "streaming_tv": 10.0,
    "streaming_movies": 10.0,
}


def synthetic_columns(n: int, seed: int = 0, start_id: int = 1) -> dict[str, list[Any]]:
    """``n`` synthetic profiles in columnar form, deterministic for ``seed``.

    Keys: ``customer_id`` (``start_id``, ``start_id + 1``, ...), every name
    in :data:`PROFILE_COLUMNS`, and :data:`LABEL_COLUMN` (``churned``).
    Values are lists of plain Python ``bool``/``int``/``float``/``str``/``None``,
    ready for COPY. ``start_id`` only shifts the ids: the same ``seed``
    gives the same profiles.

    Raises ``ValueError`` when ``n`` is negative.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)

    male = rng.random(n) < 0.505
    senior = rng.random(n) < 0.162
    partner = rng.random(n) < 0.483
    # Dependents mostly come with a partner.
    dependents = rng.random(n) < np.where(partner, 0.52, 0.10)

    phone = rng.random(n) < 0.903
    multi = np.where(phone, (rng.random(n) < 0.47).astype(np.int8), 2)
    # Customers without phone service all have DSL in the Telco data; the
    # shares for phone customers are set so that overall DSL/fiber/none
    # come out near the Telco 34/44/22 %.
    u = rng.random(n)
    internet = np.where(u < 0.27, _DSL, np.where(u < 0.755, _FIBER, _NO_INTERNET))
    internet = np.where(phone, internet, _DSL)
    fiber = internet == _FIBER
    has_internet = internet != _NO_INTERNET

    # Fiber customers lean to month-to-month, couples to longer contracts.
    p_m2m = 0.50 + 0.18 * fiber - 0.14 * partner
    p_one = 0.22
    u = rng.random(n)
    contract = (u >= p_m2m).astype(np.int8) + (u >= p_m2m + p_one)
    m2m = contract == _M2M
    two_year = contract == _TWO_YEAR

    # Tenure follows the contract: month-to-month customers are young, two-year
    # ones old; a few brand-new customers (tenure 0) have no bill yet.
    a = np.choose(contract, [0.8, 1.6, 2.8])
    b = np.choose(contract, [2.6, 1.2, 0.8])
    tenure = 1 + np.rint(rng.beta(a, b) * 71).astype(np.int64)
    tenure[rng.random(n) < 0.005] = 0

    addons: dict[str, np.ndarray] = {}
    for name in ADDON_COLUMNS:
        p_dsl, p_fiber = _ADDON_P_YES[name]
        # Long-standing customers have collected more add-ons.
        p = np.where(fiber, p_fiber, p_dsl) + 0.2 * (tenure / 72.0 - 0.45)
        addons[name] = np.where(has_internet, (rng.random(n) < p).astype(np.int8), 2)

    paperless = rng.random(n) < np.choose(internet, [0.55, 0.78, 0.30])

    # Electronic check is the month-to-month habit; without internet, paper.
    p_echeck = np.choose(contract, [0.48, 0.18, 0.08])
    p_mailed = np.where(has_internet, 0.33, 0.60)
    u1, u2 = rng.random(n), rng.random(n)
    other = np.where(u2 < p_mailed, 1, np.where(u2 < p_mailed + (1 - p_mailed) / 2, 2, 3))
    payment = np.where(u1 < p_echeck, _E_CHECK, other)
    echeck = payment == _E_CHECK

    monthly = (
        np.where(phone, 20.0, 0.0)
        + np.where(multi == 1, 5.0, 0.0)
        + np.choose(internet, [25.0, 50.0, 0.0])
        + sum(np.where(addons[c] == 1, _ADDON_PRICE[c], 0.0) for c in ADDON_COLUMNS)
        + rng.normal(0.0, 1.5, n)
    )
    monthly = np.round(np.clip(monthly, 18.25, 118.75), 2)
    # Prices drift over a customer's life, so total is only about tenure*monthly.
    total = np.round(tenure * monthly * rng.normal(1.0, 0.04, n).clip(0.85, 1.15), 2)

    tech_yes = addons["tech_support"] == 1
    security_yes = addons["online_security"] == 1
    complaint_rate = 0.22 * np.exp(0.7 * fiber + 0.5 * m2m + 0.2 * senior - 0.2 * tech_yes)
    complaints = rng.poisson(complaint_rate)

    # The true churn model. Complaints weigh most: each one multiplies the
    # odds by ~1.8, so a handful visibly moves a trained model's score.
    logit = (
        -1.6
        + 1.0 * m2m
        - 0.8 * two_year
        - 0.022 * tenure
        + 0.015 * (monthly - 65.0)
        + 0.60 * complaints
        + 0.45 * fiber
        + 0.45 * echeck
        + 0.25 * senior
        + 0.20 * paperless
        - 0.25 * security_yes
        - 0.25 * tech_yes
        - 0.15 * dependents
    )
    churned = rng.random(n) < 1.0 / (1.0 + np.exp(-logit))

    total_list: list[float | None] = total.tolist()
    for i in np.flatnonzero(tenure == 0).tolist():
        total_list[i] = None

    columns: dict[str, list[Any]] = {
        "customer_id": list(range(start_id, start_id + n)),
        "gender": _GENDER[male.astype(np.int8)].tolist(),
        "senior_citizen": senior.tolist(),
        "partner": partner.tolist(),
        "dependents": dependents.tolist(),
        "tenure_months": tenure.tolist(),
        "phone_service": phone.tolist(),
        "multiple_lines": _MULTIPLE_LINES[multi].tolist(),
        "internet_service": _INTERNET[internet].tolist(),
        **{c: _ADDON[addons[c]].tolist() for c in ADDON_COLUMNS},
        "contract": _CONTRACT[contract].tolist(),
        "paperless_billing": paperless.tolist(),
        "payment_method": _PAYMENT[payment].tolist(),
        "monthly_charges": monthly.tolist(),
        "total_charges": total_list,
        "complaint_count": complaints.tolist(),
        LABEL_COLUMN: churned.tolist(),
    }
    # Same key order as the table (id, features in order, then the label).
    return {k: columns[k] for k in ("customer_id", *PROFILE_COLUMNS, LABEL_COLUMN)}


def synthetic_profiles(n: int, seed: int = 0, start_id: int = 1) -> list[dict[str, Any]]:
    """``n`` synthetic profiles as row dicts (see :func:`synthetic_columns`).

    Each dict has ``customer_id``, every :data:`PROFILE_COLUMNS` key and
    ``churned``. Raises ``ValueError`` when ``n`` is negative.
    """
    columns = synthetic_columns(n, seed=seed, start_id=start_id)
    keys = tuple(columns)
    return [dict(zip(keys, values)) for values in zip(*columns.values())]


def build_pipeline(kind: str = "logreg") -> Any:
    """An unfitted scikit-learn ``Pipeline`` for the profile features.

    Text columns are one-hot encoded (unknown categories ignored); numeric
    and boolean columns are median-imputed (``total_charges`` is missing for
    new customers) and standardised. ``kind`` picks the classifier: one of
    :data:`MODEL_KINDS`; 'xgb' (XGBoost, 100 trees of depth 6) and 'lgbm'
    (LightGBM, 100 trees of 31 leaves) import their library here, so the
    other kinds work without it.

    Raises ``ValueError`` for an unknown ``kind``, ``ImportError`` (naming the
    ``boosting`` extra) for 'xgb' or 'lgbm' without their library.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    classifiers = {
        "logreg": lambda: LogisticRegression(max_iter=1000),
        "gbm": lambda: GradientBoostingClassifier(n_estimators=100, max_depth=3, random_state=0),
        "rf": lambda: RandomForestClassifier(n_estimators=100, max_depth=8, random_state=0, n_jobs=1),
        "xgb": _xgb_classifier,
        "lgbm": _lgbm_classifier,
    }
    if kind not in classifiers:
        raise ValueError(f"unknown model kind {kind!r}; allowed kinds: {', '.join(MODEL_KINDS)}")

    # Booleans share the numeric branch: SimpleImputer accepts pandas bool
    # columns (scikit-learn 1.9.1 casts them to float), so no custom step.
    numeric = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
    preprocess = ColumnTransformer(
        [
            ("text", OneHotEncoder(handle_unknown="ignore"), list(TEXT_COLUMNS)),
            ("numeric", numeric, [c for c in PROFILE_COLUMNS if c not in TEXT_COLUMNS]),
        ]
    )
    return Pipeline([("preprocess", preprocess), ("classifier", classifiers[kind]())])


def _xgb_classifier() -> Any:
    XGBClassifier = _boosting_class("xgboost", "XGBClassifier")
    return XGBClassifier(n_estimators=100, max_depth=6, random_state=0, n_jobs=1)


def _lgbm_classifier() -> Any:
    LGBMClassifier = _boosting_class("lightgbm", "LGBMClassifier")
    # verbose=-1: LightGBM prints its training info lines otherwise.
    return LGBMClassifier(n_estimators=100, num_leaves=31, random_state=0, n_jobs=1, verbose=-1)


def _boosting_class(module: str, name: str) -> Any:
    import importlib

    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as error:
        raise ImportError(f"the demo's {name} needs {module}: install pgscore's boosting extra"
                          " (pip install 'pgscore[boosting]')") from error


def train_demo_model(rows: int = 5000, seed: int = 0, kind: str = "logreg") -> tuple[Any, dict[str, Any]]:
    """Train a demo churn pipeline on ``rows`` synthetic profiles.

    The data is split 75/25, stratified on the label, with
    ``random_state=seed``. Returns the fitted pipeline (its
    ``feature_names_in_`` equal :data:`PROFILE_COLUMNS`) and metrics
    ``{"roc_auc", "rows", "kind", "holdout_rows"}``, ``roc_auc`` measured on
    the holdout.

    Raises ``ValueError`` for an unknown ``kind``, or when ``rows`` is too
    small to hold both classes in both parts of the split.
    """
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import train_test_split

    from pgscore_server.features import to_frame

    pipeline = build_pipeline(kind)  # fails fast on an unknown kind
    records = synthetic_profiles(rows, seed=seed)
    X = to_frame(records, PROFILE_COLUMNS)
    y = np.array([r[LABEL_COLUMN] for r in records], dtype=bool)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.25, stratify=y, random_state=seed
    )
    pipeline.fit(X_train, y_train)
    auc = roc_auc_score(y_test, pipeline.predict_proba(X_test)[:, 1])
    metrics = {"roc_auc": float(auc), "rows": int(rows), "kind": kind, "holdout_rows": int(len(y_test))}
    return pipeline, metrics


def save_model(pipeline: Any, path: str | os.PathLike[str]) -> str:
    """Write ``pipeline`` to ``path`` with ``joblib.dump``; return the path.

    Raises ``OSError`` when the file cannot be written.
    """
    import joblib

    target = os.fspath(path)
    joblib.dump(pipeline, target)
    return target
