"""Running pgscore's alembic migrations from Python (``pgscore migrate``)."""

from __future__ import annotations

from importlib import resources

import psycopg
from alembic import command
from alembic.config import Config

from .connection import resolve_conninfo
from .errors import MigrationError

# Who may migrate, said whenever a role may not: the migrations create
# plpython3u functions, and PL/Python is an untrusted language.
WHO_MAY_MIGRATE = ("run `pgscore migrate` as a superuser (e.g. postgres), since the migrations create "
                   "plpython3u functions, which only a superuser may create")


def alembic_config(dsn: str | None = None) -> Config:
    """An alembic Config for the packaged migrations, bound to ``dsn`` (resolved as usual)."""
    config = Config()
    config.set_main_option("script_location", str(resources.files("pgscore.migrations")))
    config.attributes["conninfo"] = resolve_conninfo(dsn)
    return config


def head_revision() -> str:
    """The newest schema revision this package migrates to."""
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(resources.files("pgscore.migrations")))
    return ScriptDirectory.from_config(config).get_current_head()


def migrate(dsn: str | None = None, revision: str = "head") -> None:
    """``alembic upgrade REVISION`` on the database.

    Raises MigrationError when the role may not migrate, and the psycopg
    error (not SQLAlchemy's wrapper) for anything else the server refuses.
    """
    _run(command.upgrade, dsn, revision)


def downgrade(dsn: str | None = None, revision: str = "base") -> None:
    """``alembic downgrade REVISION``; raises as :func:`migrate`."""
    _run(command.downgrade, dsn, revision)


def _run(step, dsn: str | None, revision: str) -> None:
    from sqlalchemy.exc import DBAPIError

    try:
        step(alembic_config(dsn), revision)
    except DBAPIError as exc:
        cause = exc.orig
        if isinstance(cause, psycopg.errors.InsufficientPrivilege):
            role = _current_role(dsn)
            raise MigrationError(
                f"{'role ' + repr(role) if role else 'this role'} may not migrate this database "
                f"({cause.diag.message_primary}): {WHO_MAY_MIGRATE}"
            ) from None
        if isinstance(cause, psycopg.Error):
            raise cause from None
        raise


def _current_role(dsn: str | None) -> str | None:
    try:
        with psycopg.connect(resolve_conninfo(dsn)) as conn:
            return conn.info.user
    except psycopg.Error:
        return None
