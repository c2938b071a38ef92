"""Crafted model blobs that are data, not code, but that scikit-learn's
compiled code or pgscore's evaluator would follow out of bounds or forever.

1. A skops blob holds a tree's node arrays as they are: scikit-learn's
   Cython walks ``left_child`` / ``right_child`` / ``feature`` (and
   HistGradientBoosting's ``left`` / ``right`` / ``feature_idx`` /
   ``bitset_idx``) without bounds checks. A child index of 10**12 killed
   the backend with SIGSEGV (the whole cluster restarted); a child pointing
   back at the root looped forever in C code no cancel reaches.
   ``formats.loads`` now checks every such structure before returning the
   model, on the server and in ``pgscore push`` alike.
2. A compiled model whose nodes share children (node i with both children
   i + 1) had 2**62 root-to-leaf paths that the loader walked in Python.

Every statement that could hang runs under statement_timeout and in a
thread with a deadline, so a regression fails instead of blocking CI.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import subprocess
import sys
import threading
import time
import warnings
import zipfile
from typing import Any, Callable

import numpy as np
import pandas as pd
import psycopg
import pytest
import skops.io
from sklearn.ensemble import GradientBoostingClassifier, HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.tree import DecisionTreeClassifier

from pgscore import PushError, cli, push_model
from pgscore_server import compiled, formats
from tests.conftest import postmaster_started

TIMEOUT = 60  # seconds any one database call may take here (they take well under one)
OPTIONS = "-c statement_timeout=20s"

X = pd.DataFrame({"tenure_months": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]})
Y = np.array([0, 0, 1, 1, 0, 0, 1, 1])


def tree_with(edit: Callable[[dict], None], depth: int = 1) -> DecisionTreeClassifier:
    """A DecisionTreeClassifier on tenure_months whose tree state ``edit`` changed."""
    clf = DecisionTreeClassifier(max_depth=depth, random_state=0).fit(X, Y)
    state = clf.tree_.__getstate__()
    state["nodes"] = state["nodes"].copy()
    edit(state)
    clf.tree_.__setstate__(state)
    return clf


def hgb_with(edit: Callable[[Any], None]) -> HistGradientBoostingClassifier:
    """A HistGradientBoostingClassifier whose first predictor ``edit`` changed."""
    clf = HistGradientBoostingClassifier(max_iter=2, max_depth=2, min_samples_leaf=1, random_state=0).fit(X, Y)
    predictor = clf._predictors[0][0]
    predictor.nodes = predictor.nodes.copy()
    edit(predictor)
    return clf


def set_node(field: str, node: int, value: int) -> Callable[[dict], None]:
    return lambda state: state["nodes"][field].__setitem__(node, value)


def reviewers_tree(state: dict) -> None:
    """/tmp/rev/mk_tree.py: the root's left child far outside the node array."""
    state["nodes"]["left_child"][0] = 10**12
    state["nodes"]["threshold"][0] = 1e300


# name: (model, what the refusal says). Before the fix: SIGSEGV, endless loop, SIGSEGV.
CRAFTED = {
    "tree_child_out_of_range": (lambda: tree_with(reviewers_tree),
                                "DecisionTreeClassifier: tree node 0 has left child 1000000000000 outside 1..2"),
    "tree_cycle_to_root": (lambda: tree_with(set_node("left_child", 0, 0)),
                           "DecisionTreeClassifier: tree node 0 has left child 0 outside 1..2"),
    "hist_gradient_boosting_child_out_of_range": (
        lambda: hgb_with(lambda p: p.nodes["left"].__setitem__(0, 10**6)),
        "HistGradientBoostingClassifier._predictors[0][0] predictor node 0 has left child 1000000 outside 1..4"),
}


def bounded(call: Callable[[], Any], seconds: float = TIMEOUT) -> Any:
    """``call()``, failing the test if it has not returned after ``seconds``."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def assert_no_crash(db, started: Any, *still_open: psycopg.Connection) -> None:
    """The server did not restart: other connections work and open ones are alive."""
    for conn in still_open:
        assert bounded(lambda: conn.execute("SELECT 1").fetchone()[0]) == 1
    with db.connect() as other:
        assert other.execute("SELECT 1").fetchone()[0] == 1
        assert other.execute("SELECT pg_postmaster_start_time()").fetchone()[0] == started


def plant_skops(loader: psycopg.Connection, blob: bytes) -> int:
    """The reviewer's planting: the loader's own INSERT, past push's checks."""
    return loader.execute(
        "INSERT INTO scoring.models (name, version, format, blob, sha256, feature_names, runtime, scoring_path)"
        " VALUES ('churn', 1, 'skops', %b, encode(sha256(%b), 'hex'), '{tenure_months}', '{}', 'sklearn')"
        " RETURNING model_id", [blob, blob]).fetchone()[0]


# -- 1. skops: the server ------------------------------------------------------------

@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_server_refuses_a_crafted_skops_model_without_crashing(seeded, case):
    make, says = CRAFTED[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        blob = skops.io.dumps(make())
    assert formats.untrusted_types(blob) == []  # skops alone would load it
    started = postmaster_started(seeded)
    with seeded.connect("loader", options=OPTIONS) as loader:
        model_id = plant_skops(loader, blob)
        with pytest.raises(psycopg.errors.ExternalRoutineException) as tested:
            bounded(lambda: loader.execute("SELECT * FROM scoring.score_with_model(%s, '{1}')", [model_id]))
        assert f"model 'churn' v1 (model_id {model_id}) could not be loaded: MalformedModel: model blob is " \
               f"malformed: {says}; refusing to load it" in tested.value.diag.message_primary
        assert_no_crash(seeded, started, loader)
        loader.execute("SELECT scoring.activate('churn', 1)")  # activate does not load a skops model
    with seeded.connect("app", options=OPTIONS) as app:
        app.execute("SET scoring.on_error = 'keep'")
        bounded(lambda: app.execute("INSERT INTO complaints (customer_id, channel) VALUES (5, 'phone')"))
        app.execute("SET scoring.on_error = 'raise'")
        with pytest.raises(psycopg.errors.ExternalRoutineException, match="model blob is malformed"):
            bounded(lambda: app.execute("INSERT INTO complaints (customer_id, channel) VALUES (6, 'phone')"))
        assert_no_crash(seeded, started, app)
    with seeded.connect("analyst", options=OPTIONS) as analyst:
        with pytest.raises(psycopg.errors.ExternalRoutineException, match="model blob is malformed"):
            bounded(lambda: analyst.execute("SELECT scoring.score(5::bigint)"))
    with seeded.connect() as admin:
        count, score = admin.execute("SELECT complaint_count, churn_score FROM customer_profiles"
                                     " WHERE customer_id = 5").fetchone()
        recorded = admin.execute("SELECT sqlstate, message FROM scoring.errors WHERE customer_id = 5").fetchall()
        kept = admin.execute("SELECT count(*) FROM complaints WHERE customer_id = 5").fetchone()[0]
    assert kept == 1 and count >= 1 and score is None
    assert [state for state, _ in recorded] == ["38000"] and says in recorded[0][1]
    assert_no_crash(seeded, started)


# -- 1. skops: the loader's side -----------------------------------------------------

@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_push_refuses_a_crafted_skops_file(seeded, tmp_path, case, capsys):
    make, says = CRAFTED[case]
    path = tmp_path / f"{case}.skops"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        skops.io.dump(make(), path)
    with pytest.raises(PushError, match="model blob is malformed") as refused:
        bounded(lambda: push_model(seeded.dsn("loader"), path, name="churn", scoring_path="sklearn"))
    assert f"{path} is not a loadable skops model (MalformedModel: model blob is malformed: {says}" \
        in str(refused.value)
    status = bounded(lambda: cli.main(["push", str(path), "--name", "churn", "--path", "sklearn",
                                       "--dsn", seeded.dsn("loader")]))
    _, err = capsys.readouterr()
    assert status == 1 and says in err
    with seeded.connect() as admin:
        assert admin.execute("SELECT count(*) FROM scoring.models").fetchone()[0] == 0


# -- 1. what is checked, without a database ------------------------------------------

def gb_with_a_tree_missing() -> GradientBoostingClassifier:
    clf = GradientBoostingClassifier(n_estimators=3, random_state=0).fit(X, Y)
    clf.estimators_[1, 0].tree_ = None  # predict_stages casts it to a Tree: a null pointer
    return clf


def forest_member_wider_than_its_input() -> RandomForestClassifier:
    clf = RandomForestClassifier(n_estimators=3, max_depth=2, random_state=0).fit(X, Y)
    clf.estimators_[1].n_features_in_ = 5  # its tree could then test feature 4 of a 1-column input
    clf.estimators_[1].tree_.n_features = 5
    return clf


REFUSED = {
    "shared_child": (lambda: tree_with(lambda s: s["nodes"]["right_child"].__setitem__(
        0, s["nodes"]["left_child"][0]), depth=2), "node 1 is the child of 2 nodes, not 1 (not a tree)"),
    "feature_out_of_range": (lambda: tree_with(set_node("feature", 0, 10**6)),
                             "tree node 0 tests feature 1000000 outside 0..0"),
    "negative_feature": (lambda: tree_with(set_node("feature", 0, -7)), "tree node 0 tests feature -7 outside 0..0"),
    "leaf_with_a_child": (lambda: tree_with(set_node("right_child", 1, 2)),
                          "node 1 is a leaf (left child -1) with right child 2, not -1"),
    "max_depth_too_small": (lambda: tree_with(lambda s: s.__setitem__("max_depth", 0), depth=2),
                            "has max_depth 0, but its deepest leaf is 2 deep"),
    "gradient_boosting_tree_missing": (gb_with_a_tree_missing,
                                       "GradientBoostingClassifier.estimators_[1, 0] holds no Tree"),
    "forest_member_too_wide": (forest_member_wider_than_its_input,
                               "RandomForestClassifier.estimators_[1] takes 5 features, the ensemble gives it 1"),
    "hgb_feature_out_of_range": (lambda: hgb_with(lambda p: p.nodes["feature_idx"].__setitem__(0, 10**6)),
                                 "node 0 tests feature 1000000 outside 0..0"),
    "hgb_cycle": (lambda: hgb_with(lambda p: p.nodes["right"].__setitem__(0, 0)),
                  "predictor node 0 has right child 0 outside 1..4"),
    "hgb_bitset_out_of_range": (lambda: hgb_with(lambda p: (p.nodes["is_categorical"].__setitem__(0, 1),
                                                            p.nodes["bitset_idx"].__setitem__(0, 10**6))),
                                "node 0 uses bitset 1000000 of raw_left_cat_bitsets, which has 0 rows"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_formats_loads_refuses_malformed_native_structures(case):
    make, says = REFUSED[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        blob = skops.io.dumps(make())
    with pytest.raises(formats.MalformedModel, match="model blob is malformed") as refused:
        formats.loads(blob, "skops")
    assert says in str(refused.value)


def test_models_pgscore_pushes_pass_the_check():
    """Trees inside pipelines, forests, boosting (both kinds), bagging: loaded and equal to the original."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import BaggingClassifier, ExtraTreesClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from pgscore.dev.demo_data import train_demo_model

    rng = np.random.default_rng(0)
    data = pd.DataFrame({"a": rng.normal(size=300), "b": rng.normal(size=300), "c": rng.integers(0, 4, 300)})
    target = (data.a + data.b * data.c > 0).astype(int)
    columns = ColumnTransformer([("num", StandardScaler(), ["a", "b"]), ("cat", OneHotEncoder(), ["c"])])
    models = [
        DecisionTreeClassifier(), DecisionTreeClassifier(max_leaf_nodes=8), DecisionTreeClassifier(ccp_alpha=0.01),
        DecisionTreeClassifier(max_depth=1), ExtraTreesClassifier(n_estimators=5),
        GradientBoostingClassifier(n_estimators=5), GradientBoostingClassifier(n_estimators=5, init="zero"),
        HistGradientBoostingClassifier(max_iter=5), BaggingClassifier(DecisionTreeClassifier(), max_features=0.67,
                                                                       n_estimators=3),
        make_pipeline(columns, RandomForestClassifier(n_estimators=5)),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted = [model.fit(data, target) for model in models]
        fitted.append(train_demo_model(rows=2000, seed=0, kind="rf")[0])
        frames = [data] * len(models) + [None]
        for model, frame in zip(fitted, frames):
            loaded = formats.loads(formats.dumps(model, "skops"), "skops")
            if frame is not None:
                assert np.array_equal(loaded.predict_proba(frame), model.predict_proba(frame))
        # Members fed other columns than their ensemble's (a chain's), unfitted
        # prototypes without estimators_ (a stack's parameters): not refused.
        from sklearn.ensemble import StackingClassifier
        from sklearn.multioutput import ClassifierChain

        formats.check_native_structures(ClassifierChain(DecisionTreeClassifier()).fit(
            data, np.stack([target, 1 - target], axis=1)))
        formats.check_native_structures(StackingClassifier(
            [("rf", RandomForestClassifier(n_estimators=3))], final_estimator=DecisionTreeClassifier()).fit(data, target))


def skops_archive_with(blob: bytes, edit: Callable[[dict, dict], None]) -> bytes:
    """``blob`` (a skops zip) with its first Tree's schema entry edited (``edit(tree, files)``)."""
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    schema = json.loads(files["schema.json"])

    def first_tree(node: Any) -> dict | None:
        if isinstance(node, dict):
            if node.get("__class__") == "Tree":
                return node
            node = list(node.values())
        if isinstance(node, list):
            for item in node:
                found = first_tree(item)
                if found:
                    return found
        return None

    schema = copy.deepcopy(schema)
    edit(first_tree(schema), files)
    files["schema.json"] = json.dumps(schema).encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return out.getvalue()


def json_value(where: list, key: Any, value: str, unique: int) -> Callable[[dict, dict], None]:
    """Set a JSON leaf of the tree's entry, under an id of its own (skops shares equal values by id)."""
    def edit(tree: dict, files: dict) -> None:
        node = tree
        for step in where:
            node = node[step]
        node[key].update(content=value, __id__=unique)
    return edit


ARCHIVE_EDITS = {
    "node_count_beyond_the_nodes": json_value(["content", "content"], "node_count", "1000000000", 1),
    "no_nodes": json_value(["content", "content"], "node_count", "0", 2),
    "negative_n_features": json_value(["__reduce__", "args", "content"], 0, "-1", 3),
    "huge_n_features": json_value(["__reduce__", "args", "content"], 0, "1000000000000", 4),
    "huge_n_outputs": json_value(["__reduce__", "args", "content"], 2, "100000000", 5),
    "negative_n_outputs": json_value(["__reduce__", "args", "content"], 2, "-1", 6),
    "huge_max_depth": json_value(["content", "content"], "max_depth", "1000000000000000000", 7),
}


def test_rebuilding_a_crafted_tree_never_crashes_before_the_check():
    """skops rebuilds a Tree with Tree(n_features, n_classes, n_outputs) and
    __setstate__, which check the arrays' dtype, dimensions, contiguity and
    the values' shape, and clamp node_count to the node array; nothing reads
    a child index before check_native_structures. Each edited archive is
    loaded in a child process, so a crash would show as a signal."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        blob = skops.io.dumps(DecisionTreeClassifier(max_depth=2, random_state=0).fit(X, Y))
    probe = ("import sys, warnings; warnings.simplefilter('ignore'); from pgscore_server import formats\n"
             "try:\n    formats.loads(sys.stdin.buffer.read(), 'skops'); print('loaded')\n"
             "except Exception as exc:\n    print(type(exc).__name__, exc)\n")
    outcomes = {}
    for name, edit in ARCHIVE_EDITS.items():
        done = subprocess.run([sys.executable, "-c", probe], input=skops_archive_with(blob, edit),
                              capture_output=True, timeout=TIMEOUT, check=False)
        assert done.returncode == 0, f"{name}: exit status {done.returncode}: {done.stderr.decode()[-300:]}"
        outcomes[name] = done.stdout.decode().strip()
    # Clamped to the node array by Tree itself: the same, valid, tree.
    assert outcomes.pop("node_count_beyond_the_nodes") == "loaded"
    assert all(outcome.startswith(("MalformedModel", "ValueError", "IndexError", "MemoryError"))
               for outcome in outcomes.values()), outcomes
    assert "MalformedModel" in outcomes["huge_n_features"] and "MalformedModel" in outcomes["huge_max_depth"]


# -- 2. compiled: shared children ----------------------------------------------------

def dag_compiled(n: int = 62, max_depth: int | None = None) -> bytes:
    """/tmp/rev/mk_dag.py: node i has both children i + 1; 2**(n-1) root-to-leaf paths."""
    from pgscore.compile import CompiledModel, compile_model

    cm = compile_model(DecisionTreeClassifier(max_depth=1).fit(X.iloc[:4], Y[:4]))
    arrays, manifest = dict(cm.arrays), dict(cm.manifest)
    model = dict(manifest["model"])
    feature = np.zeros(n, arrays["tree_feature"].dtype)
    feature[-1] = -2
    arrays["tree_feature"] = feature
    arrays["tree_threshold"] = np.full(n, 0.5, arrays["tree_threshold"].dtype)
    arrays["tree_left"] = np.array(list(range(1, n)) + [-1], arrays["tree_left"].dtype)
    arrays["tree_right"] = np.array(list(range(1, n)) + [-1], arrays["tree_right"].dtype)
    arrays["tree_missing_left"] = np.zeros(n, arrays["tree_missing_left"].dtype)
    arrays["tree_value"] = np.full(n, 0.1, arrays["tree_value"].dtype)
    arrays["tree_roots"] = np.array([0], arrays["tree_roots"].dtype)
    model["max_depth"] = n if max_depth is None else max_depth
    manifest["model"] = model
    return CompiledModel(manifest, arrays).to_bytes()


def compiled_tree_with(edit: Callable[[dict, dict], None]) -> bytes:
    from pgscore.compile import CompiledModel, compile_model

    cm = compile_model(DecisionTreeClassifier(max_depth=2, random_state=0).fit(X, Y))
    arrays, manifest = {k: np.array(v) for k, v in cm.arrays.items()}, dict(cm.manifest)
    manifest["model"] = dict(manifest["model"])
    edit(arrays, manifest["model"])
    return CompiledModel(manifest, arrays).to_bytes()


def test_compiled_load_refuses_nodes_that_are_not_trees_quickly():
    started = time.perf_counter()
    for max_depth in (62, 61, 1000):
        with pytest.raises(ValueError, match="do not form trees: tree 0 node 0 has children 1, 1"):
            bounded(lambda: compiled.load(dag_compiled(max_depth=max_depth)), 20)
    assert time.perf_counter() - started < 10
    assert compiled.load(compiled_tree_with(lambda a, m: None)) is not None

    def second_tree_shares_the_first(arrays: dict, model: dict) -> None:
        arrays["tree_roots"] = np.array([0, 1], arrays["tree_roots"].dtype)

    def unreachable_node(arrays: dict, model: dict) -> None:
        for name in ("feature", "threshold", "left", "right", "missing_left", "value"):
            column = arrays[f"tree_{name}"]
            arrays[f"tree_{name}"] = np.concatenate([column, column[-1:]])

    def depth(value: int) -> Callable[[dict, dict], None]:
        return lambda arrays, model: model.__setitem__("max_depth", value)

    for edit, says in ((second_tree_shares_the_first, "tree 1 has root 1, which is not a node or belongs to another"),
                       (unreachable_node, "is not reached from any root"),
                       (depth(1), "max_depth is 1, the trees are 2 deep"),
                       (depth(10**12), "max_depth is 1000000000000, the trees are 2 deep")):
        with pytest.raises(ValueError, match=says):
            bounded(lambda: compiled.load(compiled_tree_with(edit)), 20)


def test_server_refuses_a_compiled_model_whose_nodes_are_shared_without_hanging(seeded):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        blob = skops.io.dumps(DecisionTreeClassifier(max_depth=1).fit(X, Y))
    dag = dag_compiled()
    started = postmaster_started(seeded)
    with seeded.connect("loader", options=OPTIONS) as loader:
        model_id = loader.execute(
            "INSERT INTO scoring.models (name, version, format, blob, sha256, feature_names, runtime, compiled,"
            " scoring_path) VALUES ('churn', 1, 'skops', %b, %s, '{tenure_months}', '{}', %b, 'compiled')"
            " RETURNING model_id", [blob, hashlib.sha256(blob).hexdigest(), dag]).fetchone()[0]
        begun = time.perf_counter()
        with pytest.raises(psycopg.errors.ExternalRoutineException) as refused:
            bounded(lambda: loader.execute("SELECT * FROM scoring.score_with_model(%s, '{1}')", [model_id]))
        assert time.perf_counter() - begun < 10
        assert f"model 'churn' v1 (model_id {model_id}): its compiled form cannot be read: tree arrays of the " \
               "compiled model do not form trees: tree 0 node 0 has children 1, 1" in refused.value.diag.message_primary
        assert_no_crash(seeded, started, loader)
