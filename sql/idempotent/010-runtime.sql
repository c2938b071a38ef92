-- scoring._load_runtime(): imports the in-database Python that the
-- migration stored in scoring.runtime_modules into this backend, replacing
-- an older copy. Every PL/Python function calls it once per backend (and
-- again after a migration changed the code, which changes CODE_SHA).
CREATE OR REPLACE FUNCTION scoring._load_runtime()
RETURNS void
LANGUAGE plpython3u
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $python$
import importlib.machinery
import sys

sources = {row["module"]: row["source"] for row in
           plpy.execute("SELECT module, source FROM scoring.runtime_modules")}

# A finder and loader by protocol, not by the importlib.abc classes, whose
# import costs a new backend about 15 ms.
class StoredModules:
    """Serves pgscore_server.* from scoring.runtime_modules, never from disk."""
    def find_spec(self, fullname, path=None, target=None):
        if fullname in sources:
            return importlib.machinery.ModuleSpec(
                fullname, self, is_package=fullname == "pgscore_server")
        return None
    def create_module(self, spec):
        return None
    def exec_module(self, module):
        name = module.__name__
        filename = "scoring.runtime_modules:" + name
        exec(compile(sources[name], filename, "exec"), module.__dict__)

for name in [m for m in sys.modules if m == "pgscore_server" or m.startswith("pgscore_server.")]:
    del sys.modules[name]
sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != "StoredModules"]
sys.meta_path.insert(0, StoredModules())
import pgscore_server.api
GD["pgscore_server.code_sha"] = "{{CODE_SHA}}"
$python$;
COMMENT ON FUNCTION scoring._load_runtime() IS 'internal: (re)imports pgscore_server from scoring.runtime_modules';

-- {{RUNTIME_MODULES}}

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

CREATE OR REPLACE FUNCTION scoring.warmup(model_name text DEFAULT 'churn')
RETURNS void
LANGUAGE plpython3u
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $python$
#pgscore:runtime
api.warmup(plpy, GD, model_name)
$python$;
COMMENT ON FUNCTION scoring.warmup(text) IS 'loads the runtime and the active model into this backend (for a pool''s connect hook)';
