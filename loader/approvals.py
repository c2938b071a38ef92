"""Approving pickles for the server to load (``pgscore approve``): a superuser's act.

The server unpickles a model blob (format joblib, on the scikit-learn
path) only if its sha256 is listed in ``scoring_trusted.approved_pickles``
(the gate: :func:`pgscore_server.approvals.require`). Loading a pickle runs
the code it names as the server's OS user, so only a superuser, who could
run that code anyway, may list one: the table belongs to the migrating
superuser and no pgscore role may write it.
"""

from __future__ import annotations

import re

import psycopg
from psycopg.rows import dict_row

from .connection import connect

SHA256 = re.compile(r"[0-9a-f]{64}")


def _superuser(conn: psycopg.Connection, action: str) -> None:
    """Raises psycopg.errors.InsufficientPrivilege unless connected as a superuser."""
    user, superuser = conn.execute("SELECT current_user, rolsuper FROM pg_catalog.pg_roles"
                                   " WHERE rolname = current_user").fetchone()
    if not superuser:
        raise psycopg.errors.InsufficientPrivilege(
            f"only a superuser can {action} (connected as {user}): loading a pickle runs code as the server's "
            "OS user; connect as a superuser with --dsn")


def _checked(sha256: str) -> str:
    digest = sha256.strip().lower()
    if not SHA256.fullmatch(digest):
        raise ValueError(f"{sha256!r} is not a sha256 (64 hex digits): copy it from the refusal")
    return digest


def models_with(conn: psycopg.Connection, sha256: str) -> list[str]:
    """'name vVERSION (format)' of every pushed model whose blob has ``sha256``."""
    return [f"{name} v{version} ({fmt})" for name, version, fmt in conn.execute(
        "SELECT name, version, format FROM scoring.models WHERE sha256 = %s ORDER BY name, version", [sha256])]


def approve(dsn: str | None, sha256: str, note: str | None = None) -> list[str]:
    """Lets the server unpickle blobs with ``sha256``; returns the pushed
    models that have it (it may be approved before the push). Raises
    ValueError for a malformed sha256 and psycopg.errors.InsufficientPrivilege
    unless connected as a superuser."""
    digest = _checked(sha256)
    with connect(dsn) as conn:
        _superuser(conn, "approve a pickle")
        conn.execute("INSERT INTO scoring_trusted.approved_pickles (sha256, note) VALUES (%s, %s)"
                     " ON CONFLICT (sha256) DO UPDATE SET note = coalesce(EXCLUDED.note, approved_pickles.note)",
                     [digest, note])
        return models_with(conn, digest)


def revoke(dsn: str | None, sha256: str) -> bool:
    """Withdraws the approval of ``sha256``; False if it was not approved.
    The next load of such a blob is refused in every backend; one that
    already loaded it keeps its copy until it reconnects (its code ran then)."""
    digest = _checked(sha256)
    with connect(dsn) as conn:
        _superuser(conn, "revoke a pickle's approval")
        return conn.execute("DELETE FROM scoring_trusted.approved_pickles WHERE sha256 = %s RETURNING sha256",
                            [digest]).fetchone() is not None


def list_approvals(dsn: str | None) -> list[dict]:
    """Every approval, newest first, with the models that have its sha256."""
    with connect(dsn) as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT a.sha256, a.approved_at, a.approved_by, a.note,"
            " coalesce(string_agg(format('%s v%s (%s)', m.name, m.version, m.format), ', '"
            "                     ORDER BY m.name, m.version), '') AS models"
            " FROM scoring_trusted.approved_pickles a LEFT JOIN scoring.models m USING (sha256)"
            " GROUP BY a.sha256, a.approved_at, a.approved_by, a.note ORDER BY a.approved_at DESC")
        return cur.fetchall()
