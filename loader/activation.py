"""Activating, rolling back and listing model versions.

Activation is the server's: scoring.activate and scoring.rollback check
that the version can be loaded and record a deployment, whose trigger puts
the churn model's scoring path into the scoring functions
(pgscore_server.paths.install).
"""

from __future__ import annotations

import psycopg

from pgscore_server.registry import PUSHED_NAMES_SQL, unknown_model_hint

from .connection import connect
from .errors import ModelNotFound


def _unknown_model(conn: psycopg.Connection, name: str) -> ModelNotFound:
    names = [row[0] for row in conn.execute(PUSHED_NAMES_SQL)]
    return ModelNotFound(f"no model named {name!r} has been pushed: {unknown_model_hint(name, names)}")


def activate(dsn: str | None, name: str, version: int) -> int:
    """Activates NAME's VERSION; returns its model_id.

    Raises psycopg.errors.UndefinedObject when NAME was never pushed (its
    hint names the closest name that was) or has no VERSION.
    """
    with connect(dsn) as conn:
        return conn.execute("SELECT scoring.activate(%s, %s)", [name, version]).fetchone()[0]


def rollback(dsn: str | None, name: str) -> tuple[int, int]:
    """Re-activates the previous deployment of NAME; returns (model_id, version).

    Raises psycopg.errors.ObjectNotInPrerequisiteState when there is none,
    psycopg.errors.UndefinedObject when NAME was never pushed.
    """
    with connect(dsn) as conn:
        model_id = conn.execute("SELECT scoring.rollback(%s)", [name]).fetchone()[0]
        version = conn.execute("SELECT version FROM scoring.models WHERE model_id = %s", [model_id]).fetchone()[0]
        return model_id, version


def list_models(dsn: str | None, name: str | None = None) -> list[dict]:
    """Every pushed version (newest first per name) with whether it is active.

    Raises ModelNotFound when ``name`` is given and was never pushed.
    """
    with connect(dsn) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(
            "SELECT m.name, m.version, m.model_id, (a.model_id IS NOT NULL) AS active, m.format,"
            " m.scoring_path, m.path_note, m.created_at, m.created_by, m.metrics, m.note, m.sha256"
            " FROM scoring.models m"
            " LEFT JOIN scoring.active_models a ON a.model_id = m.model_id"
            " WHERE %(name)s::text IS NULL OR m.name = %(name)s"
            " ORDER BY m.name, m.version DESC",
            {"name": name},
        )
        rows = cur.fetchall()
        if name is not None and not rows:
            raise _unknown_model(conn, name)
        return rows
