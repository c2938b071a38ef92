"""The preprocessing steps of a compiled pipeline, evaluated: numeric blocks
(value-level imputers, then float64 fill / sub / div), the batch dtypes a
value-level SimpleImputer refuses, and one-hot columns; each for a batch
(numpy, column by column) and for one row (Python floats).
"""

from __future__ import annotations

from . import ir
from .codes import CODE_FIRST, CODE_NULL, CODE_OTHER, CategoryCodes
from .dtypes import NAN, SAME_KIND, canonical, column_to_float, infer_kind, kind_of, kind_one, to_float
from .ir import NAN_KEY
from .lazy import Numpy

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (package docstring)
if TYPE_CHECKING:
    from typing import Any, Sequence

    import numpy as np

if not TYPE_CHECKING:
    np = Numpy(globals())

_INF = float("inf")


class NumericBlock:
    """Input columns that end as one numeric model column each.

    ``fills`` are value-level imputations (most_frequent / constant
    SimpleImputer before any float conversion), then ``ops`` run on float64:
    ``fill`` (NaN -> value), ``sub``, ``div``, per column, in pipeline order.
    """

    def __init__(self, block: ir.NumericBlock, names: Sequence[str]):
        self.step = block.step
        self.inputs = block.inputs
        self.outputs = block.outputs
        self.names = [names[i] for i in self.inputs]
        self.fills = block.fills
        self.ops = block.ops
        # SimpleImputer and StandardScaler check their input with
        # ensure_all_finite='allow-nan': infinity is refused before any model
        # sees it, even one that accepts infinity itself (HistGradientBoosting).
        self.refuses_inf = bool(self.ops)
        # Per column, as Python floats: the single-row path avoids numpy calls.
        self.columns_one = [
            (
                self.inputs[k],
                self.outputs[k],
                self.names[k],
                tuple(step[k] for step in self.fills),
                tuple((code, values[k]) for code, values in self.ops),
            )
            for k in range(len(self.inputs))
        ]

    def fill_batch(self, columns: Sequence[Sequence[Any]], X: np.ndarray) -> None:
        block = np.empty((len(self.inputs), X.shape[0]), dtype=np.float64)
        for k, i in enumerate(self.inputs):
            column = columns[i]
            if self.fills:
                kind, _ = infer_kind(column)
                column = canonical(column, kind in ("float", "str"))
                for step in self.fills:
                    fill = step[k]
                    column = [fill if v is NAN_KEY else v for v in column]
                column = [NAN if v is NAN_KEY else v for v in column]
            block[k] = column_to_float(column, self.names[k])
            if self.refuses_inf:
                infinite = np.isinf(block[k])
                if infinite.any():
                    raise self._infinite(self.names[k], float(block[k][infinite.argmax()]))
        for code, values in self.ops:
            column_values = np.asarray(values, dtype=np.float64)[:, None]
            if code == "fill":
                np.copyto(block, column_values, where=np.isnan(block))
            elif code == "sub":
                block -= column_values
            else:
                block /= column_values
        X[:, self.outputs] = block.T

    def fill_one(self, row: Sequence[Any], x: list[float]) -> None:
        for i, out, name, fills, ops in self.columns_one:
            v = row[i]
            if fills:
                # A lone None is an object column for pandas: not missing for
                # a value-level imputer, only NaN is.
                if v.__class__ is float and v != v:
                    v = NAN_KEY
                for fill in fills:
                    if v is NAN_KEY:
                        v = fill
            f = v if v.__class__ is float else to_float(v, name)
            if self.refuses_inf and (f == _INF or f == -_INF):
                raise self._infinite(name, f)
            for code, c in ops:
                if code == "fill":
                    if f != f:
                        f = c
                elif code == "sub":
                    f = f - c
                else:
                    f = f / c
            x[out] = f

    def _infinite(self, name: str, value: float) -> ValueError:
        return ValueError(
            f"feature {name!r}: value {value} is infinite, which the pipeline's "
            f"SimpleImputer/StandardScaler in step {self.step!r} refuses"
        )


class ImputerDtypeCheck:
    """Batch dtypes a most_frequent / constant SimpleImputer refuses (see ``pgscore.compile``)."""

    def __init__(self, check: ir.DtypeCheck, names: Sequence[str]):
        self.step = check.step
        self.inputs = check.inputs
        self.names = [names[i] for i in self.inputs]
        self.fill_kind = check.fill_kind

    def check(self, kinds: Sequence[str]) -> None:
        """Raise ValueError if scikit-learn refuses a block whose columns have these kinds."""
        # The block's dtype as scikit-learn's check_array computes it from a DataFrame.
        if any(k in ("str", "object") for k in kinds):
            block = "O"
        elif all(k == "bool" for k in kinds):
            block = "b"
        elif any(k == "float" for k in kinds):
            block = "f"
        else:
            block = "i"
        features = ", ".join(repr(n) for n in self.names)
        if block == "b":
            raise ValueError(
                f"features {features}: SimpleImputer in step {self.step!r} does not accept a batch "
                "where these are all booleans (scikit-learn rejects bool data)"
            )
        if self.fill_kind is not None and block not in SAME_KIND.get(self.fill_kind, {"O"}):
            raise ValueError(
                f"features {features}: SimpleImputer in step {self.step!r} was fitted on another dtype "
                "than these values have (e.g. a float fill value for integer values)"
            )

    def check_batch(self, columns: Sequence[Sequence[Any]]) -> None:
        self.check([kind_of(columns[i]) for i in self.inputs])

    def check_one(self, row: Sequence[Any]) -> None:
        self.check([kind_one(row[i]) for i in self.inputs])


class OneHotColumn:
    """One input column through OneHotEncoder (optionally after value-level imputers)."""

    def __init__(self, column: ir.OneHotColumn, names: Sequence[str]):
        self.step = column.step
        self.input = column.input
        self.name = names[self.input]
        self.fills = column.fills
        categories = column.categories
        # -1 marks a dropped category: known, but no output column.
        self.table: dict[Any, int] = dict(zip(categories, column.outputs))
        self.raise_unknown = column.unknown == "error"
        # scikit-learn fails (TypeError deep inside) when an int or float
        # column meets categories of object dtype (e.g. learned from
        # strings); we fail with a clear message. Bool columns do not fail.
        self.reject_numeric = column.object_categories and not self.fills
        # An unknown value in a bool column makes scikit-learn write the first
        # category into the bool array and look bool(first) up again; it
        # fails ("previously unseen labels") unless that bool is a category.
        self.bool_unknown_fails = not self.fills and bool(categories[0]) not in self.table
        # The categories a batch may send as codes (CategoryCodes), in code order.
        self.strings = [c for c in categories if c.__class__ is str]
        self._code_table: np.ndarray | None = None

    def _unknown(self, value: Any) -> ValueError:
        shown = "NaN" if value is NAN_KEY else repr(value)
        known = ", ".join(repr(c) for c in list(self.table)[:10])
        why = "handle_unknown='error'" if self.raise_unknown else "a bool value it cannot ignore"
        return ValueError(
            f"feature {self.name!r}: unknown category {shown} "
            f"(OneHotEncoder in step {self.step!r}: {why}; known: {known})"
        )

    def _numeric(self, value: Any) -> ValueError:
        return ValueError(
            f"feature {self.name!r}: got a number ({value!r}) where the model expects a category "
            f"(OneHotEncoder in step {self.step!r} learned non-numeric categories)"
        )

    def codes_batch(self, column: Sequence[Any]) -> np.ndarray:
        """Model column per row; -1 for a dropped category, -2 for an ignored unknown value.

        Raises ValueError naming the feature where scikit-learn raises.
        """
        kind, has_gaps = infer_kind(column)
        if self.reject_numeric and kind in ("int", "float"):
            raise self._numeric(column[0])
        if has_gaps or self.fills:
            column = canonical(column, kind in ("float", "str"))
            for fill in self.fills:
                column = [fill if v is NAN_KEY else v for v in column]
        get = self.table.get
        try:
            codes = [get(v, -2) for v in column]
        except TypeError:
            raise ValueError(f"feature {self.name!r}: a value is not a valid category (unhashable)") from None
        codes_arr = np.array(codes, dtype=np.intp)
        if self.raise_unknown or (kind == "bool" and self.bool_unknown_fails):
            unknown = np.flatnonzero(codes_arr == -2)
            if unknown.size:
                raise self._unknown(column[int(unknown[0])])
        return codes_arr

    def _null_value(self) -> Any:
        """What a missing value (NaN; NULL in a column of strings, which pandas
        makes NaN) is once the value-level imputers filled it."""
        value: Any = NAN_KEY
        for fill in self.fills:
            if value is NAN_KEY:
                value = fill
        return value

    def code_table(self) -> np.ndarray:
        """Model column per code byte, as :meth:`codes_batch` maps the value
        the code stands for: -3 where that value raises, -4 where the code
        does not say which value it was (or is no code)."""
        if self._code_table is None:
            table = np.full(256, -4, dtype=np.intp)
            for i, category in enumerate(self.strings):
                table[CODE_FIRST + i] = self.table[category]
            null = self.table.get(self._null_value(), -2)
            table[CODE_NULL] = -3 if null == -2 and self.raise_unknown else null
            if not self.raise_unknown:
                table[CODE_OTHER] = -2  # ignored, as any unknown string
            self._code_table = table
        return self._code_table

    def codes_from(self, coded: CategoryCodes) -> np.ndarray:
        """:meth:`codes_batch` of a column sent as codes."""
        if coded.only_null():
            return self.codes_batch([None] * len(coded))
        codes = self.code_table()[coded.codes]
        if codes.size and codes.min() < -2:
            if (codes == -4).any():
                raise ValueError(f"feature {self.name!r}: category codes the evaluator cannot use")
            raise self._unknown(self._null_value())
        return codes

    def code_one(self, value: Any) -> int:
        cls = value.__class__
        if self.reject_numeric and (cls is int or cls is float):
            raise self._numeric(value)
        if cls is float and value != value:
            value = NAN_KEY
        if value is NAN_KEY:
            value = self._null_value()
        try:
            code = self.table.get(value, -2)
        except TypeError:
            raise ValueError(f"feature {self.name!r}: {value!r} is not a valid category (unhashable)") from None
        if code == -2 and (self.raise_unknown or (cls is bool and self.bool_unknown_fails)):
            raise self._unknown(value)
        return code


class OrdinalColumn:
    """One input column as its category's position (:class:`.ir.OrdinalColumn`,
    LightGBM's pandas ``category`` columns): a float, NaN for None or a value
    that is no category (as pandas' ``set_categories`` makes it)."""

    def __init__(self, column: ir.OrdinalColumn, names: Sequence[str]):
        self.input = column.input
        self.output = column.output
        self.name = names[self.input]
        # No entry for NaN or None: a missing value is never a category (LightGBM's
        # pandas categories hold neither; the SQL generator never matches NULL).
        self.table: dict[Any, float] = {c: float(k) for k, c in enumerate(column.categories)
                                        if c is not NAN_KEY and c is not None}

    def value_one(self, value: Any) -> float:
        try:
            return self.table.get(value, NAN)
        except TypeError:  # unhashable: no category
            return NAN

    def fill_batch(self, columns: Sequence[Sequence[Any]], X: np.ndarray) -> None:
        get = self.value_one
        X[:, self.output] = [get(v) for v in columns[self.input]]
