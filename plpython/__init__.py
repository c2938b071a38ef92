"""pgscore_server: the Python that runs inside PostgreSQL (plpython3u).

Every entry point takes ``plpy`` and the backend's cache dict (PL/Python's
``GD``) as arguments, so the package imports and unit-tests outside the
database. Inside the server, migrations store these sources in
``scoring.runtime_modules`` and ``scoring._load_runtime()`` imports them.
"""
