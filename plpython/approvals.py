"""Which model blobs the server may unpickle, or rebuild with native code
pgscore does not check: only those a superuser approved.

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

An ONNX graph (format 'onnx', path 'onnx') is parsed and run by
onnxruntime, native code that trusts it: it needs the same approval of its
sha256 (and pgscore_server.onnxpath.check_graph refuses external data and
custom ops whatever was approved).

A skops blob runs no code of its own, but one holding a type outside
``formats.NATIVE_SAFE_TYPES`` (an SVC, KMeans, a KDTree, ...) is handed to
compiled prediction code that trusts its arrays: a crafted one reads or
writes out of bounds in the server. It needs the same approval of its sha256,
through the same gate.
"""

from __future__ import annotations

from . import formats, plans
from .errors import INSUFFICIENT_PRIVILEGE, UNDEFINED_OBJECT, ScoringError
from .paths import COMPILED_PATHS

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (package docstring)
if TYPE_CHECKING:
    from typing import Any

APPROVED_SQL = "SELECT EXISTS (SELECT FROM scoring_trusted.approved_pickles WHERE sha256 = $1) AS approved"
MODEL_SQL = "SELECT name, version, format, sha256, scoring_path FROM scoring.models WHERE model_id = $1"
BLOB_SQL = "SELECT blob FROM scoring.models WHERE model_id = $1"


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


def native_refusal_text(subject: str, types: list[str], sha256: str) -> tuple[str, str]:
    """(message, hint) for a skops blob holding types outside
    formats.NATIVE_SAFE_TYPES that nobody approved. Shared by the server and
    ``pgscore push``."""
    return (
        f"{subject} holds {', '.join(types)} (format skops, sha256 {sha256}), whose compiled prediction code"
        " trusts the model's arrays, and no superuser has approved it; pgscore will not load it",
        "a crafted model of such a type makes that code read or write out of bounds in the server (crashing"
        f" every session); a superuser who trusts {subject} runs: pgscore approve {sha256} (models built only"
        " from the types in pgscore_server.formats.NATIVE_SAFE_TYPES, whose structures pgscore checks, need"
        " no approval)",
    )


def needs_approval(fmt: str, blob: bytes | None) -> tuple[bool, list[str]]:
    """Whether loading a blob of format ``fmt`` needs a superuser's approval,
    and the skops types that make it so (none for a pickle, which always
    needs one). A skops blob with types skops does not trust, or one it
    cannot read, needs none: loading refuses it whatever anyone approved
    (formats.loads says why). Shared by the server and ``pgscore push``."""
    if formats.unpickles(fmt):
        return True, []
    if blob is None:
        raise ValueError("approvals.needs_approval needs the blob of a skops model")
    try:
        if formats.untrusted_types(blob):
            return False, []
        types = formats.approval_types(blob, fmt)
    except Exception:  # an archive skops cannot read: formats.loads re-checks it and fails the load
        return False, []
    return bool(types), types


def onnx_refusal_text(subject: str, sha256: str) -> tuple[str, str]:
    """(message, hint) for an ONNX graph nobody approved. Shared by the server and ``pgscore push``."""
    return (
        f"{subject} is an ONNX graph (sha256 {sha256}) that no superuser has approved; pgscore will not hand it"
        " to onnxruntime",
        "onnxruntime is native code that parses and runs the graph in the server (a crafted graph can crash or"
        f" misuse every session); a superuser who trusts {subject} runs: pgscore approve {sha256}",
    )


def refusal(subject: str, fmt: str, types: list[str], sha256: str) -> tuple[str, str]:
    """(message, hint) for a blob that needs an approval nobody gave (see :func:`needs_approval`)."""
    if fmt == "onnx":
        return onnx_refusal_text(subject, sha256)
    return native_refusal_text(subject, types, sha256) if types else refusal_text(subject, fmt, sha256)


def require(plpy: Any, cache: dict, fmt: str, sha256: str, name: str, version: int,
            blob: bytes | None = None) -> str | None:
    """The approved sha256 to hand ``formats.loads`` (None when no approval
    is needed: a skops ``blob`` of NATIVE_SAFE_TYPES only). Raises
    ScoringError (SQLSTATE 42501) for a pickle, or a skops blob holding other
    types (``blob`` is required for skops), whose sha256 no superuser
    approved. The approval is read on every load, never cached: a revoked
    approval holds for the next load in every backend."""
    needed, types = needs_approval(fmt, blob)
    if not needed:
        return None
    if plans.run(plpy, cache, APPROVED_SQL, ["text"], [sha256])[0]["approved"]:
        return sha256
    message, hint = refusal(f"model {name!r} v{version}", fmt, types, sha256)
    raise ScoringError(message, sqlstate=INSUFFICIENT_PRIVILEGE, hint=hint)


def check_model(plpy: Any, cache: dict, model_id: int, path: str | None) -> None:
    """Raises ScoringError unless the server could load ``model_id`` on
    ``path`` (default: its recorded scoring path) without an unapproved
    pickle. Called by scoring.activate, scoring.rollback and
    scoring.set_scoring_path, before they change anything."""
    rows = plans.run(plpy, cache, MODEL_SQL, ["bigint"], [model_id])
    if not rows:
        raise ScoringError(f"no model with model_id {model_id}", sqlstate=UNDEFINED_OBJECT,
                           hint="list the models with: pgscore models")
    row = rows[0]
    if (path or row["scoring_path"]) in COMPILED_PATHS:
        return  # the compiled arrays: nothing is unpickled
    blob = None
    if not formats.unpickles(row["format"]):
        blob = bytes(plans.run(plpy, cache, BLOB_SQL, ["bigint"], [model_id])[0]["blob"])
    require(plpy, cache, row["format"], row["sha256"], row["name"], row["version"], blob)
