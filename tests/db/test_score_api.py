"""The analyst's SQL API: scores equal local predict_proba; bad input gets
errors that name what is wrong."""

from __future__ import annotations

import json

import psycopg
import pytest

from pgscore.migrate import head_revision
from tests.conftest import local_scores


def test_score_matches_local_predict_proba(scored, model_files):
    ids = list(range(1, 301))
    expected = local_scores(model_files["logreg"], scored, ids)
    with scored.connect("analyst") as analyst:
        single = {i: analyst.execute("SELECT scoring.score(%s::bigint)", [i]).fetchone()[0] for i in ids[:20]}
        many = dict(analyst.execute("SELECT customer_id, score FROM scoring.score_many(%s)", [ids]).fetchall())
    assert max(abs(single[i] - expected[i]) for i in single) <= 1e-9
    assert max(abs(many[i] - expected[i]) for i in ids) <= 1e-9


def test_score_many_keeps_input_order_and_duplicates(scored):
    with scored.connect("analyst") as analyst:
        rows = analyst.execute("SELECT customer_id FROM scoring.score_many(ARRAY[5, 3, 5, 1]::bigint[])").fetchall()
        empty = analyst.execute("SELECT count(*) FROM scoring.score_many('{}'::bigint[])").fetchone()[0]
    assert [r[0] for r in rows] == [5, 3, 5, 1]
    assert empty == 0


def test_unknown_customer_names_the_id(scored):
    with scored.connect("analyst") as analyst:
        with pytest.raises(psycopg.errors.NoDataFound, match="no customer profile with customer_id 424242"):
            analyst.execute("SELECT scoring.score(424242::bigint)")
        with pytest.raises(psycopg.errors.NoDataFound, match="customer_ids 777, 888"):
            analyst.execute("SELECT * FROM scoring.score_many(ARRAY[1, 777, 888]::bigint[])")


def test_unknown_model_and_no_active_model(seeded, model_files):
    from pgscore import push_model

    with seeded.connect("analyst") as analyst:
        with pytest.raises(psycopg.errors.UndefinedObject, match="no model named 'churn' has been pushed") as info:
            analyst.execute("SELECT scoring.score(1::bigint)")
        assert "pgscore push FILE --name churn --activate" in info.value.diag.message_hint
    push_model(seeded.dsn("loader"), model_files["logreg"], name="churn")
    with seeded.connect("analyst") as analyst:
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="no active model named 'churn'"):
            analyst.execute("SELECT * FROM scoring.score_many(ARRAY[1]::bigint[], 'churn')")


def profile_document(db, customer_id: int) -> dict:
    with db.connect() as conn:
        return conn.execute("SELECT to_jsonb(p) - 'customer_id' FROM customer_profiles p WHERE customer_id = %s",
                            [customer_id]).fetchone()[0]


def test_what_if_score_equals_profile_score(scored):
    document = profile_document(scored, 17)
    with scored.connect("analyst") as analyst:
        what_if = analyst.execute("SELECT scoring.score('churn', %s::jsonb)", [json.dumps(document)]).fetchone()[0]
        direct = analyst.execute("SELECT scoring.score(17::bigint)").fetchone()[0]
        riskier = analyst.execute("SELECT scoring.score('churn', %s::jsonb)",
                                  [json.dumps({**document, "complaint_count": 9})]).fetchone()[0]
    assert what_if == pytest.approx(direct, abs=1e-12)
    assert riskier > what_if


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"drop": "contract"}, psycopg.errors.InvalidParameterValue, "feature 'contract' is missing"),
        ({"set": {"tenure_months": "ten"}}, psycopg.errors.DatatypeMismatch, "feature 'tenure_months' must be a whole number"),
        ({"set": {"senior_citizen": 1}}, psycopg.errors.DatatypeMismatch, "feature 'senior_citizen' must be true or false"),
        ({"set": {"contract": 12}}, psycopg.errors.DatatypeMismatch, "feature 'contract' must be a string"),
        ({"set": {"shoe_size": 44}}, psycopg.errors.InvalidParameterValue, "not columns of public.customer_profiles: 'shoe_size'"),
    ],
)
def test_what_if_errors_name_the_feature(scored, change, error, message):
    document = profile_document(scored, 17)
    if "drop" in change:
        del document[change["drop"]]
    document.update(change.get("set", {}))
    with scored.connect("analyst") as analyst:
        with pytest.raises(error, match=message):
            analyst.execute("SELECT scoring.score('churn', %s::jsonb)", [json.dumps(document)])


def test_what_if_rejects_non_objects_and_null(scored):
    with scored.connect("analyst") as analyst:
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="must be a JSON object"):
            analyst.execute("SELECT scoring.score('churn', '[1, 2]'::jsonb)")
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="features is NULL"):
            analyst.execute("SELECT scoring.score('churn', NULL::jsonb)")


def test_runtime_info_and_warmup(scored):
    with scored.connect("analyst") as analyst:
        info = analyst.execute("SELECT scoring.runtime_info()").fetchone()[0]
        analyst.execute("SELECT scoring.warmup()")
    from pgscore.dev.runtime import pinned

    assert info["scikit-learn"] == pinned()["scikit-learn"]
    assert info["numpy"] == pinned()["numpy"]
    assert info["schema_revision"] == head_revision()
    assert info["code_from"] == "bytecode"
    assert info["python"].startswith("3.")


def test_first_score_of_a_compiled_tree_model_imports_little(seeded, model_files):
    """A new backend's first score of a compiled tree model imports the
    runtime and the standard library's basics only: no numpy (one row), no
    json, re, enum or typing (each costs every backend memory: P6), and of
    the runtime only what scoring a customer needs (not the trigger's, the
    scorers', the batches' or the pickle formats' code)."""
    from pgscore import push_model

    push_model(seeded.dsn("loader"), model_files["gbm"], name="churn", activate=True, scoring_path="compiled")
    expected = local_scores(model_files["gbm"], seeded, [7])[7]
    with seeded.connect() as admin:  # a new backend; superuser, to look at its modules
        score = admin.execute("SELECT scoring.score(7::bigint)").fetchone()[0]
        admin.execute("CREATE FUNCTION pg_temp.loaded(names text[]) RETURNS text[] LANGUAGE plpython3u"
                      " AS 'import sys\nreturn [n for n in names if n in sys.modules]'")
        loaded = admin.execute("SELECT pg_temp.loaded(%s)",
                               [["pgscore_server.compiled", "numpy", "json", "re", "enum", "typing",
                                 "pgscore_server.trigger", "pgscore_server.freshness", "pgscore_server.batch",
                                 "pgscore_server.formats", "pgscore_server.sqlgen"]]).fetchone()[0]
    assert abs(score - expected) <= 1e-9
    assert loaded == ["pgscore_server.compiled"]


def test_the_server_preloads_the_languages_every_score_runs_in(db):
    """pgscore's servers (pgscore db start, the Docker image) load PL/pgSQL
    and PL/Python at start: a new backend's first score does not load and
    link them (P6, docs/performance.md)."""
    from pgscore.connection import plpython_preloaded
    from pgscore.dev.localdb import PRELOAD_LIBRARIES

    with db.connect() as admin:
        setting = admin.execute("SELECT current_setting('shared_preload_libraries')").fetchone()[0]
        assert plpython_preloaded(admin) is True  # what pgscore migrate and bench ask
    assert [name.strip() for name in setting.split(",")] == PRELOAD_LIBRARIES.split(",")
    with db.connect("loader") as loader:  # may not read the setting: no answer, and no note from migrate
        assert plpython_preloaded(loader) is None


def test_a_module_imported_after_a_migration_is_still_the_sessions_code(db):
    """The runtime's modules are read when first imported. When a migration
    replaced the code since this session loaded the runtime (runtime_modules
    holds another code set's), the module still comes from this session's
    code set (its source in code_modules, by code sha): two code sets never
    meet in one backend. Gone from both, the import fails in words, and the
    session's next call loads the runtime again."""
    module = "pgscore_server.onnxpath"  # imported by no scoring call of these tests
    load = "SELECT scoring_trusted.load_runtime()"
    with db.connect() as admin, db.connect() as migrating:
        admin.execute("CREATE FUNCTION pg_temp.module_has(name text, attribute text) RETURNS boolean"
                      " LANGUAGE plpython3u AS 'import importlib, sys\n"
                      "sys.modules.pop(name, None)\n"
                      "return hasattr(importlib.import_module(name), attribute)'")
        admin.execute(load)
        sha = admin.execute("SELECT scoring.runtime_info() ->> 'code_sha'").fetchone()[0]
        bytecode, source = migrating.execute("SELECT bytecode, source FROM scoring_trusted.runtime_modules"
                                             " WHERE module = %s", [module]).fetchone()
        kept = migrating.execute("SELECT source FROM scoring_trusted.code_modules WHERE runtime_sha = %s"
                                 " AND module = %s", [sha, module]).fetchone()[0]
        other = bytecode[:4] + b"0" * 64 + bytecode[68:]  # this interpreter's, another code sha's
        try:
            migrating.execute("UPDATE scoring_trusted.runtime_modules SET bytecode = %s,"
                              " source = 'NEW_CODE = True' WHERE module = %s", [other, module])
            assert admin.execute("SELECT pg_temp.module_has(%s, 'NEW_CODE')", [module]).fetchone()[0] is False
            assert admin.execute("SELECT pg_temp.module_has(%s, 'check_graph')", [module]).fetchone()[0] is True
            assert admin.execute("SELECT scoring.runtime_info() ->> 'code_from'").fetchone()[0] == "source"
            migrating.execute("DELETE FROM scoring_trusted.code_modules WHERE runtime_sha = %s AND module = %s",
                              [sha, module])
            admin.execute(load)
            with pytest.raises(psycopg.errors.Error, match=f"code {sha[:12]} has no module {module}"):
                admin.execute("SELECT pg_temp.module_has(%s, 'check_graph')", [module])
        finally:
            migrating.execute("UPDATE scoring_trusted.runtime_modules SET bytecode = %s, source = %s"
                              " WHERE module = %s", [bytecode, source, module])
            migrating.execute("INSERT INTO scoring_trusted.code_modules (runtime_sha, module, source)"
                              " VALUES (%s, %s, %s) ON CONFLICT DO NOTHING", [sha, module, kept])
        admin.execute(load)
        assert admin.execute("SELECT pg_temp.module_has(%s, 'check_graph')", [module]).fetchone()[0] is True
        assert admin.execute("SELECT scoring.runtime_info() ->> 'code_from'").fetchone()[0] == "bytecode"


def test_scores_cross_from_python_as_float8_bits_exactly(db):
    """scoring._float8_from_bits turns pgscore_server.floatbits.as_bits back
    into the same float8, bit for bit: zero, subnormals, the smallest normal,
    probabilities near 0 and 1; -0.0 arrives as 0.0, NULL stays NULL."""
    import random
    import struct

    from pgscore_server.floatbits import as_bits

    rng = random.Random(4)
    values = [0.0, -0.0, 5e-324, 1e-310, 2.225073858507201e-308, 2.2250738585072014e-308, 1e-300, 1e-17, 0.1,
              0.5, 0.9999999999999999, 1.0] + [rng.random() ** rng.choice([1, 5, 60]) for _ in range(5000)]
    with db.connect() as admin:
        back = admin.execute("SELECT array_agg(scoring._float8_from_bits(u.bits) ORDER BY u.n)"
                             " FROM unnest(%s::bigint[]) WITH ORDINALITY AS u(bits, n)", [as_bits(values)]).fetchone()[0]
        null = admin.execute("SELECT scoring._float8_from_bits(NULL)").fetchone()[0]
    assert [struct.pack("<d", v) for v in back] == [struct.pack("<d", v + 0.0) for v in values]
    assert null is None


def test_a_backend_that_imports_new_code_loads_its_models_again(seeded, model_files):
    """A migration that changes the in-database code makes every live
    backend import it on its next call. Models that backend loaded with the
    old code are loaded again: an old evaluator does not know the new
    code's types (one took the category codes of text features for unknown
    categories)."""
    from pgscore import push_model

    push_model(seeded.dsn("loader"), model_files["gbm"], name="churn", activate=True, scoring_path="compiled")
    ids = list(range(1, 301))
    expected = local_scores(model_files["gbm"], seeded, ids)
    with seeded.connect() as admin:  # superuser: tells the backend its code is out of date, as a migration would
        before = dict(admin.execute("SELECT customer_id, score FROM scoring.score_many(%s)", [ids]).fetchall())
        admin.execute("DO $$ GD['pgscore_server.code_sha'] = 'older code' $$ LANGUAGE plpython3u")
        after = dict(admin.execute("SELECT customer_id, score FROM scoring.score_many(%s)", [ids]).fetchall())
        # The runtime was imported again (the DO block fails otherwise).
        admin.execute("DO $$ assert GD['pgscore_server.code_sha'] != 'older code' $$ LANGUAGE plpython3u")
    assert max(abs(before[i] - expected[i]) for i in ids) <= 1e-9
    assert max(abs(after[i] - expected[i]) for i in ids) <= 1e-9


def test_large_batches_of_a_compiled_tree_model(db, model_files):
    """score_many and rescore of a compiled GBM over more profiles than one
    thread walks alone: the same scores with one thread and with several
    (max_parallel_workers_per_gather), equal to predict_proba, also when a
    text column has a NULL or a value holding the separator the batch read
    joins text columns with (that batch is read again as arrays)."""
    from pgscore import push_model
    from pgscore.dev.seed import seed_profiles

    with db.connect() as admin:
        seed_profiles(admin, 21_000, seed=5)
        admin.execute("ALTER TABLE customer_profiles DROP CONSTRAINT customer_profiles_gender_check")
        admin.execute("UPDATE customer_profiles SET gender = NULL WHERE customer_id = 17")
        admin.execute("UPDATE customer_profiles SET gender = 'Fe' || chr(31) || 'male' WHERE customer_id = 20500")
    push_model(db.dsn("loader"), model_files["gbm"], name="churn", activate=True, scoring_path="compiled")
    ids = list(range(1, 21_001))
    expected = local_scores(model_files["gbm"], db, ids)
    with db.connect("analyst") as analyst:
        analyst.execute("SET max_parallel_workers_per_gather = 0")
        one = analyst.execute("SELECT score FROM scoring.score_many(%s)", [ids]).fetchall()
        analyst.execute("SET max_parallel_workers_per_gather = 2")
        threaded = analyst.execute("SELECT score FROM scoring.score_many(%s)", [ids]).fetchall()
    assert threaded == one
    assert max(abs(score - expected[i]) for (score,), i in zip(one, ids)) <= 1e-9
    with db.connect("loader", autocommit=True) as loader:
        loader.execute("CALL scoring.rescore('churn', 21000)")
        rescored = dict(loader.execute("SELECT customer_id, churn_score FROM customer_profiles").fetchall())
    assert [rescored[i] for i in ids] == [score for (score,) in one]


def test_score_many_reads_text_as_codes_and_names_an_unknown_category(seeded, tmp_path):
    """A compiled model's one-hot text features reach it as category codes:
    score_many over a range of ids and over scattered ids equals
    predict_proba, NULLs included; a string the model does not know (and
    refuses) makes the batch read again as strings, so the error names it."""
    import numpy as np
    from pgscore import push_model
    from pgscore.dev.demo_data import save_model, synthetic_profiles
    from pgscore_server.features import to_frame
    from sklearn.compose import make_column_transformer
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    names = ["contract", "internet_service", "tenure_months"]
    records = synthetic_profiles(2000, seed=11)
    for k, record in enumerate(records):
        if k % 9 == 0:
            record["internet_service"] = None  # a learned missing category
    frame = to_frame(records, names)
    y = np.array([r["contract"] == "Month-to-month" and r["tenure_months"] < 30 for r in records])
    model = make_pipeline(
        make_column_transformer((OneHotEncoder(handle_unknown="error"), ["contract", "internet_service"]),
                                remainder="passthrough"),
        GradientBoostingClassifier(n_estimators=30, max_depth=3, random_state=0),
    ).fit(frame, y)
    path = save_model(model, tmp_path / "codes.joblib")
    with seeded.connect() as admin:
        admin.execute("UPDATE customer_profiles SET internet_service = NULL WHERE customer_id % 7 = 0")
    result = push_model(seeded.dsn("loader"), path, name="churn", activate=True, scoring_path="compiled")
    assert result.scoring_path == "compiled", result.path_note
    ids = list(range(1, 301))
    scattered = ids[::-3]
    expected = local_scores(path, seeded, ids)
    with seeded.connect("analyst") as analyst:
        in_range = dict(analyst.execute("SELECT customer_id, score FROM scoring.score_many(%s)", [ids]).fetchall())
        listed = analyst.execute("SELECT customer_id, score FROM scoring.score_many(%s)", [scattered]).fetchall()
    assert max(abs(in_range[i] - expected[i]) for i in ids) <= 1e-9
    assert [i for i, _ in listed] == scattered
    assert max(abs(score - expected[i]) for i, score in listed) <= 1e-9
    with seeded.connect() as admin:
        admin.execute("ALTER TABLE customer_profiles DROP CONSTRAINT customer_profiles_contract_check")
        admin.execute("UPDATE customer_profiles SET contract = 'Three year' WHERE customer_id = 150")
    with seeded.connect("analyst") as analyst:
        for batch in (ids, scattered):
            with pytest.raises(psycopg.Error, match=r"'contract': unknown category 'Three year'"):
                analyst.execute("SELECT count(*) FROM scoring.score_many(%s)", [batch])
