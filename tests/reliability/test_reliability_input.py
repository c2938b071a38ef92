"""Hostile what-if input: scoring.score('churn', features jsonb) on feature
documents built from a real profile, then mangled (keys missing, extra or
NULL; values replaced by strings, booleans, huge numbers, NaN/Infinity,
nested objects and arrays, SQL-injection-shaped and unicode strings).

Property: a probability in [0, 1] comes back, or an error with one of
pgscore's SQLSTATEs whose message names a feature or the document and
carries no Python traceback. Nothing is ever written (no injection).
"""

from __future__ import annotations

import json
import math

import psycopg
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

PGSCORE_SQLSTATES = {"22023", "42804", "42704", "39000", "38000", "55000"}
INJECTIONS = [
    "'; DROP TABLE complaints; --",
    "'); DELETE FROM scoring.models; --",
    "$python$",
    "$python$; DROP TABLE complaints; $python$",
    "\\x00",  # the four characters backslash, x, 0, 0
    "\x00",  # a real NUL: PostgreSQL's jsonb refuses it (22P05) before pgscore sees it
    "Robert'); DROP TABLE customer_profiles;--",
    "__import__('os').system('touch /tmp/pgscore-pwned')",
    "\"", "\\", "%s", "{}", "NULL",
]
UNICODE = ["Fiber optic\u200b", "\u202eMale", "Ж\u0301енщина", "\U0001F600", "e\u0301", "\ufeffYes", "Two\u00a0year"]
NON_FINITE = [float("nan"), float("inf"), float("-inf")]
HUGE = [1e300, -1e300, 10**40, -(10**40), 1.7976931348623157e308, 2**63, -(2**63) - 1, 5e-324]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(HUGE),
    st.sampled_from(NON_FINITE),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "nan", "1e999", "12", "true", "", " "]),
    st.sampled_from(INJECTIONS),
    st.sampled_from(UNICODE),
    st.text(max_size=20),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=6,
)
extra_keys = st.one_of(st.text(max_size=15), st.sampled_from(INJECTIONS + UNICODE + ["customer_id", "churn_score"]))


@pytest.fixture
def base_document(scored):
    with scored.connect() as admin:
        document = admin.execute(
            "SELECT to_jsonb(p) - 'customer_id' FROM customer_profiles p WHERE customer_id = 17").fetchone()[0]
        # A few complaints, so that an injection into complaints would show.
        admin.execute("INSERT INTO complaints (customer_id, channel) VALUES (17, 'phone'), (18, 'email')")
    return document


def snapshot(db) -> tuple:
    with db.connect() as admin:
        return tuple(admin.execute(query).fetchone()[0] for query in (
            "SELECT md5(coalesce(string_agg(c::text, '|' ORDER BY complaint_id), '')) FROM complaints c",
            "SELECT md5(coalesce(string_agg(m::text, '|' ORDER BY model_id), '')) FROM scoring.models m",
            "SELECT md5(coalesce(string_agg(d::text, '|' ORDER BY deployment_id), '')) FROM scoring.deployments d",
            "SELECT md5(coalesce(string_agg(p::text, '|' ORDER BY customer_id), '')) FROM customer_profiles p",
            "SELECT count(*) FROM scoring.errors",
            "SELECT count(*) FROM pg_class WHERE relname IN ('complaints', 'customer_profiles', 'models')",
        ))


def has_non_finite(value) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(has_non_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(has_non_finite(v) for v in value)
    return False


def has_nul(text: str) -> bool:
    return "\\u0000" in text


def check(conn, document, text: str, feature_names: list[str]) -> None:
    """The property, for one document sent as ``text``."""
    try:
        score = conn.execute("SELECT scoring.score('churn', %s::jsonb)", [text]).fetchone()[0]
    except psycopg.Error as exc:
        state = exc.sqlstate
        message = exc.diag.message_primary or ""
        event(f"SQLSTATE {state}")
        if state == "22P02":  # PostgreSQL's json parser: only NaN/Infinity, which JSON cannot carry
            assert has_non_finite(document), f"22P02 for a document without NaN/Infinity: {message} {text[:300]}"
            return
        if state == "22P05":  # jsonb cannot hold \u0000
            assert has_nul(text), f"22P05 for a document without NUL: {message} {text[:300]}"
            return
        assert state in PGSCORE_SQLSTATES, f"SQLSTATE {state} ({type(exc).__name__}): {message}; document {text[:300]}"
        assert "Traceback" not in message and 'File "' not in message, message
        assert "\n" not in message.strip(), f"multi-line message: {message!r}"
        named = ("document" in message or "features" in message
                 or any(repr(name) in message or f'"{name}"' in message for name in feature_names))
        assert named, f"message names neither a feature nor the document: {message!r}; document {text[:300]}"
        return
    event("scored")
    assert isinstance(score, float) and math.isfinite(score) and 0.0 <= score <= 1.0, (score, text[:300])


@pytest.fixture
def analyst(scored, base_document):
    """One analyst connection for all hypothesis examples of a test; afterwards
    it must still work, and nothing may have changed in the database."""
    before = snapshot(scored)
    with scored.connect("analyst") as conn:
        features = [row[0] for row in conn.execute(
            "SELECT unnest(feature_names) FROM scoring.models m JOIN scoring.active_models a USING (model_id)")]
        assert features and set(features) <= set(base_document)
        score = conn.execute("SELECT scoring.score('churn', %s::jsonb)", [json.dumps(base_document)]).fetchone()[0]
        assert 0.0 <= score <= 1.0
        yield conn, features
        assert conn.execute("SELECT 1").fetchone() == (1,)  # the session survived every example
    assert snapshot(scored) == before, "scoring.score(name, jsonb) changed the database"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mangled_feature_documents_score_or_fail_cleanly(analyst, base_document, data):
    conn, features = analyst
    document = dict(base_document)
    keys = sorted(document)
    for _ in range(data.draw(st.integers(min_value=1, max_value=4), label="mutations")):
        action = data.draw(st.sampled_from(["drop", "null", "replace", "replace", "extra"]), label="action")
        if action == "extra":
            document[data.draw(extra_keys, label="new key")] = data.draw(values, label="its value")
            continue
        key = data.draw(st.sampled_from(keys), label="key")
        if action == "drop":
            document.pop(key, None)
        elif action == "null":
            document[key] = None
        else:
            document[key] = data.draw(values, label=f"value of {key}")
    check(conn, document, json.dumps(document), features)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=values)
def test_documents_that_are_not_objects_fail_cleanly(analyst, document):
    conn, features = analyst
    check(conn, document, json.dumps(document), features)


def test_model_name_injection_is_an_unknown_model(scored, base_document):
    with scored.connect("analyst") as analyst:
        for name in ("churn'; DROP TABLE complaints; --", "$python$", "churn\u200b", ""):
            with pytest.raises(psycopg.errors.UndefinedObject, match="no model named"):
                analyst.execute("SELECT scoring.score(%s, %s::jsonb)", [name, json.dumps(base_document)])


OUT_OF_FLOAT_RANGE = [10**400, -(10**400)]


def test_number_beyond_float_range_is_an_error_naming_the_feature(scored, base_document):
    """JSON and jsonb carry 1e400 exactly; a model cannot use it. pgscore must
    say which feature is out of range (a mistyped feature, like a string in a
    number column), not leak a bare Python OverflowError or blame the model."""
    wrong = []
    with scored.connect("analyst") as analyst:
        for column in ("monthly_charges", "total_charges", "tenure_months", "complaint_count"):
            for number in OUT_OF_FLOAT_RANGE:
                document = dict(base_document, **{column: number})
                try:
                    score = analyst.execute("SELECT scoring.score('churn', %s::jsonb)",
                                            [json.dumps(document)]).fetchone()[0]
                except psycopg.Error as exc:
                    message = exc.diag.message_primary or ""
                    if exc.sqlstate not in {"22023", "42804", "22003"} or (
                            repr(column) not in message and f'"{column}"' not in message):
                        wrong.append((column, f"{'-' if number < 0 else ''}1e400", exc.sqlstate, message))
                else:
                    wrong.append((column, f"{'-' if number < 0 else ''}1e400", "no error", score))
    assert wrong == [], "\n".join(map(repr, wrong))
