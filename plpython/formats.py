"""Model blob formats, and what may be loaded from them.

- 'skops' (the default of ``pgscore push``): skops.io's format, which
  rebuilds only the types it is told to trust; anything else is refused
  with the list of offending types, nothing executed. Trusting a type says
  nothing of its content: scikit-learn's compiled tree code follows the
  child and feature indices of a ``Tree`` or ``TreePredictor`` without
  bounds checks, so a crafted blob would crash the process that predicts
  (the server: every backend). :func:`loads` therefore checks every such
  structure of the rebuilt model (:func:`check_native_structures`) before
  anyone can call it. Other estimators skops trusts have compiled predict
  code pgscore does not check (libsvm, KMeans, KDTree/BallTree, ...): a
  skops blob is rebuilt without a superuser's approval only when every type
  in its archive is in NATIVE_SAFE_TYPES (:func:`approval_types` lists the
  others); otherwise it needs the same approval of its sha256 as a pickle.
- 'joblib': a pickle. Loading it runs whatever code it names, so it is
  pushed only on explicit request (``pgscore push --format joblib``), and
  :func:`loads` unpickles it only when handed the sha256 a superuser
  approved (``pgscore approve``; the server's one gate is
  :func:`pgscore_server.approvals.require`), checked against the blob itself.

The loader and the server share this module, so both trust the same list.
"""

from __future__ import annotations

import io

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (package docstring)
if TYPE_CHECKING:
    from typing import Any

FORMATS = ("skops", "joblib")
# Formats whose loading runs no code from the blob. Every other format, known
# or not, is treated as a pickle: it needs a superuser's approval. 'onnx' is
# deliberately not here: onnxruntime parses and runs the graph in native code
# (pgscore_server.onnxpath; docs/security.md).
SAFE_FORMATS = ("skops",)

# Types skops does not trust by default that scikit-learn's own estimators
# need (tree structures, dtypes). Nothing here can run code when rebuilt;
# the two tree structures are indexed by compiled code without bounds
# checks, which check_native_structures makes safe (skops leaves them
# untrusted by default for that reason).
SKOPS_TRUSTED_TYPES = (
    "numpy.dtype",
    "sklearn.tree._tree.Tree",
    "sklearn._loss.link.Interval",
    "sklearn._loss.link.LogitLink",
    "sklearn._loss.loss.HalfBinomialLoss",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
)


# The types a skops blob may hold and still be rebuilt WITHOUT a superuser's
# approval: each one's prediction code is Python/numpy (whose indexing is
# bounds-checked, so crafted attributes raise, never read out of bounds) or
# compiled code whose input check_native_structures validates first. Every
# other type found in a blob's archive (:func:`approval_types`: sklearn.svm,
# sklearn.neighbors, sklearn.cluster, sklearn.neural_network, functions,
# anything unknown) makes the blob need the approval of its exact sha256
# (``pgscore approve``), like a pickle. Names are those skops records (the
# defining module), so a new scikit-learn class is never allowed by accident.
NATIVE_SAFE_TYPES = (
    # Containers and scalars skops rebuilds itself (JSON values are never listed).
    "builtins.dict", "builtins.list", "builtins.tuple", "builtins.set", "builtins.str", "builtins.int",
    "builtins.float", "builtins.bool", "builtins.bytes", "builtins.slice", "collections.OrderedDict",
    # numpy data: arrays (object arrays hold other nodes, checked themselves), dtypes and scalars.
    # RandomState / Generator are fit-time parameters (random_state), unused by predict.
    "numpy.ndarray", "numpy.dtype", "numpy.bool", "numpy.float16", "numpy.float32", "numpy.float64",
    "numpy.int8", "numpy.int16", "numpy.int32", "numpy.int64", "numpy.uint8", "numpy.uint16", "numpy.uint32",
    "numpy.uint64", "numpy.str_", "numpy.bytes_",
    "numpy.random.mtrand.RandomState", "numpy.random._generator.Generator",
    # sklearn.pipeline, sklearn.compose: Python meta-estimators that call their steps
    # (each step's type is checked on its own); Bunch is the dict of named estimators.
    "sklearn.pipeline.Pipeline", "sklearn.pipeline.FeatureUnion",
    "sklearn.compose._column_transformer.ColumnTransformer",
    "sklearn.compose._column_transformer.make_column_selector",
    "sklearn.utils._bunch.Bunch",
    # sklearn.preprocessing: transform is numpy (searchsorted, interp, take, fancy
    # indexing: bounds-checked). Not here: PolynomialFeatures (its sparse path sizes
    # a compiled expansion by the fitted _n_out_full), SplineTransformer (scipy's
    # compiled BSpline evaluation of fitted knots), KernelCenterer (not a pipeline step
    # pgscore needs). FunctionTransformer's func is a separate node: a function is
    # never on this list, so such a blob needs approval.
    "sklearn.preprocessing._data.StandardScaler", "sklearn.preprocessing._data.MinMaxScaler",
    "sklearn.preprocessing._data.MaxAbsScaler", "sklearn.preprocessing._data.RobustScaler",
    "sklearn.preprocessing._data.Normalizer", "sklearn.preprocessing._data.Binarizer",
    "sklearn.preprocessing._data.PowerTransformer", "sklearn.preprocessing._data.QuantileTransformer",
    "sklearn.preprocessing._discretization.KBinsDiscretizer",
    "sklearn.preprocessing._encoders.OneHotEncoder", "sklearn.preprocessing._encoders.OrdinalEncoder",
    "sklearn.preprocessing._function_transformer.FunctionTransformer",
    "sklearn.preprocessing._label.LabelEncoder", "sklearn.preprocessing._label.LabelBinarizer",
    "sklearn.preprocessing._target_encoder.TargetEncoder",
    # sklearn.impute: SimpleImputer / MissingIndicator transform with numpy masks.
    # Not here: KNNImputer (distance code over fitted rows), IterativeImputer.
    "sklearn.impute._base.SimpleImputer", "sklearn.impute._base.MissingIndicator",
    # sklearn.linear_model (classifiers): decision_function is a numpy dot product,
    # whose shapes numpy checks; predict_proba is expit/softmax.
    "sklearn.linear_model._logistic.LogisticRegression", "sklearn.linear_model._logistic.LogisticRegressionCV",
    "sklearn.linear_model._stochastic_gradient.SGDClassifier", "sklearn.linear_model._ridge.RidgeClassifier",
    "sklearn.linear_model._ridge.RidgeClassifierCV", "sklearn.linear_model._perceptron.Perceptron",
    "sklearn.linear_model._passive_aggressive.PassiveAggressiveClassifier",
    # sklearn.dummy: numpy (also GradientBoosting's default init_ prior).
    "sklearn.dummy.DummyClassifier", "sklearn.dummy.DummyRegressor",
    # sklearn.naive_bayes: numpy log-likelihoods (CategoricalNB indexes with numpy).
    "sklearn.naive_bayes.GaussianNB", "sklearn.naive_bayes.BernoulliNB", "sklearn.naive_bayes.MultinomialNB",
    "sklearn.naive_bayes.ComplementNB", "sklearn.naive_bayes.CategoricalNB",
    # sklearn.tree: compiled tree walk, validated by check_native_structures (_check_tree,
    # _check_tree_owner).
    "sklearn.tree._classes.DecisionTreeClassifier", "sklearn.tree._classes.DecisionTreeRegressor",
    "sklearn.tree._classes.ExtraTreeClassifier", "sklearn.tree._classes.ExtraTreeRegressor",
    "sklearn.tree._tree.Tree",
    # sklearn.ensemble: the estimators check_native_structures validates (forests,
    # GradientBoosting, HistGradientBoosting and their predictors and bin mapper: _check_ensemble,
    # _check_gradient_boosting, _check_hist_gradient_boosting), and the Python meta-estimators
    # Bagging* (members called on X[:, estimators_features_[i]]: numpy indexing, members check
    # their input), Voting* and Stacking* (members called on the input, which they check).
    # Not here: AdaBoost*, RandomTreesEmbedding, IsolationForest (not classifiers pgscore scores).
    "sklearn.ensemble._forest.RandomForestClassifier", "sklearn.ensemble._forest.RandomForestRegressor",
    "sklearn.ensemble._forest.ExtraTreesClassifier", "sklearn.ensemble._forest.ExtraTreesRegressor",
    "sklearn.ensemble._gb.GradientBoostingClassifier",
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.ensemble._bagging.BaggingClassifier", "sklearn.ensemble._voting.VotingClassifier",
    "sklearn.ensemble._stacking.StackingClassifier",
    # sklearn._loss: the binary losses of (Hist)GradientBoosting; predict_proba uses only the
    # link's numpy inverse (expit); the Cython loss object is rebuilt without state and used by fit.
    "sklearn._loss.loss.HalfBinomialLoss", "sklearn._loss.loss.ExponentialLoss",
    "sklearn._loss._loss.CyHalfBinomialLoss", "sklearn._loss._loss.CyExponentialLoss",
    "sklearn._loss.link.LogitLink", "sklearn._loss.link.HalfLogitLink", "sklearn._loss.link.Interval",
)


class UntrustedTypes(Exception):
    """A skops blob needs types outside SKOPS_TRUSTED_TYPES."""

    def __init__(self, types: list[str]) -> None:
        super().__init__(", ".join(types))
        self.types = types


class MalformedModel(ValueError):
    """A skops blob rebuilt into a model whose compiled (native) code would
    read or write outside its arrays: out-of-range child, feature or bitset
    indices, nodes that do not form a tree, inconsistent sizes."""


class PickleNotApproved(Exception):
    """A pickle was about to be loaded without the approved sha256 of exactly its bytes."""


class NativeTypesNotApproved(PickleNotApproved):
    """A skops blob holding types outside NATIVE_SAFE_TYPES was about to be
    rebuilt without the approved sha256 of exactly its bytes."""

    def __init__(self, types: list[str]) -> None:
        super().__init__("no approval for this blob, which holds types whose native code pgscore does not check: "
                         + ", ".join(types))
        self.types = types


def unpickles(fmt: str) -> bool:
    """Whether loading a blob of format ``fmt`` unpickles it (runs code it names)."""
    return fmt not in SAFE_FORMATS


def dumps(estimator: Any, fmt: str) -> bytes:
    """``estimator`` serialised in ``fmt`` ('skops' or 'joblib')."""
    if fmt == "skops":
        import skops.io

        return skops.io.dumps(estimator)
    if fmt == "joblib":
        import joblib

        buffer = io.BytesIO()
        joblib.dump(estimator, buffer)
        return buffer.getvalue()
    raise ValueError(f"unknown model format {fmt!r}; use one of {', '.join(FORMATS)}")


def untrusted_types(blob: bytes) -> list[str]:
    """The types a skops blob needs that are not trusted here (empty: loadable)."""
    import skops.io

    return sorted(set(skops.io.get_untrusted_types(data=blob)) - set(SKOPS_TRUSTED_TYPES))


def skops_types(blob: bytes) -> list[str]:
    """Every type a skops blob's archive names (the types rebuilding it would
    create, functions included), read from its schema: nothing is rebuilt,
    imported from the blob or run. Raises for an archive skops cannot read."""
    import zipfile

    from skops.io._audit import Node, get_tree
    from skops.io._utils import read_schema

    with zipfile.ZipFile(io.BytesIO(blob), "r") as archive:
        schema, context = read_schema(archive)
        tree = get_tree(schema, load_context=context, trusted=None)
    # skops lists the types a node does not trust; trusting none lists them all.
    seen: set[int] = set()
    stack: list[Any] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (list, tuple)):
            stack.extend(node)
        elif isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, Node) and id(node) not in seen:
            seen.add(id(node))
            node.trusted = []
            stack.extend(child for child in node.children.values() if child is not None)
    return sorted(tree.get_unsafe_set())


def approval_types(blob: bytes, fmt: str = "skops") -> list[str]:
    """The types of a skops blob outside NATIVE_SAFE_TYPES (empty: it loads
    without a superuser's approval). Only for skops; a pickle always needs one."""
    if fmt != "skops":
        raise ValueError(f"approval_types reads skops blobs, not {fmt!r}")
    return sorted(set(skops_types(blob)) - set(NATIVE_SAFE_TYPES))


def loads(blob: bytes, fmt: str, approved_sha256: str | None = None) -> Any:
    """The estimator in ``blob``. Raises UntrustedTypes for a skops blob that
    needs untrusted types, MalformedModel for a skops blob whose tree
    structures scikit-learn's compiled code would index out of bounds (checked
    before the model is returned, so before anything predicts with it),
    NativeTypesNotApproved for a skops blob holding types outside
    NATIVE_SAFE_TYPES and PickleNotApproved for a pickle, unless
    ``approved_sha256`` (what a superuser approved) is the sha256 of ``blob``,
    ValueError for an unknown format, and whatever the format's loader
    raises for a damaged blob."""
    if fmt == "skops":
        refused = untrusted_types(blob)
        if refused:
            raise UntrustedTypes(refused)
        outside = approval_types(blob)
        if outside:
            import hashlib

            if approved_sha256 is None or hashlib.sha256(blob).hexdigest() != approved_sha256:
                raise NativeTypesNotApproved(outside)
        import skops.io

        # Rebuilding runs no compiled code on the indices: Tree.__setstate__
        # only copies arrays whose dtype, shape and contiguity it checks (and
        # clamps node_count to them); TreePredictor's is Python.
        estimator = skops.io.loads(blob, trusted=list(SKOPS_TRUSTED_TYPES))
        check_native_structures(estimator)
        return estimator
    if fmt == "joblib":
        import hashlib

        if approved_sha256 is None or hashlib.sha256(blob).hexdigest() != approved_sha256:
            raise PickleNotApproved(f"no approval for this blob (approved: {approved_sha256})")
        import joblib

        return joblib.load(io.BytesIO(blob))
    raise ValueError(f"unknown model format {fmt!r}; use one of {', '.join(FORMATS)}")


def check_native_structures(model: Any) -> None:
    """Raise MalformedModel unless every structure of ``model`` that
    scikit-learn's compiled code walks without bounds checks is consistent.

    The whole object graph is visited (attributes, lists, tuples, dicts,
    object arrays: pipeline steps, ColumnTransformer's transformers_,
    estimators_, _predictors, init_, ...), each object once. Checked:

    - every ``sklearn.tree._tree.Tree`` (:func:`_check_tree`);
    - every estimator holding one as ``tree_``: its ``n_features_in_`` (what
      its input is validated against) is the tree's ``n_features``;
    - every forest, GradientBoosting and IsolationForest (they hand their
      members their own validated input, or IsolationForest its columns
      ``estimators_features_[i]``, with ``check_input=False``): it has
      ``n_features_in_`` and each member holding a tree takes exactly what it
      is given (other ensembles call their members with input checks);
    - GradientBoosting, whose ``predict_stages`` writes one output column
      per column of ``estimators_`` (:func:`_check_gradient_boosting`);
    - every HistGradientBoosting estimator and its ``TreePredictor``s
      (:func:`_check_hist_gradient_boosting`, :func:`_check_tree_predictor`);
      only that estimator runs a predictor's compiled code.
    """
    import numpy as np
    from sklearn.ensemble import IsolationForest
    from sklearn.ensemble._forest import BaseForest
    from sklearn.ensemble._gb import BaseGradientBoosting
    from sklearn.ensemble._hist_gradient_boosting.gradient_boosting import BaseHistGradientBoosting
    from sklearn.tree._tree import Tree

    seen: set[int] = set()
    # (object, where it is, which estimator holds it): messages name both.
    stack: list[tuple[Any, str, str]] = [(model, type(model).__name__, type(model).__name__)]
    while stack:
        obj, path, owner = stack.pop()
        if id(obj) in seen or obj is None or isinstance(obj, (str, bytes, int, float, bool)):
            continue
        seen.add(id(obj))
        if isinstance(obj, Tree):
            _check_tree(obj, owner)
            continue
        if isinstance(obj, np.ndarray):
            if obj.dtype == object:
                stack.extend((item, f"{path}[{i}]", owner) for i, item in enumerate(obj.ravel().tolist()))
            continue
        if isinstance(obj, dict):
            for key, value in obj.items():
                stack.append((key, path, owner))
                stack.append((value, f"{path}[{key!r}]", owner))
            continue
        if isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend((item, f"{path}[{i}]", owner) for i, item in enumerate(obj))
            continue
        attributes = getattr(obj, "__dict__", None)
        if not isinstance(attributes, dict):
            continue
        name = type(obj).__name__
        where = name if path == name else f"{name} at {path}"
        if "tree_" in attributes:
            _check_tree_owner(obj, where)
        if isinstance(obj, (BaseForest, BaseGradientBoosting, IsolationForest)):
            _check_ensemble(obj, where)
        if isinstance(obj, BaseGradientBoosting):
            _check_gradient_boosting(obj, where)
        if isinstance(obj, BaseHistGradientBoosting):
            _check_hist_gradient_boosting(obj, where)
        stack.extend((value, f"{path}.{attribute}", where) for attribute, value in attributes.items())


def _malformed(where: str, what: str) -> MalformedModel:
    return MalformedModel(f"model blob is malformed: {where} {what}; refusing to load it")


def _int(value: Any) -> int | None:
    """``value`` as an int if it is one (Python or numpy integer), else None."""
    import numbers

    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    return None


def _check_tree(tree: Any, where: str) -> None:
    """A ``sklearn.tree._tree.Tree`` that ``apply`` / ``predict`` /
    ``decision_path`` / ``compute_feature_importances`` and GradientBoosting's
    ``predict_stages`` can walk: they follow ``left_child`` / ``right_child``
    from node 0 until ``left_child == -1``, read ``X[i, feature]`` and
    ``value[node]``, and size decision paths by ``max_depth``.

    Required: at least one node; n_outputs, n_features >= 1 and every class
    count >= 1; values of shape (node_count, n_outputs, max n_classes); leaves
    with both children -1; inner nodes with features in [0, n_features) and
    children after themselves and inside the tree (sklearn numbers a child
    after its parent, which also rules out cycles), each node but the root
    the child of exactly one node (a tree, not a graph); max_depth the depth
    of the deepest leaf.
    """
    import numpy as np

    # After __setstate__, node_count <= the node array's length (Tree clamps
    # it), so the arrays __getstate__ wraps are inside Tree's own memory.
    state = tree.__getstate__()
    n = int(state["node_count"])
    nodes, values = state["nodes"], state["values"]
    n_outputs, n_features = int(tree.n_outputs), int(tree.n_features)
    n_classes = np.asarray(tree.n_classes)
    name = f"{where}: tree"
    if n < 1 or len(nodes) != n:
        raise _malformed(name, f"has {n} nodes (node array of {len(nodes)})")
    if n_outputs < 1 or n_features < 1 or n_classes.shape != (n_outputs,) or (n_classes < 1).any():
        raise _malformed(name, f"has {n_outputs} outputs, {n_features} features and class counts {n_classes.tolist()}")
    if int(tree.max_n_classes) != int(n_classes.max()) or values.shape != (n, n_outputs, int(n_classes.max())):
        raise _malformed(name, f"has values of shape {values.shape}, not ({n}, {n_outputs}, {int(n_classes.max())})")
    left = nodes["left_child"].astype(np.int64)
    right = nodes["right_child"].astype(np.int64)
    feature = nodes["feature"].astype(np.int64)
    leaf = left == -1
    bad = np.flatnonzero(leaf & (right != -1))
    if bad.size:
        i = int(bad[0])
        raise _malformed(name, f"node {i} is a leaf (left child -1) with right child {int(right[i])}, not -1")
    inner = ~leaf
    _check_children(name, inner, left, right)
    bad = np.flatnonzero(inner & ((feature < 0) | (feature >= n_features)))
    if bad.size:
        i = int(bad[0])
        raise _malformed(name, f"node {i} tests feature {int(feature[i])} outside 0..{n_features - 1}")
    depth = _depth(name, feature, left, right, inner, n_features)
    if _int(state["max_depth"]) != depth:
        raise _malformed(name, f"has max_depth {state['max_depth']!r}, but its deepest leaf is {depth} deep")


def _check_children(name: str, inner: Any, left: Any, right: Any) -> None:
    """Every inner node's children come after it and inside the node array
    (as scikit-learn numbers them, which also rules out cycles)."""
    import numpy as np

    n = len(inner)
    index = np.arange(n)
    for side, child in (("left", left), ("right", right)):
        bad = np.flatnonzero(inner & ((child <= index) | (child >= n)))
        if bad.size:
            i = int(bad[0])
            raise _malformed(name, f"node {i} has {side} child {int(child[i])} outside {i + 1}..{n - 1}")


def _check_one_parent(name: str, left: Any, right: Any, n: int) -> None:
    """Every node but the root is the child of exactly one inner node.

    With children numbered after their parents this makes the nodes one
    tree rooted at node 0: following parents strictly descends to a node
    without one, which can only be the root.
    """
    import numpy as np

    parents = np.bincount(np.concatenate([left, right]), minlength=n)
    if parents[0]:
        raise _malformed(name, "has node 0 (the root) as a child")
    bad = np.flatnonzero(parents[1:] != 1)
    if bad.size:
        i = int(bad[0]) + 1
        raise _malformed(name, f"node {i} is the child of {int(parents[i])} nodes, not 1 (not a tree)")


def _depth(name: str, feature: Any, left: Any, right: Any, inner: Any, n_features: int) -> int:
    """Depth of the deepest leaf of a tree rooted at node 0 whose children
    and features are in range, by the walk that checks the compiled model's
    node table too (pgscore_server.treeshape); nodes that do not form one
    tree are refused naming a node that is not the child of exactly one node."""
    import numpy as np

    from .treeshape import TreeShapeError, walk_forest

    try:
        deepest, _ = walk_forest(np.where(inner, feature, -1).tolist(), left.tolist(), right.tolist(), [0],
                                 n_features)
    except TreeShapeError:
        # With children after their parents, a node reached twice or never
        # is one with two parents or none: say which, as for a predictor.
        _check_one_parent(name, left[inner], right[inner], len(inner))
        raise _malformed(name, "does not form one tree rooted at node 0") from None
    return deepest


def _check_tree_owner(estimator: Any, where: str) -> None:
    """An estimator with ``tree_`` validates its input against
    ``n_features_in_`` (no such attribute: no check), then walks the tree."""
    from sklearn.tree._tree import Tree

    tree = estimator.tree_
    if not isinstance(tree, Tree):
        raise _malformed(where, f"has a tree_ of type {type(tree).__name__}, not a Tree")
    n_features_in = _int(getattr(estimator, "n_features_in_", None))
    if n_features_in != int(tree.n_features):
        raise _malformed(where, f"takes {getattr(estimator, 'n_features_in_', None)!r} features (n_features_in_) "
                                f"but its tree has {int(tree.n_features)}")


def _check_ensemble(ensemble: Any, where: str) -> None:
    """A forest's, GradientBoosting's or IsolationForest's members holding a
    tree get the ensemble's validated input as it is (``check_input=False``)
    or, with ``estimators_features_``, its columns ``estimators_features_[i]``:
    each must take exactly that many features."""
    import numpy as np

    members = getattr(ensemble, "estimators_", None)  # None: unfitted (a parameter of another estimator)
    if isinstance(members, np.ndarray):
        members = members.ravel().tolist() if members.dtype == object else []
    if not isinstance(members, (list, tuple)):
        return
    holding = [(i, m) for i, m in enumerate(members) if isinstance(getattr(m, "__dict__", None), dict)
               and "tree_" in m.__dict__]
    if not holding:
        return
    n_features_in = _int(getattr(ensemble, "n_features_in_", None))
    if n_features_in is None or n_features_in < 1:
        raise _malformed(where, f"has n_features_in_ {getattr(ensemble, 'n_features_in_', None)!r}, not a count")
    subsets = getattr(ensemble, "estimators_features_", None)
    for i, member in holding:
        expected = n_features_in
        if subsets is not None:
            try:
                subset = np.asarray(subsets[i])
            except (IndexError, TypeError, KeyError):
                raise _malformed(where, f"has no estimators_features_[{i}] for estimator {i}") from None
            if subset.ndim != 1 or subset.dtype.kind not in "iu" or (subset < 0).any() \
                    or (subset >= n_features_in).any():
                raise _malformed(where, f"estimators_features_[{i}] is not a list of feature indices "
                                        f"below {n_features_in}")
            expected = len(subset)
        if _int(getattr(member, "n_features_in_", None)) != expected:
            raise _malformed(f"{where}.estimators_[{i}]", f"takes {getattr(member, 'n_features_in_', None)!r} "
                                                         f"features, the ensemble gives it {expected}")


def _check_gradient_boosting(gb: Any, where: str) -> None:
    """``predict_stages`` reads ``estimators_[i, k].tree_`` as a Tree (None
    passes the cast: a null pointer) and adds tree k to column k of the raw
    predictions, which have one column (binary or regression: pgscore
    scores binary classifiers) when the loss is not multiclass and ``init_``
    is 'zero' or the default prior."""
    import numpy as np
    from sklearn.dummy import DummyClassifier, DummyRegressor
    from sklearn.tree._tree import Tree

    estimators = getattr(gb, "estimators_", None)
    if not isinstance(estimators, np.ndarray) or estimators.dtype != object or estimators.ndim != 2 \
            or estimators.shape[0] < 1 or estimators.shape[1] != 1:
        shape = getattr(estimators, "shape", type(estimators).__name__)
        raise _malformed(where, f"has estimators_ {shape}, not an (n, 1) array of trees (a binary model)")
    for i, member in enumerate(estimators[:, 0]):
        if not isinstance(getattr(member, "tree_", None), Tree):
            raise _malformed(f"{where}.estimators_[{i}, 0]", "holds no Tree")
    if _int(getattr(gb, "n_trees_per_iteration_", None)) != 1:
        raise _malformed(where, f"has n_trees_per_iteration_ {getattr(gb, 'n_trees_per_iteration_', None)!r}, not 1")
    if getattr(getattr(gb, "_loss", None), "is_multiclass", True) is not False:
        raise _malformed(where, "has a multiclass (or no) loss; pgscore scores binary classifiers")
    init = getattr(gb, "init_", None)
    if not (isinstance(init, str) and init == "zero"
            or isinstance(init, (DummyClassifier, DummyRegressor)) and _int(getattr(init, "n_outputs_", None)) == 1):
        raise _malformed(where, f"has init_ {type(init).__name__}, not 'zero' or a single-output prior")


def _check_tree_predictor(predictor: Any, where: str) -> None:
    """A HistGradientBoosting ``TreePredictor`` that ``_predict_from_raw_data``
    / ``_predict_from_binned_data`` can walk: from node 0 they follow ``left``
    / ``right`` until ``is_leaf``, read ``X[i, feature_idx]`` and, for
    categorical splits, row ``bitset_idx`` of the (n, 8) uint32 bitset arrays.

    Required: nodes a non-empty 1-d array of PREDICTOR_RECORD_DTYPE; inner
    nodes with children after themselves and inside the array, each node but
    the root the child of one inner node, ``feature_idx >= 0`` (its upper
    bound is the owner's, :func:`_check_hist_gradient_boosting`) and, when
    categorical, ``bitset_idx`` a row of both bitset arrays.
    """
    import numpy as np
    from sklearn.ensemble._hist_gradient_boosting.common import PREDICTOR_RECORD_DTYPE

    nodes = getattr(predictor, "nodes", None)
    name = f"{where} predictor"
    if not isinstance(nodes, np.ndarray) or nodes.dtype != PREDICTOR_RECORD_DTYPE or nodes.ndim != 1 or not len(nodes):
        raise _malformed(name, "has no node array of scikit-learn's predictor record type")
    rows = {}
    for attribute in ("raw_left_cat_bitsets", "binned_left_cat_bitsets"):
        bitsets = getattr(predictor, attribute, None)
        if not (isinstance(bitsets, np.ndarray) and bitsets.dtype == np.uint32 and bitsets.ndim == 2
                and bitsets.shape[1] == 8 and bitsets.flags.c_contiguous):
            raise _malformed(name, f"has {attribute} {getattr(bitsets, 'shape', type(bitsets).__name__)}, "
                                   "not a C-ordered (n, 8) uint32 array")
        rows[attribute] = bitsets.shape[0]
    n = len(nodes)
    inner = nodes["is_leaf"] == 0
    left, right = nodes["left"].astype(np.int64), nodes["right"].astype(np.int64)
    _check_children(name, inner, left, right)
    feature = nodes["feature_idx"].astype(np.int64)
    bad = np.flatnonzero(inner & (feature < 0))
    if bad.size:
        raise _malformed(name, f"node {int(bad[0])} tests feature {int(feature[bad[0]])}")
    categorical = inner & (nodes["is_categorical"] != 0)
    bitset = nodes["bitset_idx"].astype(np.int64)
    for attribute, count in rows.items():
        bad = np.flatnonzero(categorical & (bitset >= count))
        if bad.size:
            i = int(bad[0])
            raise _malformed(name, f"node {i} uses bitset {int(bitset[i])} of {attribute}, which has {count} rows")
    _check_one_parent(name, left[inner], right[inner], n)


def _check_hist_gradient_boosting(hgb: Any, where: str) -> None:
    """HistGradientBoosting validates its input against ``n_features_in_``
    (unless ``_in_fit`` says it is already binned, which only fit sets), then
    runs every ``_predictors[i][k]`` on it; a categorical split also reads
    ``f_idx_map[feature_idx]``, the row of the feature among the categorical
    ones in ``_bin_mapper.is_categorical_``."""
    import numpy as np
    from sklearn.ensemble._hist_gradient_boosting.predictor import TreePredictor

    if getattr(hgb, "_in_fit", False):
        raise _malformed(where, "is marked as being fitted (_in_fit), which skips input validation")
    n_features_in = _int(getattr(hgb, "n_features_in_", None))
    if n_features_in is None or n_features_in < 1:
        raise _malformed(where, f"has n_features_in_ {getattr(hgb, 'n_features_in_', None)!r}, not a count")
    is_categorical = getattr(getattr(hgb, "_bin_mapper", None), "is_categorical_", None)
    if not isinstance(is_categorical, np.ndarray) or is_categorical.shape != (n_features_in,):
        raise _malformed(where, f"has a bin mapper whose is_categorical_ is not one flag for each of the "
                                f"{n_features_in} features")
    predictors = getattr(hgb, "_predictors", None)
    if not isinstance(predictors, list) or not predictors:
        raise _malformed(where, "has no list of predictors")
    for i, iteration in enumerate(predictors):
        if not isinstance(iteration, list):
            raise _malformed(f"{where}._predictors[{i}]", "is not a list of predictors")
        for k, predictor in enumerate(iteration):
            name = f"{where}._predictors[{i}][{k}]"
            if not isinstance(predictor, TreePredictor):
                raise _malformed(name, f"is a {type(predictor).__name__}, not a TreePredictor")
            _check_tree_predictor(predictor, name)
            nodes = predictor.nodes
            inner = nodes["is_leaf"] == 0
            feature = nodes["feature_idx"].astype(np.int64)
            bad = np.flatnonzero(inner & (feature >= n_features_in))
            if bad.size:
                j = int(bad[0])
                raise _malformed(name, f"node {j} tests feature {int(feature[j])} outside 0..{n_features_in - 1}")
            categorical = inner & (nodes["is_categorical"] != 0)
            bad = np.flatnonzero(categorical & (is_categorical[np.clip(feature, 0, n_features_in - 1)] == 0))
            if bad.size:
                j = int(bad[0])
                raise _malformed(name, f"node {j} splits feature {int(feature[j])} by category, "
                                       "which is not a categorical feature")
