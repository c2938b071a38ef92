"""pgscore's own errors, on the client side: one base class to catch.

Every error pgscore raises on purpose is a :class:`PgscoreError`, defined
here, one subclass per kind of failure; the modules that raise them
re-export them (``pgscore.connection.SchemaMissing`` is this module's).
Each subclass keeps the built-in base it had (``LookupError`` for a model
that was never pushed, ``RuntimeError`` for a server that cannot start), so
existing ``except`` clauses still catch it. Their messages name the problem
and the next step; the CLI prints any of them as one line and exits with
``exit_status`` (docs/contract.md, "Exit status").

An error that stands for a condition PostgreSQL reports (it is raised in
place of a database error, or the server raises the same condition with
that code) carries its SQLSTATE in ``sqlstate``; the others have None.
Database errors themselves stay psycopg's own classes (``psycopg.errors.*``,
one per SQLSTATE), and in-database scoring raises
``pgscore_server.errors.ScoringError``, which becomes a PostgreSQL error
with its SQLSTATE.
"""

from __future__ import annotations

# PostgreSQL's own codes, so that a caller may compare them with
# psycopg.Error.sqlstate (or pgscore_server.errors' constants, the same codes).
UNDEFINED_OBJECT = "42704"
INSUFFICIENT_PRIVILEGE = "42501"
INVALID_SCHEMA_NAME = "3F000"


class PgscoreError(Exception):
    """Any error pgscore raises on purpose, with a message meant for the user."""

    #: The SQLSTATE of the PostgreSQL condition this error stands for, if any.
    sqlstate: str | None = None
    #: What the ``pgscore`` command exits with when this error ends it.
    exit_status: int = 1


# -- the database and its schema

class SchemaMissing(PgscoreError, RuntimeError):
    """The database has no pgscore schema: ``pgscore migrate`` has not run on it."""

    sqlstate = INVALID_SCHEMA_NAME


class SchemaTampered(PgscoreError, RuntimeError):
    """Schema ``scoring`` holds objects pgscore did not create (a view, rule,
    trigger or function of scoring_owner's), whose code would run with a
    superuser's rights; the message names them and says what to do."""


class MigrationError(PgscoreError, RuntimeError):
    """A migration was refused by the server; the message says why and who may run it."""

    sqlstate = INSUFFICIENT_PRIVILEGE


# -- models

class PushError(PgscoreError):
    """The model was refused; nothing was written. The message says why and
    what to do instead."""


class ModelNotFound(PgscoreError, LookupError):
    """No model of that name has been pushed; the message names the closest that has."""

    sqlstate = UNDEFINED_OBJECT  # what the server raises for the same name (scoring.activate, score_many, ...)


class ScorerNotFound(PushError, LookupError):
    """No scorer scores with the model name being pushed (``scoring.scorers``):
    push would not know which table's columns the features are; the message
    says how to attach one."""

    sqlstate = UNDEFINED_OBJECT


class UnsupportedModel(PgscoreError):
    """The model cannot be compiled; ``reason`` says which part and why.
    Push then keeps it on the scikit-learn path (or refuses it, when the
    compiled path was asked for)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class NotASha256(PgscoreError, ValueError):
    """What was given to approve or revoke is not a sha256."""


# -- development tools (pgscore.dev)

class LocalDatabaseError(PgscoreError, RuntimeError):
    """The local database could not be set up, started or stopped."""


class RuntimeInstallError(PgscoreError, RuntimeError):
    """The server-side runtime could not be installed."""


class DemoRefused(PgscoreError):
    """The database given to the demo holds data the demo would change."""
