"""Which model blobs the server may unpickle: only those a superuser approved.

Unpickling a blob runs whatever code it names, as the server's OS user; the
role that pushed it must not be able to decide that. The sha256 of every
blob that may be unpickled is listed in ``scoring_trusted.approved_pickles``:
a table in a schema owned by the migrating superuser, which no pgscore role
may write (``pgscore approve SHA256``, run by a superuser, adds a row).

:func:`require` is the one gate: ``registry.load`` calls it before any blob
is deserialised, and ``formats.loads`` refuses to unpickle unless handed
the digest it returned. :func:`check_model` asks the same question earlier,
where a model is activated or put on the scikit-learn path, so that a
pickle nobody approved is refused there rather than at the next insert.
"""

from __future__ import annotations

from . import formats, plans
from .errors import UNDEFINED_OBJECT, ScoringError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (package docstring)
if TYPE_CHECKING:
    from typing import Any

INSUFFICIENT_PRIVILEGE = "42501"  # psycopg.errors.InsufficientPrivilege

APPROVED_SQL = "SELECT EXISTS (SELECT FROM scoring_trusted.approved_pickles WHERE sha256 = $1) AS approved"
MODEL_SQL = "SELECT name, version, format, sha256, scoring_path FROM scoring.models WHERE model_id = $1"


def refusal_text(subject: str, fmt: str, sha256: str) -> tuple[str, str]:
    """(message, hint) for a pickle nobody approved; ``subject`` names it,
    e.g. "model 'churn' v3". Shared by the server and ``pgscore push``."""
    return (
        f"{subject} is a pickle (format {fmt}, sha256 {sha256}) that no superuser has approved;"
        " pgscore will not unpickle it",
        f"loading a pickle runs code as the server's OS user; a superuser who trusts {subject} runs:"
        f" pgscore approve {sha256} (or push the model again as skops, the default, which loads"
        " without running code)",
    )


def require(plpy: Any, cache: dict, fmt: str, sha256: str, name: str, version: int) -> str | None:
    """The approved sha256 to hand ``formats.loads`` (None for a format that
    runs no code). Raises ScoringError (SQLSTATE 42501) for a pickle whose
    sha256 no superuser approved. The approval is read on every load, never
    cached: a revoked approval holds for the next load in every backend."""
    if not formats.unpickles(fmt):
        return None
    if plans.run(plpy, cache, APPROVED_SQL, ["text"], [sha256])[0]["approved"]:
        return sha256
    message, hint = refusal_text(f"model {name!r} v{version}", fmt, sha256)
    raise ScoringError(message, sqlstate=INSUFFICIENT_PRIVILEGE, hint=hint)


def check_model(plpy: Any, cache: dict, model_id: int, path: str | None) -> None:
    """Raises ScoringError unless the server could load ``model_id`` on
    ``path`` (default: its recorded scoring path) without an unapproved
    pickle. Called by scoring.activate, scoring.rollback and
    scoring.set_scoring_path, before they change anything."""
    from .registry import COMPILED_PATHS

    rows = plans.run(plpy, cache, MODEL_SQL, ["bigint"], [model_id])
    if not rows:
        raise ScoringError(f"no model with model_id {model_id}", sqlstate=UNDEFINED_OBJECT,
                           hint="list the models with: pgscore models")
    row = rows[0]
    if (path or row["scoring_path"]) in COMPILED_PATHS:
        return  # the compiled arrays: nothing is unpickled
    require(plpy, cache, row["format"], row["sha256"], row["name"], row["version"])
