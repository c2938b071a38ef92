"""Which model is active, and loading it once per backend.

The active model of a name is looked up on every scoring call (one indexed
read), so an activation or rollback in any session takes effect on the next
call here. The loaded model is cached by model_id and checked against its
sha256 and scoring path.

Two ways to evaluate a model:
- 'compiled': the data-only arrays of ``scoring.models.compiled``, evaluated
  with numpy by :mod:`pgscore_server.compiled`; nothing is unpickled and
  scikit-learn is never imported.
- 'sklearn': the pickled blob, sha256-verified before it is unpickled, after
  checking the scikit-learn/numpy versions it was saved with.
- 'onnx': an ONNX graph (format 'onnx') run by onnxruntime
  (:mod:`pgscore_server.onnxpath`, imported only for such a model).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping

from . import catalog, features, plans, runtime
from .errors import (
    INSUFFICIENT_PRIVILEGE,
    INVALID_PARAMETER_VALUE,
    MODEL_FAILED,
    MODEL_LOAD_FAILED,
    NOT_IN_PREREQUISITE_STATE,
    UNDEFINED_OBJECT,
    ScoringError,
    as_scoring_error,
)
from .paths import COMPILED_PATHS, ONNX_PATH

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (package docstring)
if TYPE_CHECKING:
    from typing import Any, Sequence

# Loaded models kept per backend: the active one plus a few recent ones
# (rollback, score_with_model) without holding every version in memory.
CACHE_SIZE = 4

# The active model of a name: its latest deployment (what the view
# scoring.active_models shows; read from the tables, as everywhere in the
# server). {columns} of deployments d and models m, the name as {name}.
ACTIVE_MODEL_SQL = (
    "SELECT {columns} FROM scoring.deployments d"
    " JOIN scoring.models m USING (model_id)"
    " WHERE d.name = {name} ORDER BY d.deployment_id DESC LIMIT 1"
)
ACTIVE_SQL = ACTIVE_MODEL_SQL.format(columns="d.model_id, m.sha256, m.scoring_path", name="$1")
MODEL_SQL = (
    "SELECT model_id, name, version, format, sha256, scoring_path, feature_names, runtime::text AS runtime,"
    f" CASE WHEN scoring_path IN ({', '.join(repr(path) for path in COMPILED_PATHS)}) THEN compiled END AS compiled"
    " FROM scoring.models WHERE model_id = $1"
)
BLOB_SQL = "SELECT blob FROM scoring.models WHERE model_id = $1"
PUSHED_NAMES_SQL = "SELECT DISTINCT name FROM scoring.models ORDER BY name"
# What a model name may be: the CHECK constraint on scoring.models.name
# (sql/incremental/0001-tables.sql), which the loader checks before it uploads.
MODEL_NAME = "[a-z][a-z0-9_]{0,62}"
MODEL_NAME_RULE = "a lowercase letter followed by up to 62 lowercase letters, digits or underscores"
# Names listed in an unknown model name's hint, at most.
NAMES_SHOWN = 10


class LoadedModel:
    """A model ready to score in this backend.

    A plain class: importing dataclasses (and with it inspect, ast, dis and
    tokenize) would cost every new backend ~1.5 MiB.
    """

    def __init__(self, model_id: int, name: str, version: int, sha256: str, feature_names: list[str],
                 estimator: Any, scoring_path: str = "sklearn", select_list: str = "",
                 array_list: str = "", batch_list: str = "", joined: Sequence[int] = (),
                 coded: Sequence[int] = ()) -> None:
        self.model_id = model_id
        self.name = name
        self.version = version
        self.sha256 = sha256
        self.feature_names = feature_names
        self.estimator = estimator
        self.scoring_path = scoring_path
        self.select_list = select_list
        self.array_list = array_list
        self.batch_list = batch_list or array_list
        self.joined = list(joined)  # features batch_list reads as one joined string
        self.coded = list(coded)  # ... and as category codes (compiled.CategoryCodes)
        self.plan_cache: dict = {}
        # The table the readers above are written for (a scorer's stamp;
        # None: the reference profiles) and its key column, quoted.
        self.table: str | None = None
        self.key = "customer_id"

    @property
    def label(self) -> str:
        return f"model {self.name!r} v{self.version} (model_id {self.model_id})"

    def read_columns(self, plpy: Any, cache: dict, source: str, types: Sequence[str],
                     args: Sequence[Any], also: str = "") -> tuple[list[int], list, Mapping[str, Any]]:
        """(customer_ids, one sequence per feature, the aggregate row) of the
        profiles ``source`` (a FROM clause aliased ``p``) yields; all arrays
        come from one aggregate pass, so they are in the same row order.
        ``also`` adds aggregates to that pass (``, array_agg(..) AS name``),
        found in the row. Text features come joined or as category codes
        (catalog.batch_list); where a column has NULLs or a value holding the
        separator, or codes the model cannot use
        (compiled.Evaluator.codes_usable), the batch is read again as arrays."""
        def aggregate(select_list: str) -> Any:
            sql = (f"SELECT count(*) AS pgscore_rows, array_agg(p.{self.key}) AS pgscore_ids, {select_list}{also}"
                   f" FROM {source}")
            return plans.run(plpy, cache, sql, types, args)[0]

        row = aggregate(self.batch_list)
        columns = [row[name] or [] for name in self.feature_names]
        if not self._compact_columns_usable(row, columns):
            row = aggregate(self.array_list)
            columns = [row[name] or [] for name in self.feature_names]
        return list(row["pgscore_ids"] or []), columns, row

    def _compact_columns_usable(self, row: Mapping[str, Any], columns: list) -> bool:
        """Decodes the joined and coded features of a batch read into
        ``columns``; False if one must be read as an array instead."""
        rows = row["pgscore_rows"]
        for k in self.joined:
            joined = row[self.feature_names[k]]
            values = joined.split(catalog.JOIN_SEPARATOR) if joined is not None else []
            if row[f"pgscore_count_{k}"] != rows or len(values) != rows:
                return False
            columns[k] = values
        if self.coded:
            from .compiled import CategoryCodes

            for k in self.coded:
                codes = CategoryCodes.from_text(row[self.feature_names[k]])
                if len(codes) != rows or not self.estimator.codes_usable(k, codes):
                    return False
                columns[k] = codes
        return True

    def predict_columns(self, columns: Sequence[Sequence[Any]], threads: int = 1) -> list[float]:
        """:meth:`predict` from one list per feature (feature_names order);
        a compiled tree model may walk a large batch in ``threads`` threads."""
        if not columns or not len(columns[0]):
            return []
        if self.scoring_path in COMPILED_PATHS:
            return self._checked(lambda: self.estimator.predict_columns(columns, threads), [])
        return self.predict(list(zip(*columns)))

    def predict(self, rows: Sequence[Any]) -> list[float]:
        """P(churn) for each row; raises ScoringError if the model fails or
        returns anything but a probability for any row."""
        if not rows:
            return []
        if self.scoring_path in COMPILED_PATHS:
            if len(rows) == 1:
                return [self.predict_one(rows[0])]  # no numpy for one row of a tree model
            return self._checked(lambda: self.estimator.predict(rows), rows)
        if self.scoring_path == ONNX_PATH:
            return self._checked(lambda: self.estimator.predict(rows), rows)
        return self._checked(
            lambda: self.estimator.predict_proba(features.to_frame(rows, self.feature_names))[:, 1], rows)

    def predict_one(self, row: Sequence[Any]) -> float:
        """:meth:`predict` of one row, without the batch's arrays on the compiled paths."""
        if self.scoring_path in COMPILED_PATHS:
            return self._checked(lambda: (self.estimator.predict_one(row),), (row,))[0]
        return self.predict([row])[0]

    def _checked(self, call: Any, rows: Sequence[Any]) -> list[float]:
        try:
            proba = call()
        except Exception as exc:
            # The compiled evaluator names the feature itself; scikit-learn often does not.
            cause = "" if self.scoring_path in COMPILED_PATHS else explain_failure(self.estimator, rows, self.feature_names)
            context = f"{self.label} failed to score" + (f" ({cause})" if cause else "")
            raise as_scoring_error(exc, context) from None
        if hasattr(proba, "tolist"):  # numpy: one vectorised check (NaN fails both comparisons)
            scores = proba.tolist()
            probabilities = (proba >= 0.0) & (proba <= 1.0)
            wrong = None if probabilities.all() else scores[int(probabilities.argmin())]
        else:
            scores = [float(p) for p in proba]
            wrong = next((score for score in scores if not (math.isfinite(score) and 0.0 <= score <= 1.0)), None)
        if wrong is not None:
            raise ScoringError(
                f"{self.label} returned {wrong!r}, which is not a probability",
                sqlstate=MODEL_FAILED,
                hint="check the model's input features for NULLs or out-of-range values",
            )
        return scores


def explain_failure(estimator: Any, rows: Sequence[Any], feature_names: Sequence[str]) -> str:
    """Which feature a scikit-learn failure is about, where that can be told:
    NULL features, and categories a OneHotEncoder(handle_unknown='error') never saw."""
    rows = [row if isinstance(row, Mapping) else dict(zip(feature_names, row)) for row in rows]
    nulls = [name for name in feature_names if any(row[name] is None for row in rows)]
    if nulls:
        return "NULL " + ", ".join(f"feature {name!r}" for name in nulls)
    unknown = []
    for columns, categories in _strict_encoders(estimator):
        for name, known in zip(columns, categories):
            seen = {value for value in known if isinstance(value, str)}
            unknown += [f"feature {name!r}: unknown category {row[name]!r}" for row in rows
                        if name in row and isinstance(row[name], str) and row[name] not in seen]
    return "; ".join(dict.fromkeys(unknown))


def _strict_encoders(estimator: Any) -> list[tuple[list[str], list[Any]]]:
    """(input columns, learned categories) of each OneHotEncoder(handle_unknown='error')
    inside a pipeline's ColumnTransformer."""
    found = []
    steps = getattr(estimator, "steps", [("", estimator)])
    for _, step in steps:
        for _, transformer, columns in getattr(step, "transformers_", []):
            parts = getattr(transformer, "steps", [("", transformer)])
            for _, part in parts:
                if type(part).__name__ == "OneHotEncoder" and part.handle_unknown == "error" and \
                        isinstance(columns, (list, tuple)) and all(isinstance(c, str) for c in columns):
                    found.append((list(columns), list(part.categories_)))
    return found


def active_model_id(plpy: Any, cache: dict, name: str) -> tuple[int, str, str] | None:
    """(model_id, sha256, scoring_path) of the active model of ``name``, or None."""
    rows = plans.run(plpy, cache, ACTIVE_SQL, ["text"], [name])
    if not rows:
        return None
    return rows[0]["model_id"], rows[0]["sha256"], rows[0]["scoring_path"]


def cached(cache: dict, model_id: int, sha256: str | None = None,
           scoring_path: str | None = None) -> LoadedModel | None:
    """The model if this backend has it loaded (as recorded, where ``sha256``
    and ``scoring_path`` are given), else None. Runs no query."""
    found = cache.get("pgscore.models", {}).get(model_id)
    if found is None or (sha256 is not None and found.sha256 != sha256):
        return None
    return found if scoring_path is None or found.scoring_path == scoring_path else None


def forget(cache: dict, model_id: int) -> None:
    """Drops this backend's copy of the model: the next load reads it again."""
    cache.get("pgscore.models", {}).pop(model_id, None)


def active_model(plpy: Any, cache: dict, name: str) -> LoadedModel:
    """The active model of ``name``, loaded. Raises ScoringError when there is none."""
    if name is None:
        raise ScoringError("model name is NULL", sqlstate=INVALID_PARAMETER_VALUE, hint="pass a model name such as 'churn'")
    active = active_model_id(plpy, cache, name)
    if active is None:
        raise no_active_model(plpy, cache, name)
    return load(plpy, cache, *active)


def no_active_model(plpy: Any, cache: dict, name: str) -> ScoringError:
    names = pushed_names(plpy, cache)
    if name not in names:
        return ScoringError(
            f"no model named {name!r} has been pushed",
            sqlstate=UNDEFINED_OBJECT,
            hint=unknown_model_hint(name, names),
        )
    return ScoringError(
        f"no active model named {name!r}",
        sqlstate=NOT_IN_PREREQUISITE_STATE,
        hint=f"activate a version with: pgscore activate {name} VERSION",
    )


def pushed_names(plpy: Any, cache: dict) -> list[str]:
    """Every model name pushed to this database, sorted."""
    return [row["name"] for row in plans.run(plpy, cache, PUSHED_NAMES_SQL)]


def unknown_model_hint(name: str, names: Sequence[str]) -> str:
    """The hint for a model name that was never pushed: the closest pushed
    name (a typo, most often) and the names pushed, or how to push one. The
    one wording, for the database's functions and the loader's commands."""
    import difflib  # here: only an unknown name needs them
    import re

    push = f"pgscore push FILE --name {name} --activate"
    valid = isinstance(name, str) and re.fullmatch(MODEL_NAME, name) is not None
    if not names:
        return f"push one with: {push}" if valid else f"no model is pushed yet; a model name is {MODEL_NAME_RULE}"
    shown = ", ".join(names[:NAMES_SHOWN])
    if len(names) > NAMES_SHOWN:
        shown += f" and {len(names) - NAMES_SHOWN} more"
    folded = {known.casefold(): known for known in names}
    closest = ([folded[name.casefold()]] if isinstance(name, str) and name.casefold() in folded
               else difflib.get_close_matches(str(name), list(names), n=1, cutoff=0.6))
    if closest:
        return f"did you mean {closest[0]!r}? Models pushed: {shown}"
    return f"models pushed: {shown}" + (f"; to push one under this name: {push}" if valid else "")


def load(plpy: Any, cache: dict, model_id: int, expected_sha256: str | None = None,
         expected_path: str | None = None, scorer: Any = None) -> LoadedModel:
    """The model with ``model_id``, from this backend's cache or the models table.

    Raises ScoringError when it does not exist, its compiled form is
    unreadable, or (scikit-learn path) its blob fails the sha256 check, it was
    saved with another runtime, or it cannot be unpickled.
    """
    models: OrderedDict[int, LoadedModel] = cache.setdefault("pgscore.models", OrderedDict())
    found = models.get(model_id)
    if found is not None and (expected_sha256 is None or found.sha256 == expected_sha256) and (
            expected_path is None or found.scoring_path == expected_path):
        models.move_to_end(model_id)
        if found.table != (scorer.stamp if scorer is not None else None):
            _bind(plpy, cache, found, scorer)
        return found
    rows = plans.run(plpy, cache, MODEL_SQL, ["bigint"], [model_id])
    if not rows:
        raise ScoringError(
            f"no model with model_id {model_id}",
            sqlstate=UNDEFINED_OBJECT,
            hint="list the models with: pgscore models",
        )
    row = rows[0]
    label = f"model {row['name']!r} v{row['version']} (model_id {model_id})"
    feature_names = list(row["feature_names"])
    _check_features(plpy, cache, feature_names, label, scorer)
    if row["scoring_path"] in COMPILED_PATHS:
        estimator = load_compiled(bytes(row["compiled"]), label)
    elif row["scoring_path"] == ONNX_PATH:
        estimator = load_onnx(plpy, cache, row, model_id, expected_sha256, label)
    else:
        blob = bytes(plans.run(plpy, cache, BLOB_SQL, ["bigint"], [model_id])[0]["blob"])
        verify_blob(blob, row["sha256"], expected_sha256, label, row["name"])
        # The one gate before a blob is deserialised: a pickle, or a skops blob with types outside
        # formats.NATIVE_SAFE_TYPES, needs a superuser's approval of its sha256.
        from . import approvals  # here: the compiled and sql paths never need it (nor formats, which it imports)

        approved = approvals.require(plpy, cache, row["format"], row["sha256"], row["name"], row["version"], blob)
        runtime.check_compatible(runtime.parse_recorded(row["runtime"]), label)
        estimator = deserialize(row["format"], blob, label, approved)
    model = LoadedModel(
        model_id=model_id,
        name=row["name"],
        version=row["version"],
        sha256=row["sha256"],
        feature_names=feature_names,
        estimator=estimator,
        scoring_path=row["scoring_path"],
    )
    _bind(plpy, cache, model, scorer)
    models[model_id] = model
    models.move_to_end(model_id)
    while len(models) > CACHE_SIZE:
        models.popitem(last=False)
    return model


def _check_features(plpy: Any, cache: dict, feature_names: list[str], label: str, scorer: Any) -> None:
    """Raises ScoringError unless every feature is a column the model's table
    has, of a type pgscore reads, and (for a scorer) one its owner let pgscore read."""
    if scorer is None:
        catalog.check_features(feature_names, catalog.profile_columns(plpy, cache), label)
        return
    catalog.check_features(feature_names, scorer.columns, label, table=scorer.entity)
    hidden = [name for name in feature_names if name not in scorer.features]
    if hidden:
        raise ScoringError(
            f"{label} uses {', '.join(map(repr, hidden))}, which scorer {scorer.name!r} may not read"
            f" (attached with features {', '.join(scorer.features) or 'none'})",
            sqlstate=INSUFFICIENT_PRIVILEGE,
            hint=f"the owner of {scorer.entity} can attach the scorer again with those columns in features")


def _bind(plpy: Any, cache: dict, model: LoadedModel, scorer: Any) -> None:
    """Writes the model's readers (select lists) for the table it scores:
    a scorer's entity, or the reference profiles (``scorer`` None)."""
    columns = catalog.profile_columns(plpy, cache) if scorer is None else scorer.columns
    if scorer is not None:
        _check_features(plpy, cache, model.feature_names, model.label, scorer)
    feature_names = model.feature_names
    coded: dict[int, list[str]] = {}
    if model.scoring_path in COMPILED_PATHS:
        coded = {k: categories for k, categories in model.estimator.category_inputs().items()
                 if columns[feature_names[k]] in catalog.JOINED_TYPES}
    model.select_list = catalog.select_list(plpy, feature_names, columns)
    model.array_list = catalog.select_list(plpy, feature_names, columns, aggregate="array_agg")
    model.batch_list = catalog.batch_list(plpy, feature_names, columns, coded=coded)
    model.joined = [k for k in catalog.joined_features(feature_names, columns) if k not in coded]
    model.coded = list(coded)
    model.plan_cache = {}
    model.table = None if scorer is None else scorer.stamp
    model.key = "customer_id" if scorer is None else scorer.key


def verify_blob(blob: bytes, recorded: str, expected: str | None, label: str, name: str) -> None:
    """Raises ScoringError unless the blob's sha256 is the recorded (and expected) one."""
    import hashlib  # here: the compiled and sql paths never need it (OpenSSL's pages in every backend)

    digest = hashlib.sha256(blob).hexdigest()
    if digest != recorded or (expected is not None and digest != expected):
        raise ScoringError(
            f"{label}: the blob's sha256 is {digest}, not the recorded {recorded}; refusing to load it",
            sqlstate=MODEL_LOAD_FAILED,
            hint=f"push the model again and activate the new version, or roll back: pgscore rollback {name}",
        )


def load_onnx(plpy: Any, cache: dict, row: Mapping[str, Any], model_id: int, expected_sha256: str | None,
              label: str) -> Any:
    """The ONNX model of ``row`` (path 'onnx'): its blob sha256-verified,
    approved by a superuser (onnxruntime is native code parsing it) and
    checked by pgscore_server.onnxpath before onnxruntime, imported only
    here, sees it."""
    blob = bytes(plans.run(plpy, cache, BLOB_SQL, ["bigint"], [model_id])[0]["blob"])
    verify_blob(blob, row["sha256"], expected_sha256, label, row["name"])
    from . import approvals

    approvals.require(plpy, cache, row["format"], row["sha256"], row["name"], row["version"], blob)
    from . import onnxpath

    try:
        return onnxpath.OnnxModel(blob, list(row["feature_names"]), label)
    except ScoringError:
        raise
    except Exception as exc:  # onnxruntime refusing the graph
        raise ScoringError(f"{label} could not be loaded by onnxruntime: {runtime.describe_load_error(exc)}",
                           sqlstate=MODEL_LOAD_FAILED, hint="convert the model again and push it") from None


def load_compiled(data: bytes, label: str) -> Any:
    from . import compiled

    try:
        return compiled.load(data)
    except ValueError as exc:
        raise ScoringError(
            f"{label}: its compiled form cannot be read: {exc}",
            sqlstate=MODEL_LOAD_FAILED,
            hint="push the model again, or evaluate it with scikit-learn: "
                 "SELECT scoring.set_scoring_path(NAME, VERSION, 'sklearn')",
        ) from None


def deserialize(fmt: str, blob: bytes, label: str, approved_sha256: str | None = None) -> Any:
    """The estimator in ``blob``. Only called on a blob whose sha256 was
    verified, and for a pickle with the digest approvals.require returned."""
    from . import formats

    try:
        estimator = formats.loads(blob, fmt, approved_sha256)
    except formats.UntrustedTypes as exc:
        raise ScoringError(
            f"{label} needs types pgscore does not trust: {', '.join(exc.types)}; refusing to load it",
            sqlstate=MODEL_LOAD_FAILED,
            hint="push a model built from scikit-learn estimators only",
        ) from None
    except Exception as exc:
        raise ScoringError(
            f"{label} could not be loaded: {runtime.describe_load_error(exc)}",
            sqlstate=MODEL_LOAD_FAILED,
            hint="push a model saved with the server's runtime (see SELECT scoring.runtime_info())",
        ) from None
    if not hasattr(estimator, "predict_proba"):
        raise ScoringError(
            f"{label} has no predict_proba", sqlstate=MODEL_LOAD_FAILED, hint="push a classifier"
        )
    return estimator
