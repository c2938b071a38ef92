"""Which models push stores in compiled form only: those built with a library
scikit-learn's (pgscore.push.libraries_outside_scikit_learn)."""

from __future__ import annotations

from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from pgscore.push import libraries_outside_scikit_learn


def _foreign(module: str, name: str) -> object:
    """An instance of a class defined, as far as Python can tell, in ``module``."""
    return type(name, (), {"__module__": module})()


def test_scikit_learn_pipelines_need_no_other_library():
    pre = ColumnTransformer([("num", StandardScaler(), ["a"]), ("cat", OneHotEncoder(), ["b"]), ("rest", "drop", ["c"])])
    assert libraries_outside_scikit_learn(Pipeline([("pre", pre), ("clf", LogisticRegression())])) == []


def test_every_foreign_step_and_transformer_is_named_once_in_order():
    pre = ColumnTransformer([("num", _foreign("feature_engine.imputation", "MeanMedianImputer"), ["a"]),
                             ("cat", OneHotEncoder(), ["b"])])
    model = Pipeline([("pre", pre), ("more", _foreign("feature_engine.encoding", "RareLabelEncoder")),
                      ("clf", _foreign("xgboost.sklearn", "XGBClassifier"))])
    assert libraries_outside_scikit_learn(model) == ["feature_engine", "xgboost"]
    assert libraries_outside_scikit_learn(_foreign("lightgbm.sklearn", "LGBMClassifier")) == ["lightgbm"]
