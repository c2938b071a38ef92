"""The rows a scoring path is checked on are never vacuous: generated from the
model itself, they exist in a database without profiles and catch what a
converter could get wrong there (a split moved by one unit, two categories
swapped), which a check over no rows would have passed."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from pgscore import push_model
from pgscore.compile import CompiledModel, compile_model
from pgscore.models import _batch_parity, check_rows_for
from tests.factories import demo_model
from tests.floats import CONTRACT

KINDS = ("categories", "unknown categories", "nulls", "thresholds", "scaler", "type extremes")


@pytest.fixture(scope="module")
def demo() -> dict:
    return {kind: demo_model(kind) for kind in ("logreg", "gbm")}


def _checked(db, model, compiled: CompiledModel | None = None):
    compiled = compiled or compile_model(model)
    with db.connect() as conn:
        return check_rows_for(conn, compiled, list(model.feature_names_in_))


def test_an_empty_database_still_gets_rows_of_every_kind(db, demo):
    checks = _checked(db, demo["gbm"])
    assert checks.profiles == []
    counts = {kind: len(rows) for kind, rows in checks.generated.items()}
    assert set(counts) == set(KINDS) and all(counts.values()), counts
    names = list(demo["gbm"].feature_names_in_)
    assert {name for row in checks.generated["nulls"] for name in names if row[name] is None} == set(names)
    contracts = {row["contract"] for row in checks.generated["categories"] + checks.generated["unknown categories"]}
    assert {"Month-to-month", "One year", "Two year"} < contracts  # and one the model never saw
    # Values the columns can hold: integers for integer columns, two decimals for numeric(10,2).
    for row in checks.edges:
        assert row["tenure_months"] is None or isinstance(row["tenure_months"], int)
        assert row["monthly_charges"] is None or round(row["monthly_charges"], 2) == row["monthly_charges"]
    assert _batch_parity(demo["gbm"], compile_model(demo["gbm"]), checks.edges) <= CONTRACT
    assert "0 profiles and" in checks.describe() and "thresholds" in checks.describe()


def _root_split_on_a_number(compiled: CompiledModel) -> int:
    numeric_outputs = {out for block in compiled.manifest["transform"]["numeric"] for out in block["outputs"]}
    for root in compiled.arrays["tree_roots"].tolist():
        if int(compiled.arrays["tree_feature"][root]) in numeric_outputs:
            return root
    raise AssertionError("no tree of the demo GBM splits on a number at its root")


def test_a_split_moved_by_one_month_is_caught_without_profiles(db, demo):
    model = demo["gbm"]
    right = compile_model(model)
    wrong = CompiledModel(copy.deepcopy(right.manifest), {k: v.copy() for k, v in right.arrays.items()})
    root = _root_split_on_a_number(wrong)
    output = int(wrong.arrays["tree_feature"][root])
    block = next(b for b in wrong.manifest["transform"]["numeric"] if output in b["outputs"])
    divisor = next((name for code, name in block["ops"] if code == "div"), None)
    unit = 1.0 / float(wrong.arrays[divisor].reshape(-1)[block["outputs"].index(output)]) if divisor else 1.0
    wrong.arrays["tree_threshold"][root] -= unit  # one input unit (a month, a cent...) lower
    checks = _checked(db, model, wrong)
    assert checks.profiles == []
    assert _batch_parity(model, wrong, checks.edges) > CONTRACT  # refused: it differs
    assert _batch_parity(model, right, checks.edges) <= CONTRACT


def test_two_swapped_categories_are_caught_without_profiles(db, demo):
    model = demo["logreg"]
    right = compile_model(model)
    manifest = copy.deepcopy(right.manifest)
    block = next(b for b in manifest["transform"]["onehot"] if len(b["outputs"]) >= 2 and -1 not in b["outputs"][:2])
    block["outputs"][0], block["outputs"][1] = block["outputs"][1], block["outputs"][0]
    wrong = CompiledModel(manifest, dict(right.arrays))
    checks = _checked(db, model, wrong)
    assert _batch_parity(model, wrong, checks.edges) > CONTRACT
    assert _batch_parity(model, right, checks.edges) <= CONTRACT


def test_push_into_a_database_without_profiles_reports_what_it_checked(db, demo):
    result = push_model(db.dsn("loader"), demo["gbm"], name="churn", activate=True)
    assert result.scoring_path == "sql"
    note = result.path_note
    assert "over 0 profiles and" in note and "generated rows (" in note, note
    for kind in KINDS:
        assert kind in note, note
    generated = int(note.split("over 0 profiles and ")[1].split(" generated")[0].replace(",", ""))
    assert generated >= 500, note  # the demo GBM: hundreds of thresholds, never nothing
    assert result.sample_size == 0 and result.notes  # and push says the database test-scored nothing
    with db.connect("analyst") as analyst:
        shown = analyst.execute("SELECT path_note FROM scoring.models WHERE model_id = %s", [result.model_id]).fetchone()
    assert shown[0] == note


def test_rows_are_distinct_and_bounded(db, demo):
    checks = _checked(db, demo["gbm"])
    for kind, rows in checks.generated.items():
        keys = [tuple(sorted((k, repr(v)) for k, v in row.items())) for row in rows]
        assert len(keys) == len(set(keys)), kind
        assert len(rows) <= 1500, kind
    assert np.isfinite([row["monthly_charges"] for row in checks.edges if row["monthly_charges"] is not None]).all()
