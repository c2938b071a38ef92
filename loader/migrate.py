"""Running pgscore's alembic migrations from Python (``pgscore migrate``)."""

from __future__ import annotations

from importlib import resources

from alembic import command
from alembic.config import Config

from .connection import resolve_conninfo


def alembic_config(dsn: str | None = None) -> Config:
    """An alembic Config for the packaged migrations, bound to ``dsn`` (resolved as usual)."""
    config = Config()
    config.set_main_option("script_location", str(resources.files("pgscore.migrations")))
    config.attributes["conninfo"] = resolve_conninfo(dsn)
    return config


def migrate(dsn: str | None = None, revision: str = "head") -> None:
    """``alembic upgrade REVISION`` on the database; raises on a failed migration."""
    command.upgrade(alembic_config(dsn), revision)


def downgrade(dsn: str | None = None, revision: str = "base") -> None:
    command.downgrade(alembic_config(dsn), revision)
