"""SQL text: quoting, constants, messages of rejected rows, CASE layout, the logistic link."""

from __future__ import annotations

import math
import re

from pgscore_server.compiled import float32

#: The exponent of the logistic link is clamped to +-this (exp() in PostgreSQL raises beyond ~708).
EXP_CLAMP = 700.0

_IDENT = re.compile(r"[a-z_][a-z0-9_$]*\Z")


class SqlUnsupported(Exception):
    """The compiled model cannot be expressed exactly in plain SQL; ``reason`` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def quote_ident(name: str) -> str:
    if _IDENT.match(name):
        return name
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    """A string constant that reads back as ``text`` whatever the session's
    standard_conforming_strings (any role may turn it off, and a generated
    PL/pgSQL body is parsed in the caller's session): as PostgreSQL's own
    quote_literal writes it, an E'' constant with backslashes doubled where
    ``text`` has one, a plain constant otherwise."""
    if "\x00" in text:
        raise SqlUnsupported(f"category {text!r} contains a NUL character")
    quoted = "'" + text.replace("'", "''") + "'"
    if "\\" in text:
        return "E" + quoted.replace("\\", "\\\\")
    return quoted


def message(before: str, ref: str, after: str) -> str:
    """Text SQL of a rejected row's message: ``before``, the column's value
    (quoted, or NULL), ``after``; the constant parts quoted as literals, since
    column, step and estimator names come from the model."""
    return f"{quote_literal(before)} || pg_catalog.quote_nullable({ref}::text) || {quote_literal(after)}"


def f8(value: float) -> str:
    """A float8 constant that reads back as exactly ``value``."""
    value = float(value)
    if math.isnan(value):
        return "'NaN'::float8"
    if math.isinf(value):
        return "'Infinity'::float8" if value > 0 else "'-Infinity'::float8"
    return f"'{value!r}'::float8"


def case(condition: str, then: str, otherwise: str, depth: int) -> str:
    """``CASE WHEN condition THEN then ELSE otherwise END``, on one line when short."""
    if "\n" not in then and "\n" not in otherwise and len(then) + len(otherwise) + len(condition) < 120:
        return f"CASE WHEN {condition} THEN {then} ELSE {otherwise} END"
    pad = "  " * depth
    return f"CASE WHEN {condition}\n{pad}  THEN {then}\n{pad}  ELSE {otherwise}\n{pad}END"


def logistic(z: str) -> str:
    """1 / (1 + exp(-z)) of the SQL ``z``, the exponent clamped to +-EXP_CLAMP."""
    return (
        f"1::float8 / (1::float8 + pg_catalog.exp(LEAST(GREATEST(-{z}, "
        f"{f8(-EXP_CLAMP)}), {f8(EXP_CLAMP)})))"
    )


#: Below this exponent exp() is under 2**-115, so ``exp + 1`` rounds to 1 in float32
#: as XGBoost's expf does; it keeps the float4 cast of exp() from underflowing (PostgreSQL raises).
FLOAT4_EXP_FLOOR = -80.0


def f4(value: float) -> str:
    """A float4 constant of a float32 ``value`` (exact: the float8 text of a float32 value reads back as it)."""
    if float32.to_float32(value) != value and value == value:
        raise SqlUnsupported(f"{value!r} is not a float32 value")
    return f"{f8(value)}::float4"


def logistic_float4(margin: str) -> str:
    """XGBoost's float32 Sigmoid of the float4 SQL ``margin`` (pgscore_server.compiled.float32),
    in float4 arithmetic (IEEE single, as PostgreSQL's float4 operators are), as float8.
    exp() exists in float8 only: its result rounded to float4 stands for expf."""
    x = f"GREATEST(LEAST(-{margin}, {f4(float32.EXP_LIMIT)}), {f4(FLOAT4_EXP_FLOOR)})"
    return (f"(1::float4 / (pg_catalog.exp({x}::float8)::float4 + 1::float4 + {f4(float32.EPSILON)}))::float8")
