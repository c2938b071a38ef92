"""The model's inputs as SQL: profile columns by type, numeric features
(a column and its float64 operations), one-hot encoded columns."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np

from pgscore_server.compiled import ir

from .text import SqlUnsupported, quote_ident, quote_literal

#: Column types of the reference ``public.customer_profiles`` (docs/contract.md,
#: sql/incremental/0001-tables.sql), with typmods: what :func:`~pgscore_server.sqlgen.to_sql`
#: assumes when its caller has no database to ask (the server passes the
#: declared types it reads, pgscore_server.catalog.declared_types).
PROFILE_COLUMN_TYPES: dict[str, str] = {
    "customer_id": "bigint",
    "gender": "text",
    "senior_citizen": "boolean",
    "partner": "boolean",
    "dependents": "boolean",
    "tenure_months": "integer",
    "phone_service": "boolean",
    "multiple_lines": "text",
    "internet_service": "text",
    "online_security": "text",
    "online_backup": "text",
    "device_protection": "text",
    "tech_support": "text",
    "streaming_tv": "text",
    "streaming_movies": "text",
    "contract": "text",
    "paperless_billing": "boolean",
    "payment_method": "text",
    "monthly_charges": "numeric(10,2)",
    "total_charges": "numeric(12,2)",
    "complaint_count": "integer",
    "churn_score": "double precision",
    "churn_model_id": "bigint",
}

_INT_BITS = {"smallint": 16, "integer": 32, "bigint": 64}


@dataclass(frozen=True)
class Column:
    """A profile column as the Python evaluator sees it (numeric read as float8)."""

    name: str
    ref: str  # alias.column
    kind: str  # text | bool | int | num
    int_bits: int = 0
    precision: int | None = None  # numeric(p, s) with a usable typmod
    scale: int | None = None

    @property
    def missing_sql(self) -> str:
        """TRUE for a missing value (NULL, or NaN where the type has one), never NULL."""
        if self.kind == "num":
            return f"({self.ref} IS NULL OR {self.ref} = 'NaN')"
        return f"{self.ref} IS NULL"

    def domain(self) -> tuple[float, float]:
        """Smallest and largest non-missing value as a Python float."""
        if self.kind == "bool":
            return 0.0, 1.0
        if self.kind == "int":
            top = 2 ** (self.int_bits - 1)
            return float(-top), float(top - 1)
        if self.precision is not None:
            top = float(Decimal(10) ** (self.precision - self.scale) - Decimal(10) ** (-self.scale))
            return -top, top
        return -math.inf, math.inf

    def float_sql(self) -> str:
        """The value as float8, as the evaluator converts it."""
        if self.kind == "bool":
            return f"{self.ref}::int::float8"
        return f"{self.ref}::float8"


def parse_column(name: str, type_name: str, alias: str, ref: str | None = None) -> Column:
    ref = ref or f"{alias}.{quote_ident(name)}"
    t = type_name.strip().lower()
    if t in ("text", "character varying") or t.startswith("character varying("):
        return Column(name, ref, "text")
    if t == "boolean":
        return Column(name, ref, "bool")
    if t in _INT_BITS:
        return Column(name, ref, "int", int_bits=_INT_BITS[t])
    if t in ("real", "double precision", "numeric"):
        return Column(name, ref, "num")
    m = re.fullmatch(r"numeric\(\s*(\d+)\s*(?:,\s*(-?\d+)\s*)?\)", t)
    if m:
        precision, scale = int(m.group(1)), int(m.group(2) or 0)
        if precision - scale <= 300:  # its values stay far inside float8's range
            return Column(name, ref, "num", precision=precision, scale=scale)
        return Column(name, ref, "num")
    raise SqlUnsupported(f"feature {name!r} has type {type_name}, which the SQL generator does not handle")


@dataclass
class NumFeature:
    column: Column
    ops: list[tuple[str, float]]  # fill / sub / div, in pipeline order

    def transform(self, x: np.ndarray) -> np.ndarray:
        """What the evaluator computes from raw values (float64; NaN is missing)."""
        v = np.array(x, dtype=np.float64)
        with np.errstate(all="ignore"):
            for code, c in self.ops:
                if code == "fill":
                    v = np.where(np.isnan(v), c, v)
                elif code == "sub":
                    v = v - c
                else:
                    v = v / c
        return v


@dataclass
class HotColumn:
    column: Column
    step: str
    table: list[tuple[Any, int]]  # (category, model column or -1 if dropped)
    unknown: str  # ignore | error

    def is_sql(self, value: Any) -> str:
        """TRUE when the column holds this category (NULL when the column is NULL)."""
        ref = self.column.ref
        if self.column.kind == "bool":
            return ref if value else f"NOT {ref}"
        if self.column.kind == "int":
            return f"{ref} = {int(value)}"
        return f"{ref} = {quote_literal(value)}"

    def literal(self, value: Any) -> str:
        if self.column.kind == "bool":
            return "true" if value else "false"
        if self.column.kind == "int":
            return str(int(value))
        return quote_literal(value)


@dataclass
class OrdinalFeature:
    """A column as its category's position (:class:`ir.OrdinalColumn`): only
    categorical splits test it, as "the value is one of these categories"."""

    column: Column
    categories: list[Any]

    def in_sql(self, codes: list[int]) -> str:
        """TRUE when the column holds the category of one of ``codes``, else
        FALSE or NULL (NULL and values that are no category: neither)."""
        literals = []
        for code in codes:
            value = self.categories[code] if 0 <= code < len(self.categories) else None
            if value is None or value is ir.NAN_KEY:
                continue
            if self.column.kind == "text" and type(value) is str:
                literals.append(quote_literal(value))
            elif self.column.kind == "int" and type(value) is int:
                literals.append(str(value))
            elif self.column.kind == "int" and type(value) is float and value.is_integer():
                # pandas' categories of numbers with a NaN are floats: 7 is 7.0 (as in the compiled path's dict)
                literals.append(str(int(value)))
            elif self.column.kind == "bool" and type(value) is bool:
                literals.append("true" if value else "false")
            elif self.column.kind in ("text", "int", "bool"):
                continue  # a value of another type: the column never holds it
            else:
                raise SqlUnsupported(f"feature {self.column.name!r}: categories of a {self.column.kind} column")
        return f"{self.column.ref} IN ({', '.join(literals)})" if literals else "false"


def hot_table(column: Column, onehot: ir.OneHotColumn) -> list[tuple[Any, int]]:
    step = onehot.step
    if onehot.fills:
        raise SqlUnsupported(
            f"feature {column.name!r}: a most_frequent/constant SimpleImputer before the OneHotEncoder "
            f"in step {step!r} treats NULL as missing or not depending on the whole batch's pandas dtype, "
            "which a per-row SQL expression cannot know"
        )
    table = []
    for value, out in zip(onehot.categories, onehot.outputs):
        if value is None or value is ir.NAN_KEY:
            raise SqlUnsupported(
                f"feature {column.name!r}: the OneHotEncoder in step {step!r} has a missing-value category; "
                "whether a NULL matches it depends on the whole batch's pandas dtype"
            )
        kind = column.kind
        if kind == "text":
            if type(value) is not str:
                continue  # a text value never equals a number or a bool
        elif kind == "bool":
            if type(value) is not bool:
                raise SqlUnsupported(f"feature {column.name!r}: boolean column one-hot encoded with {value!r}")
        elif kind == "int":
            if type(value) is not int:
                raise SqlUnsupported(f"feature {column.name!r}: integer column one-hot encoded with {value!r}")
            top = 2 ** (column.int_bits - 1)
            if not -top <= value < top:
                continue  # the column cannot hold it
        else:
            raise SqlUnsupported(
                f"feature {column.name!r}: one-hot encoding a {kind} column is not supported by the SQL generator"
            )
        table.append((value, int(out)))
    return table
