"""A small stand-in for PL/Python's ``plpy`` module, for unit tests of
pgscore_server outside the database. It answers queries from a list of
(substring, rows) rules and records what was executed and reported."""

from __future__ import annotations

import contextlib
from typing import Any


class Error(Exception):
    def __init__(self, message: str, detail=None, hint=None, sqlstate=None):
        super().__init__(message)
        self.detail, self.hint, self.sqlstate = detail, hint, sqlstate


class Result(list):
    def nrows(self) -> int:
        return len(self)


class FakePlpy:
    Error = Error

    def __init__(self, answers: list[tuple[str, Any]] | None = None):
        self.answers = answers or []
        self.executed: list[tuple[str, list]] = []
        self.messages: list[tuple[str, str, dict]] = []

    def prepare(self, sql: str, types=None) -> str:
        return sql

    def execute(self, plan: str, args=None) -> Result:
        self.executed.append((plan, list(args or [])))
        for needle, rows in self.answers:
            if needle in plan:
                return Result(rows(args) if callable(rows) else rows)
        return Result()

    def quote_literal(self, value: str) -> str:
        return "'" + value.replace("'", "''") + "'"

    def quote_ident(self, name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    @contextlib.contextmanager
    def subtransaction(self):
        yield

    def error(self, message, detail=None, hint=None, sqlstate=None):
        raise Error(message, detail=detail, hint=hint, sqlstate=sqlstate)

    def warning(self, message, **kwargs):
        self.messages.append(("WARNING", message, kwargs))

    def notice(self, message, **kwargs):
        self.messages.append(("NOTICE", message, kwargs))

    def commit(self):
        self.messages.append(("COMMIT", "", {}))
