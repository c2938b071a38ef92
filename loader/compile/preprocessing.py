"""The preprocessing converter: a pipeline's steps before the classifier
(one ColumnTransformer, or per-column transformers: OneHotEncoder,
StandardScaler, SimpleImputer, nested Pipelines of those, 'passthrough',
'drop') as an :class:`ir.Transform`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pgscore_server.compiled import ir

from .common import UnsupportedModel, is_identity, plain_value, unsupported


@dataclass
class _Chain:
    """What happens to one input column, step by step."""

    source: int
    fills: list[Any] = field(default_factory=list)  # value-level imputations
    ops: list[tuple[str, float]] = field(default_factory=list)  # float64 operations
    in_float: bool = False


@dataclass
class _OneHot:
    chain: _Chain
    step: str
    categories: list[Any]
    drop: int | None
    unknown: str
    object_categories: bool


def convert(pre: list[tuple[str, Any]], feature_names: list[str]) -> tuple[ir.Transform, bool]:
    """The transform of a pipeline's steps before its classifier, and whether
    its output is sparse (a ColumnTransformer's may be)."""
    builder = _Builder(feature_names)
    sparse = False
    if len(pre) == 1 and _is_column_transformer(pre[0][1]):
        sparse = builder.column_transformer(pre[0][0], pre[0][1])
    elif any(_is_column_transformer(est) for _, est in pre):
        raise UnsupportedModel(
            "a ColumnTransformer is supported only as the single preprocessing step of the pipeline"
        )
    else:
        chains = [_Chain(i) for i in range(len(feature_names))]
        builder.emit("/".join(n for n, _ in pre) or "input", builder.chain_steps(pre, chains))
    return ir.Transform(builder.n_outputs, builder.numeric, builder.onehot, builder.dtype_checks), sparse


def _is_column_transformer(est: Any) -> bool:
    from sklearn.compose import ColumnTransformer

    return isinstance(est, ColumnTransformer)


def _step_converters() -> tuple[tuple[type, Any, bool], ...]:
    """(transformer class, converter(builder, est, path, chains), must be the last step), in the order tried."""
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    return ((SimpleImputer, _imputer_step, False), (StandardScaler, _scaler, False), (OneHotEncoder, _onehot, True))


class _Builder:
    """Accumulates the transform's blocks; assigns model-input columns in order."""

    def __init__(self, feature_names: list[str]):
        self.feature_names = feature_names
        self.numeric: list[ir.NumericBlock] = []
        self.onehot: list[ir.OneHotColumn] = []
        self.dtype_checks: list[ir.DtypeCheck] = []
        self.n_outputs = 0

    def column_transformer(self, path: str, ct: Any) -> bool:
        """Emit the blocks of a fitted ColumnTransformer; returns whether its output is sparse."""
        if getattr(ct, "transformer_weights", None):
            raise UnsupportedModel(f"ColumnTransformer {path!r} with transformer_weights is not supported")
        names = [str(n) for n in getattr(ct, "feature_names_in_", [])]
        if names != self.feature_names:
            raise UnsupportedModel(f"ColumnTransformer {path!r} was fitted without the pipeline's feature names")
        for name, trans, _columns in ct.transformers_:
            indices = [int(i) for i in ct._transformer_to_input_indices.get(name, [])]
            if trans == "drop" or not indices:
                continue
            step = f"{path}/{name}"
            chains = [_Chain(i) for i in indices]
            if is_identity(trans):
                self.emit(step, chains)
                continue
            from sklearn.pipeline import Pipeline

            if isinstance(trans, Pipeline):
                sub = [(f"{step}/{n}", e) for n, e in trans.steps if e is not None and e != "passthrough"]
            else:
                sub = [(step, trans)]
            self.emit(step, self.chain_steps(sub, chains))
        return bool(getattr(ct, "sparse_output_", False))

    def chain_steps(self, steps: list[tuple[str, Any]], chains: list[_Chain]) -> list[_Chain] | list[_OneHot]:
        """Apply per-column transformers in order; a OneHotEncoder must come last."""
        from sklearn.pipeline import Pipeline

        converters = _step_converters()
        for k, (path, est) in enumerate(steps):
            if is_identity(est):
                continue
            if isinstance(est, Pipeline):
                inner = [(f"{path}/{n}", e) for n, e in est.steps if e is not None and e != "passthrough"]
                rest = steps[k + 1:]
                result = self.chain_steps(inner, chains)
                if rest:
                    if result and isinstance(result[0], _OneHot):
                        raise UnsupportedModel(f"a step after the OneHotEncoder in {path!r} is not supported")
                    return self.chain_steps(rest, result)  # type: ignore[arg-type]
                return result
            for cls, step_converter, last_only in converters:
                if isinstance(est, cls):
                    break
            else:
                raise unsupported(est, path)
            if last_only and k != len(steps) - 1:
                raise UnsupportedModel(
                    f"{type(steps[k + 1][1]).__name__} after the {cls.__name__} in step "
                    f"{steps[k + 1][0]!r} is not supported by the compiled path"
                )
            chains = step_converter(self, est, path, chains)
            if last_only:
                return chains
        return chains

    def emit(self, step: str, outputs: list[_Chain] | list[_OneHot]) -> None:
        """Assign model-input columns to a transformer's outputs, in its output order."""
        group: list[tuple[_Chain, int]] = []
        for item in outputs:
            if isinstance(item, _OneHot):
                self._flush(step, group)
                group = []
                self._emit_onehot(item)
                continue
            if group and _signature(group[0][0]) != _signature(item):
                self._flush(step, group)
                group = []
            group.append((item, self.n_outputs))
            self.n_outputs += 1
        self._flush(step, group)

    def _flush(self, step: str, group: list[tuple[_Chain, int]]) -> None:
        if not group:
            return
        chains = [c for c, _ in group]
        self.numeric.append(ir.NumericBlock(
            step,
            [c.source for c in chains],
            [out for _, out in group],
            [[plain_value(c.fills[j], step) for c in chains] for j in range(len(chains[0].fills))],
            [(code, np.array([c.ops[j][1] for c in chains], dtype=np.float64))
             for j, (code, _) in enumerate(chains[0].ops)],
        ))

    def _emit_onehot(self, item: _OneHot) -> None:
        outputs = []
        for k in range(len(item.categories)):
            if k == item.drop:
                outputs.append(-1)
            else:
                outputs.append(self.n_outputs)
                self.n_outputs += 1
        self.onehot.append(ir.OneHotColumn(
            item.step,
            item.chain.source,
            [plain_value(v, item.step) for v in item.chain.fills],
            [plain_value(v, item.step) for v in item.categories],
            outputs,
            item.unknown,
            item.object_categories,
        ))


def _signature(chain: _Chain) -> tuple[int, tuple[str, ...]]:
    return len(chain.fills), tuple(code for code, _ in chain.ops)


def _imputer_dtype_check(est: Any, path: str, chains: list[_Chain]) -> ir.DtypeCheck | None:
    """The batch dtypes a value-level SimpleImputer rejects, or None if it rejects none.

    most_frequent / constant imputers keep the input's dtype (the common
    dtype of the batch's columns): scikit-learn refuses a bool block, and
    for 'constant' a block its fitted dtype cannot be cast to (float fill
    into an int block).
    """
    if est.strategy not in ("most_frequent", "constant") or any(c.in_float for c in chains):
        return None
    fit_kind = np.dtype(est._fit_dtype).kind
    if fit_kind == "O":
        return None  # transform then converts every batch to object: nothing to refuse
    fill_kind = np.dtype(est._fill_dtype).kind if est.strategy == "constant" else None
    return ir.DtypeCheck(path, [c.source for c in chains], fill_kind)


def _imputer_step(builder: _Builder, est: Any, path: str, chains: list[_Chain]) -> list[_Chain]:
    check = _imputer_dtype_check(est, path, chains)
    if check is not None:
        builder.dtype_checks.append(check)
    return _imputer(est, path, chains)


def _imputer(est: Any, path: str, chains: list[_Chain]) -> list[_Chain]:
    missing = est.missing_values
    if not (isinstance(missing, float) and math.isnan(missing)):
        raise UnsupportedModel(f"SimpleImputer in step {path!r}: only missing_values=np.nan is supported")
    if est.add_indicator:
        raise UnsupportedModel(f"SimpleImputer in step {path!r}: add_indicator=True is not supported")
    stats = list(est.statistics_)
    if len(stats) != len(chains):
        raise UnsupportedModel(f"SimpleImputer in step {path!r}: unexpected number of statistics")
    out = []
    for chain, stat in zip(chains, stats):
        stat = stat.item() if isinstance(stat, np.generic) else stat
        if isinstance(stat, float) and math.isnan(stat) and not est.keep_empty_features:
            continue  # scikit-learn drops columns that had no observed value
        if est.strategy not in ("most_frequent", "constant") or chain.in_float:
            # mean, median, callable: scikit-learn converts the input to
            # float64 first, so only NaN is missing and the statistic is a float.
            chain.in_float = True
            chain.ops.append(("fill", float(stat)))
        else:
            chain.fills.append(stat)
        out.append(chain)
    return out


def _scaler(builder: _Builder, est: Any, path: str, chains: list[_Chain]) -> list[_Chain]:
    for k, chain in enumerate(chains):
        chain.in_float = True
        if est.with_mean:
            chain.ops.append(("sub", float(est.mean_[k])))
        if est.with_std and est.scale_ is not None:
            chain.ops.append(("div", float(est.scale_[k])))
        if not chain.ops:
            # A scaler that changes nothing still refuses +-inf; the evaluator
            # and the SQL generator refuse it where a block has an operation.
            chain.ops.append(("sub", 0.0))
    return chains


def _onehot(builder: _Builder, est: Any, path: str, chains: list[_Chain]) -> list[_OneHot]:
    if getattr(est, "_infrequent_enabled", False):
        raise UnsupportedModel(
            f"OneHotEncoder in step {path!r}: min_frequency / max_categories are not supported"
        )
    if est.handle_unknown == "error":
        unknown = "error"
    elif est.handle_unknown in ("ignore", "infrequent_if_exist", "warn"):
        unknown = "ignore"  # without infrequent categories all of these give all zeros
    else:
        raise UnsupportedModel(f"OneHotEncoder in step {path!r}: handle_unknown={est.handle_unknown!r}")
    drop = getattr(est, "_drop_idx_after_grouping", None)
    out = []
    for k, chain in enumerate(chains):
        if chain.in_float:
            raise UnsupportedModel(f"OneHotEncoder in step {path!r} after a numeric transformer is not supported")
        categories = est.categories_[k]
        out.append(_OneHot(
            chain=chain,
            step=path,
            categories=[v.item() if isinstance(v, np.generic) else v for v in categories.tolist()],
            drop=None if drop is None or drop[k] is None else int(drop[k]),
            unknown=unknown,
            object_categories=categories.dtype.kind in "OUS",
        ))
    return out
