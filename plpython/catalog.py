"""What the server knows about public.customer_profiles: its columns and types.

A model's features are profile columns; these helpers check that and build
the SELECT list that reads them as the plain Python values that
:func:`pgscore_server.features.to_frame` expects (numeric read as float8).
"""

from __future__ import annotations

from . import plans
from .errors import UNDEFINED_OBJECT, ScoringError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (package docstring)
if TYPE_CHECKING:
    from typing import Any, Mapping, Sequence

PROFILES = "public.customer_profiles"

# PostgreSQL type -> the kind of JSON value a what-if feature must have.
NUMBER_TYPES = {"smallint", "integer", "bigint", "numeric", "real", "double precision"}
INTEGER_TYPES = {"smallint", "integer", "bigint"}
BOOLEAN_TYPES = {"boolean"}
TEXT_TYPES = {"text", "character varying", "character"}
SUPPORTED_TYPES = NUMBER_TYPES | BOOLEAN_TYPES | TEXT_TYPES


PROFILE_COLUMNS_SQL = (
    "SELECT attname::text AS name, format_type(atttypid, NULL) AS type,"
    " format_type(atttypid, atttypmod) AS declared"
    " FROM pg_catalog.pg_attribute"
    " WHERE attrelid = 'public.customer_profiles'::regclass AND attnum > 0 AND NOT attisdropped"
    " ORDER BY attnum"
)
# The columns as a query's result describes them. Planning it reads nothing
# that reading a profile does not: a new backend's first score reads no
# pg_attribute rows for it (~0.6 MiB of catalog pages less: P6 in
# docs/performance.md).
PROFILE_DESCRIPTION_SQL = "SELECT * FROM public.customer_profiles LIMIT 0"
# format_type(oid, NULL) by type oid: the types a feature may have, and
# other columns' usual ones. Another type is named by PROFILE_COLUMNS_SQL.
TYPE_NAMES = {
    16: "boolean", 20: "bigint", 21: "smallint", 23: "integer", 25: "text", 700: "real",
    701: "double precision", 1042: "character", 1043: "character varying", 1700: "numeric",
    17: "bytea", 114: "json", 1082: "date", 1114: "timestamp without time zone",
    1184: "timestamp with time zone", 1186: "interval", 2950: "uuid", 3802: "jsonb",
}


def profile_columns(plpy: Any, cache: dict) -> dict[str, str]:
    """Column name -> type name of public.customer_profiles (cached per backend)."""
    found = cache.get("pgscore.profile_columns")
    if found is None:
        described = plans.run(plpy, cache, PROFILE_DESCRIPTION_SQL)
        names = [TYPE_NAMES.get(oid) for oid in described.coltypes()]
        if None in names:
            named = {row["name"]: row["type"] for row in plans.run(plpy, cache, PROFILE_COLUMNS_SQL)}
            names = [name or named[column] for column, name in zip(described.colnames(), names)]
        found = cache["pgscore.profile_columns"] = dict(zip(described.colnames(), names))
    return found


def declared_types(plpy: Any, cache: dict) -> dict[str, str]:
    """Column name -> type with its modifier (``numeric(10,2)``), which lets
    generated SQL compare tree splits as decimals (cached per backend)."""
    found = cache.get("pgscore.declared_types")
    if found is None:
        rows = plans.run(plpy, cache, PROFILE_COLUMNS_SQL)
        found = cache["pgscore.declared_types"] = {row["name"]: row["declared"] for row in rows}
    return found


def check_features(feature_names: Sequence[str], columns: Mapping[str, str], model_label: str,
                   table: str = PROFILES) -> None:
    """Raises ScoringError unless every feature is a column of ``table`` of a supported type."""
    for name in feature_names:
        column_type = columns.get(name)
        if column_type is None:
            raise ScoringError(
                f"{model_label} uses feature {name!r}, which is not a column of {table}",
                sqlstate=UNDEFINED_OBJECT,
                hint=f"add the column to {table} or push a model trained on its columns",
            )
        if column_type not in SUPPORTED_TYPES:
            raise ScoringError(
                f"{model_label} uses feature {name!r} of type {column_type}, which pgscore cannot feed to a model",
                sqlstate=UNDEFINED_OBJECT,
                hint="use numeric, integer, boolean or text columns as features",
            )


# The arrays scoring._score_profile takes a profile's features in, in its
# argument order: (layout letter, element type). Per column type, the letter
# of the array that holds the value as select_list reads it. character(n)
# has none: a cast to text drops its padding.
ROW_ARRAYS = (("f", "float8"), ("i", "bigint"), ("b", "boolean"), ("t", "text"))
ROW_LETTERS = {**{t: "f" for t in NUMBER_TYPES - INTEGER_TYPES}, **{t: "i" for t in INTEGER_TYPES},
               **{t: "b" for t in BOOLEAN_TYPES}, "text": "t", "character varying": "t"}


def row_layout(feature_names: Sequence[str], columns: Mapping[str, str]) -> str | None:
    """One letter per feature (see ROW_LETTERS), or None if a column has no array form."""
    letters = [ROW_LETTERS.get(columns[name]) for name in feature_names]
    return None if None in letters else "".join(letters)  # type: ignore[arg-type]


def select_list(
    quoter: Any,
    feature_names: Sequence[str],
    columns: Mapping[str, str],
    alias: str = "p",
    overrides: Mapping[str, str] | None = None,
    aggregate: str | None = None,
) -> str:
    """``p.a AS a, p.b::float8 AS b, ...``: the features as plain Python values.

    ``quoter`` has ``quote_ident`` (plpy, or the loader's stand-in).
    ``overrides`` replaces a column's expression (the trigger reads
    complaint_count as the count after the new complaints). ``aggregate``
    wraps each expression (``array_agg``: one array per feature, in the
    same row order for all of them).
    """
    items = []
    for name in feature_names:
        ident = quoter.quote_ident(name)
        expr = (overrides or {}).get(name, f"{alias}.{ident}")
        if columns[name] in NUMBER_TYPES - INTEGER_TYPES:
            expr = f"({expr})::float8"
        if aggregate:
            expr = f"{aggregate}({expr})"
        items.append(f"{expr} AS {ident}")
    return ", ".join(items)


# Text features of batch reads arrive as one string per column joined by
# this separator: string_agg and one str.split cost 1M profiles ~0.7 s less
# than array_agg and a list of strings from PL/Python.
JOIN_SEPARATOR = "\x1f"  # ASCII unit separator
JOIN_SEPARATOR_SQL = "E'\\x1f'"
JOINED_TYPES = {"text", "character varying"}  # character(n) would lose its padding


def joined_features(feature_names: Sequence[str], columns: Mapping[str, str]) -> list[int]:
    """Positions of the features a batch read joins into one string."""
    return [k for k, name in enumerate(feature_names) if columns[name] in JOINED_TYPES]


def batch_list(quoter: Any, feature_names: Sequence[str], columns: Mapping[str, str], alias: str = "p",
               coded: Mapping[int, Sequence[str]] | None = None) -> str:
    """:func:`select_list` aggregated for a batch read: ``array_agg`` per
    feature, except the :func:`joined_features`, read as
    ``string_agg(.., JOIN_SEPARATOR)`` plus ``count(..) AS pgscore_count_<k>``
    (string_agg skips NULLs; a count short of the rows tells), and the
    ``coded`` ones (position -> categories; text columns only): one code
    character per row, see :func:`category_codes`."""
    items = []
    for k, name in enumerate(feature_names):
        if coded and k in coded:
            column = f"{alias}.{quoter.quote_ident(name)}"
            items.append(f"string_agg({category_codes(quoter, column, coded[k])}, '') AS {quoter.quote_ident(name)}")
        elif columns[name] in JOINED_TYPES:
            column = f"{alias}.{quoter.quote_ident(name)}"
            items.append(f"string_agg({column}, {JOIN_SEPARATOR_SQL}) AS {quoter.quote_ident(name)},"
                         f" count({column}) AS pgscore_count_{k}")
        else:
            items.append(select_list(quoter, [name], columns, alias, aggregate="array_agg"))
    return ", ".join(items)


def category_codes(quoter: Any, column: str, categories: Sequence[str]) -> str:
    """The code character of a text column's value (pgscore_server.compiled:
    CODE_FIRST + i for categories[i], CODE_NULL, CODE_OTHER), compared byte
    for byte (COLLATE "C") as Python compares strings."""
    from .compiled import CODE_FIRST, CODE_NULL, CODE_OTHER

    whens = " ".join(f"WHEN {quoter.quote_literal(category)} THEN {quoter.quote_literal(chr(CODE_FIRST + i))}"
                     for i, category in enumerate(categories))
    return (f'CASE {column} COLLATE "C" {whens} ELSE CASE WHEN {column} IS NULL'
            f" THEN {quoter.quote_literal(chr(CODE_NULL))} ELSE {quoter.quote_literal(chr(CODE_OTHER))} END END")
