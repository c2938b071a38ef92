"""The ONNX path's rules outside the database: what check_graph refuses, how a
graph's inputs and output are bound, and the server runtime's extras file."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from pgscore.dev import runtime  # noqa: E402
from pgscore.errors import RuntimeInstallError  # noqa: E402
from pgscore_server import onnxpath  # noqa: E402
from pgscore_server import runtime as server_runtime  # noqa: E402


def tiny_graph(node_domain: str = "", tensor: TensorProto | None = None, subgraph: onnx.GraphProto | None = None,
               functions: bool = False) -> bytes:
    """y = x @ W as a [N, 2] float output named 'probabilities' (not a real classifier: the rules only)."""
    weights = tensor or helper.make_tensor("W", TensorProto.FLOAT, [2, 2], [0.5, 0.5, 0.25, 0.75])
    nodes = [helper.make_node("MatMul", ["x", "W"], ["probabilities"], domain=node_domain)]
    if subgraph is not None:
        nodes.append(helper.make_node("If", ["cond"], ["z"], then_branch=subgraph, else_branch=subgraph))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])],
                              initializer=[weights])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(node_domain, 1)] if node_domain else [])
    model = helper.make_model(graph, opset_imports=opsets, ir_version=8)
    if functions:
        model.functions.append(helper.make_function("com.example", "f", ["a"], ["b"],
                                                    [helper.make_node("Identity", ["a"], ["b"])],
                                                    [helper.make_opsetid("", 17)]))
    return model.SerializeToString()


def external_tensor() -> TensorProto:
    tensor = helper.make_tensor("W", TensorProto.FLOAT, [2, 2], [0.0] * 4)
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "PG_VERSION"
    return tensor


def test_a_self_contained_graph_of_standard_ops_passes():
    onnxpath.check_graph(tiny_graph())


@pytest.mark.parametrize("blob, refusal", [
    (lambda: tiny_graph(tensor=external_tensor()), "tensor 'W' (an initializer of the main graph) keeps its data in "
                                                   "an external file"),
    (lambda: tiny_graph(node_domain="com.example"), "uses the op domain 'com.example' (a custom op)"),
    (lambda: tiny_graph(node_domain="com.microsoft"), "uses the op domain 'com.microsoft'"),
    (lambda: tiny_graph(functions=True), "model-local functions"),
    (lambda: b"\x08\x07" + b"\xff" * 3, "not an ONNX model"),
    (lambda: b"", "not an ONNX model: no graph"),
])
def test_check_graph_refuses_what_reaches_outside_the_blob(blob, refusal):
    with pytest.raises(onnxpath.UnsafeGraph) as refused:
        onnxpath.check_graph(blob())
    assert refusal in str(refused.value)


def test_check_graph_looks_inside_subgraphs():
    inner = helper.make_graph([helper.make_node("Identity", ["W2"], ["z"])], "body", [],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 2])],
                              initializer=[external_tensor()])
    with pytest.raises(onnxpath.UnsafeGraph, match="a subgraph of node 'If'.*external file"):
        onnxpath.check_graph(tiny_graph(subgraph=inner))


FEATURES = ["contract", "tenure_months"]
PER_COLUMN = [("contract", "tensor(string)", [None, 1]), ("tenure_months", "tensor(float)", [None, 1])]
ZIPMAP = ("output_probability", "seq(map(int64,tensor(float)))", [])
LABEL = ("output_label", "tensor(int64)", [None])


def test_binding_takes_skl2onnx_per_column_inputs_and_its_zipmap():
    bound = onnxpath.binding(PER_COLUMN, [LABEL, ZIPMAP], FEATURES)
    assert (bound.matrix, bound.output, bound.zipmap) == (False, "output_probability", True)
    assert bound.describe() == "2 inputs, one per feature; P(class 1) = key 1 of the maps of 'output_probability'"


def test_binding_takes_one_tensor_input_in_the_recorded_feature_order():
    bound = onnxpath.binding([("X", "tensor(float)", [None, 2])],
                             [LABEL, ("probabilities", "tensor(float)", [None, 2])], FEATURES)
    assert (bound.matrix, bound.inputs, bound.output, bound.zipmap) == (True, [("X", "tensor(float)")],
                                                                        "probabilities", False)


@pytest.mark.parametrize("inputs, outputs, refusal", [
    ([("X", "tensor(float)", [None, 3])], [ZIPMAP], "has shape [None, 3], not [N, 2]"),
    ([("a", "tensor(float)", [None, 1]), ("b", "tensor(float)", [None, 1])], [ZIPMAP], "neither one per feature"),
    (PER_COLUMN, [("p", "tensor(float)", [None, 2]), ("q", "tensor(float)", [None, 2])],
     "several probability outputs (p, q) and none is named"),
    (PER_COLUMN, [("output_probability", "seq(map(string,tensor(float)))", [])], "string labels"),
    (PER_COLUMN, [("probabilities", "tensor(float)", [None, 3])], "3 columns"),
    (PER_COLUMN, [LABEL], "no probability output"),
    ([("contract", "tensor(float16)", [None, 1]), PER_COLUMN[1]], [ZIPMAP], "type tensor(float16)"),
])
def test_binding_refuses_what_it_cannot_read_unambiguously(inputs, outputs, refusal):
    with pytest.raises(onnxpath.UnusableGraph) as refused:
        onnxpath.binding(inputs, outputs, FEATURES)
    assert refusal in str(refused.value)


def test_several_outputs_resolve_to_the_one_named_probabilities():
    bound = onnxpath.binding(PER_COLUMN, [("raw", "tensor(float)", [None, 2]), ("probabilities", "tensor(float)",
                                                                                [None, 2])], FEATURES)
    assert bound.output == "probabilities"


def test_an_onnx_model_scores_rows_and_names_a_null_it_cannot_feed():
    model = onnxpath.OnnxModel(tiny_graph(), ["a", "b"], "model 'm' v1")
    scores = model.predict([{"a": 1.0, "b": 2.0}, {"a": None, "b": 0.0}])
    assert scores[0] == np.float32(1.0 * 0.5 + 2.0 * 0.75) and np.isnan(scores[1])  # float input: NULL is NaN
    assert model.predict([(2.0, 0.0)]).tolist() == [1.0]  # rows as sequences in feature order
    with pytest.raises(Exception, match="feature 'contract' is NULL"):
        onnxpath._array([None], "tensor(string)", "contract")


def test_a_missing_module_names_it_and_the_ways_out():
    text = server_runtime.describe_load_error(ModuleNotFoundError("No module named 'feature_engine'",
                                                                  name="feature_engine.encoding"))
    assert text.startswith("it needs the Python module 'feature_engine.encoding', which the server's runtime "
                           "does not have; pgscore scores such a pipeline once its feature_engine steps are "
                           "rewritten with scikit-learn's own transformers")
    assert "exported to ONNX (pgscore push model.onnx)" in text
    assert "pgscore runtime add PACKAGE==VERSION, then restart the server" in text
    assert "runs as the server's OS account in every session" in text


def test_runtime_add_writes_pins_only_and_never_another_version_of_the_base(tmp_path):
    extras = tmp_path / "runtime-extras.txt"
    assert runtime.add(extras, ["onnx"]) == ["onnxruntime==1.31.1", "flatbuffers==25.12.19", "packaging==26.4",
                                             "protobuf==7.36.2"]
    assert runtime.add(extras, ["onnx", "numpy==2.4.6"]) == []  # already there; numpy is the base's own pin
    with pytest.raises(RuntimeInstallError, match="numpy is pinned to 2.4.6 by the base runtime"):
        runtime.add(extras, ["numpy==1.26.4"])
    with pytest.raises(RuntimeInstallError, match="already pins onnxruntime==1.31.1"):
        runtime.add(extras, ["onnxruntime==1.30.0"])
    with pytest.raises(RuntimeInstallError, match="neither a server extra"):
        runtime.add(extras, ["feature-engine"])  # unpinned
    assert runtime.extras_text(extras).splitlines()[2:] == ["onnxruntime==1.31.1", "flatbuffers==25.12.19",
                                                           "packaging==26.4", "protobuf==7.36.2"]


def test_runtime_add_then_install_puts_the_package_in_an_extras_folder_of_its_own(tmp_path):
    """The command, then what pgscore db start does with the file (a real pip
    install of one tiny pure-Python package from the pip cache or the index)."""
    done = subprocess.run([sys.executable, "-m", "pgscore.cli", "runtime", "add", "flatbuffers==25.12.19",
                           "--dir", str(tmp_path)], capture_output=True, text=True, check=True)
    assert f"added flatbuffers==25.12.19 to {tmp_path / 'runtime-extras.txt'}" in done.stdout
    assert "restart the local server on it: pgscore db start --dir" in done.stdout
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    folder = runtime.install_extras(tmp_path / "runtime", here, runtime.extras_text(tmp_path / "runtime-extras.txt"))
    assert folder is not None and (folder / "flatbuffers" / "__init__.py").exists()
    assert not (folder / "numpy").exists()
    assert runtime.install_extras(tmp_path / "runtime", here, "") is None
    again = runtime.install_extras(tmp_path / "runtime", here, runtime.extras_text(tmp_path / "runtime-extras.txt"))
    assert again == folder  # keyed by the pins: installed once
