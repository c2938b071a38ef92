"""The one exception type of in-database scoring, carrying a SQLSTATE and a hint.

Library code raises :class:`ScoringError`; the SQL entry points in
:mod:`pgscore_server.api` turn it into a PostgreSQL error with
``plpy.error(message, detail=..., hint=..., sqlstate=...)``.
"""

from __future__ import annotations

# SQLSTATEs used by pgscore's Python (PostgreSQL's own codes, so callers can
# catch them by class, e.g. psycopg.errors.NoDataFound); raise with these
# names, never a literal code.
NO_DATA_FOUND = "P0002"             # unknown customer id
UNDEFINED_OBJECT = "42704"          # unknown model name, feature not a column
NOT_IN_PREREQUISITE_STATE = "55000"  # no active model
INVALID_PARAMETER_VALUE = "22023"   # bad feature document, bad argument
DATATYPE_MISMATCH = "42804"         # mistyped feature value
MODEL_LOAD_FAILED = "38000"         # external_routine_exception: blob, runtime
MODEL_FAILED = "39000"              # external_routine_invocation_exception: predict
INSUFFICIENT_PRIVILEGE = "42501"    # an unapproved pickle (psycopg.errors.InsufficientPrivilege)
PROGRAM_LIMIT_EXCEEDED = "54000"    # more ids than scoring.max_batch_ids
INVALID_TRANSACTION_STATE = "2D000"  # invalid_transaction_termination: rescore inside a transaction block


class ScoringError(Exception):
    """A scoring failure with a message that names the object and the next step."""

    def __init__(
        self,
        message: str,
        *,
        sqlstate: str = MODEL_FAILED,
        hint: str | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate
        self.hint = hint
        self.detail = detail

    def __str__(self) -> str:
        return self.message


def describe(exc: BaseException) -> str:
    """One line for an unexpected exception: its type and message, no traceback."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def as_scoring_error(exc: BaseException, context: str) -> ScoringError:
    """Wrap an unexpected exception from a model or library as a ScoringError."""
    if isinstance(exc, ScoringError):
        return exc
    sqlstate = getattr(exc, "sqlstate", None) or MODEL_FAILED
    return ScoringError(f"{context}: {describe(exc)}", sqlstate=sqlstate)
