"""pgscore push: a model file or estimator checked, uploaded, test-scored,
given its scoring path and, if asked, activated.

A model name is scored by the scorers whose ``model_name`` it is
(``scoring.scorers``; the reference scorer ``churn`` scores public.customer_profiles):
their entity tables are where its features must be columns, and whose real
rows it is test-scored on.

``push_model`` refuses, with nothing written, anything the server could not
score: a file that does not load, a model without ``predict_proba`` or
feature names, a name no scorer scores with, features that are not columns
of the scorers' entity tables, a model saved with library versions the
server's runtime lacks, and a model whose scores in the database differ
from its scores here (the parity checks are :mod:`pgscore.verify`; the
scoring paths, pgscore_server.paths).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from pgscore_server import approvals, formats, paths
from pgscore_server import runtime as server_runtime
from pgscore_server.registry import MODEL_NAME, MODEL_NAME_RULE

from . import check_rows, mlflow_source, scorers, verify
from .connection import connect
from .errors import PushError
from .scorers import Entity

# Rows of each entity table test-scored in the database before a push is accepted.
SAMPLE_SIZE = 200
# push's --path: 'auto' (push chooses; pgscore_server.paths.SQL_PATH_MAX_CHARS) or one it forces.
SCORING_PATHS = ("auto", *paths.PATHS)


@dataclass
class PushResult:
    name: str
    version: int
    model_id: int
    sha256: str
    activated: bool
    sample_size: int
    max_abs_diff: float | None
    scoring_path: str = "sklearn"
    path_note: str | None = None
    notes: list[str] = field(default_factory=list)
    #: The entity tables whose rows it was test-scored on (one per scorer with this model name).
    scored_tables: list[str] = field(default_factory=list)
    #: An ONNX graph pushed with its original model: max |onnxruntime - original predict_proba| (pgscore.onnxpush).
    original_max_abs_diff: float | None = None
    #: How the blob is stored: 'skops', 'joblib', or 'compiled' (the compiled archive itself:
    #: a model the server cannot rebuild, such as XGBoost or LightGBM).
    format: str = "skops"


# The top-level modules whose estimators the server's pinned runtime rebuilds from a blob
# (loader/runtime-requirements.txt). A model holding any other (xgboost, lightgbm) is
# pushed in compiled form when it compiles (format 'compiled', scored on the compiled or
# sql path: the server never imports the library); else as a blob only if the server's
# runtime has every such library (a DBA's `pgscore runtime add`, runtime_info's modules).
SERVER_LIBRARIES = ("sklearn",)
# What a model file must be, said whenever a file is not one.
EXPECTED_FILE = ("pgscore push expects a fitted scikit-learn estimator saved with joblib.dump (.joblib) "
                 "or skops.io.dump (.skops)")
# How long the child process may take to unpickle and convert a joblib file.
UNPICKLE_TIMEOUT = 600
# What the child made of the last few joblib files (by their sha256): the
# same file pushed again in this process is not unpickled again (a child
# costs 1-3 s, mostly importing scikit-learn and skops).
_CONVERTED: dict[str, tuple[dict, bytes]] = {}
_CONVERTED_KEPT = 4
# Leading bytes of a pickle (protocol 2 and later, as joblib.dump writes)
# and of joblib's compressed files (zlib, gzip, bz2, xz, lzma, lz4).
_PICKLE_MAGIC = (b"\x80", b"\x78", b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"\x5d\x00\x00", b"\x04\x22\x4d\x18")
_ZIP_MAGIC = b"PK\x03\x04"  # a skops file is a zip archive


def file_format(data: bytes) -> str | None:
    """'skops' or 'joblib' by a file's leading bytes (not its name), None for anything else."""
    if data.startswith(_ZIP_MAGIC):
        return "skops"
    if data.startswith(_PICKLE_MAGIC):
        return "joblib"
    return None


def load_model_file(path: str | os.PathLike, trust_pickle: bool = False,
                    origin: str | None = None) -> tuple[Any, bytes, dict[str, str]]:
    """(estimator, file bytes, versions it was saved with) of a skops or joblib file.

    A skops file is loaded here with skops' trusted-types check: no pickle.
    A joblib file is a pickle, which runs code when loaded: it is unpickled
    in a child process without the database's credentials that hands back
    the model in skops form (see :mod:`pgscore.unpickle`), and only with
    ``trust_pickle`` in this process (for models skops cannot represent).
    ``origin`` names the file in messages (default: its path).
    Raises PushError when the file is missing, not a model file, or does not load.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PushError(f"cannot read model file {path}: {exc.strerror}") from None
    origin = origin or str(path)
    kind = file_format(data)
    if kind is None:
        raise PushError(f"{origin} is not a model file: {EXPECTED_FILE}")
    if kind == "skops":
        return _load_skops(data, origin), data, dict(server_runtime.versions())
    if trust_pickle:
        estimator, saved = _load_blob(data, origin)
    else:
        estimator, saved = _unpickle_in_child(data, origin)
    return estimator, data, saved


def _load_skops(data: bytes, origin: str) -> Any:
    # Types outside formats.NATIVE_SAFE_TYPES are rebuilt here, in the pusher's own
    # process (as before); the server loads them only once a superuser approved this
    # blob's sha256, which push checks before writing (_require_approval).
    try:
        return formats.loads(data, "skops", approved_sha256=hashlib.sha256(data).hexdigest())
    except formats.UntrustedTypes as exc:
        raise PushError(f"{origin} needs types pgscore does not trust in skops format: {', '.join(exc.types)}; "
                        "use scikit-learn estimators only") from None
    except Exception as exc:
        raise PushError(f"{origin} is not a loadable skops model ({type(exc).__name__}: {exc}): "
                        f"{EXPECTED_FILE}") from None


def child_environment() -> dict[str, str]:
    """This process's environment without what locates or unlocks a database:
    DATABASE_URL and every PG* variable go; libpq's password and service
    files point nowhere."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("PG") and key != "DATABASE_URL"}
    env.update(PGPASSFILE=os.devnull, PGSERVICEFILE=os.devnull, PGSYSCONFDIR=os.devnull)
    return env


def _unpickle_in_child(data: bytes, origin: str) -> tuple[Any, dict[str, str]]:
    """(estimator rebuilt from skops bytes, saved versions) of a joblib file
    unpickled by ``python -m pgscore.unpickle``. Raises PushError."""
    import subprocess
    import sys

    digest = hashlib.sha256(data).hexdigest()
    if digest in _CONVERTED:
        report, skops_bytes = _CONVERTED[digest]
    else:
        try:
            done = subprocess.run([sys.executable, "-P", "-m", "pgscore.unpickle"], input=data, capture_output=True,
                                  env=child_environment(), timeout=UNPICKLE_TIMEOUT, close_fds=True, check=False)
        except subprocess.TimeoutExpired:
            raise PushError(f"{origin} took more than {UNPICKLE_TIMEOUT} s to unpickle; not pushed") from None
        out = done.stdout
        size = int.from_bytes(out[:8], "big") if len(out) >= 8 else -1
        try:
            report = json.loads(out[8:8 + size]) if 0 <= size <= len(out) - 8 else None
        except ValueError:
            report = None
        if done.returncode != 0 or not isinstance(report, dict):
            last = (done.stderr.decode(errors="replace").strip().splitlines() or [""])[-1]
            raise PushError(f"{origin} could not be loaded as a joblib model: the process unpickling it exited "
                            f"with status {done.returncode}" + (f" ({last})" if last else "") + f"; {EXPECTED_FILE}")
        skops_bytes = out[8 + size:]
        _CONVERTED[digest] = (report, skops_bytes)
        while len(_CONVERTED) > _CONVERTED_KEPT:
            del _CONVERTED[next(iter(_CONVERTED))]
    if "error" in report:
        if report.get("missing_module"):
            raise PushError(f"{origin} could not be loaded as a joblib model: it needs the Python module "
                            f"{report['missing_module']!r}, which pgscore's runtime does not have; "
                            + server_runtime.missing_module_guidance(str(report["missing_module"])))
        raise PushError(f"{origin} could not be loaded as a joblib model ({report['error']}): {EXPECTED_FILE}")
    refused = report.get("untrusted") or []
    compiles = sorted({str(t).split(".")[0] for t in refused} & set(COMPILED_LIBRARIES))
    if compiles:
        # Push needs the live model (its predict_proba) to compile it and check the compiled form.
        raise PushError(
            f"{origin} holds a {report.get('type')} built with {', '.join(compiles)}, which push compiles into "
            "data the server scores without that library; compiling it means unpickling it in this process, "
            "which runs the pickle's code: if you made or trust the file, push it with --i-trust-this-pickle "
            "(the server receives only the compiled arrays, never the pickle)")
    if "skops_error" in report or refused:
        why = report.get("skops_error") or "it needs types pgscore does not trust: " + ", ".join(map(str, refused))
        raise PushError(
            f"{origin} holds a {report.get('type')} that pgscore cannot rebuild without unpickling it ({why}). "
            "Checking it here would run the pickle's code in this process: if you made or trust the file, push it "
            "with --i-trust-this-pickle and --format joblib (the server then loads it only once a superuser has "
            "run pgscore approve on its sha256)" + _third_party_note(refused))
    # Rebuilt here from the skops bytes, with the trusted-types check again:
    # nothing the child reports is taken on trust.
    estimator = _load_skops(skops_bytes, origin)
    saved = report.get("saved")
    if not isinstance(saved, dict):
        saved = dict(server_runtime.versions())
    return estimator, {str(k): (None if v is None else str(v)) for k, v in saved.items()}


# Libraries whose classifiers pgscore.compile converts (loader/compile/families.py): their
# models are stored compiled, so a pickle of one needs no approval, only the pusher's trust.
COMPILED_LIBRARIES = ("xgboost", "lightgbm")
# Top-level modules of the base runtime's own types; a refused type from any other is a third-party step.
_RUNTIME_MODULES = ("sklearn", "numpy", "scipy", "pandas", "joblib", "skops", "builtins", "collections", "functools")


def _third_party_note(types: list) -> str:
    """The guidance for types from packages the server's runtime lacks ('' if none)."""
    outside = sorted({str(t).split(".")[0] for t in types} - set(_RUNTIME_MODULES))
    if not outside:
        return ""
    return (f". It uses {', '.join(outside)}, which the server's runtime does not have: "
            + server_runtime.missing_module_guidance(outside[0]))


def _load_blob(blob: bytes, origin: str) -> tuple[Any, dict[str, str]]:
    """Unpickles a joblib file in this process: only with --i-trust-this-pickle."""
    import joblib
    from sklearn.exceptions import InconsistentVersionWarning

    saved = dict(server_runtime.versions())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InconsistentVersionWarning)
        try:
            estimator = joblib.load(io.BytesIO(blob))
        except Exception as exc:
            raise PushError(
                f"{origin} could not be loaded as a joblib model ({type(exc).__name__}: {exc}): {EXPECTED_FILE}"
            ) from None
    for warning in caught:
        if isinstance(warning.message, InconsistentVersionWarning):
            saved["scikit-learn"] = warning.message.original_sklearn_version
    return estimator, saved


def check_estimator(estimator: Any, origin: str) -> list[str]:
    """The feature names of a pushable binary classifier; raises PushError otherwise."""
    if not hasattr(estimator, "predict_proba"):
        raise PushError(f"{origin} ({type(estimator).__name__}) has no predict_proba: push a probabilistic classifier")
    classes = getattr(estimator, "classes_", None)
    if classes is None or len(classes) != 2:
        raise PushError(f"{origin} is not a fitted binary classifier (classes_: {classes!r})")
    names = getattr(estimator, "feature_names_in_", None)
    if names is None:
        raise PushError(
            f"{origin} has no feature names: fit it on a pandas DataFrame whose columns are "
            "columns of its scorer's entity table (public.customer_profiles for the scorer churn)"
        )
    return [str(name) for name in names]


def libraries_outside_scikit_learn(estimator: Any) -> list[str]:
    """The top-level modules of the estimator, its pipeline steps and their
    transformers that are not scikit-learn's (SERVER_LIBRARIES), in order."""
    found: list[str] = []
    pending = [estimator]
    while pending:
        part = pending.pop(0)
        if isinstance(part, str) or part is None:  # 'passthrough', 'drop'
            continue
        library = type(part).__module__.split(".", 1)[0]
        if library not in SERVER_LIBRARIES and library not in found:
            found.append(library)
        for _, step in getattr(part, "steps", None) or []:
            pending.append(step)
        for _, transformer, _ in getattr(part, "transformers_", None) or getattr(part, "transformers", None) or []:
            pending.append(transformer)
    return found


def _blob(estimator: Any, format: str, file_bytes: bytes | None, saved: dict, origin: str) -> bytes:
    """The blob the server rebuilds the estimator from, in ``format``; raises
    PushError when the versions it was saved with are not this loader's."""
    if format == "skops" and file_bytes is not None and file_format(file_bytes) == "skops":
        blob = file_bytes  # a skops file is uploaded as it is (checked by _load_skops): its sha256 is what is approved
    elif format == "skops":
        blob = _skops_blob(estimator, origin)
    elif file_bytes is not None and file_format(file_bytes) == "joblib":  # a joblib file is uploaded as it is
        blob = file_bytes
    else:
        blob = formats.dumps(estimator, "joblib")
    local_problems = server_runtime.incompatibilities(saved, server_runtime.versions())
    if local_problems:
        raise PushError(
            f"{origin} was saved with " + " and ".join(local_problems).replace("here:", "this loader has")
            + "; re-save it with the pinned versions (pgscore's runtime-requirements.txt)"
        )
    return blob


def _check_server_runtime(server: dict, saved: dict, origin: str) -> None:
    """Raises PushError when the server's runtime cannot rebuild a blob saved with ``saved``."""
    server_problems = server_runtime.incompatibilities(saved, server)
    if server_problems:
        raise PushError(
            f"the server cannot load {origin}: it was saved with "
            + " and ".join(server_problems).replace("here:", "server has")
            + "; install the pinned runtime on the server (pgscore db start does; see README) "
            "or re-save the model with the server's versions"
        )


def library_versions(libraries: list[str]) -> dict[str, str | None]:
    """The version of each (imported) library, recorded in scoring.models.runtime."""
    import sys

    return {library: getattr(sys.modules.get(library), "__version__", None) for library in libraries}


def check_model_name(name: str) -> None:
    """Raises PushError unless ``name`` may name a model (scoring.models' CHECK,
    checked here before anything is loaded or uploaded)."""
    if isinstance(name, str) and re.fullmatch(MODEL_NAME, name):
        return
    suggestion = re.sub(r"[^a-z0-9_]+", "_", str(name).lower()).strip("_")[:63]
    example = suggestion if re.fullmatch(MODEL_NAME, suggestion) else "churn_v2"
    raise PushError(f"{name!r} cannot name a model: a model name is {MODEL_NAME_RULE} "
                    f"(e.g. --name {example})")


def push_model(
    dsn: str | None,
    model_or_path: Any,
    *,
    name: str,
    activate: bool = False,
    note: str | None = None,
    metrics: dict | None = None,
    sample_size: int = SAMPLE_SIZE,
    scoring_path: str = "auto",
    format: str = "skops",
    trust_pickle: bool = False,
    original: Any = None,
    features: list[str] | None = None,
) -> PushResult:
    """Validates, uploads and test-scores a model; activates it if asked.

    ``model_or_path`` is a skops or joblib file (see :func:`load_model_file`;
    ``trust_pickle`` lets it unpickle a joblib file in this process), an
    MLflow model (a ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` URI,
    or a local MLflow model directory: :mod:`pgscore.mlflow_source`, which
    also says what is recorded in ``metrics``), or a fitted estimator.
    ``scoring_path``: 'auto' uses the compiled form (numpy only, nothing
    unpickled in the server) when the pipeline compiles and matches
    predict_proba to 1e-9, else scikit-learn; and of a compiled model whose
    server-generated SQL is short and passes the same check, the 'sql' path
    (no Python in the complaint trigger and score(bigint)). 'sql',
    'compiled' or 'sklearn' force one.
    ``format``: how the blob is stored: 'skops' (default; the server rebuilds
    only trusted types) or 'joblib' (a pickle: loading it runs code; only on
    explicit request, and on the scikit-learn path the server loads it only
    once a superuser approved its sha256: ``pgscore approve``).
    An ONNX graph (a .onnx file or an onnx.ModelProto) is pushed by
    :func:`pgscore.onnxpush.push_onnx` on the 'onnx' path, with ``original``
    (the model it was converted from) and ``features`` (the column order of
    a graph with one tensor input).
    The features must be columns of the entity table of every scorer whose
    model name is ``name`` (``scoring.scorers``), and the model is
    test-scored on real rows of each.
    Raises PushError (nothing written) when the model is refused,
    ScorerNotFound (a PushError) when no scorer scores with ``name``, and
    psycopg errors for connection or permission problems.
    """
    check_model_name(name)
    if scoring_path not in SCORING_PATHS:
        raise PushError(f"scoring path must be one of {', '.join(SCORING_PATHS)}, not {scoring_path!r}")
    from . import onnxpush

    if onnxpush.is_onnx(model_or_path):
        if scoring_path not in ("auto", paths.ONNX_PATH):
            raise PushError(f"an ONNX graph is scored on the onnx path, not {scoring_path!r}")
        return onnxpush.push_onnx(dsn, model_or_path, name=name, activate=activate, note=note, metrics=metrics,
                                  sample_size=sample_size, original=original, features=features)
    if scoring_path == paths.ONNX_PATH or original is not None or features is not None:
        raise PushError("the onnx path, --original and --features are for ONNX graphs (a .onnx file); "
                        f"{model_or_path} is not one")
    if format not in formats.FORMATS:
        raise PushError(f"model format must be one of {', '.join(formats.FORMATS)}, not {format!r}")
    file_bytes = None
    from_mlflow = None
    if mlflow_source.is_mlflow_source(model_or_path):
        from_mlflow = mlflow_source.load(model_or_path, trust_pickle=trust_pickle)
        origin, estimator, file_bytes, saved = (from_mlflow.origin, from_mlflow.estimator, from_mlflow.file_bytes,
                                                from_mlflow.saved)
        metrics = from_mlflow.metrics(metrics)
    elif isinstance(model_or_path, (str, os.PathLike)):
        origin = str(model_or_path)
        estimator, file_bytes, saved = load_model_file(model_or_path, trust_pickle=trust_pickle)
        if metrics is None:
            metrics = _sidecar_metrics(Path(model_or_path))
    else:
        origin = f"{type(model_or_path).__name__} object"
        estimator, saved = model_or_path, dict(server_runtime.versions())
    feature_names = check_estimator(estimator, origin)
    # Built with other libraries than scikit-learn: stored as its compiled archive when it compiles
    # (decided below, once the database's rows checked it), the blob only as a fallback.
    foreign = libraries_outside_scikit_learn(estimator)
    blob = None if foreign else _blob(estimator, format, file_bytes, saved, origin)
    with connect(dsn) as conn:
        entities = scorers.entities_for_model(conn, name)
        for entity in entities:
            columns = verify.entity_columns(conn, entity)
            if from_mlflow is not None:
                mlflow_source.check_signature(from_mlflow, entity, columns, name)
            unknown = [feature for feature in feature_names if feature not in columns]
            if unknown:
                raise PushError(
                    f"{origin} uses features that are not columns of {entity.table}: " + ", ".join(unknown)
                    + f"; train it on columns of {entity.table} only (scorer {entity.scorer!r} scores with "
                    f"model name {name!r} there)"
                )
            _require_read_access(conn, entity, feature_names)
        server = conn.execute("SELECT scoring.runtime_info()").fetchone()[0]
        if blob is not None:
            _check_server_runtime(server, saved, origin)
        # The first scorer's rows check the compiled form and the SQL; every scorer's rows are test-scored.
        entity = entities[0]
        compiled, path, path_note, checks = _compile(conn, estimator, feature_names, scoring_path, origin, entity)
        bound = verify.parity_bound(compiled)
        if foreign and compiled is not None:
            format, blob = "compiled", compiled
            saved = {**dict(server_runtime.versions()), **library_versions(foreign)}
        elif foreign:
            lacking = [library for library in foreign if library not in server.get("modules", ())]
            if lacking:
                raise PushError(
                    f"{origin} is built with {', '.join(foreign)}; the server's runtime lacks "
                    f"{', '.join(lacking)} and the model cannot be compiled "
                    f"({(path_note or '').removeprefix('not compiled: ')}). "
                    + server_runtime.missing_module_guidance(lacking[0]))
            # A DBA added these libraries to the server's runtime: the blob, on the sklearn path.
            blob = _blob(estimator, format, file_bytes, saved, origin)
            _check_server_runtime(server, saved, origin)
        digest = hashlib.sha256(blob).hexdigest()
        if path == "sklearn":
            _require_approval(conn, format, digest, f"{origin} (pushed as a version of model {name!r})", blob)
        with conn.transaction():
            model_id, version = conn.execute(
                "INSERT INTO scoring.models (name, version, format, blob, sha256, feature_names, runtime,"
                " compiled, scoring_path, path_note, metrics, note)"
                " VALUES (%s, 1, %s, %b, %s, %s, %s, %b, %s, %s, %s, %s) RETURNING model_id, version",
                [name, format, blob, digest, feature_names, Jsonb(saved), compiled, path, path_note,
                 Jsonb(metrics or {}), note],
            ).fetchone()
            results = [_test_score(conn, estimator, model_id, feature_names, sample_size, origin, scored, bound)
                       for scored in entities]
            tested = sum(count for count, _ in results)
            max_diff = max((diff for _, diff in results if diff is not None), default=None)
            if path == "compiled" and scoring_path in ("auto", "sql"):
                path, path_note = _sql_path(conn, estimator, model_id, feature_names, scoring_path, origin, path_note,
                                            checks, entity, bound)
            if activate:
                conn.execute("SELECT scoring.activate(%s, %s)", [name, version])
    where = " or ".join(dict.fromkeys(scored.table for scored in entities))
    notes = [] if tested else [f"no rows in {where} to test-score the model on; it was checked for loading only"]
    if from_mlflow is not None:
        notes.insert(0, f"from {mlflow_source.describe(from_mlflow)} (recorded in the version's metrics)")
    return PushResult(name, version, model_id, digest, activate, tested, max_diff, path, path_note, notes,
                      [scored.table for scored in entities], format=format)


def _require_read_access(conn: psycopg.Connection, entity: Entity, feature_names: list[str]) -> None:
    """Raises PushError unless this session may read the key and feature
    columns of ``entity``: push reads its rows to check the model on them."""
    wanted = list(dict.fromkeys([entity.key, *feature_names]))
    role, schema_usage, flags = conn.execute(
        "SELECT current_user::text, has_schema_privilege(%s, 'USAGE'),"
        " array_agg(has_column_privilege(%s::regclass, c, 'SELECT') ORDER BY n)"
        " FROM unnest(%s::text[]) WITH ORDINALITY AS t(c, n)", [entity.schema, entity.relation, wanted]).fetchone()
    missing = [column for column, ok in zip(wanted, flags) if not ok]
    if missing or not schema_usage:
        grantee = sql.Identifier(role).as_string(conn)
        grants = [] if schema_usage else [f"GRANT USAGE ON SCHEMA {sql.Identifier(entity.schema).as_string(conn)} "
                                          f"TO {grantee}"]
        columns = ", ".join(sql.Identifier(column).as_string(conn) for column in (missing or wanted))
        if missing:
            grants.append(f"GRANT SELECT ({columns}) ON {entity.table} TO {grantee}")
        raise PushError(
            f"role {role} may not read {columns} of {entity.table}, which push reads to test-score the model on "
            f"real rows of scorer {entity.scorer!r}; as the table's owner: {'; '.join(grants)}")


def _require_approval(conn: psycopg.Connection, fmt: str, digest: str, subject: str, blob: bytes) -> None:
    """Raises PushError before anything is written when the server would
    refuse to load the blob (pgscore_server.approvals.require decides
    the same there): a pickle, or a skops blob holding types outside
    formats.NATIVE_SAFE_TYPES, on the scikit-learn path whose sha256 no
    superuser approved."""
    needed, types = approvals.needs_approval(fmt, blob)
    if not needed:
        return
    approved = conn.execute("SELECT EXISTS (SELECT FROM scoring_trusted.approved_pickles WHERE sha256 = %s)",
                            [digest]).fetchone()[0]
    if not approved:
        message, hint = approvals.refusal(subject, fmt, types, digest)
        again = ("then push the same .skops file again (its bytes are what is approved; saving a model again"
                 " changes them)" if types else "then push it again")
        raise PushError(f"{message}; {hint}; {again}. Nothing was pushed")


def _skops_blob(estimator: Any, origin: str) -> bytes:
    """The estimator in skops format; raises PushError if it needs untrusted types."""
    try:
        blob = formats.dumps(estimator, "skops")
    except Exception as exc:
        raise PushError(f"{origin} cannot be saved in skops format: {type(exc).__name__}: {exc}; "
                        "push it with --format joblib if you trust it") from None
    refused = formats.untrusted_types(blob)
    if refused:
        raise PushError(
            f"{origin} needs types pgscore does not trust in skops format: {', '.join(refused)}; "
            "use scikit-learn estimators only, or push it with --format joblib (a pickle, which runs code "
            "when loaded) if you trust it")
    return blob


def _compile(conn: psycopg.Connection, estimator: Any, feature_names: list[str], wanted: str,
             origin: str, entity: Entity) -> tuple[bytes | None, str, str | None, check_rows.CheckRows | None]:
    """(compiled bytes or None, scoring path, why, the rows it was checked on)
    for a model about to be pushed.

    The compiled form is used only if it matches predict_proba within
    its bound (verify.parity_bound) on real rows of ``entity`` and on rows generated from the model
    (see :func:`pgscore.verify.check_rows_for`), and never when it was checked on no row at
    all. Raises PushError when 'compiled' was forced and is not possible.
    """
    from .compile import UnsupportedModel, compile_model

    if wanted == "sklearn":
        return None, "sklearn", "scikit-learn path forced at push", None
    forced = wanted in paths.COMPILED_PATHS  # a path that needs the compiled form
    try:
        compiled = compile_model(estimator)
        checks = verify.check_rows_for(conn, compiled, feature_names, entity=entity)
        if not checks.total:
            raise UnsupportedModel(f"no row of {entity.table} and no generated row to check the compiled form on")
        edges = checks.edges
        bound = verify.parity_bound(compiled)
        worst = max(verify.batch_parity(estimator, compiled, checks.profiles) if checks.profiles else 0.0,
                    verify.batch_parity(estimator, compiled, edges) if edges else 0.0,
                    verify.row_by_row_parity(estimator, compiled,
                                             checks.profiles[:50] + verify.one_by_one_sample(checks)))
        if not bound.holds(worst):
            raise UnsupportedModel(
                f"compiled form differs from predict_proba by {bound.describe(worst)} (> {bound})")
    except UnsupportedModel as exc:
        if forced:
            raise PushError(f"{origin} cannot use the compiled path: {exc.reason}") from None
        return None, "sklearn", f"not compiled: {exc.reason}", None
    except Exception as exc:  # the model itself fails on some edge case: scikit-learn decides then
        if forced:
            raise PushError(f"{origin} cannot use the compiled path: {type(exc).__name__}: {exc}") from None
        return None, "sklearn", f"not compiled: checking it raised {type(exc).__name__}: {exc}", None
    return (compiled.to_bytes(), "compiled", f"compiled; max difference {bound.describe(worst)} over {checks.describe()}",
            checks)


def _sql_path(conn: psycopg.Connection, estimator: Any, model_id: int, feature_names: list[str], wanted: str,
              origin: str, compiled_note: str | None, checks: check_rows.CheckRows,
              entity: Entity, bound: verify.ParityBound = verify.ABSOLUTE) -> tuple[str, str | None]:
    """('sql', note) when the SQL the server generates for ``model_id`` equals
    predict_proba within ``bound`` on the rows the compiled form was
    checked on (``checks``: its profiles, read again now, and the rows
    generated from the model), and, under 'auto', is short enough to pay
    off; else ('compiled', why not). Raises PushError when 'sql' was forced
    and is not possible."""
    def refuse(reason: str) -> tuple[str, str | None]:
        if wanted == "sql":
            raise PushError(f"{origin} cannot use the sql path: {reason}")
        return "compiled", f"{compiled_note}; not sql: {reason}"

    try:
        with conn.transaction():
            expression = conn.execute("SELECT scoring.sql_expression(%s)", [model_id]).fetchone()[0]
    except psycopg.Error as exc:
        return refuse(exc.diag.message_primary or str(exc))
    if wanted == "auto" and len(expression) > paths.SQL_PATH_MAX_CHARS:
        return refuse(f"its SQL is {len(expression):,} characters (> {paths.SQL_PATH_MAX_CHARS:,}); "
                      "slower per statement than the compiled path")
    # The rows as they are now (a complaint may have changed one since the compiled check).
    keys = [row[entity.key] for row in checks.profiles]
    profiles = verify.fetch_feature_rows(conn, feature_names, keys, entity)
    in_sql = verify.sql_scores(conn, expression, [row[entity.key] for row in profiles], entity)
    pairs = [(in_sql[verify.key_text(row[entity.key])], row) for row in profiles]
    pairs += verify.sql_scores_of_rows(conn, expression, checks.edges, entity)
    worst = 0.0
    for (in_db, row), local in zip(pairs, verify.scores_one_by_one(estimator, [row for _, row in pairs], feature_names)):
        if (in_db is None) != (local is None):
            return refuse(f"SQL {'rejects' if in_db is None else 'scores'} a row scikit-learn "
                          f"{'scores' if in_db is None else 'refuses'}: {row}")
        if in_db is not None:
            difference = float(bound.measure(local, in_db))
            worst = math.inf if math.isnan(difference) else max(worst, difference)
    if not bound.holds(worst):
        return refuse(f"SQL differs from predict_proba by {bound.describe(worst)} (> {bound})")
    note = (f"sql ({len(expression):,} characters); max difference {bound.describe(worst)} over "
            f"{check_rows.CheckRows(profiles, checks.generated).describe()}")
    conn.execute("UPDATE scoring.models SET scoring_path = 'sql', path_note = %s WHERE model_id = %s", [note, model_id])
    return "sql", note


def _test_score(conn: psycopg.Connection, estimator: Any, model_id: int, feature_names: list[str], sample_size: int,
                origin: str, entity: Entity, bound: verify.ParityBound = verify.ABSOLUTE) -> tuple[int, float | None]:
    """Scores a random sample of real rows of ``entity`` in the database and
    here; raises PushError (rolling the push back) unless they agree within
    ``bound`` (verify.parity_bound). Returns the count and the largest absolute difference."""
    rows, scored = verify.sampled_in_database(conn, model_id, sample_size, entity, feature_names, origin)
    if not rows:
        return 0, None
    local = verify.library_proba(estimator, rows, feature_names)
    diffs = [abs(s - float(p)) for s, p in zip(scored, local)]
    max_diff = max(diffs)
    worst = float(bound.measure(local, scored).max())  # NaN if either side is NaN: refused
    if not math.isfinite(max_diff) or not bound.holds(worst):
        rows_of = "profiles" if entity.is_reference else f"rows of {entity.table}"
        raise PushError(
            f"{origin} scores differently in the database (max difference {bound.describe(worst)} over {len(rows)} "
            f"{rows_of}, tolerance {bound}); it was not pushed"
        )
    return len(rows), max_diff


def _sidecar_metrics(path: Path) -> dict:
    sidecar = path.with_name(path.name + ".metrics.json")
    if sidecar.exists():
        return json.loads(sidecar.read_text())
    return {}
