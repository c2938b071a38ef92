"""skops blobs whose estimators have compiled prediction code pgscore does not check.

skops trusts every scikit-learn estimator by default, but trusting a type
says nothing of its content: a crafted SVC (an empty ``_intercept_``, a
(1, 1) ``_dual_coef_``) makes libsvm read out of bounds in the backend that
predicts; KMeans and the neighbors' KDTree/BallTree have Cython predict code
too. The server rebuilds a skops blob without a superuser's approval only
when every type in its archive is in ``formats.NATIVE_SAFE_TYPES``; any
other needs ``pgscore approve SHA256``, through the one gate
(``approvals.require``) that pickles go through.
"""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pandas as pd
import psycopg
import pytest
import skops.io
from sklearn.cluster import KMeans
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.svm import SVC

from pgscore import PushError, cli, push_model
from pgscore.models import fetch_feature_rows
from pgscore_server import formats
from pgscore_server.features import to_frame
from tests.conftest import postmaster_started

OPTIONS = "-c statement_timeout=20s"
SVC_TYPE = "sklearn.svm._classes.SVC"

X = pd.DataFrame({"tenure_months": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]})
Y = np.array([0, 0, 1, 1, 0, 0, 1, 1, 0, 1])


def fitted_svc(**kwargs) -> SVC:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SVC(random_state=0, **kwargs).fit(X, Y)


def crafted_svc(case: str) -> SVC:
    clf = fitted_svc(probability=True)
    if case == "empty_intercept":
        clf._intercept_ = np.array([], dtype=np.float64)
    else:
        clf._dual_coef_ = np.ones((1, 1))
    return clf


def dumps(model) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return skops.io.dumps(model)


def assert_native_refusal(exc: psycopg.Error, sha256: str, subject: str) -> None:
    diag = exc.diag
    assert exc.sqlstate == "42501"
    assert f"{subject} holds {SVC_TYPE} (format skops, sha256 {sha256}), whose compiled prediction code trusts " \
           "the model's arrays, and no superuser has approved it" in diag.message_primary
    assert "read or write out of bounds" in diag.message_hint
    assert f"pgscore approve {sha256}" in diag.message_hint
    assert "NATIVE_SAFE_TYPES" in diag.message_hint


# -- without a database ---------------------------------------------------------------

def test_types_outside_the_allow_list_are_named_and_need_the_approved_digest():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        others = {
            SVC_TYPE: fitted_svc(),
            "sklearn.neighbors._classification.KNeighborsClassifier":
                KNeighborsClassifier(n_neighbors=3, algorithm="brute").fit(X, Y),
            "sklearn.cluster._kmeans.KMeans": KMeans(n_clusters=2, n_init=1, random_state=0).fit(X),
            "sklearn.neural_network._multilayer_perceptron.MLPClassifier":
                MLPClassifier(solver="lbfgs", max_iter=5, random_state=0).fit(X, Y),
        }
    for name, model in others.items():
        blob = dumps(model)
        assert formats.untrusted_types(blob) == []  # skops alone would rebuild it
        assert name in formats.approval_types(blob)
        with pytest.raises(formats.NativeTypesNotApproved, match=name.replace(".", r"\.")):
            formats.loads(blob, "skops")
        with pytest.raises(formats.NativeTypesNotApproved):
            formats.loads(blob, "skops", approved_sha256="0" * 64)
        assert type(formats.loads(blob, "skops", approved_sha256=hashlib.sha256(blob).hexdigest())) is type(model)
    # A KDTree / BallTree is not even trusted by skops: refused whatever is approved.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        blob = dumps(KNeighborsClassifier(n_neighbors=3, algorithm="kd_tree").fit(X, Y))
    assert "sklearn.neighbors._kd_tree.KDTree" in formats.untrusted_types(blob)
    with pytest.raises(formats.UntrustedTypes):
        formats.loads(blob, "skops", approved_sha256=hashlib.sha256(blob).hexdigest())
    # The crafted SVC's refusal comes from the schema alone: nothing was rebuilt or run.
    for case in ("empty_intercept", "dual_coef_1x1"):
        assert formats.approval_types(dumps(crafted_svc(case))) == [SVC_TYPE]


def test_the_demo_pipelines_are_allow_listed(model_files):
    import joblib

    for kind in ("logreg", "gbm"):
        blob = dumps(joblib.load(model_files[kind]))
        assert formats.approval_types(blob) == [], kind
        formats.loads(blob, "skops")


# -- the server --------------------------------------------------------------------

@pytest.mark.parametrize("case", ["empty_intercept", "dual_coef_1x1"])
def test_a_planted_crafted_svc_is_refused_by_every_role_without_crashing(seeded, case):
    blob = dumps(crafted_svc(case))
    sha256 = hashlib.sha256(blob).hexdigest()
    started = postmaster_started(seeded)
    with seeded.connect("loader", options=OPTIONS) as loader:
        model_id = loader.execute(
            "INSERT INTO scoring.models (name, version, format, blob, sha256, feature_names, runtime, scoring_path)"
            " VALUES ('churn', 1, 'skops', %b, %s, '{tenure_months}', '{}', 'sklearn') RETURNING model_id",
            [blob, sha256]).fetchone()[0]
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as tested:
            loader.execute("SELECT * FROM scoring.score_with_model(%s, '{1}')", [model_id])
        assert_native_refusal(tested.value, sha256, "model 'churn' v1")
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as activation:
            loader.execute("SELECT scoring.activate('churn', 1)")
        assert_native_refusal(activation.value, sha256, "model 'churn' v1")
        # Past activate's check: a deployment row written directly.
        loader.execute("INSERT INTO scoring.deployments (name, model_id) VALUES ('churn', %s)", [model_id])
        assert loader.execute("SELECT 1").fetchone()[0] == 1
    with seeded.connect("app", options=OPTIONS) as app:
        app.execute("SET scoring.on_error = 'keep'")
        app.execute("INSERT INTO complaints (customer_id, channel) VALUES (5, 'phone')")
        app.execute("SET scoring.on_error = 'raise'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as insert:
            app.execute("INSERT INTO complaints (customer_id, channel) VALUES (6, 'phone')")
        assert_native_refusal(insert.value, sha256, "model 'churn' v1")
    with seeded.connect("analyst", options=OPTIONS) as analyst:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as scored:
            analyst.execute("SELECT scoring.score(5::bigint)")
        assert_native_refusal(scored.value, sha256, "model 'churn' v1")
    with seeded.connect() as admin:
        count, score = admin.execute("SELECT complaint_count, churn_score FROM customer_profiles"
                                     " WHERE customer_id = 5").fetchone()
        recorded = admin.execute("SELECT sqlstate, message FROM scoring.errors WHERE customer_id = 5").fetchall()
    assert count >= 1 and score is None
    assert [state for state, _ in recorded] == ["42501"] and SVC_TYPE in recorded[0][1]
    assert postmaster_started(seeded) == started


def test_a_benign_svc_loads_only_once_a_superuser_approved_it(seeded, tmp_path, capsys):
    names = ["tenure_months", "monthly_charges"]
    with seeded.connect() as admin:
        rows = fetch_feature_rows(admin, names, list(range(1, 301)))
    frame = to_frame(rows, names)
    labels = (frame["monthly_charges"].to_numpy() > np.median(frame["monthly_charges"])).astype(int)
    labels[::7] ^= 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = SVC(probability=True, random_state=0).fit(frame, labels)
    path = tmp_path / "svc.skops"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        skops.io.dump(model, path)
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    loader_dsn = seeded.dsn("loader")
    # The client says so before writing anything, through the API and the CLI.
    with pytest.raises(PushError, match=f"pgscore approve {sha256}") as refused:
        push_model(loader_dsn, path, name="churn", scoring_path="sklearn")
    assert SVC_TYPE in str(refused.value) and "Nothing was pushed" in str(refused.value)
    assert cli.main(["push", str(path), "--name", "churn", "--path", "sklearn", "--dsn", loader_dsn]) == 1
    assert f"pgscore approve {sha256}" in capsys.readouterr().err
    with seeded.connect() as admin:
        assert admin.execute("SELECT count(*) FROM scoring.models").fetchone()[0] == 0
    assert cli.main(["approve", sha256, "--dsn", loader_dsn]) == 1  # only a superuser approves
    assert cli.main(["approve", sha256, "--note", "our SVC", "--dsn", seeded.dsn()]) == 0
    capsys.readouterr()
    result = push_model(loader_dsn, path, name="churn", scoring_path="sklearn", activate=True)
    assert result.scoring_path == "sklearn" and result.sha256 == sha256
    ids = [3, 11, 42, 250]
    with seeded.connect("analyst") as analyst:
        got = [analyst.execute("SELECT scoring.score(%s::bigint)", [i]).fetchone()[0] for i in ids]
    by_id = {row["customer_id"]: k for k, row in enumerate(rows)}
    expected = model.predict_proba(frame.iloc[[by_id[i] for i in ids]])[:, 1]
    assert got == pytest.approx(list(expected), abs=1e-9)
    # Revoked: the next load is refused again.
    assert cli.main(["approve", "--revoke", sha256, "--dsn", seeded.dsn()]) == 0
    with seeded.connect("analyst") as analyst:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as again:
            analyst.execute("SELECT scoring.score(11::bigint)")
    assert_native_refusal(again.value, sha256, "model 'churn' v1")


@pytest.mark.parametrize("kind", ["logreg", "gbm"])
def test_allow_listed_pipelines_load_on_the_sklearn_path_without_approval(seeded, model_files, kind):
    result = push_model(seeded.dsn("loader"), model_files[kind], name="churn", scoring_path="sklearn",
                        activate=True)
    assert result.scoring_path == "sklearn"
    with seeded.connect() as admin:
        assert admin.execute("SELECT count(*) FROM scoring_trusted.approved_pickles").fetchone()[0] == 0
    from tests.conftest import local_scores

    with seeded.connect("analyst") as analyst:
        got = {i: analyst.execute("SELECT scoring.score(%s::bigint)", [i]).fetchone()[0] for i in (4, 9)}
    assert got == pytest.approx(local_scores(model_files[kind], seeded, [4, 9]), abs=1e-9)
