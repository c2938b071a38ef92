"""The family-by-path test matrix: every classifier family ``pgscore.compile``
converts (``pgscore.compile.families.FAMILIES``), one row each, with the
scoring paths it must serve besides scikit-learn's own ('compiled' and,
where it has a SQL form, 'sql').

Tests take their families from here (test_compiled's parity and one-row
tests, test_sqlgen's database parity through the demo kinds), and
test_compiled checks that every converter family has a row: adding a family
is a converter, an evaluator, its SQL if any, and a row below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from sklearn.ensemble import (
    ExtraTreesClassifier,
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier


def _lgbm() -> Any:
    from lightgbm import LGBMClassifier

    return LGBMClassifier(n_estimators=60, num_leaves=15, min_child_samples=5, verbose=-1, random_state=0)


@dataclass(frozen=True)
class Family:
    name: str  # what the tests call it
    converter: str  # its row in pgscore.compile.families.FAMILIES
    make: Callable[[], Any]  # an unfitted classifier of the family, as the tests fit it
    paths: tuple[str, ...]  # scoring paths besides 'sklearn'
    demo_kind: str | None = None  # its pgscore.dev.demo_data kind, if the demo trains one
    float32: bool = False  # its library computes in float32: parity within two float32 ulps (pgscore.verify.FLOAT32_ULPS)

    @property
    def trees(self) -> bool:
        return self.converter != "linear"


def _xgboost() -> Any:
    """XGBoost (the boosting extra), imported only when a test fits it."""
    from xgboost import XGBClassifier

    return XGBClassifier(n_estimators=100, max_depth=6, n_jobs=1, random_state=0)


FAMILIES = (
    Family("lr", "linear", lambda: LogisticRegression(max_iter=2000), ("compiled", "sql"), "logreg"),
    Family("gbm", "gbm", lambda: GradientBoostingClassifier(n_estimators=100, max_depth=3, random_state=0),
           ("compiled", "sql"), "gbm"),
    Family("rf", "trees", lambda: RandomForestClassifier(n_estimators=100, max_depth=8, random_state=0),
           ("compiled", "sql"), "rf"),
    Family("extra_trees", "trees", lambda: ExtraTreesClassifier(n_estimators=50, max_depth=10, random_state=0),
           ("compiled", "sql")),
    Family("tree", "trees", lambda: DecisionTreeClassifier(min_samples_leaf=2, random_state=0), ("compiled", "sql")),
    Family("hgb", "hgb", lambda: HistGradientBoostingClassifier(max_iter=60, random_state=0), ("compiled", "sql")),
    Family("xgboost", "xgboost", _xgboost, ("compiled", "sql"), float32=True),
    Family("lgbm", "lgbm", _lgbm, ("compiled", "sql")),
)

BY_NAME = {family.name: family for family in FAMILIES}


def names(*, path: str | None = None, trees: bool | None = None) -> list[str]:
    """Names of the families serving ``path`` and, if given, that are (not) tree ensembles."""
    return [f.name for f in FAMILIES if (path is None or path in f.paths) and (trees is None or f.trees == trees)]


def demo_kinds(path: str) -> list[str]:
    """The demo kinds (``train_demo_model(kind=...)``) of the families serving ``path``."""
    return [f.demo_kind for f in FAMILIES if f.demo_kind is not None and path in f.paths]
