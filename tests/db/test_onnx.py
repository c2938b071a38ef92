"""The 'onnx' path end to end: a demo pipeline converted by skl2onnx, pushed,
approved, activated and scored by complaints; and the refusals (an unapproved
graph, external data, a custom domain, a server without onnxruntime)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import psycopg
import pytest

onnx = pytest.importorskip("onnx")
skl2onnx = pytest.importorskip("skl2onnx")

from pgscore import api  # noqa: E402
from pgscore.dev.demo_data import PROFILE_COLUMNS, TEXT_COLUMNS  # noqa: E402
from pgscore.dev.localdb import local_database  # noqa: E402
from pgscore.dev.seed import seed_profiles  # noqa: E402
from pgscore.errors import PushError  # noqa: E402
from pgscore.migrate import migrate  # noqa: E402
from pgscore.models import fetch_feature_rows  # noqa: E402
from pgscore_server import onnxpath  # noqa: E402
from pgscore_server.features import to_frame  # noqa: E402
from tests.conftest import own_server_folder  # noqa: E402
from tests.factories import demo_model  # noqa: E402
from tests.unit.test_onnx_unit import external_tensor, tiny_graph  # noqa: E402

# skl2onnx computes in float32: the demo logistic regression's probabilities
# differ from predict_proba by ~1.2e-7; the bound push applies by default.
FLOAT32_BOUND = 1e-5

MODULES_SQL = ("CREATE FUNCTION public.loaded_modules() RETURNS text[] LANGUAGE plpython3u AS "
               "$$ import sys; return sorted(sys.modules) $$")


def converted(pipeline) -> bytes:
    """skl2onnx's conversion of a demo pipeline fitted on a DataFrame: one input per profile column
    (text as strings, numbers and booleans as float32), ZipMap probabilities."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    types = [(c, StringTensorType([None, 1]) if c in TEXT_COLUMNS else FloatTensorType([None, 1]))
             for c in PROFILE_COLUMNS]
    return to_onnx(pipeline, initial_types=types).SerializeToString()


@pytest.fixture(scope="module")
def logreg_onnx(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "churn.onnx"
    path.write_bytes(converted(demo_model("logreg")))
    return path


def test_an_onnx_pipeline_is_refused_until_approved_then_scores_complaints_as_onnxruntime_does(seeded, logreg_onnx):
    original = demo_model("logreg")
    with pytest.raises(PushError) as refused:
        api.push_model(seeded.dsn("loader"), logreg_onnx, name="churn")
    digest = hashlib.sha256(logreg_onnx.read_bytes()).hexdigest()
    assert f"is an ONNX graph (sha256 {digest}) that no superuser has approved" in str(refused.value)
    assert f"pgscore approve {digest}" in str(refused.value)
    api.approve(seeded.dsn(), digest)

    result = api.push_model(seeded.dsn("loader"), logreg_onnx, name="churn", activate=True, original=original)
    assert (result.scoring_path, result.sample_size) == ("onnx", 200)
    assert result.max_abs_diff <= 1e-9 and result.original_max_abs_diff <= FLOAT32_BOUND
    assert result.path_note.startswith("onnx (onnxruntime 1.31.1; 20 inputs, one per feature; P(class 1) = key 1 "
                                       "of the maps of 'output_probability'); in the database vs onnxruntime here: "
                                       "max difference ")
    assert "; vs the original (Pipeline object): max difference " in result.path_note
    assert result.path_note.endswith(" over 200 rows (bound 1e-05)")

    local = onnxpath.OnnxModel(logreg_onnx.read_bytes(), PROFILE_COLUMNS, "here")
    customers = [3, 4, 5, 17]
    with seeded.connect("app") as app:
        app.execute("INSERT INTO complaints (customer_id, channel) VALUES (3, 'phone')")  # one customer
        app.execute("INSERT INTO complaints (customer_id, channel) SELECT c, 'email' FROM unnest(%s::bigint[]) c",
                    [customers])  # several: the batch path
    with seeded.connect() as conn:
        rows = fetch_feature_rows(conn, PROFILE_COLUMNS, customers)
        stored = dict(conn.execute("SELECT customer_id, churn_score FROM customer_profiles"
                                   " WHERE customer_id = ANY(%s)", [customers]).fetchall())
        model_ids = {m for m, in conn.execute("SELECT DISTINCT churn_model_id FROM customer_profiles"
                                              " WHERE customer_id = ANY(%s)", [customers])}
    assert model_ids == {result.model_id}
    expected = local.predict(rows)
    sklearn = original.predict_proba(to_frame(rows, PROFILE_COLUMNS))[:, 1]
    for row, here, reference in zip(rows, expected, sklearn):
        assert abs(stored[row["customer_id"]] - here) <= 1e-9
        assert abs(stored[row["customer_id"]] - reference) <= FLOAT32_BOUND

    with seeded.connect() as admin:
        admin.execute(MODULES_SQL)
    with seeded.connect("analyst") as analyst:  # a new backend: onnxruntime only once an ONNX model scores
        analyst.execute("SELECT scoring.runtime_info()")
        with seeded.connect() as admin:
            admin.execute("GRANT EXECUTE ON FUNCTION public.loaded_modules() TO scoring_analyst")
        assert "onnxruntime" not in analyst.execute("SELECT public.loaded_modules()").fetchone()[0]
        many = dict(analyst.execute("SELECT customer_id, score FROM scoring.score_many(%s)", [customers]).fetchall())
        one = analyst.execute("SELECT scoring.score(17::bigint)").fetchone()[0]
        what_if = analyst.execute("SELECT scoring.score('churn', to_jsonb(p)) FROM customer_profiles p"
                                  " WHERE customer_id = 17").fetchone()[0]
        assert "onnxruntime" in analyst.execute("SELECT public.loaded_modules()").fetchone()[0]
    assert many == pytest.approx(stored, abs=1e-9) and one == pytest.approx(stored[17], abs=1e-9)
    assert what_if == pytest.approx(stored[17], abs=1e-9)
    # The onnx extra added onnxruntime, not a second numpy (local: a folder of its own; the image: one folder).
    with seeded.connect() as admin:
        admin.execute("CREATE FUNCTION public.copies(name text) RETURNS int LANGUAGE plpython3u AS $$\n"
                      "from importlib import metadata\n"
                      "return sum(1 for d in metadata.distributions() if d.metadata['Name'].lower() == name)\n$$")
        assert admin.execute("SELECT public.copies('numpy'), public.copies('onnxruntime')").fetchone() == (1, 1)


def _insert(conn: psycopg.Connection, blob: bytes, features: list[str]) -> int:
    """A model row written by the loader role itself, bypassing push."""
    digest = hashlib.sha256(blob).hexdigest()
    return conn.execute("INSERT INTO scoring.models (name, version, format, blob, sha256, feature_names, runtime,"
                        " scoring_path) VALUES ('churn', 1, 'onnx', %b, %s, %s, '{}', 'onnx') RETURNING model_id",
                        [blob, digest, features]).fetchone()[0]


def test_graphs_reaching_outside_the_blob_are_refused_at_push_and_by_the_server(seeded, tmp_path):
    features = ["monthly_charges", "tenure_months"]
    outside = tiny_graph(tensor=external_tensor())
    custom = tiny_graph(node_domain="com.example")
    for blob, refusal in ((outside, "keeps its data in an external file"),
                          (custom, "uses the op domain 'com.example' (a custom op)")):
        path = tmp_path / "m.onnx"
        path.write_bytes(blob)
        with pytest.raises(PushError, match="is refused: .*" + refusal.replace("(", r"\(").replace(")", r"\)")):
            api.push_model(seeded.dsn("loader"), path, name="churn", features=features)
    # A loader role writes the row itself, and a superuser even approves it: the server still refuses it.
    with seeded.connect("loader") as loader:
        model_id = _insert(loader, outside, features)
    api.approve(seeded.dsn(), hashlib.sha256(outside).hexdigest())
    with seeded.connect("loader") as loader, pytest.raises(psycopg.Error) as failed:
        loader.execute("SELECT * FROM scoring.score_with_model(%s, ARRAY[1]::bigint[])", [model_id])
    assert "is refused: tensor 'W' (an initializer of the main graph) keeps its data in an external file" in \
        failed.value.diag.message_primary
    # Unapproved, it cannot even be activated.
    with seeded.connect("loader") as loader:
        second = _insert(loader, custom, features)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="is an ONNX graph .* no superuser has approved"):
            loader.execute("SELECT scoring.activate('churn', (SELECT version FROM scoring.models"
                           " WHERE model_id = %s))", [second])


def test_a_server_without_onnxruntime_refuses_onnx_models_naming_the_command_that_adds_it(logreg_onnx):
    folder = own_server_folder("pgscore-no-onnx-")
    server = local_database(folder)
    try:
        dsn = server.start()
        migrate(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            seed_profiles(conn, 20, seed=1)
            assert conn.execute("SELECT scoring.runtime_info() ->> 'onnxruntime'").fetchone()[0] is None
        blob = logreg_onnx.read_bytes()
        api.approve(dsn, hashlib.sha256(blob).hexdigest())
        with pytest.raises(PushError) as refused:
            api.push_model(dsn, logreg_onnx, name="churn")
        assert "its Python runtime has no onnxruntime; a DBA adds onnxruntime to the server's runtime with: " \
               "pgscore runtime add onnx, then restarts the server" in str(refused.value)
        with psycopg.connect(dsn, autocommit=True) as conn:
            model_id = _insert(conn, blob, list(PROFILE_COLUMNS))
            with pytest.raises(psycopg.Error) as failed:
                conn.execute("SELECT * FROM scoring.score_with_model(%s, ARRAY[1]::bigint[])", [model_id])
        assert "is an ONNX model, and the server's Python runtime has no onnxruntime" in \
            failed.value.diag.message_primary
        assert "pgscore runtime add onnx" in failed.value.diag.message_hint
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def test_a_pickle_needing_a_package_the_runtime_lacks_is_refused_with_the_ways_out(seeded, tmp_path):
    path = tmp_path / "third_party.joblib"
    # What joblib.dump writes for a feature_engine step, on a machine without feature_engine.
    path.write_bytes(b"\x80\x04cfeature_engine.encoding\nRareLabelEncoder\n)\x81.")
    with pytest.raises(PushError) as refused:
        api.push_model(seeded.dsn("loader"), path, name="churn")
    message = str(refused.value)
    assert "it needs the Python module 'feature_engine'" in message
    assert "rewritten with scikit-learn's own transformers" in message and "pgscore push model.onnx" in message
    assert "pgscore runtime add PACKAGE==VERSION, then restart the server" in message


def test_a_graph_with_one_tensor_input_takes_the_recorded_feature_order_and_string_labels_are_refused(seeded,
                                                                                                        tmp_path):
    from skl2onnx import to_onnx
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from tests.factories import training_rows

    numbers = ["tenure_months", "monthly_charges", "total_charges", "complaint_count"]
    rows, labels = training_rows(1500, seed=4)
    X = to_frame(rows, numbers).astype("float64")
    model = make_pipeline(SimpleImputer(), LogisticRegression(max_iter=500)).fit(X, labels)
    path = tmp_path / "numbers.onnx"
    path.write_bytes(to_onnx(model, X.to_numpy(dtype=np.float32)[:1], options={"zipmap": False}).SerializeToString())
    api.approve(seeded.dsn(), hashlib.sha256(path.read_bytes()).hexdigest())
    with pytest.raises(PushError, match="takes one tensor input 'X' of 4 columns: give the entity columns it takes, "
                                        "in order, with --features A,B,C"):
        api.push_model(seeded.dsn("loader"), path, name="churn")  # which column is which?
    result = api.push_model(seeded.dsn("loader"), path, name="churn", features=numbers, original=model,
                            activate=True)
    assert "one tensor input 'X' (tensor(float)) in the recorded feature order; P(class 1) = column 1 of " \
           "'probabilities'" in result.path_note
    assert result.max_abs_diff <= 1e-9 and result.original_max_abs_diff <= FLOAT32_BOUND
    with seeded.connect("analyst") as analyst:
        scored = analyst.execute("SELECT scoring.score(9::bigint)").fetchone()[0]
    with seeded.connect() as conn:
        row = fetch_feature_rows(conn, numbers, [9])
    assert abs(scored - onnxpath.OnnxModel(path.read_bytes(), numbers, "here").predict(row)[0]) <= 1e-9

    words = make_pipeline(SimpleImputer(), LogisticRegression(max_iter=500)).fit(
        X, np.where(labels == 1, "Yes", "No"))
    path.write_bytes(to_onnx(words, X.to_numpy(dtype=np.float32)[:1]).SerializeToString())
    with pytest.raises(PushError, match=r"classifies into \['No', 'Yes'\]; pgscore scores the probability of class 1"):
        api.push_model(seeded.dsn("loader"), path, name="churn", features=numbers)


class _Doubler:
    """A transformer the compiler does not know; its class claims the module named by ``library``."""

    def fit(self, X, y=None):
        self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        return self

    def transform(self, X):
        return X * 2


def _pipeline_with_a_step_from(library: str):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    step = type("Doubler", (_Doubler,), {"__module__": f"{library}.steps"})()
    frame = to_frame([{"tenure_months": t, "monthly_charges": 20.0 + t} for t in range(40)],
                     ["tenure_months", "monthly_charges"])
    return Pipeline([("double", step), ("clf", LogisticRegression())]).fit(frame, np.arange(40) % 2 == 0)


def test_push_asks_the_server_which_libraries_its_runtime_has(seeded):
    """A pipeline that does not compile, with a step from a library other than scikit-learn:
    refused with the ways out when the server's runtime lacks the library; when the runtime has
    it (runtime_info's modules: here pandas, which every runtime has), push goes on to store
    the blob the server would rebuild (refused at skops' trusted types, as any unknown type)."""
    with psycopg.connect(seeded.dsn("loader")) as conn:
        modules = conn.execute("SELECT scoring.runtime_info() -> 'modules'").fetchone()[0]
    assert {"sklearn", "numpy", "pandas", "onnxruntime"} <= set(modules) and "xgboost" not in modules
    with pytest.raises(PushError) as lacking:
        api.push_model(seeded.dsn("loader"), _pipeline_with_a_step_from("feature_engine"), name="churn")
    assert "the server's runtime lacks feature_engine and the model cannot be compiled" in str(lacking.value)
    assert "pgscore runtime add PACKAGE==VERSION" in str(lacking.value)
    with pytest.raises(PushError) as blob:
        api.push_model(seeded.dsn("loader"), _pipeline_with_a_step_from("pandas"), name="churn")
    assert "needs types pgscore does not trust in skops format: pandas.steps.Doubler" in str(blob.value)
