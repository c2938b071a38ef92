"""``pgscore bench --floors``: the trigger designs without a model's cost,
measured beside P1, P2 and P8.

What pgscore's statement-level trigger costs when the model costs nothing
("floor": its generated body writing constant scores), the same with the
compiled path's PL/Python call returning a constant ("floorpy"), and a
row-level trigger scoring with the LR's SQL expression ("row-lr"; no
transition table, but it locks profiles in insertion order, so multi-row
inserts can deadlock, and it pays an UPDATE per row in bulk). Each replaces
complaints_rescore for its runs.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

FLOORS = {"floor": "bench_floor", "floorpy": "bench_floor_py", "row-lr": "bench_row_lr"}
# Four alternating rounds: these ratios are read against the targets'
# margins, and two rounds moved a floor by a tenth between runs.
FLOOR_ROUNDS = 4

CONSTANT_SCORE_SQL = """
CREATE OR REPLACE FUNCTION public.bench_constant_score(model_id bigint, customer_id bigint, layout text,
    floats double precision[], ints bigint[], flags boolean[], texts text[])
RETURNS double precision LANGUAGE plpython3u AS $$ return 0.5 $$;
"""
ROW_TRIGGER_SQL = """
CREATE OR REPLACE FUNCTION public.bench_row_lr() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE public.customer_profiles p
       SET complaint_count = p.complaint_count + 1,
           churn_score = coalesce({expression}, p.churn_score), churn_model_id = {model_id}, churn_scored_at = now()
     WHERE p.customer_id = NEW.customer_id;
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER bench_row_lr AFTER INSERT ON public.complaints
    FOR EACH ROW EXECUTE FUNCTION public.bench_row_lr();
"""
STATEMENT_TRIGGER_SQL = ("CREATE OR REPLACE TRIGGER {} AFTER INSERT ON public.complaints"
                         " REFERENCING NEW TABLE AS new_complaints FOR EACH STATEMENT EXECUTE FUNCTION {}()")


def install(conn: psycopg.Connection, logreg_model_id: int) -> None:
    """Creates the FLOORS triggers on public.complaints, enabled (the caller
    picks one with ALTER TABLE): "floorpy" for the active churn model, which
    must be on the compiled path; "row-lr" from the logistic regression
    ``logreg_model_id``. ``conn`` is a superuser's, in autocommit."""
    _floor(conn, logreg_model_id)
    _floor_py(conn)
    conn.execute(ROW_TRIGGER_SQL.format(expression=_score_after_one_more_complaint(conn, logreg_model_id),
                                        model_id=int(logreg_model_id)))
    for trigger in ("bench_floor", "bench_floor_py"):
        conn.execute(sql.SQL(STATEMENT_TRIGGER_SQL).format(sql.Identifier(trigger), sql.Identifier("public", trigger)))


def _score_after_one_more_complaint(conn: psycopg.Connection, model_id: int) -> str:
    """The model's SQL expression over ``p`` with complaint_count as this
    insert leaves it, as pgscore's trigger scores it: the SQL generator's
    ``overrides``, on the compiled form that ``pgscore export-sql`` writes
    from (the reference table's column types, which the bench's database has)."""
    from pgscore.compile import CompiledModel
    from pgscore_server.sqlgen import to_sql

    compiled = conn.execute("SELECT compiled FROM scoring.models WHERE model_id = %s", [model_id]).fetchone()[0]
    return to_sql(CompiledModel.from_bytes(compiled), "p", overrides={"complaint_count": "(p.complaint_count + 1)"})


def _create_trigger_function(conn: psycopg.Connection, name: str, body: str) -> None:
    from pgscore_server import plpgsql

    conn.execute(plpgsql.FUNCTION_SQL.format(signature=f"public.{name}()", returns="trigger", attributes="",
                                             settings="", body=sql.Literal(body).as_string(conn)))


def _floor(conn: psycopg.Connection, model_id: int) -> None:
    """"floor": pgscore's trigger template (pgscore_server.plpgsql), its one
    customer scored with a constant and its several customers only counted."""
    from pgscore_server import plpgsql

    _create_trigger_function(conn, "bench_floor", plpgsql.TRIGGER_BODY.format(
        model_id=int(model_id), path="none: the bench's floor",
        one=f"churn_score = 0.5::float8, churn_model_id = {int(model_id)}, churn_scored_at = now()",
        many="        NULL;"))


def _floor_py(conn: psycopg.Connection) -> None:
    """"floorpy": the compiled path's trigger for the active churn model, as
    pgscore_server.sqlpath writes it, with public.bench_constant_score (same
    arguments as scoring._score_profile, returns 0.5) as its score function."""
    from pgscore_server import catalog, sqlpath

    active = conn.execute("SELECT m.model_id, m.feature_names, m.scoring_path FROM scoring.active_models a"
                          " JOIN scoring.models m USING (model_id) WHERE a.name = 'churn'").fetchone()
    if active is None or active[2] != "compiled":
        raise RuntimeError("the floors need the active churn model on the compiled path (the bench's forest)")
    model_id, feature_names, _path = active
    columns = {name: type_ for name, type_, _declared in conn.execute(catalog.PROFILE_COLUMNS_SQL)}
    layout = catalog.row_layout(feature_names, columns)

    def quote_ident(name: str) -> str:
        return conn.execute("SELECT pg_catalog.quote_ident(%s)", [name]).fetchone()[0]

    conn.execute(CONSTANT_SCORE_SQL)
    _create_trigger_function(conn, "bench_floor_py", sqlpath.compiled_trigger_body(
        model_id, feature_names, layout, quote_ident, score_function="public.bench_constant_score"))
