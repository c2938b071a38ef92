"""The compiled model as plain typed objects: what ``pgscore.compile``'s
converters produce, what the archive holds, and what the evaluator
(:mod:`.evaluator`) and the SQL generator (``pgscore_server.sqlgen``) read.

A :class:`Model` is a :class:`Transform` (the preprocessing: numeric
blocks, one-hot columns, dtype checks of value-level imputers) feeding one
classifier, :class:`Linear` or :class:`TreeEnsemble`. :meth:`Model.read`
parses and checks an archive's manifest and arrays once (the server's one
parser); :meth:`Model.write` gives them back in exactly the layout
``pgscore.compile`` has always written (models already stored in databases
stay readable, and the same model gives the same bytes).

The layout, format version 1: a JSON manifest ``{"format", "format_version",
"feature_names", "transform": {"n_outputs", "numeric", "onehot",
"dtype_checks"}, "model": {...}, "source": {...}}`` and flat arrays named
in it (``numeric<b>_<j>_<op>``) or fixed (``coef``, ``intercept``,
``tree_*``, ``init``, ``learning_rate``). Values in the manifest
(categories, fill values) are tagged: ``["none"]``, ``["nan"]``,
``["str", s]``, ``["bool", b]``, ``["int", i]``, ``["float", float.hex(x)]``.

Standard library only, and no typing at import (a new backend imports this).
"""

from __future__ import annotations

import math
from array import array

from ..treeshape import TreeShapeError, walk_forest

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (package docstring)
if TYPE_CHECKING:
    from typing import Any, Callable, Mapping, Sequence

FORMAT = "pgscore-compiled"
FORMAT_VERSION = 1

NUMERIC_OPS = ("fill", "sub", "div")
LINKS = ("logistic", "modified_huber")
UNKNOWN_CATEGORY = ("error", "ignore")

# How a tree ensemble turns its leaves into P(class 1), by TreeEnsemble.combine:
# (start of the sum, factor of each leaf, finish). The evaluator's kernels,
# its generated row code and the SQL generator all follow this one table,
# adding tree by tree in the estimator's order (as scikit-learn does).
#   boosting (GradientBoosting): expit(init + sum(learning_rate * leaf))
#   hist_boosting (HistGradientBoosting): expit(baseline + sum(leaf));
#     LightGBM's LGBMClassifier too, with init 0.0 (its start is in tree 0's leaves)
#   average (forests, single trees): sum(leaf) / n_trees, leaf = the tree's P(class 1)
#   xgboost (XGBClassifier, binary:logistic): sigmoid(base margin + sum(leaf)), in float32
COMBINE_RULES = {
    "boosting": ("init", "learning_rate", "logistic"),
    "hist_boosting": ("init", None, "logistic"),
    "average": (None, None, "mean"),
    "xgboost": ("init", None, "logistic"),
    # LightGBM with categorical splits or zero-as-missing nodes (the TreeEnsemble's
    # optional node arrays): hist_boosting's rule under a name of its own, so that a
    # server whose code predates those arrays refuses the archive instead of misreading it.
    "lightgbm": ("init", None, "logistic"),
}
# The rules whose ensembles may carry the optional node arrays (category sets, zero_missing).
NODE_ARRAY_RULES = frozenset({"lightgbm"})
# The rules whose library computes in float32 (XGBoost): the sum starts from the float32
# ``init`` and rounds to float32 after every leaf, and the logistic is XGBoost's float32
# Sigmoid (pgscore_server.compiled.float32); the others add and finish in float64.
FLOAT32_RULES = frozenset({"xgboost"})

# LightGBM's kZeroThreshold (1e-35f) as a double: a node with zero_missing
# (TreeEnsemble) sends |x| <= ZERO_BAND the way it sends a missing value.
ZERO_BAND = 1.0000000180025095e-35


class _NanKey:
    """The category "missing as NaN", distinct from ``None`` as scikit-learn keeps it.

    NaN cannot be a dict key (it is unequal to itself), so categories and
    imputation values use the one instance :data:`NAN_KEY` for it.
    """

    def __repr__(self) -> str:
        return "nan"


NAN_KEY = _NanKey()


def decode_value(tagged: Sequence[Any]) -> Any:
    """A category or fill value from its manifest form.

    Raises ValueError on an unknown tag.
    """
    tag = tagged[0]
    if tag == "none":
        return None
    if tag == "nan":
        return NAN_KEY
    if tag == "str":
        return str(tagged[1])
    if tag == "bool":
        return bool(tagged[1])
    if tag == "int":
        return int(tagged[1])
    if tag == "float":
        return float.fromhex(tagged[1])
    raise ValueError(f"unknown value tag {tag!r} in compiled model")


def encode_value(value: Any) -> list[Any] | None:
    """The manifest form of a category or fill value (a Python value, NaN as
    a float or NAN_KEY); None for a type the format has no tag for."""
    if value is None:
        return ["none"]
    if value is NAN_KEY:
        return ["nan"]
    if isinstance(value, bool):
        return ["bool", value]
    if isinstance(value, int):
        return ["int", value]
    if isinstance(value, float):
        return ["nan"] if value != value else ["float", value.hex()]
    if isinstance(value, str):
        return ["str", value]
    return None


def _encoded(value: Any) -> list[Any]:
    tagged = encode_value(value)
    if tagged is None:
        raise ValueError(f"value {value!r} of type {type(value).__name__} has no form in the compiled format")
    return tagged


def _scalar(values: Any) -> float:
    """The one float of a single-element array (array.array or numpy)."""
    items = values.tolist()
    if isinstance(items, list):
        if len(items) != 1:
            raise ValueError("expected a single value")
        items = items[0]
    return float(items)


def _as_array(values: Any, typecode: str) -> array:
    """``values`` as an array.array of ``typecode`` (the archive's own arrays need no copy)."""
    if isinstance(values, array) and values.typecode == typecode:
        return values
    return array(typecode, values.tolist())


def _size(values: Any) -> int:
    """Number of elements of a flat array.array or a numpy array of any shape."""
    size = getattr(values, "size", None)
    return len(values) if size is None else int(size)


class NumericBlock:
    """Input columns that end as one numeric model column each.

    ``fills`` are value-level imputations (most_frequent / constant
    SimpleImputer before any float conversion): per imputer, one value per
    input. Then ``ops`` run on float64: per operation (``fill``: NaN ->
    value, ``sub``, ``div``, in pipeline order) one float per input.
    """

    __slots__ = ("step", "inputs", "outputs", "fills", "ops")

    def __init__(self, step: str, inputs: list[int], outputs: list[int], fills: list[list[Any]],
                 ops: list[tuple[str, list[float]]]):
        self.step = step
        self.inputs = inputs
        self.outputs = outputs
        self.fills = fills
        self.ops = ops

    @classmethod
    def read(cls, spec: Mapping[str, Any], arrays: Mapping[str, Any]) -> NumericBlock:
        inputs = [int(i) for i in spec["inputs"]]
        ops = []
        for code, array_name in spec["ops"]:
            if code not in NUMERIC_OPS:
                raise ValueError(f"unknown numeric operation {code!r} in compiled model")
            values = [float(v) for v in arrays[array_name].tolist()]
            if len(values) != len(inputs):
                raise ValueError(f"array {array_name!r} has the wrong shape")
            ops.append((code, values))
        return cls(spec["step"], inputs, [int(o) for o in spec["outputs"]],
                   [[decode_value(v) for v in step] for step in spec["fills"]], ops)

    def write(self, index: int, arrays: dict[str, Any], make_array: Callable[..., Any]) -> dict[str, Any]:
        ops = []
        for j, (code, values) in enumerate(self.ops):
            name = f"numeric{index}_{j}_{code}"
            arrays[name] = make_array(values, "<f8")
            ops.append([code, name])
        return {"step": self.step, "inputs": list(self.inputs), "outputs": list(self.outputs),
                "fills": [[_encoded(v) for v in step] for step in self.fills], "ops": ops}


class OneHotColumn:
    """One input column through a OneHotEncoder (optionally after value-level
    imputers, ``fills``); ``outputs[k]`` is the model column of
    ``categories[k]``, -1 for a dropped category."""

    __slots__ = ("step", "input", "fills", "categories", "outputs", "unknown", "object_categories")

    def __init__(self, step: str, input: int, fills: list[Any], categories: list[Any], outputs: list[int],
                 unknown: str, object_categories: bool):
        self.step = step
        self.input = input
        self.fills = fills
        self.categories = categories
        self.outputs = outputs
        self.unknown = unknown  # 'error' | 'ignore'
        self.object_categories = object_categories  # learned from an object (e.g. string) column

    @classmethod
    def read(cls, spec: Mapping[str, Any], names: Sequence[str]) -> OneHotColumn:
        column = cls(spec["step"], int(spec["input"]), [decode_value(v) for v in spec["fills"]],
                     [decode_value(v) for v in spec["categories"]], [int(o) for o in spec["outputs"]],
                     spec["unknown"], bool(spec["object_categories"]))
        if len(column.categories) != len(column.outputs):
            raise ValueError(f"one-hot column {names[column.input]!r}: categories and outputs differ in length")
        if column.unknown not in UNKNOWN_CATEGORY:
            raise ValueError(f"unknown handle_unknown {spec['unknown']!r} in compiled model")
        return column

    def write(self) -> dict[str, Any]:
        return {"step": self.step, "input": self.input, "fills": [_encoded(v) for v in self.fills],
                "categories": [_encoded(v) for v in self.categories], "outputs": list(self.outputs),
                "unknown": self.unknown, "object_categories": self.object_categories}


class OrdinalColumn:
    """One input column as the position of its value in ``categories`` (a
    float; NaN for a missing value or one not in the list): LightGBM's
    pandas ``category`` columns, whose values it maps to the codes of the
    categories it was trained with (``pandas_categorical``) before its trees
    test them with categorical splits."""

    __slots__ = ("step", "input", "categories", "output")

    def __init__(self, step: str, input: int, categories: list[Any], output: int):
        self.step = step
        self.input = input
        self.categories = categories
        self.output = output

    @classmethod
    def read(cls, spec: Mapping[str, Any]) -> OrdinalColumn:
        return cls(spec["step"], int(spec["input"]), [decode_value(v) for v in spec["categories"]],
                   int(spec["output"]))

    def write(self) -> dict[str, Any]:
        return {"step": self.step, "input": self.input, "categories": [_encoded(v) for v in self.categories],
                "output": self.output}


class DtypeCheck:
    """The batch dtypes a most_frequent / constant SimpleImputer refuses
    (``fill_kind``: the numpy kind of its constant fill, or None)."""

    __slots__ = ("step", "inputs", "fill_kind")

    def __init__(self, step: str, inputs: list[int], fill_kind: str | None):
        self.step = step
        self.inputs = inputs
        self.fill_kind = fill_kind

    @classmethod
    def read(cls, spec: Mapping[str, Any]) -> DtypeCheck:
        return cls(spec["step"], [int(i) for i in spec["inputs"]], spec["fill_kind"])

    def write(self) -> dict[str, Any]:
        return {"step": self.step, "inputs": list(self.inputs), "fill_kind": self.fill_kind}


class Transform:
    """The preprocessing: inputs (feature positions) to ``n_outputs`` model columns."""

    __slots__ = ("n_outputs", "numeric", "onehot", "dtype_checks", "ordinal")

    def __init__(self, n_outputs: int, numeric: list[NumericBlock], onehot: list[OneHotColumn],
                 dtype_checks: list[DtypeCheck], ordinal: list[OrdinalColumn] | None = None):
        self.n_outputs = n_outputs
        self.numeric = numeric
        self.onehot = onehot
        self.dtype_checks = dtype_checks
        self.ordinal = ordinal or []  # absent from archives written before there were any

    @classmethod
    def read(cls, spec: Mapping[str, Any], arrays: Mapping[str, Any], names: Sequence[str]) -> Transform:
        transform = cls(int(spec["n_outputs"]), [NumericBlock.read(b, arrays) for b in spec["numeric"]],
                        [OneHotColumn.read(c, names) for c in spec["onehot"]],
                        [DtypeCheck.read(c) for c in spec["dtype_checks"]],
                        [OrdinalColumn.read(c) for c in spec.get("ordinal", [])])
        transform.output_names(names)  # checks the mapping
        return transform

    def output_names(self, names: Sequence[str]) -> list[str]:
        """The feature each model column comes from. Raises ValueError unless
        every model column comes from exactly one input and every input exists."""
        output_names = [""] * self.n_outputs
        covered = [0] * self.n_outputs
        for block in self.numeric:
            for i, out in zip(block.inputs, block.outputs):
                output_names[out] = names[i]
                covered[out] += 1
        for column in self.onehot:
            for out in dict(zip(column.categories, column.outputs)).values():  # as the evaluator's table
                if out >= 0:
                    output_names[out] = names[column.input]
                    covered[out] += 1
        for ordinal in self.ordinal:
            output_names[ordinal.output] = names[ordinal.input]
            covered[ordinal.output] += 1
        used = [i for b in self.numeric for i in b.inputs] + [c.input for c in self.onehot]
        used += [i for c in self.dtype_checks for i in c.inputs] + [c.input for c in self.ordinal]
        if any(c != 1 for c in covered) or any(not 0 <= i < len(names) for i in used):
            raise ValueError("compiled model: transform does not map inputs onto model columns one to one")
        return output_names

    def write(self, arrays: dict[str, Any], make_array: Callable[..., Any]) -> dict[str, Any]:
        spec = {"n_outputs": self.n_outputs,
                "numeric": [b.write(k, arrays, make_array) for k, b in enumerate(self.numeric)],
                "onehot": [c.write() for c in self.onehot],
                "dtype_checks": [c.write() for c in self.dtype_checks]}
        if self.ordinal:  # only then: a model without one keeps the bytes it always had
            spec["ordinal"] = [c.write() for c in self.ordinal]
        return spec


class Linear:
    """A linear classifier: P(class 1) is ``link(X @ coef.T + intercept)``."""

    __slots__ = ("estimator", "link", "coef", "intercept")
    kind = "linear"

    def __init__(self, estimator: str, link: str, coef: Any, intercept: Any):
        self.estimator = estimator  # the scikit-learn class, for messages
        self.link = link  # 'logistic' | 'modified_huber'
        self.coef = coef  # one float per model column
        self.intercept = intercept  # one float

    @classmethod
    def read(cls, spec: Mapping[str, Any], arrays: Mapping[str, Any], n_outputs: int) -> Linear:
        linear = cls(spec["estimator"], spec["link"], arrays["coef"], arrays["intercept"])
        if linear.link not in LINKS:
            raise ValueError(f"unknown link {linear.link!r} in compiled model")
        if _size(linear.coef) != n_outputs:
            raise ValueError("compiled model: coefficient count does not match the transform")
        return linear

    def write(self, arrays: dict[str, Any], make_array: Callable[..., Any]) -> dict[str, Any]:
        arrays["coef"] = make_array(self.coef, "<f8", (1, -1))
        arrays["intercept"] = make_array(self.intercept, "<f8", (1,))
        return {"kind": self.kind, "estimator": self.estimator, "link": self.link}


class TreeEnsemble:
    """Trees (one or many) flattened into one node table.

    Node k tests model column ``feature[k]`` (< 0: a leaf worth
    ``value[k]``) against ``threshold[k]``: ``x <= threshold`` goes to
    ``left[k]``, else ``right[k]``; a missing value goes left where
    ``missing_left[k]`` when the estimator routes missing values
    (``missing == 'route'``; 'error': it refuses them). ``roots`` are the
    trees' first nodes in the estimator's order; :data:`COMBINE_RULES`
    says how leaves become P(class 1). ``cast_float32``: features are
    rounded to float32 before the comparison (scikit-learn's trees);
    ``allow_inf``: the estimator accepts infinite features.

    Categorical splits (LightGBM's), only in ensembles that have them:
    ``category_set[k]`` is -1 for a numeric node, else set s: the node sends
    x left exactly when x is not NaN, c = int(x) (truncated toward zero) is
    in ``0 <= c < n_s`` and ``category_left[category_bounds[s] + c]`` is 1,
    n_s being ``category_bounds[s + 1] - category_bounds[s]``; everything
    else (NaN, negative, beyond the set) goes right, and ``threshold`` and
    ``missing_left`` of such a node are unused (0.0, 0). Archives without
    these arrays are all-numeric (``category_set`` None).

    ``zero_missing[k]`` (LightGBM's missing type Zero; None in archives
    without it): a numeric node that also sends ``|x| <= ZERO_BAND`` where
    it sends a missing value (``missing_left[k]``).
    """

    __slots__ = ("estimator", "combine", "cast_float32", "missing", "allow_inf", "max_depth", "init",
                 "learning_rate", "feature", "threshold", "left", "right", "missing_left", "value", "roots",
                 "walk_steps", "category_set", "category_bounds", "category_left", "zero_missing")
    kind = "trees"
    NODE_ARRAYS = ("feature", "threshold", "left", "right", "missing_left", "value")
    CATEGORY_ARRAYS = ("category_set", "category_bounds", "category_left")
    _TYPECODES = {"feature": "i", "threshold": "d", "left": "i", "right": "i", "missing_left": "B", "value": "d",
                  "roots": "i", "category_set": "i", "category_bounds": "i", "category_left": "B",
                  "zero_missing": "B"}
    _DTYPES = {"i": "<i4", "d": "<f8", "B": "|u1"}

    def __init__(self, estimator: str, combine: str, cast_float32: bool, missing: str, allow_inf: bool,
                 max_depth: int, init: float, learning_rate: float, feature: Any, threshold: Any, left: Any,
                 right: Any, missing_left: Any, value: Any, roots: Any, category_set: Any = None,
                 category_bounds: Any = None, category_left: Any = None, zero_missing: Any = None):
        self.estimator = estimator
        self.combine = combine
        self.cast_float32 = cast_float32
        self.missing = missing
        self.allow_inf = allow_inf
        self.max_depth = max_depth
        self.init = init
        self.learning_rate = learning_rate
        self.feature = feature
        self.threshold = threshold
        self.left = left
        self.right = right
        self.missing_left = missing_left
        self.value = value
        self.roots = roots
        self.category_set = category_set
        self.category_bounds = category_bounds
        self.category_left = category_left
        self.zero_missing = zero_missing
        self.walk_steps = 0.0  # read() sets it: sum over trees of the mean leaf depth

    @property
    def n_trees(self) -> int:
        return len(self.roots)

    @property
    def route_missing(self) -> bool:
        return self.missing == "route"

    @property
    def categorical(self) -> bool:
        """True when some node is a categorical split (``category_set``)."""
        return self.category_set is not None and any(s >= 0 for s in self.category_set)

    @property
    def zero_band(self) -> bool:
        """True when some node sends the zero band where missing values go (``zero_missing``)."""
        return self.zero_missing is not None and any(self.zero_missing)

    def goes_left_category(self, node: int, x: float) -> bool:
        """A categorical node's decision for x (see the class docstring): the
        one statement of the rule, which every kernel and the SQL follow."""
        if x != x or not -1.0 < x < 2.0 ** 31:
            return False
        s = self.category_set[node]
        c = int(x)
        start = self.category_bounds[s]
        return c < self.category_bounds[s + 1] - start and self.category_left[start + c] == 1

    # -- the combination rule (COMBINE_RULES), for every consumer -------------------

    @property
    def start(self) -> float:
        """What the sum of leaves starts from."""
        return self.init if COMBINE_RULES[self.combine][0] == "init" else 0.0

    @property
    def leaf_scale(self) -> float | None:
        """The factor of every leaf value, or None (the leaf value itself)."""
        return self.learning_rate if COMBINE_RULES[self.combine][1] == "learning_rate" else None

    @property
    def averages(self) -> bool:
        """True: P(class 1) is sum / n_trees; False: expit(sum)."""
        return COMBINE_RULES[self.combine][2] == "mean"

    @property
    def float32(self) -> bool:
        """True: leaves are summed and the logistic applied in float32 (:data:`FLOAT32_RULES`)."""
        return self.combine in FLOAT32_RULES

    # -- archive ---------------------------------------------------------------------

    @classmethod
    def read(cls, spec: Mapping[str, Any], arrays: Mapping[str, Any], n_outputs: int) -> TreeEnsemble:
        if spec["combine"] not in COMBINE_RULES:
            raise ValueError(f"unknown tree combination {spec['combine']!r} in compiled model")
        names = (*cls.NODE_ARRAYS, "roots")
        if "tree_category_set" in arrays:
            names += cls.CATEGORY_ARRAYS
        if "tree_zero_missing" in arrays:
            names += ("zero_missing",)
        nodes = {name: _as_array(arrays[f"tree_{name}"], cls._TYPECODES[name]) for name in names}
        trees = cls(spec["estimator"], spec["combine"], bool(spec["cast_float32"]), spec["missing"],
                    bool(spec["allow_inf"]), int(spec["max_depth"]), _scalar(arrays["init"]),
                    _scalar(arrays["learning_rate"]), **nodes)
        n_nodes = len(trees.feature)
        for name in cls.NODE_ARRAYS[1:]:
            if len(nodes[name]) != n_nodes:
                raise ValueError(f"tree array {name!r} has the wrong shape")
        trees.walk_steps = trees._check_nodes(n_outputs)
        if (trees.category_set is not None or trees.zero_missing is not None) \
                and trees.combine not in NODE_ARRAY_RULES:
            raise ValueError(f"compiled model: tree combination {trees.combine!r} has no categorical "
                             "or zero-as-missing nodes")
        if trees.category_set is not None:
            trees._check_categories()
        if trees.zero_missing is not None and len(trees.zero_missing) != n_nodes:
            raise ValueError("tree array 'zero_missing' has the wrong shape")
        if trees.float32 and (array("f", [trees.init]).tolist() != [trees.init]
                              or array("f", trees.value).tolist() != trees.value.tolist()):
            raise ValueError("compiled model: a float32 tree ensemble has a start or leaf value that is no float32")
        # (An infinite leaf or start could make the margin inf - inf = NaN, which Python's
        # min() keeps and SQL's LEAST() does not: NaN on one path, ~0 on the other.)
        if trees.float32 and not math.isfinite(trees.init + sum(abs(v) for v in trees.value)):
            raise ValueError("compiled model: a float32 tree ensemble has an infinite start or leaf value")
        return trees

    def _check_categories(self) -> None:
        """Raise ValueError unless every categorical node names a set that
        exists, no set is named by two nodes (as LightGBM writes them: so
        that the work of the row code and the SQL generator, which spell out
        each node's set, stays within the archive's size; a crafted archive
        whose 55 nodes shared one set of 300,000 flags took 0.8 GiB from a
        6 KB archive) and the sets' bounds cover ``category_left`` in order."""
        bounds, n_sets = self.category_bounds, len(self.category_bounds) - 1
        if len(self.category_set) != len(self.feature) or n_sets < 0 or bounds[0] != 0 \
                or bounds[n_sets] != len(self.category_left) \
                or any(bounds[s] > bounds[s + 1] for s in range(n_sets)):
            raise ValueError("category arrays of the compiled model are inconsistent")
        named_by: dict[int, int] = {}
        for node, s in enumerate(self.category_set):
            if s >= n_sets or s < -1 or (s >= 0 and self.feature[node] < 0):
                raise ValueError(f"category arrays of the compiled model are inconsistent: node {node} "
                                 f"names category set {s} (of {n_sets})")
            if s >= 0 and named_by.setdefault(s, node) != node:
                raise ValueError(f"category arrays of the compiled model are inconsistent: nodes {named_by[s]} "
                                 f"and {node} name the same category set {s}")

    def write(self, arrays: dict[str, Any], make_array: Callable[..., Any]) -> dict[str, Any]:
        names = (*self.NODE_ARRAYS, "roots")
        if self.category_set is not None:  # only then: an all-numeric model keeps its bytes
            names += self.CATEGORY_ARRAYS
        if self.zero_missing is not None:
            names += ("zero_missing",)
        for name in names:
            arrays[f"tree_{name}"] = make_array(getattr(self, name), self._DTYPES[self._TYPECODES[name]])
        arrays["init"] = make_array(self.init, "<f8")
        arrays["learning_rate"] = make_array(self.learning_rate, "<f8")
        return {"kind": self.kind, "estimator": self.estimator, "combine": self.combine,
                "cast_float32": self.cast_float32, "missing": self.missing, "allow_inf": self.allow_inf,
                "max_depth": self.max_depth, "n_trees": self.n_trees}

    def _check_nodes(self, n_outputs: int) -> float:
        """Raise ValueError unless the node table is ``n_trees`` trees that use
        every node once (:func:`~pgscore_server.treeshape.walk_forest`: no
        shared or cyclic children, no node outside the table or unreached, no
        test of a feature that is no model column) and whose deepest leaf is
        ``max_depth`` deep (the batch walk takes max_depth steps; the manifest
        cannot make it take more); return the sum over trees of the mean leaf
        depth (the node steps of one Python walk). Without this a crafted
        table (node i with both children i + 1) had 2**depth root-to-leaf
        paths, which the walk spent hours in.
        """
        prefix = "tree arrays of the compiled model"
        try:
            deepest, total = walk_forest(self.feature, self.left, self.right, self.roots, n_outputs)
        except TreeShapeError as fault:
            tree, node = fault.tree, fault.node
            if fault.kind == "empty":
                raise ValueError(f"{prefix} are inconsistent (no nodes or no trees)") from None
            if fault.kind == "root":
                raise ValueError(f"{prefix} are inconsistent: tree {tree} has root {node}, "
                                 f"which is not a node or belongs to another tree") from None
            lo, hi = fault.children
            if fault.kind == "index":
                raise ValueError(f"{prefix} are inconsistent: tree {tree} node {node} "
                                 f"tests feature {self.feature[node]} (of {n_outputs}) with children {lo}, {hi} "
                                 f"(of {len(self.feature)} nodes)") from None
            if fault.kind == "shared":
                raise ValueError(f"{prefix} do not form trees: tree {tree} node {node} "
                                 f"has children {lo}, {hi}, one of which is already reached from a root "
                                 "(shared or cyclic children)") from None
            raise ValueError(f"{prefix} are inconsistent: node {node} is not reached from any root") from None
        if self.max_depth != deepest:
            raise ValueError(f"{prefix} are inconsistent: max_depth is {self.max_depth}, "
                             f"the trees are {deepest} deep")
        return total


# The classifiers of the IR, by the manifest's model kind.
CLASSIFIER_KINDS = {Linear.kind: Linear, TreeEnsemble.kind: TreeEnsemble}


class Model:
    """A compiled pipeline: named inputs, their :class:`Transform`, one classifier."""

    __slots__ = ("feature_names", "transform", "classifier", "source")

    def __init__(self, feature_names: list[str], transform: Transform, classifier: Linear | TreeEnsemble,
                 source: dict[str, Any]):
        self.feature_names = feature_names
        self.transform = transform
        self.classifier = classifier
        self.source = source  # {"estimator": description, "sklearn_version": ...}: for people

    @classmethod
    def read(cls, manifest: Mapping[str, Any], arrays: Mapping[str, Any]) -> Model:
        """The model of an archive's manifest and arrays (array.array or numpy).

        Raises ValueError for another format or version, or an inconsistent
        model; KeyError, TypeError or IndexError for a manifest missing parts.
        """
        if manifest.get("format") != FORMAT:
            raise ValueError(f"not a compiled pgscore model: format {manifest.get('format')!r}")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"compiled model format version {manifest.get('format_version')!r} is not supported "
                f"by this server (it reads version {FORMAT_VERSION})"
            )
        names = [str(n) for n in manifest["feature_names"]]
        transform = Transform.read(manifest["transform"], arrays, names)
        spec = manifest["model"]
        kind = CLASSIFIER_KINDS.get(spec["kind"])
        if kind is None:
            raise ValueError(f"compiled model: unknown model kind {spec['kind']!r}")
        classifier = kind.read(spec, arrays, transform.n_outputs)
        return cls(names, transform, classifier, dict(manifest.get("source", {})))

    def write(self, make_array: Callable[..., Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(manifest, arrays) in the archive's layout; ``make_array(values,
        dtype, shape=None)`` makes an array of the .npy ``dtype`` ('<f8',
        '<i4', '|u1'), reshaped to ``shape`` when given."""
        arrays: dict[str, Any] = {}
        transform = self.transform.write(arrays, make_array)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "feature_names": list(self.feature_names),
            "transform": transform,
            "model": self.classifier.write(arrays, make_array),
            "source": dict(self.source),
        }
        return manifest, arrays


def model_of(compiled: Any) -> Model:
    """The :class:`Model` of a Model, a server Evaluator or a loader
    CompiledModel (each knows its ``ir``)."""
    return compiled if isinstance(compiled, Model) else compiled.ir
