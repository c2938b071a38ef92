"""The one renderer: turns sql/ and plpython/ into the SQL a migration runs.

Function bodies under sql/idempotent/ hold a ``#pgscore:runtime`` line where
the in-database Python is needed; it becomes a check that this backend has
imported the current code (by its sha256) and an import of
``pgscore_server.api``. The code itself is stored in
``scoring_trusted.runtime_modules`` (the ``-- {{RUNTIME_MODULES}}`` line), a
schema that only the migrating superuser owns, and imported by
``scoring_trusted.load_runtime()``.
"""

from __future__ import annotations

import hashlib
from importlib import resources

RUNTIME_MARKER = "#pgscore:runtime"
MODULES_MARKER = "-- {{RUNTIME_MODULES}}"
SHA_MARKER = "{{CODE_SHA}}"
SOURCE_QUOTE = "$pgscore_source$"


PACKAGE = "pgscore_server"


def runtime_sources() -> dict[str, str]:
    """Module name -> source of every module of the in-database package and
    its subpackages (a package is stored under its own name, from its
    ``__init__.py``; scoring_trusted.load_runtime() imports it as a package)."""
    sources: dict[str, str] = {}

    def walk(folder, prefix: str) -> None:
        for entry in sorted(folder.iterdir(), key=lambda e: e.name):
            if entry.is_dir() and entry.joinpath("__init__.py").is_file():
                walk(entry, f"{prefix}.{entry.name}")
            elif entry.name == "__init__.py":
                sources[prefix] = entry.read_text(encoding="utf-8")
            elif entry.name.endswith(".py"):
                sources[f"{prefix}.{entry.name[: -len('.py')]}"] = entry.read_text(encoding="utf-8")

    walk(resources.files(PACKAGE), PACKAGE)
    return dict(sorted(sources.items()))


def code_sha(sources: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for module in sorted(sources):
        digest.update(module.encode() + b"\0" + sources[module].encode() + b"\0")
    return digest.hexdigest()


def sql_file(*parts: str) -> str:
    return resources.files("pgscore.sql").joinpath(*parts).read_text(encoding="utf-8")


def idempotent_files() -> list[str]:
    folder = resources.files("pgscore.sql").joinpath("idempotent")
    return sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".sql"))


def modules_sql(sources: dict[str, str]) -> str:
    statements = ["DELETE FROM scoring_trusted.runtime_modules;"]
    for module, source in sources.items():
        if SOURCE_QUOTE in source:
            raise ValueError(f"{module} contains {SOURCE_QUOTE}, which the renderer uses to quote sources")
        statements.append(
            f"INSERT INTO scoring_trusted.runtime_modules (module, source)"
            f" VALUES ('{module}', {SOURCE_QUOTE}{source}{SOURCE_QUOTE});"
        )
    return "\n".join(statements)


def runtime_shim(sha: str) -> str:
    """The lines that make a function body's ``api`` the stored code of ``sha``.

    The loader is called schema-qualified in scoring_trusted, which no
    pgscore role can write: nothing in schema scoring (whose owner may drop
    and recreate its objects) decides which code is imported. A backend
    whose loader did not install that code stops rather than import a
    ``pgscore_server`` from anywhere else (the file system)."""
    return (
        f'if GD.get("pgscore_server.code_sha") != "{sha}":\n'
        '    plpy.execute("SELECT scoring_trusted.load_runtime()")\n'
        f'    if GD.get("pgscore_server.code_sha") != "{sha}":\n'
        '        plpy.error("pgscore\'s in-database code is not the code this function was installed with",\n'
        '                   hint="run the migrations again (pgscore migrate), then start a new session")\n'
        "from pgscore_server import api"
    )


def frozen(revision: str) -> str:
    """sql/idempotent/ and plpython/ exactly as ``revision`` rendered them
    (migrations/rendered/), so that downgrading to it restores its code."""
    return resources.files("pgscore.migrations").joinpath("rendered", f"{revision}-idempotent.sql").read_text(
        encoding="utf-8")


def render_idempotent() -> str:
    """All of sql/idempotent/, in file order, with the runtime rendered in."""
    sources = runtime_sources()
    sha = code_sha(sources)
    parts = []
    for name in idempotent_files():
        text = sql_file("idempotent", name)
        text = text.replace(MODULES_MARKER, modules_sql(sources))
        text = text.replace(RUNTIME_MARKER, runtime_shim(sha))
        text = text.replace(SHA_MARKER, sha)
        parts.append(f"-- sql/idempotent/{name}\n{text}")
    return "\n".join(parts)
