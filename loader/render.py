"""The one renderer: turns sql/ and plpython/ into pgscore's code set.

A *code set* is all of pgscore's in-database code: the function bodies,
triggers, views and grants of sql/idempotent/ and the Python package of
plpython/. It is identified by the sha256 of its install SQL and installed
by pgscore.migrations.codesets after the revisions (docs/migrations.md);
revisions only change tables and data.

Function bodies under sql/idempotent/ hold a ``#pgscore:runtime`` line where
the in-database Python is needed; it becomes a check that this backend has
imported the current modules (by the sha256 of their sources, the *runtime
sha*) and an import of ``pgscore_server.api``. The modules are stored once
per runtime sha in ``scoring_trusted.code_modules``; the install copies them
to ``scoring_trusted.runtime_modules`` (the ``-- {{RUNTIME_MODULES}}``
line), which ``scoring_trusted.load_runtime()`` imports from. Both live in a
schema that only the migrating superuser owns.

Revisions 0001-0009 installed their own code as they were released
(``released_code``): those renderings ship, verified by their sha256, in
migrations/released-code.tar.xz, so that a downgrade restores them.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import re
import tarfile
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

from pgscore_server import paths, plpgsql

RUNTIME_MARKER = "#pgscore:runtime"
# A line "-- {{WITH_PYTHON_ERRORS}} <statement>" in a PL/pgSQL body becomes
# pgscore_server.plpgsql.with_python_errors(statement).
PYTHON_ERRORS_LINE = re.compile(r"^-- \{\{WITH_PYTHON_ERRORS\}\} (?P<statement>.+)$", re.MULTILINE)


def _sql_list(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{value}'" for value in values)


# The scoring-path policy's lists where SQL needs them (pgscore_server.paths is their one home).
POLICY_MARKERS = {
    "{{SCORING_PATHS}}": _sql_list(paths.PATHS),
    "{{COMPILED_PATHS}}": _sql_list(paths.COMPILED_PATHS),
    "{{GENERATED_FUNCTIONS}}": _sql_list(plpgsql.GENERATED_FUNCTIONS),
}


def with_policy(text: str) -> str:
    """``text`` with the policy's markers replaced (POLICY_MARKERS)."""
    for marker, value in POLICY_MARKERS.items():
        text = text.replace(marker, value)
    return text
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


def dollar_quoted(text: str, tag: str, what: str) -> str:
    if tag in text:
        raise ValueError(f"{what} contains {tag}, which the renderer uses to quote it")
    return f"{tag}{text}{tag}"


def modules_sql(runtime_sha: str, sources: dict[str, str]) -> str:
    """Stores the modules of ``runtime_sha`` (once: a code set that changes
    only SQL reuses the modules of the last)."""
    return "\n".join(
        f"INSERT INTO scoring_trusted.code_modules (runtime_sha, module, source)"
        f" VALUES ('{runtime_sha}', '{module}', {dollar_quoted(source, SOURCE_QUOTE, module)})"
        f" ON CONFLICT DO NOTHING;"
        for module, source in sources.items()
    )


def install_modules_sql() -> str:
    """What the ``-- {{RUNTIME_MODULES}}`` line becomes: this code set's
    modules are the ones scoring_trusted.load_runtime() imports."""
    return (
        "DELETE FROM scoring_trusted.runtime_modules;\n"
        "INSERT INTO scoring_trusted.runtime_modules (module, source)\n"
        "SELECT module, source FROM scoring_trusted.code_modules\n"
        f" WHERE runtime_sha = '{SHA_MARKER}' ORDER BY module;"
    )


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


# The sha256 of each released revision's rendering. Released code never
# changes: a file of the archive that does not match is refused.
RELEASED_CODE_SHA256 = {
    "0001": "d47c5a2d128316074e06830b882a9d4f24fce43c03c5bf55314789fa58136fe7",
    "0002": "277ffe3285b3579947bbf106697b5400f21c9e5bcb8d35de1b773a94225e8ac3",
    "0003": "d91e62e1b31aa462a577687d9583b6d1f4b15382cc8be01fe1012089866e4908",
    "0004": "7528bd03b1df8a3b03ab19fe5515ef747188e4e2a031af9e26b032d4132fdd62",
    "0005": "5504c63fa80b816ddf5c5190aa2e055cc66a993e5baf410c05525145126a416f",
    "0006": "9dfd186bd533b87f2a1d247f7d68fe54d87432b98223c1fe87e5805f8a292652",
    "0007": "2d17166c83f01ba26b195602cc6e574d8cd4c1d3b4114f57574f8d5a15fc1439",
    "0008": "a8ef0165abdd60e4ca4a2fa90133baec518bf71240d9e66b2796adca3a4905ef",
    "0009": "c835f5e4660a743c6b090f866ddc754c8498f6437ec95c5419850f8f058ad25c",
    # From 0010 on, a code set (install SQL and modules, as JSON), rendered
    # from the release's commit (0010: 2d11197).
    "0010": "aca3ccbb860a343f862a9c9a7f087f3d03ba4ec77b10a67af8732886a8eb521a",
    # 0011: 6b69094.
    "0011": "87eb06da8055611a4f9ce2d2c7d74e364c539c00db971cd4bd0c112636bc5e29",
}
# Where a released code set is in the archive: its revision's file.
RELEASED_CODE_SET_FILE = "{revision}-code-set.json"
RELEASED_CODE_ARCHIVE = "released-code.tar.xz"


@cache
def _released_archive() -> dict[str, bytes]:
    data = resources.files("pgscore.migrations").joinpath(RELEASED_CODE_ARCHIVE).read_bytes()
    with tarfile.open(fileobj=io.BytesIO(lzma.decompress(data))) as archive:
        return {member.name: archive.extractfile(member).read() for member in archive.getmembers() if member.isfile()}


def released_code(revision: str) -> str:
    """pgscore's in-database code exactly as ``revision`` (0001-0009) installed
    it, so that downgrading to that revision restores it."""
    return _released_file(f"{revision}-idempotent.sql", revision).decode("utf-8")


def _released_file(name: str, revision: str) -> bytes:
    data = _released_archive().get(name)
    if data is None or hashlib.sha256(data).hexdigest() != RELEASED_CODE_SHA256.get(revision):
        raise RuntimeError(f"the released code of revision {revision} is missing from or altered in "
                           f"pgscore/migrations/{RELEASED_CODE_ARCHIVE}; reinstall pgscore")
    return data


@dataclass(frozen=True)
class CodeSet:
    """One version of pgscore's in-database code. ``sha`` identifies it (the
    sha256 of ``install_sql``); ``runtime_sha`` and ``modules`` are its
    Python, which ``install_sql`` references rather than contains (none for a
    released revision's code, which carries its modules inline)."""

    install_sql: str
    runtime_sha: str | None = None
    modules: dict[str, str] = field(default_factory=dict)

    @property
    def sha(self) -> str:
        return hashlib.sha256(self.install_sql.encode()).hexdigest()


def released_code_set(revision: str) -> CodeSet:
    """The code ``revision`` released: 0001-0009 as one rendering with its
    modules inline, later revisions as a code set (install SQL and modules)."""
    name = RELEASED_CODE_SET_FILE.format(revision=revision)
    if name not in _released_archive():
        return CodeSet(released_code(revision))
    import json

    found = json.loads(_released_file(name, revision))
    code_set = CodeSet(found["install_sql"], found["runtime_sha"], found["modules"])
    if code_sha(code_set.modules) != code_set.runtime_sha:
        raise RuntimeError(f"the released modules of revision {revision} do not match their sha256; reinstall pgscore")
    return code_set


def current_code_set(sources: dict[str, str] | None = None, sql_files: dict[str, str] | None = None) -> CodeSet:
    """sql/idempotent/ and plpython/ as they are in this package (or as
    ``sources`` and ``sql_files``, file name -> text, say: a test's change)."""
    sources = runtime_sources() if sources is None else sources
    sql_files = {name: sql_file("idempotent", name) for name in idempotent_files()} if sql_files is None else sql_files
    runtime_sha = code_sha(sources)
    parts = []
    for name, text in sorted(sql_files.items()):
        text = text.replace(MODULES_MARKER, install_modules_sql())
        text = with_policy(text)
        text = PYTHON_ERRORS_LINE.sub(lambda line: plpgsql.with_python_errors(line["statement"]).strip("\n"), text)
        text = text.replace(RUNTIME_MARKER, runtime_shim(runtime_sha))
        text = text.replace(SHA_MARKER, runtime_sha)
        parts.append(f"-- sql/idempotent/{name}\n{text}")
    return CodeSet("\n".join(parts), runtime_sha, sources)
