"""MLflow models as a source for ``pgscore push``: a local MLflow model
directory (a folder with an ``MLmodel`` file) or a registry URI
(``models:/NAME/VERSION``, ``models:/NAME@ALIAS``) resolved against
``MLFLOW_TRACKING_URI``.

MLflow is imported only here and only when such a source is pushed (the
``mlflow`` extra: ``pip install 'pgscore[mlflow]'``); ``pgscore --help``, a
push of a .skops or .joblib file and the server never import it.

MLflow's own loaders are not used for the model itself: they unpickle
whatever the model's ``MLmodel`` file says, and trust the skops types that
file lists. pgscore reads the flavor's file the way it reads its own:

- ``sklearn`` flavor, ``serialization_format: skops``: loaded with
  pgscore's skops trusted-types check (the types the ``MLmodel`` file
  declares trusted are ignored); no pickle, nothing to trust.
- ``sklearn`` (or ``lightgbm`` scikit-learn API) flavor, ``pickle`` or
  ``cloudpickle``: a pickle, handled like a .joblib file: unpickled in a
  child process without database credentials and rebuilt from skops, or in
  this process only with ``trust_pickle`` (``--i-trust-this-pickle``).
- ``xgboost`` flavor with ``model_class`` ``xgboost.sklearn.XGBClassifier``:
  an ``XGBClassifier`` loaded with its own ``load_model`` (xgboost's JSON or
  UBJSON format: no pickle). A raw ``Booster`` (from ``xgboost.train``) is
  refused: it has no classes and no scikit-learn API to check parity with.
- ``lightgbm`` flavor: an ``LGBMClassifier`` (scikit-learn API) saved as
  skops, trusting pgscore's types and LightGBM's classifier and booster
  (which parses a LightGBM model string), or as a pickle (above). A raw
  ``Booster`` is refused like XGBoost's.

What push records (in ``scoring.models.metrics``, under ``"mlflow"``): the
run id, the model URI as given, the registered name and version it resolved
to, the flavor and the signature's input column names; the run's logged
metrics (latest value of each) are merged in beside it, and metrics the
user passes win over them.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .errors import PushError

#: What to install for MLflow sources: said by every error that needs it.
MLFLOW_EXTRA = "pip install 'pgscore[mlflow]'"
#: The flavors push takes, in the order it looks for them in an MLmodel file.
FLAVORS = ("sklearn", "xgboost", "lightgbm")
#: Registry URIs push takes: models:/NAME/VERSION and models:/NAME@ALIAS.
REGISTRY_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[^/@]+))/?")
# The scikit-learn API classes of the boosting flavors (MLmodel's model_class).
_XGB_CLASSIFIER = "xgboost.sklearn.XGBClassifier"
_LGBM_CLASSIFIER = "lightgbm.sklearn.LGBMClassifier"
# What a lightgbm-flavor skops file needs beyond pgscore's trusted types: the
# classifier and the booster it holds (rebuilt from LightGBM's model text).
_LGBM_SKOPS_TYPES = ("lightgbm.sklearn.LGBMClassifier", "lightgbm.basic.Booster", "collections.OrderedDict")


@dataclass
class MlflowModel:
    """An MLflow model read for push: the estimator and what push records of it."""

    estimator: Any
    origin: str                 # the URI or directory as the user gave it: what messages name
    flavor: str
    file_bytes: bytes | None    # the skops or pickle file, uploaded as it is when push's format matches
    saved: dict[str, str | None]  # library versions it was saved with
    signature: list[str] | None   # the signature's input column names (None: no column signature)
    info: dict[str, Any] = field(default_factory=dict)  # run id, URI, registered name and version, flavor
    run_metrics: dict[str, float] = field(default_factory=dict)

    def metrics(self, given: dict | None) -> dict:
        """What push stores in scoring.models.metrics: the run's metrics,
        ``"mlflow"`` (see the module docstring), then ``given`` over both."""
        return {**self.run_metrics, "mlflow": self.info, **(given or {})}


def is_mlflow_source(source: Any) -> bool:
    """True for a ``models:/`` URI and for a directory holding an MLmodel
    file (or that file itself); never imports mlflow."""
    if isinstance(source, str) and source.startswith("models:/"):
        return True
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        return path.name == "MLmodel" and path.is_file() or (path / "MLmodel").is_file()
    return False


def require_mlflow() -> Any:
    """The mlflow module; raises PushError naming the extra when it is not installed.

    MLflow's usage telemetry is turned off (unless MLFLOW_DISABLE_TELEMETRY
    is set): pushing a model should not reach any host but the tracking store."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        import mlflow
    except ImportError as exc:
        raise PushError(f"pushing an MLflow model needs mlflow ({exc}): {MLFLOW_EXTRA}") from None
    return mlflow


def load(source: str | os.PathLike, trust_pickle: bool = False) -> MlflowModel:
    """The model of a ``models:/`` URI or a local MLflow model directory.

    Raises PushError when mlflow is missing, MLFLOW_TRACKING_URI is not set
    for a registry URI, the URI does not resolve, the model has none of
    FLAVORS, or its file does not load under pgscore's rules (module
    docstring)."""
    require_mlflow()
    if isinstance(source, str) and source.startswith("models:/"):
        return _load_registered(source, trust_pickle)
    path = Path(source)
    directory = path.parent if path.name == "MLmodel" else path
    model = _load_directory(directory, str(source), trust_pickle)
    model.info["model_uri"] = str(directory.resolve())
    return model


def _load_registered(uri: str, trust_pickle: bool) -> MlflowModel:
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    found = REGISTRY_URI.fullmatch(uri)
    if found is None:
        raise PushError(f"{uri} is not a registry URI pgscore takes: use models:/NAME/VERSION or models:/NAME@ALIAS")
    tracking = os.environ.get("MLFLOW_TRACKING_URI")
    if not tracking:
        raise PushError(f"{uri} is resolved against MLFLOW_TRACKING_URI, which is not set: set it to the tracking "
                        "store the model is registered in (e.g. sqlite:///path/mlflow.db or http://host:5000)")
    name = found["name"]
    client = MlflowClient()
    try:
        if found["alias"] is not None:
            version = client.get_model_version_by_alias(name, found["alias"])
        else:
            version = client.get_model_version(name, found["version"])
        run_metrics = _run_metrics(client, version.run_id)
        with tempfile.TemporaryDirectory(prefix="pgscore-mlflow-") as tmp:
            with _quiet_download():
                local = download_artifacts(artifact_uri=f"models:/{name}/{version.version}", dst_path=tmp)
            model = _load_directory(Path(local), uri, trust_pickle)
    except MlflowException as exc:
        raise PushError(f"{uri} could not be read from the MLflow store at {_without_password(tracking)}: "
                        f"{exc.message}") from None
    model.info.update(model_uri=uri, registered_model=name, version=int(version.version),
                      run_id=version.run_id or model.info.get("run_id"))
    if found["alias"] is not None:
        model.info["alias"] = found["alias"]
    model.run_metrics = {str(k): float(v) for k, v in run_metrics.items()}
    return model


def _without_password(uri: str) -> str:
    """A tracking URI as messages show it: without the password of a user:password@ part."""
    return re.sub(r"//([^/@:]*):[^/@]*@", r"//\1:***@", uri)


@contextlib.contextmanager
def _quiet_download() -> Iterator[None]:
    """No MLflow progress bar on the terminal during a download (unless the
    user set MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR): push prints its own lines."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    if key in os.environ:
        yield
        return
    os.environ[key] = "false"
    try:
        yield
    finally:
        os.environ.pop(key, None)


def _run_metrics(client: Any, run_id: str | None) -> dict[str, float]:
    """The latest value of each metric the run logged; none when the model
    version has no run or its run is gone (deleted runs keep their registered
    versions)."""
    from mlflow.exceptions import MlflowException

    if not run_id:
        return {}
    try:
        return dict(client.get_run(run_id).data.metrics)
    except MlflowException:
        return {}


def _load_directory(directory: Path, origin: str, trust_pickle: bool) -> MlflowModel:
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    try:
        mlmodel = Model.load(str(directory / "MLmodel"))
    except (MlflowException, OSError, ValueError) as exc:
        raise PushError(f"{origin} is not a readable MLflow model (MLmodel: {exc})") from None
    flavor = next((name for name in FLAVORS if name in mlmodel.flavors), None)
    if flavor is None:
        raise PushError(f"{origin} has the MLflow flavors {', '.join(sorted(mlmodel.flavors))}, none of which pgscore "
                        f"takes ({', '.join(FLAVORS)}): log the model with mlflow.sklearn, mlflow.xgboost or "
                        "mlflow.lightgbm")
    conf = mlmodel.flavors[flavor]
    data = conf.get("pickled_model" if flavor == "sklearn" else "data")
    if not data:
        raise PushError(f"{origin}: its MLmodel file names no model file for the {flavor} flavor; log it again "
                        f"with mlflow.{flavor}.log_model")
    if conf.get("code"):
        raise PushError(f"{origin} was logged with code_paths ({conf['code']}): code the server would need too; "
                        "log a model of scikit-learn, XGBoost or LightGBM objects only")
    path = _model_file(directory, str(data), origin, flavor)
    if flavor == "sklearn":
        estimator, file_bytes, saved = _load_serialized(path, conf, origin, trust_pickle)
        if conf.get("sklearn_version"):
            saved["scikit-learn"] = str(conf["sklearn_version"])
    else:
        estimator, file_bytes, saved = _load_boosting(path, flavor, conf, origin, trust_pickle)
    signature = _signature_columns(mlmodel)
    info: dict[str, Any] = {"flavor": flavor, "run_id": mlmodel.run_id}
    if signature is not None:
        info["signature_inputs"] = signature
    model = MlflowModel(estimator, origin, flavor, file_bytes, saved, signature, info)
    _check_signature_matches_model(model)
    return model


def _model_file(directory: Path, data: str, origin: str, flavor: str) -> Path:
    """The flavor's model file, which the MLmodel file names relative to the
    model directory. Raises PushError for a path that leaves the directory
    (absolute, or through ``..``): an MLmodel file from a shared store or a
    download must not make push read, or unpickle, any file the user can."""
    relative = Path(data)
    if relative.is_absolute() or ".." in relative.parts:
        raise PushError(f"{origin}: its MLmodel file names the {flavor} model file {data!r}, outside the model "
                        "directory; pgscore reads only files inside it: log the model again with "
                        f"mlflow.{flavor}.log_model")
    return directory / relative


def _load_serialized(path: Path, conf: dict, origin: str, trust_pickle: bool,
                     extra_skops_types: tuple[str, ...] = ()) -> tuple[Any, bytes, dict]:
    """A flavor's skops or pickle file, under pgscore's rules for either."""
    from . import push

    fmt = conf.get("serialization_format", "pickle" if path.suffix == ".pkl" else "skops")
    if fmt not in ("skops", "pickle", "cloudpickle"):
        raise PushError(f"{origin} is serialized as {fmt!r}, which pgscore does not read: log it with "
                        "serialization_format='skops'")
    if fmt == "skops" and extra_skops_types:
        return _load_skops_trusting(path, origin, extra_skops_types)
    # A pickle goes through push's child process (or, trusted, this one), exactly like a .joblib file.
    try:
        estimator, data, saved = push.load_model_file(path, trust_pickle=trust_pickle,
                                                      origin=f"{origin} ({path.name})")
    except PushError as exc:
        if fmt == "skops":
            raise
        raise PushError(f"{exc}. An MLflow model logged with serialization_format='skops' (MLflow's default outside "
                        "Databricks) needs no pickle") from None
    return estimator, data, dict(saved)


def _load_skops_trusting(path: Path, origin: str, extra: tuple[str, ...]) -> tuple[Any, bytes, dict]:
    """A skops file whose types must be pgscore's trusted ones or ``extra``
    (fixed here, never read from the MLmodel file)."""
    import skops.io

    from pgscore_server import formats
    from pgscore_server import runtime as server_runtime

    data = path.read_bytes()
    refused = [name for name in skops.io.get_untrusted_types(data=data)
               if name not in formats.SKOPS_TRUSTED_TYPES and name not in extra]
    if refused:
        raise PushError(f"{origin} needs types pgscore does not trust in skops format: {', '.join(refused)}")
    try:
        estimator = skops.io.loads(data, trusted=[*formats.SKOPS_TRUSTED_TYPES, *extra])
    except Exception as exc:
        raise PushError(f"{origin} does not load ({type(exc).__name__}: {exc})") from None
    return estimator, data, dict(server_runtime.versions())


def _load_boosting(path: Path, flavor: str, conf: dict, origin: str,
                   trust_pickle: bool) -> tuple[Any, bytes | None, dict]:
    from pgscore_server import runtime as server_runtime

    wanted = _XGB_CLASSIFIER if flavor == "xgboost" else _LGBM_CLASSIFIER
    model_class = conf.get("model_class", "Booster")
    if model_class != wanted:
        api = "XGBClassifier" if flavor == "xgboost" else "LGBMClassifier"
        raise PushError(
            f"{origin} is a {model_class} logged with mlflow.{flavor}; pgscore takes the scikit-learn API's binary "
            f"classifier only: train and log a {flavor}.{api} (mlflow.{flavor}.log_model(model, ...)), whose "
            "predict_proba push checks the compiled form against")
    if flavor == "lightgbm":
        return _load_serialized(path, conf, origin, trust_pickle, _LGBM_SKOPS_TYPES)
    try:
        import xgboost
    except ImportError as exc:
        raise PushError(f"{origin} needs xgboost to be read ({exc}): pip install 'pgscore[boosting]'") from None
    estimator = xgboost.XGBClassifier()
    try:
        estimator.load_model(str(path))  # xgboost's JSON/UBJSON model format: no pickle
    except Exception as exc:
        raise PushError(f"{origin} does not load as an XGBClassifier ({type(exc).__name__}: {exc})") from None
    saved = dict(server_runtime.versions())
    if conf.get("xgb_version"):
        saved["xgboost"] = str(conf["xgb_version"])
    return estimator, None, saved


def _signature_columns(mlmodel: Any) -> list[str] | None:
    """The input column names of a column-based signature; None without one
    (no signature, or a tensor signature, which names no columns)."""
    signature = mlmodel.signature
    if signature is None or signature.inputs is None or not signature.inputs.has_input_names():
        return None
    return [str(name) for name in signature.inputs.input_names()]


def _check_signature_matches_model(model: MlflowModel) -> None:
    """Raises PushError when the signature's columns are not the estimator's
    features (the model would be fed columns it was not trained on)."""
    names = getattr(model.estimator, "feature_names_in_", None)
    if model.signature is None or names is None:
        return
    features = [str(name) for name in names]
    if sorted(features) != sorted(model.signature):
        only_signature = [c for c in model.signature if c not in features]
        only_model = [c for c in features if c not in model.signature]
        raise PushError(
            f"{model.origin}: its signature's inputs are not the model's features (only in the signature: "
            f"{', '.join(only_signature) or '-'}; only in the model: {', '.join(only_model) or '-'}); log it with "
            "signature=infer_signature(X_train) on the frame it was fitted on")


def check_signature(model: MlflowModel, entity: Any, columns: dict[str, str], name: str) -> None:
    """Raises PushError naming the signature's columns that ``entity``'s
    table lacks (``columns``: verify.entity_columns of it)."""
    if model.signature is None:
        return
    missing = [column for column in model.signature if column not in columns]
    if missing:
        raise PushError(
            f"{model.origin} has a signature whose columns {entity.table} lacks: {', '.join(missing)} "
            f"(scorer {entity.scorer!r} scores model name {name!r} there); log a model whose inputs are columns "
            f"of {entity.table}, or attach a scorer whose table has them")


def summary(info: dict) -> str:
    """The ``"mlflow"`` object push records, in a few words: where the model
    came from and its run (``pgscore push`` and ``pgscore models`` print it)."""
    where = (f"registered model {info['registered_model']} v{info['version']}" if "registered_model" in info
             else str(info.get("model_uri", "a local directory")))
    return f"MLflow {info.get('flavor', '')} model, {where}, run {info.get('run_id') or '-'}".replace("  ", " ")


def describe(model: MlflowModel) -> str:
    """One line for push's notes: what was read from MLflow."""
    return summary(model.info) + (f", {len(model.run_metrics)} run metrics" if model.run_metrics else "")


__all__ = ["FLAVORS", "MLFLOW_EXTRA", "MlflowModel", "check_signature", "describe", "is_mlflow_source", "load",
           "require_mlflow", "summary"]
