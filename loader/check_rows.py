"""The rows a model is checked on before a scoring path is chosen for it.

Real profiles say what a model meets in practice; rows generated from the
fitted model itself say what it may meet, and exist even in a database
that has no profiles yet:

- every category of every one-hot encoder, and one it never saw;
- NULL for every feature;
- each split threshold of a tree on a numeric feature, with the input
  values on either side of it: the last value that goes left and the first
  that goes right, after the pipeline's scaling and the float32 cast trees
  compare in, and their neighbours;
- scaler means and means +- 1, 3 and 10 deviations;
- the extremes of each column's type (largest and smallest integer, the
  largest ``numeric(p,s)``, 0, the smallest step).

Each generated row is a base row (a real profile, or one made of the
model's own typical values) with one feature changed, so that every other
feature stays ordinary. Values are those the column can hold: integers for
integer columns, ``numeric(p,s)`` values at scale s, so that a row means
the same in the database and here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any, Callable, Sequence

import numpy as np

from pgscore_server import catalog
from pgscore_server.compiled import ir
from pgscore_server.sqlgen.thresholds import largest_true

# Generated rows per kind at most (a forest has thousands of thresholds; the
# check must stay a few seconds). Thresholds are sampled evenly beyond this.
MAX_ROWS_PER_KIND = 1500
INT_RANGES = {"smallint": 2**15, "integer": 2**31, "bigint": 2**63}
_NUMERIC = re.compile(r"numeric\((\d+),(\d+)\)")


@dataclass
class CheckRows:
    """Real profiles and generated rows, by kind; ``describe`` reports the counts."""

    profiles: list[dict] = field(default_factory=list)
    generated: dict[str, list[dict]] = field(default_factory=dict)

    @property
    def edges(self) -> list[dict]:
        return [row for rows in self.generated.values() for row in rows]

    @property
    def total(self) -> int:
        return len(self.profiles) + len(self.edges)

    def describe(self) -> str:
        kinds = ", ".join(f"{kind} {len(rows):,}" for kind, rows in self.generated.items() if rows)
        return f"{len(self.profiles):,} profiles and {len(self.edges):,} generated rows ({kinds or 'none'})"


def rows_for(model: ir.Model, declared: dict[str, str], base: dict | None = None) -> dict[str, list[dict]]:
    """Rows by kind for the compiled ``model`` (``CompiledModel.ir``), whose
    features have the declared column types ``declared`` (``numeric(10,2)``);
    ``base`` is a real profile's features, or None to make one."""
    names = list(model.feature_names)
    kinds = {name: _kind(declared.get(name, "double precision")) for name in names}
    # A NaN category is a row value here: a float NaN, as a profile would hold it.
    categories = {column.input: [math.nan if v is ir.NAN_KEY else v for v in column.categories]
                  for column in (*model.transform.onehot, *model.transform.ordinal)}
    chains = _numeric_chains(model.transform.numeric)
    means = {chain.source: chain.mean for chain in chains.values()}
    row = dict(base) if base else _typical_row(names, kinds, categories, means)

    def vary(name: str, values: Sequence[Any]) -> list[dict]:
        return [{**row, name: value} for value in values if value is None or kinds[name].holds(value)]

    out: dict[str, list[dict]] = {"categories": [], "unknown categories": [], "nulls": [], "thresholds": [],
                                  "scaler": [], "type extremes": []}
    for index, values in categories.items():
        name = names[index]
        out["categories"] += vary(name, values)
        out["unknown categories"] += vary(name, [_unknown(values)])
    for name in names:
        out["nulls"] += vary(name, [None])
        out["type extremes"] += vary(name, kinds[name].extremes())
    for chain in dict.fromkeys(chains.values()):
        scale = chain.scale
        if scale is not None:
            name = names[chain.source]
            out["scaler"] += vary(name, [kinds[name].near(chain.mean + k * scale) for k in (0, -1, 1, -3, 3, -10, 10)])
    out["thresholds"] = _threshold_rows(model.classifier, names, kinds, chains, vary)
    return {kind: _sample(_distinct(rows), MAX_ROWS_PER_KIND) for kind, rows in out.items()}


# -- column kinds ----------------------------------------------------------------

@dataclass(frozen=True)
class _Kind:
    """What a column can hold, and its notable values."""

    type_name: str
    scale: int | None = None  # numeric(p,s): s
    precision: int | None = None

    @property
    def is_integer(self) -> bool:
        return self.type_name in catalog.INTEGER_TYPES

    @property
    def is_number(self) -> bool:
        return self.type_name in catalog.NUMBER_TYPES

    def holds(self, value: Any) -> bool:
        if isinstance(value, bool) or self.type_name in catalog.BOOLEAN_TYPES:
            return isinstance(value, bool) and self.type_name in catalog.BOOLEAN_TYPES
        if self.type_name in catalog.TEXT_TYPES:
            return isinstance(value, str)
        if self.is_integer:
            bound = INT_RANGES[self.type_name]
            return isinstance(value, int) and -bound <= value < bound
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if self.type_name == "real":
            return abs(value) <= float(np.finfo(np.float32).max)
        if self.precision is not None and self.scale is not None:
            return abs(value) < 10.0 ** (self.precision - self.scale)
        return True

    def near(self, x: float) -> Any:
        """The value of this column closest to ``x``."""
        if not math.isfinite(x):
            return None
        if self.is_integer:
            return int(round(x))
        if self.scale is not None:
            return float(round(Decimal(repr(x)), self.scale))
        return float(np.float32(x)) if self.type_name == "real" else x

    def around(self, x: float) -> list[Any]:
        """Values of this column on either side of the real number ``x`` (and ``x`` itself where it fits)."""
        if not math.isfinite(x):
            return []
        if self.is_integer:
            low = math.floor(x)
            return [low - 1, low, low + 1, low + 2]
        if self.scale is not None:
            step = Decimal(1).scaleb(-self.scale)
            exact = Decimal(repr(x))
            low = exact.quantize(step, rounding=ROUND_FLOOR)
            high = exact.quantize(step, rounding=ROUND_CEILING)
            return [float(v) for v in (low - step, low, high, high + step)]
        if self.type_name == "real":
            f = np.float32(x)
            return [float(np.nextafter(f, np.float32(-np.inf))), float(f), float(np.nextafter(f, np.float32(np.inf)))]
        return [float(np.nextafter(x, -np.inf)), x, float(np.nextafter(x, np.inf))]

    def extremes(self) -> list[Any]:
        if self.type_name in catalog.BOOLEAN_TYPES:
            return [True, False]
        if self.type_name in catalog.TEXT_TYPES:
            return [""]
        if self.is_integer:
            bound = INT_RANGES[self.type_name]
            return [0, 1, -1, bound - 1, -bound]
        if self.precision is not None and self.scale is not None:
            largest = float(Decimal(10) ** (self.precision - self.scale) - Decimal(1).scaleb(-self.scale))
            smallest = float(Decimal(1).scaleb(-self.scale))
            return [0.0, smallest, -smallest, largest, -largest]
        if self.type_name == "real":
            big = float(np.finfo(np.float32).max)
            return [0.0, float(np.finfo(np.float32).tiny), big, -big]
        return [0.0, 5e-324, 1e300, -1e300]


def _kind(declared: str) -> _Kind:
    match = _NUMERIC.fullmatch(declared.replace(" ", ""))
    if match:
        return _Kind("numeric", scale=int(match.group(2)), precision=int(match.group(1)))
    base = declared.split("(")[0].strip()
    return _Kind(base)


# -- the model's own values ------------------------------------------------------

@dataclass(frozen=True)
class _Chain:
    """A numeric input and the float64 operations it goes through before the model."""

    source: int
    ops: tuple[tuple[str, float], ...]

    @property
    def mean(self) -> float:
        return next((value for code, value in self.ops if code == "sub"), 0.0)

    @property
    def scale(self) -> float | None:
        """The scaler's deviation (1 for centring alone), None without a scaler."""
        if not any(code in ("sub", "div") for code, _ in self.ops):
            return None
        return next((value for code, value in self.ops if code == "div"), 1.0) or 1.0

    def apply(self, x: float) -> float:
        for code, value in self.ops:
            if code == "sub":
                x = x - value
            elif code == "div":
                x = x / value
        return x


def _numeric_chains(blocks: list[ir.NumericBlock]) -> dict[int, _Chain]:
    """Model input column -> the numeric input that feeds it and how (one input may feed several)."""
    chains: dict[int, _Chain] = {}
    for block in blocks:
        for j, (source, output) in enumerate(zip(block.inputs, block.outputs)):
            chains[output] = _Chain(source, tuple((code, float(values[j])) for code, values in block.ops))
    return chains


def _unknown(values: Sequence[Any]) -> Any:
    if any(isinstance(v, str) for v in values):
        candidate = "pgscore-unseen-category"
        while candidate in values:
            candidate += "-"
        return candidate
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return (max(numbers) + 1) if numbers else "pgscore-unseen-category"


def _typical_row(names: list[str], kinds: dict[str, _Kind], categories: dict[int, list[Any]],
                 means: dict[int, float]) -> dict:
    """A row of ordinary values: a category the model knows, the scaler's mean, false, zero."""
    row: dict[str, Any] = {}
    for index, name in enumerate(names):
        kind = kinds[name]
        known = [v for v in categories.get(index, []) if v is not None and not (isinstance(v, float) and math.isnan(v))]
        if known and kind.holds(known[0]):
            row[name] = known[0]
        elif kind.type_name in catalog.BOOLEAN_TYPES:
            row[name] = False
        elif kind.type_name in catalog.TEXT_TYPES:
            row[name] = known[0] if known else ""
        elif index in means:
            row[name] = kind.near(means[index])
        else:
            row[name] = kind.near(0.0)
    return row


def _threshold_rows(classifier: ir.Linear | ir.TreeEnsemble, names: list[str], kinds: dict[str, _Kind],
                    chains: dict[int, _Chain], vary: Callable[[str, Sequence[Any]], list[dict]]) -> list[dict]:
    """Rows on either side of every split of a numeric feature."""
    if not isinstance(classifier, ir.TreeEnsemble):
        return []
    float32 = classifier.cast_float32
    features = np.asarray(classifier.feature)
    thresholds = np.asarray(classifier.threshold)
    category_set = classifier.category_set if classifier.categorical else [-1] * len(features)
    splits = sorted({(int(f), float(t)) for f, t, s in zip(features.tolist(), thresholds.tolist(), category_set)
                     if f >= 0 and math.isfinite(t) and s < 0})
    rows: list[dict] = []
    for node in (k for k, s in enumerate(category_set) if s >= 0):
        # A categorical split of a plain numeric column: every code of its set and
        # the values around it (fractions truncate, negatives and codes past the set go right).
        chain = chains.get(int(features[node]))
        if chain is None or chain.ops:
            continue  # a category column's categories are rows already
        name = names[chain.source]
        if kinds[name].is_number:
            s = category_set[node]
            size = classifier.category_bounds[s + 1] - classifier.category_bounds[s]
            codes = [c for c in range(size) if classifier.category_left[classifier.category_bounds[s] + c]]
            rows += vary(name, [*codes, *(c + 0.5 for c in codes), -1, -0.5, size, -(2 ** 31), 2 ** 31])
    if classifier.zero_band:
        # Nodes that send the zero band where missing values go: both edges of the band.
        band_edges = (ir.ZERO_BAND, math.nextafter(-ir.ZERO_BAND, -math.inf))
        splits = sorted(set(splits) | {(int(features[node]), edge) for node, z in enumerate(classifier.zero_missing)
                                       if z for edge in band_edges})
    rows = _distinct(rows)
    for output, threshold in splits:
        chain = chains.get(output)
        if chain is None:
            continue  # a one-hot output: its categories are rows already
        name = names[chain.source]
        kind = kinds[name]
        if not kind.is_number:
            continue
        cut = _input_cut(chain.apply, threshold, float32)
        if cut is not None:
            rows += vary(name, kind.around(cut))
    return rows


def _input_cut(apply: Callable[[Any], Any], threshold: float, float32: bool) -> float | None:
    """The largest input x whose transformed value still goes left (<= threshold,
    after the float32 cast where the trees make it), found as the SQL generator
    finds it (the transform is increasing); None unless it lies in [-1e300, 1e300)."""
    def left(x: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore"):
            y = apply(x)
            return y.astype(np.float32) <= threshold if float32 else y <= threshold

    cut = float(largest_true(left, 1)[0])
    if math.isnan(cut) or not -1e300 <= cut < 1e300:
        return None
    return cut


def _distinct(rows: list[dict]) -> list[dict]:
    seen: set = set()
    out = []
    for row in rows:
        key = tuple((name, type(value), repr(value)) for name, value in row.items())
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out


def _sample(rows: list[dict], limit: int) -> list[dict]:
    if len(rows) <= limit:
        return rows
    step = len(rows) / limit
    return [rows[int(k * step)] for k in range(limit)]
