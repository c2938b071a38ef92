"""pgscore_server: the Python that runs inside PostgreSQL (plpython3u).

Every entry point takes ``plpy`` and the backend's cache dict (PL/Python's
``GD``) as arguments, so the package imports and unit-tests outside the
database. Inside the server, migrations store these sources in
``scoring_trusted.runtime_modules`` and ``scoring_trusted.load_runtime()``
imports them.

Modules name their annotations' types under ``TYPE_CHECKING = False`` /
``if TYPE_CHECKING:`` (which type checkers read as true) rather than
importing typing: every new backend would pay ~0.6 MiB for it.
"""
