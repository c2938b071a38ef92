-- scoring_trusted.load_runtime(): imports the in-database Python that the
-- migration stored in scoring_trusted.runtime_modules into this backend,
-- replacing an older copy. Every PL/Python function calls it once per
-- backend (and again after a migration changed the code, which changes
-- CODE_SHA). Both live in scoring_trusted, owned by the migrating superuser:
-- whoever may write or replace them runs code as the server's OS user, and
-- scoring_owner, which owns (and may drop anything in) schema scoring, must
-- not be able to (docs/security.md).
-- The modules come as the code objects the migration compiled with the
-- server's Python (about 1 ms and 0.7 MiB for all of them, where compiling
-- the sources costs a new backend ~30 ms and ~4 MiB).
-- Each module is read when it is first imported, not all of them here: a
-- backend that scores one customer imports about half of the code, and
-- reading the rest cost it ~1 MiB of pages and memory (docs/performance.md,
-- P6). A module's code is this backend's code set's, whenever it is read:
-- when runtime_modules holds no code object of it stamped for this
-- interpreter and code sha (the server's Python changed, or a migration
-- installed other code since this backend loaded it), it is compiled from
-- the code set's own source, which scoring_trusted.code_modules keeps by
-- code sha. Two code sets never meet in one backend; the next call after a
-- migration loads the new one.
-- It runs as its caller (no SECURITY DEFINER: it needs no more than the
-- scoring functions' owner, the only role that may execute it; the roles
-- whose calls may import later, scoring_owner and scoring_loader, may read
-- the modules too: 011-runtime-grants.sql).
CREATE OR REPLACE FUNCTION scoring_trusted.load_runtime()
RETURNS void
LANGUAGE plpython3u
SET search_path = pg_catalog, pg_temp
AS $python$
import _thread
import importlib.machinery
import marshal
import sys
# What importlib.util.MAGIC_NUMBER is, without importing importlib.util.
from importlib._bootstrap_external import MAGIC_NUMBER

code_sha = "{{CODE_SHA}}"
backend_thread = _thread.get_ident()  # plpy may be called from this thread only
stamp = MAGIC_NUMBER + code_sha.encode()
names = {row["module"] for row in plpy.execute("SELECT module FROM scoring_trusted.runtime_modules")}
# A stored module is a package when another one is named under it.
packages = {name.rsplit(".", 1)[0] + "." for name in names if "." in name}
# A module is read later, by whichever call first imports it: maybe before
# that call pinned search_path (a procedure that commits cannot pin it), and
# PostgreSQL parses a saved plan again under a changed search_path. So no
# name in these queries may resolve through the caller's path.
read_bytecode = plpy.prepare("SELECT bytecode FROM scoring_trusted.runtime_modules"
                             " WHERE module OPERATOR(pg_catalog.=) $1", ["pg_catalog.text"])
SOURCE_SQL = ("SELECT source FROM scoring_trusted.code_modules"
              " WHERE runtime_sha OPERATOR(pg_catalog.=) $1 AND module OPERATOR(pg_catalog.=) $2")

def stored_code(name):
    """The code object of module ``name`` of this backend's code set."""
    if _thread.get_ident() != backend_thread:
        raise ImportError(f"{name} is imported by a thread other than the backend's: import it before starting threads")
    rows = plpy.execute(read_bytecode, [name])
    bytecode = rows[0]["bytecode"] if rows else None
    if bytecode is not None and bytecode.startswith(stamp):
        # Only the migrating superuser can write this table, as the sources.
        return marshal.loads(memoryview(bytecode)[len(stamp):])
    found = plpy.execute(plpy.prepare(SOURCE_SQL, ["pg_catalog.text", "pg_catalog.text"]), [code_sha, name])
    if not found:
        GD.pop("pgscore_server.code_sha", None)
        plpy.error(f"pgscore's in-database code {code_sha[:12]} has no module {name}",
                   detail="neither scoring_trusted.runtime_modules nor code_modules holds it for this code set",
                   hint="run the statement again (the next call loads the installed code), "
                        "or run the migrations again (pgscore migrate)")
    GD["pgscore_server.code_from"] = "source"
    return compile(found[0]["source"], "scoring_trusted.code_modules:" + name, "exec")

# A finder and loader by protocol, not by the importlib.abc classes, whose
# import costs a new backend about 15 ms.
class StoredModules:
    """Serves pgscore_server.* from scoring_trusted.runtime_modules, never from disk."""
    def find_spec(self, fullname, path=None, target=None):
        if fullname in names:
            return importlib.machinery.ModuleSpec(
                fullname, self, is_package=fullname + "." in packages)
        return None
    def create_module(self, spec):
        return None
    def exec_module(self, module):
        exec(stored_code(module.__name__), module.__dict__)

for name in [m for m in sys.modules if m == "pgscore_server" or m.startswith("pgscore_server.")]:
    del sys.modules[name]
# What the old code left in this backend's cache (loaded models, their
# evaluators, plans) must not meet the new code: an old evaluator does not
# know the new code's types (it took 0007's category codes of text features
# for unknown categories).
for key in [key for key in GD if key.startswith("pgscore.")]:
    del GD[key]
sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != "StoredModules"]
sys.meta_path.insert(0, StoredModules())
GD["pgscore_server.code_from"] = "bytecode"
import pgscore_server.api
GD["pgscore_server.code_sha"] = code_sha
$python$;
COMMENT ON FUNCTION scoring_trusted.load_runtime() IS 'internal: (re)imports pgscore_server from scoring_trusted.runtime_modules';

-- {{RUNTIME_MODULES}}

-- The modules compiled by the server's Python for scoring_trusted.load_runtime(),
-- stamped with that interpreter's magic number (bytecode differs between
-- Python versions) and the code sha, checked here against the sources.
DO $compile$
import hashlib
import marshal
from importlib._bootstrap_external import MAGIC_NUMBER

rows = sorted(plpy.execute("SELECT module, source FROM scoring_trusted.runtime_modules"), key=lambda row: row["module"])
digest = hashlib.sha256()
for row in rows:  # as pgscore.render.code_sha
    digest.update(row["module"].encode() + b"\0" + row["source"].encode() + b"\0")
if digest.hexdigest() != "{{CODE_SHA}}":
    plpy.error("scoring_trusted.runtime_modules does not hold the code this migration installs",
               hint="run the migration again")
stamp = MAGIC_NUMBER + b"{{CODE_SHA}}"
store = plpy.prepare("UPDATE scoring_trusted.runtime_modules SET bytecode = $2 WHERE module = $1", ["text", "bytea"])
for row in rows:
    code = compile(row["source"], "scoring_trusted.runtime_modules:" + row["module"], "exec")
    plpy.execute(store, [row["module"], stamp + marshal.dumps(code)])
$compile$ LANGUAGE plpython3u;

CREATE OR REPLACE FUNCTION scoring.runtime_info()
RETURNS jsonb
LANGUAGE plpython3u
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $python$
#pgscore:runtime
return api.runtime_info(plpy, GD)
$python$;
COMMENT ON FUNCTION scoring.runtime_info() IS 'Python and library versions of the server''s scoring runtime, and the schema revision';

CREATE OR REPLACE FUNCTION scoring._warmup_plpython(model_name text)
RETURNS void
LANGUAGE plpython3u
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $python$
#pgscore:runtime
api.warmup(plpy, GD, model_name)
$python$;
COMMENT ON FUNCTION scoring._warmup_plpython(text) IS 'internal: scoring.warmup in Python';

-- PL/pgSQL around the Python: errors without PL/Python's traceback
-- (scoring._raise_python_error, 030-score.sql).
CREATE OR REPLACE FUNCTION scoring.warmup(model_name text DEFAULT 'churn')
RETURNS void
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
-- {{WITH_PYTHON_ERRORS}} PERFORM scoring._warmup_plpython(model_name);
$$;
COMMENT ON FUNCTION scoring.warmup(text) IS 'loads the runtime and the active model into this backend (for a pool''s connect hook)';
