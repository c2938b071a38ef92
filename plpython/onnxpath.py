"""The 'onnx' scoring path: an ONNX graph (format 'onnx') scored by onnxruntime.

Imported only by a backend that loads an ONNX model (``registry.load``), so
no other backend ever imports onnxruntime. The loader uses the same module
at push (:mod:`pgscore.onnx`), so both sides check a graph and bind its
inputs and output by the same rules:

- :func:`check_graph`: a graph is refused, before onnxruntime sees it, when
  it could reach outside its own bytes or run code pgscore does not ship:
  tensors with external data (onnxruntime would read them from a path
  relative to the backend's working directory: the data directory), op or
  opset domains other than the standard ``''``/``ai.onnx`` and
  ``ai.onnx.ml`` (custom ops), model-local functions and training graphs,
  and onnxruntime's in-model session configuration. It walks the protobuf
  wire format with the standard library (the server has no ``onnx``
  package), nested graphs (If/Loop/Scan bodies) included.
- :func:`binding`: which input gets which feature, and which output is the
  probability of class 1 (see its docstring).

onnxruntime is native code parsing a blob that a loader role may have
written itself: the server loads an ONNX blob only once a superuser
approved its sha256 (``pgscore approve``, the gate of
:mod:`pgscore_server.approvals`), and checks it here as well (docs/security.md).
"""

from __future__ import annotations

from .errors import MODEL_FAILED, MODEL_LOAD_FAILED, ScoringError, describe

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (package docstring)
if TYPE_CHECKING:
    from typing import Any, Sequence

# Op and opset domains a graph may use: the ONNX standard operators and
# ONNX-ML (what skl2onnx and onnxmltools emit). Anything else is a custom op
# (or onnxruntime's contrib ops, which pgscore does not need).
STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")
# Output names taken as the probabilities when a graph has several
# candidates: skl2onnx's and onnxmltools' names.
PROBABILITY_NAMES = ("probabilities", "output_probability")
# Metadata key onnxruntime reads session options from (when its environment
# asks it to): the server's options are pgscore's alone.
ORT_CONFIG_KEY = "ort_config"
# How deep If/Loop/Scan bodies may nest.
MAX_GRAPH_DEPTH = 32
# What a DBA runs so that the server can score ONNX models (docs/models-from-other-tools.md).
ENABLE_HINT = ("a DBA adds onnxruntime to the server's runtime with: pgscore runtime add onnx, then restarts the "
               "server (pgscore db start restarts the local one; the Docker image: build it with "
               "--build-arg PGSCORE_EXTRAS=onnx)")

_NUMBER_TYPES = {"tensor(float)": "float32", "tensor(double)": "float64"}
_WHOLE_TYPES = {"tensor(int64)": "int64", "tensor(int32)": "int32"}
_INPUT_TYPES = ("tensor(string)", "tensor(bool)", *_NUMBER_TYPES, *_WHOLE_TYPES)


class UnsafeGraph(ValueError):
    """A graph that could reach outside its bytes (:func:`check_graph`)."""


class UnusableGraph(ValueError):
    """A graph whose inputs or output pgscore cannot bind (:func:`binding`)."""


# -- the protobuf walk ---------------------------------------------------------

def _varint(data: Any, i: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= end or shift > 63:
            raise UnsafeGraph("not an ONNX model: a truncated or overlong varint")
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


def _fields(data: Any, start: int, end: int) -> Any:
    """(field number, wire type, value) of one protobuf message: an int for
    varints and fixed-size fields, (start, end) for length-delimited ones."""
    i = start
    while i < end:
        key, i = _varint(data, i, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i, end)
        elif wire == 1 or wire == 5:
            size = 8 if wire == 1 else 4
            if i + size > end:
                raise UnsafeGraph("not an ONNX model: a truncated field")
            value, i = int.from_bytes(bytes(data[i:i + size]), "little"), i + size
        elif wire == 2:
            size, i = _varint(data, i, end)
            if i + size > end:
                raise UnsafeGraph("not an ONNX model: a field longer than the message")
            value, i = (i, i + size), i + size
        else:
            raise UnsafeGraph(f"not an ONNX model: wire type {wire}")
        if number == 0:
            raise UnsafeGraph("not an ONNX model: field number 0")
        yield number, wire, value


def _text(data: Any, span: Any) -> str:
    return bytes(data[span[0]:span[1]]).decode("utf-8", errors="replace")


def _spans(data: Any, span: Any, wanted: int) -> list:
    return [value for number, wire, value in _fields(data, *span) if number == wanted and wire == 2]


def check_graph(blob: bytes) -> None:
    """Raises UnsafeGraph, naming what it found, unless ``blob`` is an ONNX
    ModelProto whose every tensor is inside it, whose ops and opsets are in
    STANDARD_DOMAINS, with no model-local functions, training graphs or
    in-model onnxruntime configuration."""
    data = memoryview(blob)
    graphs = 0
    for number, wire, value in _fields(data, 0, len(data)):
        if number == 7 and wire == 2:  # graph
            graphs += 1
            _check_graph(data, value, "the main graph", 0)
        elif number == 8 and wire == 2:  # opset_import: OperatorSetIdProto, domain = 1
            for domain in _spans(data, value, 1):
                _check_domain(_text(data, domain), "an opset import")
        elif number == 25:
            raise UnsafeGraph("it defines model-local functions (custom ops); pgscore scores standard ONNX ops only")
        elif number == 20:
            raise UnsafeGraph("it holds training graphs (training_info); push an inference-only graph")
        elif number == 14 and wire == 2:  # metadata_props: key = 1
            keys = [_text(data, key) for key in _spans(data, value, 1)]
            if ORT_CONFIG_KEY in keys:
                raise UnsafeGraph(f"its metadata sets onnxruntime's session options ({ORT_CONFIG_KEY!r})")
    if graphs != 1:
        raise UnsafeGraph("not an ONNX model: no graph" if not graphs else "not an ONNX model: several graphs")


def _check_domain(domain: str, where: str) -> None:
    if domain not in STANDARD_DOMAINS:
        raise UnsafeGraph(f"{where} uses the op domain {domain!r} (a custom op); pgscore scores the standard "
                          "ONNX domains only ('' / 'ai.onnx' and 'ai.onnx.ml')")


def _check_graph(data: Any, span: Any, where: str, depth: int) -> None:
    if depth > MAX_GRAPH_DEPTH:
        raise UnsafeGraph(f"subgraphs nest deeper than {MAX_GRAPH_DEPTH}")
    for number, wire, value in _fields(data, *span):
        if wire != 2:
            continue
        if number == 1:  # node
            _check_node(data, value, where, depth)
        elif number == 5:  # initializer
            _check_tensor(data, value, f"an initializer of {where}")
        elif number == 15:  # sparse_initializer
            _check_sparse(data, value, f"a sparse initializer of {where}")


def _check_node(data: Any, span: Any, where: str, depth: int) -> None:
    name = op = ""
    attributes = []
    for number, wire, value in _fields(data, *span):
        if wire != 2:
            continue
        if number == 3:
            name = _text(data, value)
        elif number == 4:
            op = _text(data, value)
        elif number == 7:
            _check_domain(_text(data, value), f"node {name or op!r} of {where}")
        elif number == 5:
            attributes.append(value)
    node = f"node {name or op!r} of {where}"
    for attribute in attributes:
        for number, wire, value in _fields(data, *attribute):
            if wire != 2:
                continue
            if number in (5, 10):  # t, tensors
                _check_tensor(data, value, f"an attribute of {node}")
            elif number in (22, 23):  # sparse_tensor, sparse_tensors
                _check_sparse(data, value, f"an attribute of {node}")
            elif number in (6, 11):  # g, graphs: If/Loop/Scan bodies
                _check_graph(data, value, f"a subgraph of {node}", depth + 1)


def _check_tensor(data: Any, span: Any, where: str) -> None:
    name = ""
    for number, wire, value in _fields(data, *span):
        if number == 8 and wire == 2:
            name = _text(data, value)
        elif number == 13 or (number == 14 and value != 0):  # external_data, data_location EXTERNAL
            raise UnsafeGraph(f"tensor {name!r} ({where}) keeps its data in an external file; onnxruntime would "
                              "read that file from the server's disk. Save the model with its tensors inside "
                              "(onnx.save_model(model, path, save_as_external_data=False))")


def _check_sparse(data: Any, span: Any, where: str) -> None:
    for number, wire, value in _fields(data, *span):
        if number in (1, 2) and wire == 2:  # values, indices
            _check_tensor(data, value, where)


# -- inputs and output ---------------------------------------------------------

class Binding:
    """How a graph is fed and read: ``inputs`` [(input name, its type)] fed
    one feature each (per-column mode, names equal to features), or one
    input fed every feature as one tensor in feature_names order
    (``matrix``); ``output`` the output read, ``zipmap`` whether it is a
    sequence of {label: probability} maps (else a tensor whose column 1 is read)."""

    def __init__(self, inputs: list[tuple[str, str]], matrix: bool, output: str, zipmap: bool) -> None:
        self.inputs = inputs
        self.matrix = matrix
        self.output = output
        self.zipmap = zipmap

    def describe(self) -> str:
        feed = (f"one tensor input {self.inputs[0][0]!r} ({self.inputs[0][1]}) in the recorded feature order"
                if self.matrix else f"{len(self.inputs)} inputs, one per feature")
        read = f"key 1 of the maps of {self.output!r}" if self.zipmap else f"column 1 of {self.output!r}"
        return f"{feed}; P(class 1) = {read}"


def binding(inputs: Sequence[tuple[str, str, Sequence[Any]]], outputs: Sequence[tuple[str, str, Sequence[Any]]],
            feature_names: Sequence[str]) -> Binding:
    """Binds a graph's inputs and outputs ((name, onnxruntime type, shape) each) to ``feature_names``.

    Inputs: either one input per feature, named as the feature (skl2onnx's
    conversion of a pipeline on a DataFrame; each of shape [N, 1] or [N]),
    or one numeric input of shape [N, len(features)] fed the features in
    the recorded order. Input types: string, bool, float, double, int32, int64.

    Output: the probability outputs are sequences of maps (ZipMap) and
    float/double tensors of rank 2; the one named 'probabilities' or
    'output_probability' (skl2onnx, onnxmltools) is taken, else the only
    one. Class 1 is key 1 of a map, or column 1 of a tensor (push checks
    that the classifier's labels are 0 and 1). Raises UnusableGraph for
    anything else: several candidate outputs, string labels, more than two
    columns, unknown inputs or types.
    """
    features = list(feature_names)
    names = [name for name, _, _ in inputs]
    for name, kind, _ in inputs:
        if kind not in _INPUT_TYPES:
            raise UnusableGraph(f"input {name!r} has type {kind}; pgscore feeds {', '.join(_INPUT_TYPES)}")
    if sorted(names) == sorted(features) and len(set(names)) == len(names):
        for name, _, shape in inputs:
            if not (len(shape) == 1 or (len(shape) == 2 and shape[1] in (1, None))):
                raise UnusableGraph(f"input {name!r} has shape {list(shape)}; one feature per input is [N, 1] or [N]")
        matrix = False
        bound = [(name, kind) for name, kind, _ in inputs]
    elif len(inputs) == 1 and inputs[0][1] in (*_NUMBER_TYPES, *_WHOLE_TYPES):
        name, kind, shape = inputs[0]
        width = shape[1] if len(shape) == 2 else None
        if len(shape) != 2 or (isinstance(width, int) and width != len(features)):
            raise UnusableGraph(f"its one input {name!r} has shape {list(shape)}, not [N, {len(features)}] for the "
                                f"{len(features)} features {', '.join(features)}")
        matrix = True
        bound = [(name, kind)]
    else:
        raise UnusableGraph(
            f"its inputs ({', '.join(names)}) are neither one per feature, named as the features "
            f"({', '.join(features)}), nor one numeric tensor of all of them; convert it with one input per "
            "entity column (skl2onnx: initial_types=[(column, type), ...]) or give the feature order of its one input")
    candidates = []
    for name, kind, shape in outputs:
        if kind.startswith("seq(map("):
            if not kind.startswith("seq(map(int64,"):
                raise UnusableGraph(f"output {name!r} ({kind}) maps string labels to probabilities; pgscore takes "
                                    "class 1 of labels 0 and 1: train on 0/1 labels, or convert with zipmap off")
            candidates.append((name, True, shape))
        elif kind in _NUMBER_TYPES and len(shape) == 2:
            if isinstance(shape[1], int) and shape[1] != 2:
                raise UnusableGraph(f"output {name!r} has {shape[1]} columns; pgscore scores binary classifiers")
            candidates.append((name, False, shape))
    if not candidates:
        raise UnusableGraph("it has no probability output (a sequence of maps, or a float tensor [N, 2]): "
                            f"outputs are {', '.join(f'{n} ({k})' for n, k, _ in outputs) or 'none'}")
    chosen = [c for c in candidates if c[0] in PROBABILITY_NAMES] if len(candidates) > 1 else candidates
    if len(chosen) != 1:
        raise UnusableGraph(f"it has several probability outputs ({', '.join(c[0] for c in candidates)}) and none "
                            f"is named {' or '.join(map(repr, PROBABILITY_NAMES))}; pgscore will not guess which "
                            "is the classifier's: keep one in the graph")
    return Binding(bound, matrix, chosen[0][0], chosen[0][1])


# -- scoring -------------------------------------------------------------------

def session(blob: bytes, label: str) -> Any:
    """An onnxruntime session of ``blob`` for one backend: one thread, the
    ONNX format only (never onnxruntime's own flatbuffer format). Raises
    ScoringError naming the command that adds onnxruntime to a server without it."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise ScoringError(
            f"{label} is an ONNX model, and the server's Python runtime has no onnxruntime ({describe(exc)})",
            sqlstate=MODEL_LOAD_FAILED, hint=ENABLE_HINT) from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    options.add_session_config_entry("session.load_model_format", "ONNX")
    return onnxruntime.InferenceSession(blob, sess_options=options, providers=["CPUExecutionProvider"])


def graph_signature(sess: Any) -> tuple[list, list]:
    """(inputs, outputs) of a session as :func:`binding` takes them."""
    def described(args: Any) -> list:
        return [(a.name, a.type, [d if isinstance(d, int) else None for d in (a.shape or [])]) for a in args]
    return described(sess.get_inputs()), described(sess.get_outputs())


class OnnxModel:
    """An ONNX model ready to score: its session and binding."""

    def __init__(self, blob: bytes, feature_names: Sequence[str], label: str) -> None:
        try:
            check_graph(blob)
        except UnsafeGraph as exc:
            raise ScoringError(f"{label} is refused: {exc}", sqlstate=MODEL_LOAD_FAILED,
                               hint="push a self-contained graph of standard ONNX ops") from None
        self.session = session(blob, label)
        self.label = label
        self.feature_names = list(feature_names)
        try:
            self.binding = binding(*graph_signature(self.session), self.feature_names)
        except UnusableGraph as exc:
            raise ScoringError(f"{label} cannot be scored: {exc}", sqlstate=MODEL_LOAD_FAILED) from None

    def predict(self, rows: Sequence[Any]) -> Any:
        """P(class 1) of each row (a mapping by feature name, or a sequence in
        feature order), as a float64 numpy array, each row scored on its own. Raises ScoringError naming
        the feature for a NULL where the input cannot take NaN."""
        import numpy as np

        names = self.feature_names
        columns = [[row[name] for row in rows] for name in names] if rows and hasattr(rows[0], "keys") else \
            [list(column) for column in zip(*rows)]
        b = self.binding
        if b.matrix:
            name, kind = b.inputs[0]
            feeds = {name: np.column_stack([_array(values, kind, feature, self.label)
                                            for values, feature in zip(columns, names)])}
        else:
            by_name = dict(zip(names, columns))
            feeds = {name: _array(by_name[name], kind, name, self.label).reshape(-1, 1) for name, kind in b.inputs}
        # One run per row: onnxruntime's float32 kernels sum in an order that
        # depends on the batch (a row scored in a batch of 4 differed from the
        # same row alone by 6e-8), and a row's score must not depend on which
        # rows share its statement. ~10x slower than one batched run (docs).
        scores = np.empty(len(columns[0]) if columns else 0, dtype=np.float64)
        run, output = self.session.run, [b.output]
        for i in range(len(scores)):
            out = run(output, {name: array[i:i + 1] for name, array in feeds.items()})[0]
            scores[i] = out[0][1] if b.zipmap else out[0, 1]
        return scores


def _array(values: list, kind: str, feature: str, label: str = "the model") -> Any:
    import numpy as np

    if kind in _NUMBER_TYPES:
        return np.array([np.nan if v is None else float(v) for v in values], dtype=_NUMBER_TYPES[kind])
    if None in values:
        raise ScoringError(f"{label}: feature {feature!r} is NULL, and the model's input for it ({kind}) takes "
                           "no missing value", sqlstate=MODEL_FAILED, hint=f"give {feature!r} a value, or convert the model "
                           "with a float input and an imputer for it")
    if kind == "tensor(string)":
        return np.array([str(v) for v in values], dtype=object)
    if kind == "tensor(bool)":
        return np.array([bool(v) for v in values], dtype=bool)
    return np.array([int(v) for v in values], dtype=_WHOLE_TYPES[kind])
