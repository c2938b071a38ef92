"""Approving model blobs for the server to load (``pgscore approve``): a superuser's act.

On the scikit-learn path the server unpickles a model blob (format joblib),
or rebuilds a skops blob with types whose compiled code trusts the model's
arrays (``pgscore_server.formats.NATIVE_SAFE_TYPES`` lists the others), only
if its sha256 is listed in ``scoring_trusted.approved_pickles`` (the gate:
:func:`pgscore_server.approvals.require`). Loading a pickle runs
the code it names as the server's OS user, so only a superuser, who could
run that code anyway, may list one: the table belongs to the migrating
superuser and no pgscore role may write it.

That write is the only thing done here with a superuser's rights. Naming
the models that have a sha256 reads ``scoring.models``, which belongs to
``scoring_owner``: it is read only after the schema check, as
``scoring_owner`` (:func:`pgscore.connection.as_scoring_owner`), and when
the check fails the models are not named, and the approval still done.
"""

from __future__ import annotations

import re

import psycopg
from psycopg.rows import dict_row

from .connection import SchemaTampered, as_scoring_owner, connect, is_superuser
from .errors import NotASha256

SHA256 = re.compile(r"[0-9a-f]{64}")
NOT_LISTED = "not listed: schema scoring holds objects pgscore did not create (pgscore models names them)"


def _superuser(conn: psycopg.Connection, action: str) -> None:
    """Raises psycopg.errors.InsufficientPrivilege unless connected as a superuser."""
    if not is_superuser(conn):
        raise psycopg.errors.InsufficientPrivilege(
            f"only a superuser can {action} (connected as {conn.info.user}): loading a pickle runs code as the "
            "server's OS user, and unchecked native model code can crash it; connect as a superuser with --dsn")


def _checked(sha256: str) -> str:
    digest = sha256.strip().lower()
    if not SHA256.fullmatch(digest):
        raise NotASha256(f"{sha256!r} is not a sha256 (64 hex digits): copy it from the refusal")
    return digest


def models_with(conn: psycopg.Connection, sha256: str) -> list[str]:
    """'name vVERSION (format)' of every pushed model whose blob has ``sha256``,
    read as scoring_owner (needs a connection with no transaction open).
    Raises SchemaTampered when schema scoring holds objects pgscore did not create."""
    with as_scoring_owner(conn):
        return [f"{name} v{version} ({fmt})" for name, version, fmt in conn.execute(
            "SELECT name, version, format FROM scoring.models WHERE sha256 OPERATOR(pg_catalog.=) %s"
            " ORDER BY name, version", [sha256])]


def approve(dsn: str | None, sha256: str, note: str | None = None) -> list[str]:
    """Lets the server unpickle blobs with ``sha256``; returns the pushed
    models that have it (it may be approved before the push). Raises
    NotASha256 (a ValueError) for a malformed sha256 and psycopg.errors.InsufficientPrivilege
    unless connected as a superuser."""
    digest = _checked(sha256)
    with connect(dsn, keep_superuser=True) as conn:
        _superuser(conn, "approve a pickle")
        conn.execute("INSERT INTO scoring_trusted.approved_pickles (sha256, note) VALUES (%s, %s)"
                     " ON CONFLICT (sha256) DO UPDATE SET note = coalesce(EXCLUDED.note, approved_pickles.note)",
                     [digest, note])
        conn.commit()
        try:
            return models_with(conn, digest)
        except SchemaTampered as exc:
            return [f"not listed: {exc}"]


def revoke(dsn: str | None, sha256: str) -> bool:
    """Withdraws the approval of ``sha256``; False if it was not approved.
    The next load of such a blob is refused in every backend; one that
    already loaded it keeps its copy until it reconnects (its code ran then)."""
    digest = _checked(sha256)
    with connect(dsn, keep_superuser=True) as conn:
        _superuser(conn, "revoke a pickle's approval")
        return conn.execute("DELETE FROM scoring_trusted.approved_pickles WHERE sha256 = %s RETURNING sha256",
                            [digest]).fetchone() is not None


def list_approvals(dsn: str | None) -> list[dict]:
    """Every approval, newest first, with the models that have its sha256
    (read as scoring_owner; when schema scoring holds objects pgscore did
    not create, not read, and said so in ``models``)."""
    with connect(dsn, keep_superuser=True) as conn, conn.cursor(row_factory=dict_row) as cur:
        try:
            with as_scoring_owner(conn):
                cur.execute(
                    "SELECT a.sha256, a.approved_at, a.approved_by, a.note,"
                    " coalesce(string_agg(format('%s v%s (%s)', m.name, m.version, m.format), ', '"
                    "                     ORDER BY m.name, m.version), '') AS models"
                    " FROM scoring_trusted.approved_pickles a LEFT JOIN scoring.models m USING (sha256)"
                    " GROUP BY a.sha256, a.approved_at, a.approved_by, a.note ORDER BY a.approved_at DESC")
                return cur.fetchall()
        except SchemaTampered:
            cur.execute("SELECT sha256, approved_at, approved_by, note, %s AS models"
                        " FROM scoring_trusted.approved_pickles ORDER BY approved_at DESC", [NOT_LISTED])
            return cur.fetchall()
