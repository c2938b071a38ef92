"""``pgscore push model.onnx``: an ONNX binary classifier, scored in the server by onnxruntime.

The graph is checked and bound by the server's own rules
(:mod:`pgscore_server.onnxpath`: no external data, standard op domains
only; one input per feature or one tensor of all of them; the probability
output and class 1), then uploaded as format 'onnx' on scoring path
'onnx'. Two parities are measured and reported in the path note:

- the database's scores against onnxruntime run here on the same rows
  (the same library and version, one thread each side): at most
  verify.PARITY_TOLERANCE, or the push is rolled back;
- with ``original`` (the model it was converted from, a skops or joblib
  file), onnxruntime here against its ``predict_proba`` on those rows: at
  most ``original_tolerance`` (ORIGINAL_TOLERANCE by default: a graph
  converted to float32, as skl2onnx does, rounds its inputs, weights and sums
  to float32), or the push is refused.

The server loads an ONNX blob only once a superuser approved its sha256
(``pgscore approve``), so push refuses, before writing anything, a graph
nobody approved, as it does a pickle. Requires the ``onnx`` extra
(``pip install 'pgscore[onnx]'``): onnxruntime and onnx.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any, Sequence

import psycopg
from psycopg.types.json import Jsonb

from pgscore_server import features as server_features
from pgscore_server import onnxpath

from . import push, scorers, verify
from .connection import connect
from .errors import PushError

# The default bound of |onnxruntime - original predict_proba| for a graph in
# float32: the demo's logistic regression converted by skl2onnx differs by
# at most 1.2e-7 (float32 keeps ~7 digits of a sum of ~40 scaled terms); a
# tree ensemble whose thresholds are compared in float32 after float32
# scaling can take another branch and differ by far more (0.6-1.6 % on the
# demo GBM and forest): such a model fails this bound and is better pushed
# as its scikit-learn original (the compiled path, 1e-9).
ORIGINAL_TOLERANCE = 1e-5
# Classifier nodes of ai.onnx.ml and their class-label attributes.
_LABEL_ATTRIBUTES = ("classlabels_int64s", "classlabels_ints", "classlabels_strings")


def is_onnx(model_or_path: Any) -> bool:
    """Whether push takes ``model_or_path`` as an ONNX graph: a path ending in
    .onnx (an ONNX file has no magic bytes) or an onnx.ModelProto."""
    if isinstance(model_or_path, (str, os.PathLike)):
        return str(model_or_path).lower().endswith(".onnx")
    return type(model_or_path).__name__ == "ModelProto" and hasattr(model_or_path, "SerializeToString")


def class_labels(blob: bytes) -> list | None:
    """The class labels the graph's classifier or ZipMap nodes declare (None
    when no node declares any: a graph exported from elsewhere)."""
    import onnx

    model = onnx.load_model_from_string(blob)
    found = None
    for node in model.graph.node:
        if node.domain != "ai.onnx.ml":
            continue
        for attribute in node.attribute:
            if attribute.name in _LABEL_ATTRIBUTES:
                labels = [s.decode() for s in attribute.strings] if attribute.strings else list(attribute.ints)
                if found is not None and labels != found:
                    raise PushError(f"the graph's nodes declare different class labels ({found} and {labels}); "
                                    "pgscore will not guess which is the classifier's")
                found = labels
    return found


def push_onnx(dsn: str | None, model_or_path: Any, *, name: str, activate: bool = False, note: str | None = None,
              metrics: dict | None = None, sample_size: int = push.SAMPLE_SIZE, original: Any = None,
              features: Sequence[str] | None = None,
              original_tolerance: float = ORIGINAL_TOLERANCE) -> push.PushResult:
    """Checks, uploads (format 'onnx', path 'onnx') and test-scores an ONNX
    graph; activates it if asked. ``features``: the entity columns fed to a
    graph with one tensor input, in its column order (default: the input
    names, or the ``original`` model's feature_names_in_). Raises PushError
    (nothing written) when the graph is unsafe or unusable, the server lacks
    onnxruntime, no superuser approved it, or either parity fails."""
    if isinstance(model_or_path, (str, os.PathLike)):
        origin = str(model_or_path)
        try:
            blob = Path(model_or_path).read_bytes()
        except OSError as exc:
            raise PushError(f"cannot read model file {origin}: {exc.strerror}") from None
        if metrics is None:
            metrics = push._sidecar_metrics(Path(model_or_path))
    else:
        origin, blob = "ONNX ModelProto", model_or_path.SerializeToString()
    try:
        onnxpath.check_graph(blob)
    except onnxpath.UnsafeGraph as exc:
        raise PushError(f"{origin} is refused: {exc}. Nothing was pushed") from None
    try:
        import onnx  # noqa: F401  (the label check and onnxruntime here)
        import onnxruntime
    except ImportError as exc:
        raise PushError(f"pushing {origin} needs onnx and onnxruntime here ({exc}): "
                        "pip install 'pgscore[onnx]'") from None
    try:
        session = onnxpath.session(blob, origin)
    except Exception as exc:
        raise PushError(f"onnxruntime cannot load {origin}: {exc}") from None
    labels = class_labels(blob)
    if labels is not None and [str(label) for label in labels] != ["0", "1"]:
        raise PushError(f"{origin} classifies into {labels}; pgscore scores the probability of class 1 of a 0/1 "
                        "classifier: train it on 0/1 (or False/True) labels and convert it again")
    reference = None
    original_label = str(original) if isinstance(original, (str, os.PathLike)) else \
        f"{type(original).__name__} object"
    if original is not None:
        reference, _, _ = push.load_model_file(original) if isinstance(original, (str, os.PathLike)) else \
            (original, None, None)
        original_features = push.check_estimator(reference, original_label)
    inputs, outputs = onnxpath.graph_signature(session)
    if features is None and reference is None and len(inputs) == 1 and len(inputs[0][2]) == 2 \
            and inputs[0][2][1] != 1:
        width = inputs[0][2][1] or "several"
        raise PushError(f"{origin} takes one tensor input {inputs[0][0]!r} of {width} columns: give the entity "
                        "columns it takes, in order, with --features A,B,C (or the model it was converted from "
                        "with --original)")
    if features is None:
        features = original_features if reference is not None and len(inputs) == 1 else [n for n, _, _ in inputs]
    feature_names = [str(f) for f in features]
    if reference is not None and sorted(original_features) != sorted(feature_names):
        raise PushError(f"{origin} reads {', '.join(feature_names)} but the original model "
                        f"{original_label} reads {', '.join(original_features)}: give the model it was converted from")
    try:
        bound = onnxpath.binding(inputs, outputs, feature_names)
    except onnxpath.UnusableGraph as exc:
        raise PushError(f"{origin} cannot be scored: {exc}") from None
    local = onnxpath.OnnxModel(blob, feature_names, origin)
    digest = hashlib.sha256(blob).hexdigest()
    saved = {"onnxruntime": onnxruntime.__version__, "producer": _producer(blob)}
    with connect(dsn) as conn:
        entities = scorers.entities_for_model(conn, name)
        for entity in entities:
            columns = verify.entity_columns(conn, entity)
            unknown = [feature for feature in feature_names if feature not in columns]
            if unknown:
                raise PushError(f"{origin} reads inputs that are not columns of {entity.table}: {', '.join(unknown)}; "
                                f"convert it with one input per column of {entity.table}, named as the column")
            push._require_read_access(conn, entity, feature_names)
        server = conn.execute("SELECT scoring.runtime_info()").fetchone()[0]
        if not server.get("onnxruntime"):
            raise PushError(f"the server cannot score {origin}: its Python runtime has no onnxruntime; "
                            f"{onnxpath.ENABLE_HINT}. Nothing was pushed")
        push._require_approval(conn, "onnx", digest, f"{origin} (pushed as a version of model {name!r})", blob)
        note_head = f"onnx (onnxruntime {server['onnxruntime']}; {bound.describe()})"
        with conn.transaction():
            model_id, version = conn.execute(
                "INSERT INTO scoring.models (name, version, format, blob, sha256, feature_names, runtime,"
                " scoring_path, path_note, metrics, note)"
                " VALUES (%s, 1, 'onnx', %b, %s, %s, %s, 'onnx', %s, %s, %s) RETURNING model_id, version",
                [name, blob, digest, feature_names, Jsonb(saved), note_head, Jsonb(metrics or {}), note],
            ).fetchone()
            tested, worst, against = 0, None, None
            for entity in entities:
                count, diff, original_diff = _test_score(conn, local, reference, model_id, feature_names,
                                                         sample_size, origin, entity, original_tolerance)
                tested += count
                worst = diff if worst is None else max(worst, diff if diff is not None else worst)
                if original_diff is not None:
                    against = original_diff if against is None else max(against, original_diff)
            parts = [note_head]
            if tested:
                parts.append(f"in the database vs onnxruntime here: max difference {worst:.1e} over {tested} rows")
            if reference is not None:
                parts.append(f"vs the original ({original_label}): " + (
                    f"max difference {against:.1e} over {tested} rows (bound {original_tolerance:g})"
                    if against is not None else "not compared (no rows)"))
            path_note = "; ".join(parts)
            conn.execute("UPDATE scoring.models SET path_note = %s WHERE model_id = %s", [path_note, model_id])
            if activate:
                conn.execute("SELECT scoring.activate(%s, %s)", [name, version])
    where = " or ".join(dict.fromkeys(entity.table for entity in entities))
    notes = [] if tested else [f"no rows in {where} to test-score the model on; it was checked for loading only"]
    return push.PushResult(name, version, model_id, digest, activate, tested, worst, "onnx", path_note, notes,
                           [entity.table for entity in entities], original_max_abs_diff=against, format="onnx")


def _producer(blob: bytes) -> str:
    import onnx

    model = onnx.load_model_from_string(blob)
    return f"{model.producer_name} {model.producer_version}".strip()


def _test_score(conn: psycopg.Connection, local: onnxpath.OnnxModel, reference: Any, model_id: int,
                feature_names: list[str], sample_size: int, origin: str, entity: scorers.Entity,
                original_tolerance: float) -> tuple[int, float | None, float | None]:
    """(rows, max |database - onnxruntime here|, max |onnxruntime here - original|) on a
    random sample of ``entity``'s rows. Raises PushError (the push rolls back) beyond the bounds."""
    rows, in_db = verify.sampled_in_database(conn, model_id, sample_size, entity, feature_names, origin)
    if not rows:
        return 0, None, None
    here = local.predict(rows)
    worst = max(abs(db - float(p)) for db, p in zip(in_db, here))
    if not math.isfinite(worst) or worst > verify.PARITY_TOLERANCE:
        raise PushError(f"{origin} scores differently in the database than onnxruntime here (max difference "
                        f"{worst:.3g} over {len(rows)} rows of {entity.table}, tolerance {verify.PARITY_TOLERANCE}); "
                        "it was not pushed")
    if reference is None:
        return len(rows), worst, None
    expected = reference.predict_proba(server_features.to_frame(rows, list(reference.feature_names_in_)))[:, 1]
    against = max(abs(float(p) - float(e)) for p, e in zip(here, expected))
    if not math.isfinite(against) or against > original_tolerance:
        raise PushError(f"{origin} differs from the original model by up to {against:.3g} over {len(rows)} rows of "
                        f"{entity.table} (bound {original_tolerance:g}); it was not pushed. A tree model converted "
                        "to float32 may take other branches: push the original instead (its compiled path is "
                        "exact to 1e-9)")
    return len(rows), worst, against
