"""pgscore push of MLflow models, against a real MLflow tracking store and
model registry: a SQLite file in a temporary folder, artifacts beside it, no
server and no network. Models are logged with mlflow.sklearn and
mlflow.xgboost, registered, given an alias, and pushed by
``models:/NAME/VERSION``, ``models:/NAME@ALIAS`` and local directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pgscore import push_model
from pgscore.dev.demo_data import LABEL_COLUMN, PROFILE_COLUMNS, synthetic_profiles
from pgscore.errors import PushError
from pgscore.verify import FLOAT32_ULPS
from pgscore_server.features import to_frame
from tests.conftest import local_scores
from tests.factories import demo_model
from tests.floats import CONTRACT

mlflow = pytest.importorskip("mlflow")

# The demo's numeric columns: what the XGBoost model is trained on (NaN in total_charges for new customers).
XGB_FEATURES = ["tenure_months", "monthly_charges", "total_charges", "complaint_count"]
# What a backend must not have imported after scoring a model pushed from MLflow.
NEVER_IN_SERVER = ("mlflow", "xgboost", "lightgbm")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A SQLite-backed MLflow tracking store and registry: the demo logreg
    logged twice with mlflow.sklearn (skops, then cloudpickle) in one run
    that logged a metric, registered as 'churn' v1 (alias 'champion') and v2."""
    folder = tmp_path_factory.mktemp("mlflow")
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_DISABLE_TELEMETRY")}
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder}/mlflow.db"
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    from mlflow.models import infer_signature

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    experiment = mlflow.create_experiment("churn", artifact_location=(folder / "artifacts").as_uri())
    model = demo_model("logreg")
    frame = to_frame(synthetic_profiles(50, seed=5), list(PROFILE_COLUMNS))
    signature = infer_signature(frame, model.predict_proba(frame)[:, 1])
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_metric("roc_auc", 0.8125)
        mlflow.sklearn.log_model(model, name="skops", signature=signature, registered_model_name="churn",
                                 serialization_format="skops", skops_trusted_types=["numpy.dtype"])
        mlflow.sklearn.log_model(model, name="pickled", signature=signature, registered_model_name="churn",
                                 serialization_format="cloudpickle")
    mlflow.MlflowClient().set_registered_model_alias("churn", "champion", "1")
    try:
        yield {"folder": folder, "run_id": run.info.run_id, "model": model, "experiment": experiment}
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def modules_never_imported(conn) -> list[str]:
    """Which of NEVER_IN_SERVER this backend (the test's superuser) imported."""
    conn.execute("CREATE OR REPLACE FUNCTION pg_temp.imported() RETURNS text[] LANGUAGE plpython3u"
                 " AS 'import sys\nreturn sorted(sys.modules)'")
    loaded = conn.execute("SELECT pg_temp.imported()").fetchone()[0]
    return [name for name in loaded if name.split(".")[0] in NEVER_IN_SERVER]


def complain_and_score(db, model, keys: list[int]) -> tuple[dict, dict, dict]:
    """(stored churn_score, local predict_proba, scoring.score_many) of
    ``keys`` after a complaint for each: the first through the application
    role, the others in the superuser's backend, which then also scores
    with score_many and must not have imported NEVER_IN_SERVER."""
    with db.connect("app") as app:
        app.execute("INSERT INTO complaints (customer_id, channel) VALUES (%s, 'phone')", [keys[0]])
    with db.connect() as admin:
        admin.execute("INSERT INTO complaints (customer_id, channel) SELECT unnest(%s::bigint[]), 'email'",
                      [keys[1:]])
        on_demand = dict(admin.execute("SELECT customer_id, score FROM scoring.score_many(%s, 'churn')",
                                       [keys]).fetchall())
        assert modules_never_imported(admin) == []
        stored = dict(admin.execute("SELECT customer_id, churn_score FROM customer_profiles"
                                    " WHERE customer_id = ANY(%s)", [keys]).fetchall())
        assert all(model_id is not None for model_id, in admin.execute(
            "SELECT churn_model_id FROM customer_profiles WHERE customer_id = ANY(%s)", [keys]))
        expected = local_scores(model, admin, keys)
    return stored, expected, on_demand


def stored_metrics(db, version: int) -> dict:
    with db.connect() as conn:
        return conn.execute("SELECT metrics FROM scoring.models WHERE name = 'churn' AND version = %s",
                            [version]).fetchone()[0]


def test_push_by_version_alias_and_directory_records_mlflow_and_scores_exactly(seeded, store, tmp_path):
    loader = seeded.dsn("loader")
    by_version = push_model(loader, "models:/churn/1", name="churn", metrics={"owner": "ana", "roc_auc": 0.8})
    by_alias = subprocess.run([sys.executable, "-m", "pgscore.cli", "push", "models:/churn@champion", "--name", "churn",
                               "--dsn", loader], capture_output=True, text=True, timeout=300, check=False)
    assert by_alias.returncode == 0, by_alias.stderr
    assert "pushed churn v2" in by_alias.stdout
    assert f"note: from MLflow sklearn model, registered model churn v1, run {store['run_id']}" in by_alias.stdout
    directory = mlflow.artifacts.download_artifacts(artifact_uri="models:/churn/2", dst_path=str(tmp_path))
    by_directory = push_model(loader, directory, name="churn", activate=True)
    assert [by_version.version, by_directory.version] == [1, 3]

    first = stored_metrics(seeded, 1)
    assert first["owner"] == "ana" and first["roc_auc"] == 0.8  # the user's metrics win over the run's
    assert first["mlflow"] == {"flavor": "sklearn", "run_id": store["run_id"], "model_uri": "models:/churn/1",
                               "registered_model": "churn", "version": 1, "signature_inputs": list(PROFILE_COLUMNS)}
    second = stored_metrics(seeded, 2)
    assert second["roc_auc"] == 0.8125  # the run's logged metric
    assert (second["mlflow"]["model_uri"], second["mlflow"]["alias"], second["mlflow"]["version"]) == \
        ("models:/churn@champion", "champion", 1)
    third = stored_metrics(seeded, 3)
    assert third["mlflow"]["model_uri"] == str(Path(directory).resolve())
    assert third["mlflow"]["run_id"] == store["run_id"] and "version" not in third["mlflow"]

    stored, expected, on_demand = complain_and_score(seeded, store["model"], [11, 12])
    assert all(abs(stored[key] - expected[key]) <= CONTRACT for key in (11, 12)), (stored, expected)
    assert all(abs(on_demand[key] - expected[key]) <= CONTRACT for key in (11, 12)), (on_demand, expected)


def test_a_signature_column_the_entity_lacks_is_refused_naming_it(seeded, store, tmp_path):
    from sklearn.linear_model import LogisticRegression

    profiles = synthetic_profiles(200, seed=1)
    frame = to_frame(profiles, ["tenure_months"])
    frame["loyalty_tier"] = np.arange(len(frame)) % 3
    model = LogisticRegression().fit(frame, [row[LABEL_COLUMN] for row in profiles])
    mlflow.sklearn.save_model(model, str(tmp_path / "model"), input_example=frame.head(3))
    with pytest.raises(PushError) as refused:
        push_model(seeded.dsn("loader"), tmp_path / "model", name="churn")
    message = str(refused.value)
    assert "signature whose columns public.customer_profiles lacks: loyalty_tier" in message
    assert "scorer 'churn'" in message
    with seeded.connect() as conn:
        assert conn.execute("SELECT count(*) FROM scoring.models").fetchone()[0] == 0


def test_help_and_an_ordinary_push_never_import_mlflow(seeded, model_files):
    """`pgscore --help` and a push of a .joblib file run without importing
    mlflow (in a fresh interpreter: this one imported it for the store)."""
    probe = ("import contextlib, io, json, sys\n"
             "from pgscore.cli import main\n"
             "with contextlib.redirect_stdout(io.StringIO()):\n"
             "    try:\n        main(['--help'])\n    except SystemExit:\n        pass\n"
             "    status = main(['push', sys.argv[1], '--name', 'churn', '--dsn', sys.argv[2]])\n"
             "print(json.dumps([status, sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow')]))\n")
    done = subprocess.run([sys.executable, "-c", probe, str(model_files["logreg"]), seeded.dsn("loader")],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [0, []]


def test_without_mlflow_the_error_names_the_extra(tmp_path):
    (tmp_path / "MLmodel").write_text("flavors: {}\n")
    probe = ("import sys\nsys.modules['mlflow'] = None  # as if not installed\n"
             "from pgscore.errors import PushError\nfrom pgscore.push import push_model\n"
             "try:\n    push_model('', sys.argv[1], name='churn')\n"
             "except PushError as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "pushing an MLflow model needs mlflow" in done.stdout
    assert "pip install 'pgscore[mlflow]'" in done.stdout


def test_xgboost_flavor_pushed_by_uri_scores_within_the_float32_bound(seeded, store):
    """An XGBClassifier logged with mlflow.xgboost (xgboost's own model
    format, no pickle) is compiled (format 'compiled'); stored scores are
    within verify.FLOAT32_ULPS float32 ulps of its predict_proba (docs/models-from-other-tools.md,
    "The bound"), and the server imported neither xgboost nor mlflow."""
    xgboost = pytest.importorskip("xgboost")
    from mlflow.models import infer_signature

    profiles = synthetic_profiles(1500, seed=2)
    frame = to_frame(profiles, XGB_FEATURES)
    model = xgboost.XGBClassifier(n_estimators=20, max_depth=4, random_state=0)
    model.fit(frame, np.array([row[LABEL_COLUMN] for row in profiles], dtype=int))
    with mlflow.start_run(experiment_id=store["experiment"]):
        mlflow.log_metric("roc_auc", 0.75)
        mlflow.xgboost.log_model(model, name="xgb", signature=infer_signature(frame),
                                 registered_model_name="churn_xgb")
    result = push_model(seeded.dsn("loader"), "models:/churn_xgb/1", name="churn", activate=True)
    assert result.scoring_path in ("sql", "compiled"), result.path_note
    with seeded.connect() as admin:
        fmt, metrics = admin.execute("SELECT format, metrics FROM scoring.models WHERE model_id = %s",
                                     [result.model_id]).fetchone()
    assert fmt == "compiled"
    assert metrics["roc_auc"] == 0.75 and metrics["mlflow"]["flavor"] == "xgboost"
    assert metrics["mlflow"]["signature_inputs"] == XGB_FEATURES
    stored, expected, on_demand = complain_and_score(seeded, model, [21, 22])
    for key in (21, 22):
        library = np.float32(expected[key])
        for ours in (stored[key], on_demand[key]):
            assert abs(ours - float(library)) <= FLOAT32_ULPS * float(np.spacing(library)), (key, ours, library)


def test_boosting_flavors_load_their_scikit_learn_classifier_and_refuse_a_booster(tmp_path):
    """No database: what push reads from the xgboost and lightgbm flavors.
    An LGBMClassifier logged as skops loads without trust (pgscore's fixed
    list of LightGBM types, not the MLmodel file's), one logged as a pickle
    only with trust; a raw Booster of either library is refused, saying
    what to log instead."""
    xgboost = pytest.importorskip("xgboost")
    lightgbm = pytest.importorskip("lightgbm")
    from pgscore import mlflow_source

    profiles = synthetic_profiles(300, seed=4)
    frame = to_frame(profiles, XGB_FEATURES)
    labels = np.array([row[LABEL_COLUMN] for row in profiles], dtype=int)
    lgbm = lightgbm.LGBMClassifier(n_estimators=5, num_leaves=7, verbose=-1).fit(frame, labels)
    for fmt in ("skops", "cloudpickle"):
        mlflow.lightgbm.save_model(lgbm, str(tmp_path / fmt), input_example=frame.head(2), serialization_format=fmt)
    loaded = mlflow_source.load(tmp_path / "skops")
    assert type(loaded.estimator) is lightgbm.LGBMClassifier and loaded.signature == XGB_FEATURES
    assert np.array_equal(loaded.estimator.predict_proba(frame), lgbm.predict_proba(frame))
    with pytest.raises(PushError, match="--i-trust-this-pickle.*serialization_format='skops'"):
        mlflow_source.load(tmp_path / "cloudpickle")
    trusted = mlflow_source.load(tmp_path / "cloudpickle", trust_pickle=True)
    assert np.array_equal(trusted.estimator.predict_proba(frame), lgbm.predict_proba(frame))

    mlflow.lightgbm.save_model(lgbm.booster_, str(tmp_path / "lgb-booster"))
    booster = xgboost.train({"objective": "binary:logistic"}, xgboost.DMatrix(frame, labels), num_boost_round=3)
    mlflow.xgboost.save_model(booster, str(tmp_path / "xgb-booster"))
    for folder, api in (("lgb-booster", "lightgbm.LGBMClassifier"), ("xgb-booster", "xgboost.XGBClassifier")):
        with pytest.raises(PushError, match=f"Booster logged with .*train and log a {api}"):
            mlflow_source.load(tmp_path / folder)


@pytest.mark.parametrize("outside", ["../elsewhere/model.skops", "{tmp}/elsewhere/model.skops"])
def test_a_model_file_outside_the_model_directory_is_refused(tmp_path, outside):
    """No database: the MLmodel file's path to the model file is read inside
    the model directory only (a downloaded or shared MLmodel could name any
    file the pushing user can read, e.g. a pickle planted elsewhere)."""
    from pgscore import mlflow_source

    profiles = synthetic_profiles(100, seed=6)
    frame = to_frame(profiles, XGB_FEATURES)
    labels = np.array([row[LABEL_COLUMN] for row in profiles], dtype=int)
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression().fit(frame.fillna(0.0), labels)
    for folder in ("elsewhere", "model"):
        mlflow.sklearn.save_model(model, str(tmp_path / folder), serialization_format="skops")
    mlmodel = tmp_path / "model" / "MLmodel"
    pickled = next(line.split(":", 1)[1].strip() for line in mlmodel.read_text().splitlines()
                   if line.strip().startswith("pickled_model:"))
    (tmp_path / "elsewhere" / "model.skops").write_bytes((tmp_path / "elsewhere" / pickled).read_bytes())
    mlmodel.write_text(mlmodel.read_text().replace(f"pickled_model: {pickled}",
                                                   f"pickled_model: {outside.format(tmp=tmp_path)}"))
    with pytest.raises(PushError, match="outside the model directory"):
        mlflow_source.load(tmp_path / "model")
