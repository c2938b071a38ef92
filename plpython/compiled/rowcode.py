"""One row through a small tree ensemble as generated Python: the trees as
nested ifs with the thresholds and leaf contributions written in
(:class:`RowCode`), or the whole pipeline from raw values (:class:`PipelineCode`).
"""

from __future__ import annotations

import math
from array import array

from . import ir

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (package docstring)
if TYPE_CHECKING:
    from typing import Any, Sequence

    from .evaluator import Evaluator


class RowCode:
    """One row through a small ensemble as generated Python: the trees as
    nested ifs with the thresholds and leaf contributions written in, about
    three times faster than the numpy walk (no numpy call at all).

    The source holds only integers (feature positions) and floats (repr,
    which round-trips exactly), generated here from the arrays; it is
    compiled on the first row, about 10 ms per 1,000 nodes. Rows with NaN or
    infinity (after the float32 cast) return None: the general path checks
    them and routes missing values.
    """

    MAX_NODES = 4096
    MAX_DEPTH = 64  # Python's tokenizer allows 100 levels of indentation
    # Category codes written into the source, all splits together (LightGBM lists at most
    # max_cat_threshold, 32 by default, per split). A set's flags cost nothing to store but a
    # written code costs ~1 KB to compile: a 9 KB archive listing 3,000,000 took 3 GiB.
    MAX_CATEGORY_CODES = 16_384

    def __init__(self, ensemble: ir.TreeEnsemble):
        self.cast_float32 = ensemble.cast_float32
        # As lists only when writing the source.
        self._arrays = (ensemble.feature, ensemble.threshold, ensemble.left, ensemble.right, ensemble.value,
                        ensemble.roots)
        # What raw() starts from and what each leaf adds (ir.COMBINE_RULES).
        self._start = ensemble.start
        self._scale = ensemble.leaf_scale
        # Categorical splits (ir.TreeEnsemble.goes_left_category): node -> the codes that go left.
        self._category_codes: dict[int, list[int]] = {}
        if ensemble.categorical:
            bounds, members = ensemble.category_bounds, ensemble.category_left
            for node, s in enumerate(ensemble.category_set):
                if s >= 0:
                    self._category_codes[node] = [c for c in range(bounds[s + 1] - bounds[s])
                                                  if members[bounds[s] + c]]
        # Numeric nodes that send the zero band where missing values go: node -> goes it left.
        self._zero_nodes: dict[int, bool] = {}
        if ensemble.zero_band:
            self._zero_nodes = {node: bool(ensemble.missing_left[node])
                                for node, z in enumerate(ensemble.zero_missing) if z}
        # XGBoost's sum rounds to float32 after every leaf (ir.FLOAT32_RULES).
        self._float32 = ensemble.float32
        self._function: Any = None

    @classmethod
    def fits(cls, ensemble: ir.TreeEnsemble) -> bool:
        """Small enough to write as Python, and no NaN threshold to write."""
        small = len(ensemble.feature) <= cls.MAX_NODES and ensemble.max_depth <= cls.MAX_DEPTH
        # (One set per categorical node, ir.TreeEnsemble._check_categories: the flags that are 1 are the codes written.)
        small = small and (not ensemble.categorical or sum(ensemble.category_left) <= cls.MAX_CATEGORY_CODES)
        return small and all(t == t for f, t in zip(ensemble.feature, ensemble.threshold) if f >= 0)

    def raw(self, x: list[float]) -> float | None:
        """The leaves' sum (from ``start``, ir.COMBINE_RULES), or None for a non-finite row."""
        values = array("f", x).tolist() if self.cast_float32 else x
        total = sum(values)
        if total - total != 0.0:
            return None
        return self.function()(values)

    def function(self) -> Any:
        """The compiled function (compiled now if this is the first call)."""
        if self._function is None:
            self._function = define_raw(self.source(), {"array": array}, "<pgscore compiled trees>")
        return self._function

    def source(self, prologue: Sequence[str] = (), condition: Any = None, category_condition: Any = None,
               band_test: Any = None) -> str:
        """``def raw(x)``; :class:`PipelineCode` passes its own prologue,
        ``condition(column, threshold)``, ``category_condition(column, codes)``
        and ``band_test(column)`` (the value is in the zero band): the Python
        tests for "goes left" (raw() sends only finite rows here)."""
        feature, threshold, left, right, value, roots = (a.tolist() for a in self._arrays)
        if condition is None:

            def condition(column: int, t: float) -> str:
                return f"x[{column}] <= {float_literal(t)}"

        if category_condition is None:

            def category_condition(column: int, codes: list[int]) -> str:
                return category_test(f"x[{column}]", codes)

        if band_test is None:

            def band_test(column: int) -> str:
                return f"-{float_literal(ir.ZERO_BAND)} <= x[{column}] <= {float_literal(ir.ZERO_BAND)}"

        lines = ["def raw(x):", *prologue, f"    s = {float_literal(self._start)}"]
        if self._float32:
            lines.append("    r = array('f', (0.0,))")

        def emit(node: int, indent: str) -> None:
            if feature[node] < 0:
                leaf = value[node] if self._scale is None else self._scale * value[node]
                if self._float32:  # the float32 sum: rounded through r after each addition
                    lines.extend([f"{indent}r[0] = s + {float_literal(leaf)}", f"{indent}s = r[0]"])
                    return
                lines.append(f"{indent}s += {float_literal(leaf)}")
                return
            if node in self._category_codes:
                test = category_condition(int(feature[node]), self._category_codes[node])
            else:
                test = condition(int(feature[node]), threshold[node])
                if node in self._zero_nodes:
                    test = zero_test(test, band_test(int(feature[node])), self._zero_nodes[node])
            if test in ("True", "False"):  # a one-hot column's test that every value answers alike
                emit(left[node] if test == "True" else right[node], indent)
                return
            lines.append(f"{indent}if {test}:")
            emit(left[node], indent + "    ")
            lines.append(f"{indent}else:")
            emit(right[node], indent + "    ")

        for root in roots:
            emit(root, "    ")
        lines.append("    return s")
        return "\n".join(lines) + "\n"


class PipelineCode:
    """One row from its raw values through preprocessing and a small
    ensemble as one generated function: no model-input vector at all.

    Numeric columns are converted and scaled with the same operations as
    :meth:`.transforms.NumericBlock.fill_one` (constants written in), cast to float32
    like the batch; a one-hot column becomes its category's code, and a
    tree's test on an indicator column becomes a comparison of that code.
    Only the usual row takes this path: a value of another type, a missing
    or non-finite value, or a category the table does not know returns None,
    and :meth:`.evaluator.Evaluator.predict_one` takes the general path, which imputes,
    routes or raises exactly as before.
    """

    def __init__(self, evaluator: Evaluator, row_code: RowCode):
        self._evaluator = evaluator
        self._row_code = row_code
        self._function: Any = None

    def raw(self, values: Sequence[Any]) -> float | None:
        if self._function is None:
            self.function()
        try:
            return self._function(values)
        except ArithmeticError:  # e.g. an int too large for a float: the general path names the feature
            return None

    def function(self) -> Any:
        if self._function is None:
            namespace: dict[str, Any] = {"array": array}
            for j, column in enumerate(self._evaluator.onehot):
                namespace[f"T{j}"] = column.table
            self._function = define_raw(self.source(), namespace, "<pgscore compiled pipeline>")
        return self._function

    def source(self) -> str:
        evaluator = self._evaluator
        prologue: list[str] = []
        numeric: list[str] = []
        for block in evaluator.numeric:
            for i, out, _name, _fills, ops in block.columns_one:
                a = f"x{out}"
                numeric.append(a)
                prologue += [
                    f"    {a} = x[{i}]",
                    f"    if {a}.__class__ is not float:",
                    f"        if {a}.__class__ is int or {a}.__class__ is bool:",
                    f"            {a} = float({a})",
                    "        else:",
                    "            return None",
                ]
                for code, c in ops:
                    # 'fill' changes only NaN, and a NaN row leaves this path below.
                    if code == "sub":
                        prologue.append(f"    {a} = {a} - {float_literal(c)}")
                    elif code == "div":
                        prologue.append(f"    {a} = {a} / {float_literal(c)}")
        if numeric:
            if self._row_code.cast_float32:
                prologue.append(f"    {', '.join(numeric)}, = array('f', ({', '.join(numeric)},)).tolist()")
            # NaN or infinity anywhere (after the cast, as the batch sees it): the general path.
            prologue += [f"    t = {' + '.join(numeric)}", "    if t - t != 0.0:", "        return None"]
        indicator: dict[int, tuple[str, int]] = {}
        # Named by position: a ColumnTransformer may encode one input twice.
        for j, column in enumerate(evaluator.onehot):
            c = f"c{j}"
            prologue += [
                f"    {c} = x[{column.input}]",
                f"    if {c}.__class__ is str or {c}.__class__ is bool:",
                f"        {c} = T{j}.get({c}, -3)",
                "    else:",
                "        return None",
                f"    if {c} == -3:",
                "        return None",
            ]
            for out in column.table.values():
                if out >= 0:
                    indicator[out] = (c, out)

        def condition(column: int, threshold: float) -> str:
            if column not in indicator:
                return f"x{column} <= {float_literal(threshold)}"
            # The indicator is 1.0 for this code and 0.0 for every other one.
            code, out = indicator[column]
            when_one, when_zero = 1.0 <= threshold, 0.0 <= threshold
            if when_one == when_zero:
                return str(when_one)
            return f"{code} == {out}" if when_one else f"{code} != {out}"

        def category_condition(column: int, codes: list[int]) -> str:
            if column not in indicator:
                return category_test(f"x{column}", codes)
            code, out = indicator[column]
            when_one, when_zero = 1 in codes, 0 in codes
            if when_one == when_zero:
                return str(when_one)
            return f"{code} == {out}" if when_one else f"{code} != {out}"

        def band_test(column: int) -> str:
            if column not in indicator:
                return f"-{float_literal(ir.ZERO_BAND)} <= x{column} <= {float_literal(ir.ZERO_BAND)}"
            code, out = indicator[column]
            return f"{code} != {out}"  # the indicator is 0.0

        return self._row_code.source(prologue, condition, category_condition, band_test)


def define_raw(source: str, namespace: dict[str, Any], filename: str) -> Any:
    """The function ``raw`` that ``source`` (generated here from a model's
    numbers, never from text anyone supplied) defines in ``namespace``."""
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102
    return namespace["raw"]


def zero_test(test: str, band: str, band_left: bool) -> str:
    """Python for "goes left" at a node that sends the zero band (``band``)
    the way of missing values (left when ``band_left``), else as ``test``."""
    if band_left:
        return f"(({band}) or ({test}))"
    return f"(not ({band}) and ({test}))"


def category_test(value: str, codes: list[int]) -> str:
    """Python for "the finite float ``value`` goes left" at a categorical split
    whose left codes are ``codes`` (ir.TreeEnsemble.goes_left_category: int()
    truncates toward zero, as C's cast; -1 < value keeps -0.5 as code 0)."""
    if not codes:
        return "False"
    return f"({value} > -1.0 and int({value}) in {{{', '.join(str(c) for c in codes)}}})"


def float_literal(value: float) -> str:
    if math.isfinite(value):
        return repr(float(value))
    return "float('nan')" if math.isnan(value) else ("float('inf')" if value > 0 else "-float('inf')")

