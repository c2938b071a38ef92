"""pgscore's own errors, on the client side: one base class to catch.

Each subclass keeps the built-in base it had (``LookupError`` for a model
that was never pushed, ``RuntimeError`` for a server that cannot start), so
existing ``except`` clauses still catch it. Their messages name the problem
and the next step; the CLI prints them as one line and exits with status 1.
Database errors stay psycopg's own classes (``psycopg.errors.*``).
"""


class PgscoreError(Exception):
    """Any error pgscore raises on purpose, with a message meant for the user."""
