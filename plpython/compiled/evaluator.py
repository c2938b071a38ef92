"""The evaluator of a compiled pipeline: P(class 1) for rows of plain
Python values, from the :class:`.ir.Model` parsed out of its archive.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from . import archive, ir
from .codes import MAX_CODED_CATEGORIES, CategoryCodes
from .dtypes import NAN
from .lazy import Numpy
from .linear import Linear
from .rowcode import PipelineCode
from .transforms import ImputerDtypeCheck, NumericBlock, OneHotColumn, OrdinalColumn
from .trees import Trees

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (package docstring)
if TYPE_CHECKING:
    from typing import Any, Iterable

    import numpy as np

if not TYPE_CHECKING:
    np = Numpy(globals())


# The evaluator of each classifier kind of the IR.
_EVALUATORS = {ir.Linear.kind: Linear, ir.TreeEnsemble.kind: Trees}


def load(data: bytes) -> Evaluator:
    """Read bytes written by ``pgscore.compile.CompiledModel.to_bytes``.

    Raises ValueError if the bytes are not a compiled model of a format
    version this module understands, or are inconsistent.
    """
    manifest, arrays = archive.read(data)
    try:
        return Evaluator(ir.Model.read(manifest, arrays))
    except (KeyError, TypeError, IndexError) as exc:
        raise ValueError(f"compiled model is malformed: {exc!r}") from exc


class Evaluator:
    """P(class 1) of a compiled pipeline for rows of plain Python values.

    Rows are dicts keyed by feature name (a missing key counts as NaN, as in
    ``DataFrame.from_records``) or sequences in :attr:`feature_names` order.
    Values are bool, int, float, str or None.
    """

    def __init__(self, model: ir.Model):
        self.ir = model  # also what pgscore_server.sqlgen writes as SQL
        self.feature_names = model.feature_names
        transform = model.transform
        self.n_outputs = transform.n_outputs
        self.numeric = [NumericBlock(b, self.feature_names) for b in transform.numeric]
        self.onehot = [OneHotColumn(c, self.feature_names) for c in transform.onehot]
        self.dtype_checks = [ImputerDtypeCheck(c, self.feature_names) for c in transform.dtype_checks]
        self.ordinal = [OrdinalColumn(c, self.feature_names) for c in transform.ordinal]
        output_names = transform.output_names(self.feature_names)
        self.model: Linear | Trees = _EVALUATORS[model.classifier.kind](model.classifier, output_names)
        self._index = {name: k for k, name in enumerate(self.feature_names)}
        # Inputs a batch may send as CategoryCodes: those that only a one-hot
        # column reads, with up to MAX_CODED_CATEGORIES string categories.
        # (A dtype check needs only the column's kind, which codes tell.)
        readers = [i for b in self.numeric for i in b.inputs] + [c.input for c in self.onehot]
        readers += [c.input for c in self.ordinal]
        self._coded = {c.input: c for c in self.onehot
                       if readers.count(c.input) == 1 and 0 < len(c.strings) <= MAX_CODED_CATEGORIES}
        # (The generated pipeline knows numeric and one-hot inputs only.)
        self.pipeline_code = (PipelineCode(self, self.model.row_code)
                              if isinstance(self.model, Trees) and self.model.row_code is not None
                              and not self.ordinal else None)

    def _row(self, row: Mapping[str, Any] | Sequence[Any]) -> Sequence[Any]:
        if isinstance(row, Mapping):
            get = row.get
            return [get(name, NAN) for name in self.feature_names]
        if len(row) != len(self.feature_names):
            raise ValueError(f"row has {len(row)} values, the model expects {len(self.feature_names)} features")
        return row

    def features_one(self, row: Mapping[str, Any] | Sequence[Any]) -> list[float]:
        """The model-input vector (after the compiled preprocessing) of one row."""
        values = self._row(row)
        for check in self.dtype_checks:
            check.check_one(values)
        x = [0.0] * self.n_outputs
        for block in self.numeric:
            block.fill_one(values, x)
        for column in self.onehot:
            code = column.code_one(values[column.input])
            if code >= 0:
                x[code] = 1.0
        for ordinal in self.ordinal:
            x[ordinal.output] = ordinal.value_one(values[ordinal.input])
        return x

    def features(self, rows: Sequence[Mapping[str, Any] | Sequence[Any]]) -> np.ndarray:
        """The model-input matrix (n_rows, n_model_columns), float64."""
        n = len(rows)
        if n and isinstance(rows[0], Mapping):
            columns: list[Sequence[Any]] = [
                [r.get(name, NAN) for r in rows] for name in self.feature_names
            ]
        else:
            width = len(self.feature_names)
            for r in rows:
                if len(r) != width:
                    raise ValueError(f"row has {len(r)} values, the model expects {width} features")
            columns = list(zip(*rows)) if n else [()] * width
        return self.features_from_columns(columns, n)

    def features_from_columns(self, columns: Sequence[Sequence[Any]], n: int) -> np.ndarray:
        """:meth:`features` from one sequence of ``n`` values per feature, in feature_names order."""
        X = np.zeros((n, self.n_outputs), dtype=np.float64)
        if n == 0:
            return X
        for check in self.dtype_checks:
            check.check_batch(columns)
        for block in self.numeric:
            block.fill_batch(columns, X)
        all_rows = np.arange(n)
        for column in self.onehot:
            values = columns[column.input]
            codes = column.codes_from(values) if isinstance(values, CategoryCodes) else column.codes_batch(values)
            hit = codes >= 0
            X[all_rows[hit], codes[hit]] = 1.0
        for ordinal in self.ordinal:
            ordinal.fill_batch(columns, X)
        return X

    def category_inputs(self) -> dict[int, list[str]]:
        """Input position -> categories, for the inputs a batch may send as
        :class:`CategoryCodes` (code ``CODE_FIRST + i`` is ``categories[i]``)."""
        return {position: list(column.strings) for position, column in self._coded.items()}

    def codes_usable(self, position: int, coded: CategoryCodes) -> bool:
        """False where the batch must be read as strings instead: a string
        that is no category of a model that raises naming it."""
        return not (self._coded[position].code_table()[coded.codes] == -4).any()

    def warm(self) -> None:
        """Does now what the first single-row score would (for scoring.warmup)."""
        if self.pipeline_code is not None:
            self.pipeline_code.function()

    def predict_one(self, row: Mapping[str, Any] | Sequence[Any]) -> float:
        """P(class 1) of one row, as ``predict([row])[0]``.

        Raises ValueError naming the feature for a mistyped or unknown value
        the pipeline rejects (unknown category with handle_unknown='error',
        a missing value reaching a model that does not accept NaN, ...).
        """
        if self.pipeline_code is not None:
            values = self._row(row)
            for check in self.dtype_checks:
                check.check_one(values)
            raw = self.pipeline_code.raw(values)
            if raw is not None:
                return self.model.finish(raw)
        return self.model.predict_one(self.features_one(row))

    def predict(self, rows: Iterable[Mapping[str, Any] | Sequence[Any]]) -> np.ndarray:
        """P(class 1) per row, float64 array; raises ValueError as :meth:`predict_one`."""
        rows = rows if isinstance(rows, Sequence) else list(rows)
        if len(rows) == 1:
            return np.array([self.predict_one(rows[0])])
        if not rows:
            return np.empty(0, dtype=np.float64)
        return self.model.predict_batch(self.features(rows))

    def predict_columns(self, columns: Sequence[Sequence[Any]], threads: int = 1) -> np.ndarray:
        """P(class 1) from column sequences in feature_names order: the batch
        paths read each feature as one array, which skips building row objects.
        ``threads``: how many threads a large tree batch may walk in."""
        if len(columns) != len(self.feature_names):
            raise ValueError(f"{len(columns)} columns given, the model expects {len(self.feature_names)} features")
        n = len(columns[0]) if columns else 0
        if n == 0:
            return np.empty(0, dtype=np.float64)
        return self.model.predict_batch(self.features_from_columns(columns, n), threads)
