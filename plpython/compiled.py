"""Scoring a compiled scikit-learn pipeline with numpy alone.

This module runs inside PostgreSQL: it imports only numpy and the standard
library, never scikit-learn, pandas or scipy, and numpy only on first use: a
tree model scoring one row at a time (the complaint trigger) runs on the
standard library alone. ``pgscore.compile`` turns a fitted pipeline into
bytes (a ``.npz`` archive: a JSON manifest plus plain numeric arrays, no
pickle); :func:`load` reads them back and the returned :class:`Evaluator`
reproduces ``pipeline.predict_proba(to_frame(rows))[:, 1]``.

"Reproduces" includes the quirks of that reference. ``to_frame`` builds a
pandas DataFrame, and pandas infers each column's dtype from the whole batch:
``None`` becomes NaN in a column of numbers or of strings, but stays ``None``
in a column holding only ``None`` (one row) or mixing booleans with ``None``.
scikit-learn's OneHotEncoder and most_frequent/constant SimpleImputer treat
``None`` and NaN differently, so the evaluator infers the same column kinds
per batch (:func:`_infer_kind`) before it looks categories up.

Trees compare the float32-rounded feature against the float64 threshold (as
scikit-learn's Cython does) and sums are accumulated tree by tree in the
estimator's order, so the results agree with scikit-learn to the last bit or
close to it.
"""

from __future__ import annotations

import math
import struct
import sys
import zlib
from array import array
from collections.abc import Mapping, Sequence

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (package docstring)
if TYPE_CHECKING:
    from typing import Any, Iterable

    import numpy as np

FORMAT = "pgscore-compiled"
FORMAT_VERSION = 1

_NAN = float("nan")
_INF = float("inf")
_NONE_TYPE = type(None)
# Rows processed per vectorised tree-traversal chunk: (rows x trees) index
# matrices of ~131k entries (1 MiB) stay in cache between the gathers of one
# level; 1M-entry chunks walked 1.2-1.6x slower (GBM, RF of the demo).
_TREE_CHUNK_CELLS = 1 << 17
# Below this many rows a batch walks in the calling thread alone
# (pgscore_server.settings.batch_threads asks for no threads then).
THREADED_MIN_ROWS = 20_000

# A one-hot encoded text feature may reach a batch as one code character per
# row instead of its strings (pgscore_server.catalog.batch_list writes the
# CASE that codes it): decoding 1M profiles' strings and looking each up
# cost ~0.4 s per feature, the codes ~1 ms. Category i is CODE_FIRST + i.
CODE_NULL = 33  # '!': NULL
CODE_OTHER = 34  # '"': a string that is no category
CODE_FIRST = 35  # '#' .. '~'
MAX_CODED_CATEGORIES = 127 - CODE_FIRST


class _NanKey:
    """The category "missing as NaN", distinct from ``None`` as scikit-learn keeps it.

    NaN cannot be a dict key (it is unequal to itself), so categories and
    imputation values use the one instance :data:`NAN_KEY` for it.
    """

    def __repr__(self) -> str:
        return "nan"


NAN_KEY = _NanKey()


class _Numpy:
    """Stands in for numpy until first used; then the module's ``np`` is numpy
    itself. A backend that never scores a batch never imports it (~12 MiB and
    ~0.1 s per backend)."""

    def __getattr__(self, name: str) -> Any:
        import numpy

        globals()["np"] = numpy
        return getattr(numpy, name)


if not TYPE_CHECKING:
    np = _Numpy()

# The .npy element types pgscore.compile writes, as array typecodes.
_NPY_TYPECODES = {"<f8": "d", "<i4": "i", "<i8": "q", "|u1": "B", "|b1": "B"}


def load(data: bytes) -> "Evaluator":
    """Read bytes written by ``pgscore.compile.CompiledModel.to_bytes``.

    Raises ValueError if the bytes are not a compiled model of a format
    version this module understands, or are inconsistent.
    """
    try:
        arrays = _read_npz(bytes(data))
    except (ValueError, struct.error, zlib.error, UnicodeDecodeError) as exc:  # all "not ours"
        raise ValueError(f"not a compiled pgscore model: {exc}") from exc
    if "manifest" not in arrays:
        raise ValueError("not a compiled pgscore model: no manifest")
    manifest = _json_document(arrays.pop("manifest").tobytes().decode("utf-8"))
    if manifest.get("format") != FORMAT:
        raise ValueError(f"not a compiled pgscore model: format {manifest.get('format')!r}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"compiled model format version {manifest.get('format_version')!r} is not supported "
            f"by this server (it reads version {FORMAT_VERSION})"
        )
    try:
        return Evaluator(manifest, arrays)
    except (KeyError, TypeError, IndexError) as exc:
        raise ValueError(f"compiled model is malformed: {exc!r}") from exc


class _JsonDefaults:
    """What ``json.JSONDecoder()`` hands its C scanner: json.loads' defaults,
    except that NaN and infinities are refused (pgscore.compile never writes
    them: ``allow_nan=False``)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> float:
        raise ValueError(f"the manifest holds {name}, which is not a JSON number")


def _json_document(text: str) -> Any:
    """``json.loads(text)`` without importing json, which imports re and enum:
    ~1 MiB of private memory in every backend that scores one row. It runs
    json's own C scanner (``_json``, what json.loads runs) and, as json.loads
    does, allows whitespace around the one value and nothing else."""
    try:
        import _json
    except ImportError:  # a Python built without the accelerator
        import json

        return json.loads(text)
    start = len(text) - len(text.lstrip(" \t\n\r"))
    try:
        value, end = _json.make_scanner(_JsonDefaults())(text, start)
    except StopIteration as stop:
        raise ValueError(f"the manifest is not JSON (no value at character {stop.value})") from None
    if text[end:].strip(" \t\n\r"):
        raise ValueError(f"the manifest is not JSON (extra data at character {end})")
    return value


def _read_npz(data: bytes) -> dict[str, array]:
    """The flat arrays of a ``.npz`` archive as ``pgscore.compile`` writes it
    (a zip of ``.npy`` files, stored or deflated), without numpy or zipfile.

    Raises ValueError for anything else: another zip layout, a damaged
    member (CRC), an element type or memory order it does not write.
    """
    end = data.rfind(b"PK\x05\x06", max(0, len(data) - 65_557))
    if end < 0:
        raise ValueError("not a zip archive")
    count, _size, offset = struct.unpack_from("<HII", data, end + 10)
    arrays: dict[str, array] = {}
    for _ in range(count):
        if data[offset:offset + 4] != b"PK\x01\x02":
            raise ValueError("damaged zip directory")
        method, crc, packed, size, name_len, extra_len, comment_len = struct.unpack_from("<H4xIIIHHH", data, offset + 10)
        (local,) = struct.unpack_from("<I", data, offset + 42)
        name = data[offset + 46:offset + 46 + name_len].decode("utf-8")
        offset += 46 + name_len + extra_len + comment_len
        if data[local:local + 4] != b"PK\x03\x04":
            raise ValueError(f"damaged zip member {name!r}")
        start = local + 30 + sum(struct.unpack_from("<HH", data, local + 26))
        body = data[start:start + packed]
        if method == 8:
            body = zlib.decompress(body, -15)
        elif method != 0:
            raise ValueError(f"zip member {name!r}: compression method {method}")
        if len(body) != size or zlib.crc32(body) != crc:
            raise ValueError(f"zip member {name!r} is damaged")
        if not name.endswith(".npy"):
            raise ValueError(f"zip member {name!r} is not an array")
        arrays[name[:-4]] = _read_npy(body, name)
    return arrays


def _read_npy(body: bytes, name: str) -> array:
    """One ``.npy`` file (format 1.0-3.0) written by ``numpy.lib.format.write_array``, flattened."""
    if body[:6] != b"\x93NUMPY" or body[6] not in (1, 2, 3):
        raise ValueError(f"{name!r} is not an .npy array")
    length_format = "<H" if body[6] == 1 else "<I"
    (header_len,) = struct.unpack_from(length_format, body, 8)
    data_start = 8 + struct.calcsize(length_format) + header_len
    header = body[data_start - header_len:data_start].decode("latin-1")

    def field(key: str, opening: str, closing: str) -> str:
        start = header.find(f"'{key}': {opening}")
        if start < 0:
            raise ValueError(f"{name!r}: no {key} in the .npy header")
        start += len(key) + 4 + len(opening)
        return header[start:header.index(closing, start)]

    typecode = _NPY_TYPECODES.get(field("descr", "'", "'"))
    if typecode is None or "'fortran_order': False" not in header:
        raise ValueError(f"{name!r}: element type or memory order not written by pgscore")
    values = array(typecode)
    values.frombytes(memoryview(body)[data_start:])  # no copy of the data first
    count = 1
    for dim in field("shape", "(", ")").split(","):
        if dim.strip():
            count *= int(dim)
    if len(values) != count:
        raise ValueError(f"{name!r}: data does not match its shape")
    if sys.byteorder != "little" and values.itemsize > 1:
        values.byteswap()
    return values


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


def decode_value(tagged: Sequence[Any]) -> Any:
    """A category or fill value from its manifest form (see ``pgscore.compile``).

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


def _infer_kind(column: Sequence[Any]) -> tuple[str, bool]:
    """The dtype pandas' ``DataFrame.from_records`` gives this column, and whether it has gaps.

    The kind is 'int', 'float', 'bool', 'str' or 'object'. In 'float' and
    'str' columns pandas turns ``None`` into NaN; in 'object' columns it
    stays ``None``. The flag is False when no value is None or a float (so
    no NaN either): such a column needs no canonicalisation.
    """
    types = set(map(type, column))
    has_gaps = _NONE_TYPE in types or float in types
    has_none = _NONE_TYPE in types
    types.discard(_NONE_TYPE)
    if not types:
        return "object", has_gaps
    if bool in types:
        return ("bool" if types == {bool} and not has_none else "object"), has_gaps
    if types <= {int, float}:
        return ("int" if types == {int} and not has_none else "float"), has_gaps
    if types == {str}:
        return "str", has_gaps
    # NaN next to strings is pandas' missing marker, not a number.
    if types == {str, float} and all(v != v for v in column if type(v) is float):
        return "str", has_gaps
    return "object", has_gaps


def _canonical(column: Sequence[Any], none_is_nan: bool) -> list[Any]:
    """The column with NaN (and ``None`` where pandas converts it) as :data:`NAN_KEY`."""
    out = []
    append = out.append
    for v in column:
        if v is None:
            append(NAN_KEY if none_is_nan else None)
        elif v.__class__ is float and v != v:
            append(NAN_KEY)
        else:
            append(v)
    return out


def _to_float(value: Any, feature: str) -> float:
    """One value as scikit-learn's float64 conversion of an object column sees it.

    Raises ValueError naming the feature if the value is not a number.
    """
    cls = value.__class__
    if cls is float:
        return value
    if value is None or value is NAN_KEY:
        return _NAN
    try:
        # numpy's object-to-float cast calls float(): bools, ints and
        # numeric strings pass, as they do through scikit-learn.
        return float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"feature {feature!r}: {value!r} is not a number") from None


def _column_to_float(column: Sequence[Any], feature: str) -> np.ndarray:
    """A float64 array of the column; raises ValueError naming the feature."""
    try:
        return np.array(column, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        for value in column:
            _to_float(value, feature)
        raise ValueError(f"feature {feature!r}: values are not numbers") from None


class CategoryCodes:
    """A text column of a batch as codes (see CODE_FIRST), one byte per row.

    Only :meth:`Evaluator.codes_usable` codes reach the evaluator: the batch
    is read again as strings where a code stands for a string the codes
    cannot name (one that is no category of a model that names it in its
    error).
    """

    __slots__ = ("codes",)

    def __init__(self, codes: np.ndarray):
        self.codes = codes

    @classmethod
    def from_text(cls, text: str | None) -> CategoryCodes:
        return cls(np.frombuffer((text or "").encode("ascii"), dtype=np.uint8))

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, part: slice) -> CategoryCodes:
        return CategoryCodes(self.codes[part])

    def only_null(self) -> bool:
        """NULLs only (or no rows): pandas makes that an object column, where None is no NaN."""
        return not (self.codes != CODE_NULL).any()


def _kind(column: Sequence[Any] | CategoryCodes) -> str:
    """:func:`_infer_kind` of a column; codes are strings, some perhaps NULL."""
    if isinstance(column, CategoryCodes):
        return "object" if column.only_null() else "str"
    return _infer_kind(column)[0]


class _NumericBlock:
    """Input columns that end as one numeric model column each.

    ``fills`` are value-level imputations (most_frequent / constant
    SimpleImputer before any float conversion), then ``ops`` run on float64:
    ``fill`` (NaN -> value), ``sub``, ``div``, per column, in pipeline order.
    """

    def __init__(self, spec: Mapping[str, Any], arrays: Mapping[str, np.ndarray], names: Sequence[str]):
        self.step: str = spec["step"]
        self.inputs: list[int] = [int(i) for i in spec["inputs"]]
        self.outputs: list[int] = [int(o) for o in spec["outputs"]]
        self.names = [names[i] for i in self.inputs]
        self.fills: list[list[Any]] = [[decode_value(v) for v in step] for step in spec["fills"]]
        self.ops: list[tuple[str, list[float]]] = []
        for code, array_name in spec["ops"]:
            if code not in ("fill", "sub", "div"):
                raise ValueError(f"unknown numeric operation {code!r} in compiled model")
            values = [float(v) for v in arrays[array_name].tolist()]
            if len(values) != len(self.inputs):
                raise ValueError(f"array {array_name!r} has the wrong shape")
            self.ops.append((code, values))
        # SimpleImputer and StandardScaler check their input with
        # ensure_all_finite='allow-nan': infinity is refused before any model
        # sees it, even one that accepts infinity itself (HistGradientBoosting).
        self.refuses_inf = bool(self.ops)
        # Per column, as Python floats: the single-row path avoids numpy calls.
        self._columns_one = [
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
                kind, _ = _infer_kind(column)
                column = _canonical(column, kind in ("float", "str"))
                for step in self.fills:
                    fill = step[k]
                    column = [fill if v is NAN_KEY else v for v in column]
                column = [_NAN if v is NAN_KEY else v for v in column]
            block[k] = _column_to_float(column, self.names[k])
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
        for i, out, name, fills, ops in self._columns_one:
            v = row[i]
            if fills:
                # A lone None is an object column for pandas: not missing for
                # a value-level imputer, only NaN is.
                if v.__class__ is float and v != v:
                    v = NAN_KEY
                for fill in fills:
                    if v is NAN_KEY:
                        v = fill
            f = v if v.__class__ is float else _to_float(v, name)
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


def _kind_one(value: Any) -> str:
    """:func:`_infer_kind` of a one-row column."""
    cls = value.__class__
    if cls is float:
        return "float"
    if cls is int:
        return "int"
    if cls is bool:
        return "bool"
    if cls is str:
        return "str"
    return "object"


# np.can_cast(from, to, casting="same_kind") for the kinds a block can have.
_SAME_KIND = {
    "b": {"b", "i", "u", "f", "O"},
    "i": {"i", "f", "O"},
    "u": {"i", "u", "f", "O"},
    "f": {"f", "O"},
    "O": {"O"},
}


class _ImputerDtypeCheck:
    """Batch dtypes a most_frequent / constant SimpleImputer refuses (see ``pgscore.compile``)."""

    def __init__(self, spec: Mapping[str, Any], names: Sequence[str]):
        self.step: str = spec["step"]
        self.inputs = [int(i) for i in spec["inputs"]]
        self.names = [names[i] for i in self.inputs]
        self.fill_kind: str | None = spec["fill_kind"]

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
        if self.fill_kind is not None and block not in _SAME_KIND.get(self.fill_kind, {"O"}):
            raise ValueError(
                f"features {features}: SimpleImputer in step {self.step!r} was fitted on another dtype "
                "than these values have (e.g. a float fill value for integer values)"
            )

    def check_batch(self, columns: Sequence[Sequence[Any]]) -> None:
        self.check([_kind(columns[i]) for i in self.inputs])

    def check_one(self, row: Sequence[Any]) -> None:
        self.check([_kind_one(row[i]) for i in self.inputs])


class _OneHotColumn:
    """One input column through OneHotEncoder (optionally after value-level imputers)."""

    def __init__(self, spec: Mapping[str, Any], names: Sequence[str]):
        self.step: str = spec["step"]
        self.input = int(spec["input"])
        self.name = names[self.input]
        self.fills = [decode_value(v) for v in spec["fills"]]
        categories = [decode_value(v) for v in spec["categories"]]
        outputs = [int(o) for o in spec["outputs"]]
        if len(categories) != len(outputs):
            raise ValueError(f"one-hot column {self.name!r}: categories and outputs differ in length")
        # -1 marks a dropped category: known, but no output column.
        self.table: dict[Any, int] = dict(zip(categories, outputs))
        self.raise_unknown = spec["unknown"] == "error"
        if spec["unknown"] not in ("error", "ignore"):
            raise ValueError(f"unknown handle_unknown {spec['unknown']!r} in compiled model")
        # scikit-learn fails (TypeError deep inside) when an int or float
        # column meets categories of object dtype (e.g. learned from
        # strings); we fail with a clear message. Bool columns do not fail.
        self.reject_numeric = bool(spec["object_categories"]) and not self.fills
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
        kind, has_gaps = _infer_kind(column)
        if self.reject_numeric and kind in ("int", "float"):
            raise self._numeric(column[0])
        if has_gaps or self.fills:
            column = _canonical(column, kind in ("float", "str"))
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


def _expit(z: float) -> float:
    # scipy.special.expit computes 1 / (1 + exp(-z)); same operations here.
    try:
        return 1.0 / (1.0 + math.exp(-z))
    except OverflowError:
        return 0.0


class _Linear:
    """Linear classifiers whose predict_proba is a link of ``X @ coef.T + intercept``."""

    def __init__(self, spec: Mapping[str, Any], arrays: Mapping[str, np.ndarray], output_names: Sequence[str]):
        self.estimator: str = spec["estimator"]
        self.link: str = spec["link"]
        if self.link not in ("logistic", "modified_huber"):
            raise ValueError(f"unknown link {self.link!r} in compiled model")
        # Same (1, p) layout and transpose as scikit-learn, so BLAS sums in the same order.
        self.coef = np.ascontiguousarray(arrays["coef"], dtype=np.float64).reshape(1, -1)
        self.intercept = np.asarray(arrays["intercept"], dtype=np.float64).reshape(1)
        self.output_names = list(output_names)

    def check(self, X: np.ndarray) -> None:
        if not np.isfinite(X).all():
            bad = np.argwhere(~np.isfinite(X))[0]
            value = X[bad[0], bad[1]]
            what = "missing (None/NaN)" if np.isnan(value) else f"infinite ({value})"
            raise ValueError(
                f"feature {self.output_names[bad[1]]!r}: value is {what} and {self.estimator} does not "
                "accept missing or infinite values (impute it in the pipeline)"
            )

    def predict_batch(self, X: np.ndarray, threads: int = 1) -> np.ndarray:
        """``threads`` is for the trees' signature: one matrix product needs none."""
        self.check(X)
        z = (X @ self.coef.T + self.intercept).reshape(-1)
        if self.link == "logistic":
            with np.errstate(over="ignore"):
                return 1.0 / (1.0 + np.exp(-z))
        return (np.clip(z, -1.0, 1.0) + 1.0) / 2.0

    def predict_one(self, x: list[float]) -> float:
        X = np.array(x, dtype=np.float64).reshape(1, -1)
        if not math.isfinite(sum(x)):
            self.check(X)
        z = float((X @ self.coef.T + self.intercept)[0, 0])
        if self.link == "logistic":
            return _expit(z)
        return (min(max(z, -1.0), 1.0) + 1.0) / 2.0


class _Trees:
    """Tree ensembles, all trees flattened into one node table.

    ``combine`` says how leaf values become P(class 1):
    - 'boosting' (GradientBoosting): expit(init + sum(learning_rate * leaf));
    - 'hist_boosting' (HistGradientBoosting): expit(baseline + sum(leaf));
    - 'average' (forests, single trees): mean of per-tree P(class 1).
    Many rows: traversal goes level by level over all trees at once (numpy
    fancy indexing). One row: generated Python for small ensembles
    (:class:`_RowCode`), else a Python loop over nodes unless numpy's
    per-level cost is clearly lower (wide, shallow ensembles).
    """

    # One numpy level step costs about as much as this many Python node
    # steps (demo forest, one row: 8 levels 115 us, 750 node steps 127 us).
    # A tie goes to Python, which needs no numpy in the backend.
    _LEVEL_COST = 100

    def __init__(self, spec: Mapping[str, Any], arrays: Mapping[str, Any], output_names: Sequence[str]):
        self.estimator: str = spec["estimator"]
        self.combine: str = spec["combine"]
        if self.combine not in ("boosting", "hist_boosting", "average"):
            raise ValueError(f"unknown tree combination {self.combine!r} in compiled model")
        self.cast_float32 = bool(spec["cast_float32"])
        self.route_missing = spec["missing"] == "route"
        self.allow_inf = bool(spec["allow_inf"])
        self.max_depth = int(spec["max_depth"])
        self.init = _scalar(arrays["init"])
        self.learning_rate = _scalar(arrays["learning_rate"])
        self.output_names = list(output_names)

        # The node table as compact arrays: the one-row walk reads them, the
        # batch walk's numpy arrays are made from them on first use.
        self.node_feature = _as_array(arrays["tree_feature"], "i")
        self.node_threshold = _as_array(arrays["tree_threshold"], "d")
        self.node_left = _as_array(arrays["tree_left"], "i")
        self.node_right = _as_array(arrays["tree_right"], "i")
        self.node_missing_left = _as_array(arrays["tree_missing_left"], "B")
        self.node_value = _as_array(arrays["tree_value"], "d")
        self.node_roots = _as_array(arrays["tree_roots"], "i")
        n_nodes = len(self.node_feature)
        for name in ("threshold", "left", "right", "missing_left", "value"):
            if len(getattr(self, f"node_{name}")) != n_nodes:
                raise ValueError(f"tree array {name!r} has the wrong shape")
        self.n_trees = len(self.node_roots)
        leaf_depth_total = self._check_nodes(n_nodes, len(output_names))
        self.python_one = leaf_depth_total <= self._LEVEL_COST * self.max_depth
        small = n_nodes <= _RowCode.MAX_NODES and self.max_depth <= _RowCode.MAX_DEPTH
        no_nan = all(t == t for f, t in zip(self.node_feature, self.node_threshold) if f >= 0)
        self.row_code = (_RowCode(self, self.node_feature, self.node_threshold, self.node_left, self.node_right,
                                  self.node_value, self.node_roots)
                         if small and no_nan else None)
        self.children: np.ndarray | None = None  # the batch walk's arrays: _numpy_ready()

    def _check_nodes(self, n_nodes: int, n_outputs: int) -> float:
        """Raise ValueError unless the node table is ``n_trees`` trees that use
        every node once and whose deepest leaf is ``max_depth`` deep; return the
        sum over trees of the mean leaf depth (the node steps of one Python walk).

        One pass over the nodes. Each root's tree is walked marking nodes: a
        node reached a second time (children shared by two nodes, a child that
        points back up, two trees sharing nodes) is refused, as are children
        outside the table, tested features that are not model columns, nodes
        no root reaches and a max_depth other than the real depth (the batch
        walk takes max_depth steps; the manifest cannot make it take more).
        Without this a crafted table (node i with both children i + 1) had
        2**depth root-to-leaf paths, which the walk spent hours in.
        """
        if n_nodes == 0 or self.n_trees == 0:
            raise ValueError("tree arrays of the compiled model are inconsistent (no nodes or no trees)")
        feature, left, right = self.node_feature, self.node_left, self.node_right
        seen = bytearray(n_nodes)
        total = 0.0
        deepest = 0
        for tree, root in enumerate(self.node_roots):
            if not 0 <= root < n_nodes or seen[root]:
                raise ValueError(f"tree arrays of the compiled model are inconsistent: tree {tree} has root {root}, "
                                 f"which is not a node or belongs to another tree")
            seen[root] = 1
            depths = leaves = 0
            stack = [(root, 0)]
            while stack:
                node, depth = stack.pop()
                f = feature[node]
                if f < 0:
                    depths += depth
                    leaves += 1
                    if depth > deepest:
                        deepest = depth
                    continue
                lo, hi = left[node], right[node]
                if f >= n_outputs or not (0 <= lo < n_nodes and 0 <= hi < n_nodes):
                    raise ValueError(f"tree arrays of the compiled model are inconsistent: tree {tree} node {node} "
                                     f"tests feature {f} (of {n_outputs}) with children {lo}, {hi} "
                                     f"(of {n_nodes} nodes)")
                if seen[lo] or seen[hi] or lo == hi:
                    raise ValueError(f"tree arrays of the compiled model do not form trees: tree {tree} node {node} "
                                     f"has children {lo}, {hi}, one of which is already reached from a root "
                                     "(shared or cyclic children)")
                seen[lo] = seen[hi] = 1
                stack.append((lo, depth + 1))
                stack.append((hi, depth + 1))
            total += depths / max(leaves, 1)
        if 0 in seen:
            raise ValueError(f"tree arrays of the compiled model are inconsistent: node {seen.index(0)} "
                             "is not reached from any root")
        if self.max_depth != deepest:
            raise ValueError(f"tree arrays of the compiled model are inconsistent: max_depth is {self.max_depth}, "
                             f"the trees are {deepest} deep")
        return total

    def _numpy_ready(self) -> None:
        """The batch walk's numpy arrays, made on its first use in this backend.

        The walk numbers node k as 2k (and 2k + 1): a step is then
        ``children[node + went_right]``, one gather, and the per-node arrays
        hold each value twice. Features cast to float32 meet float32
        thresholds, each rounded down: for a float32 x, x > t exactly when
        x > (the largest float32 <= t), and the gathers move half the bytes.
        Both together walked the demo forest ~25% faster.
        """
        if self.children is not None:
            return
        feature = np.asarray(self.node_feature, dtype=np.intp)
        is_leaf = feature < 0
        nodes = np.arange(feature.shape[0])
        # Leaves loop onto themselves, so every row can take max_depth steps
        # without asking whether it already reached a leaf.
        left = np.where(is_leaf, nodes, np.asarray(self.node_left, dtype=np.intp))
        right = np.where(is_leaf, nodes, np.asarray(self.node_right, dtype=np.intp))
        self.roots2 = 2 * np.asarray(self.node_roots, dtype=np.intp)
        self.feature2 = np.repeat(np.where(is_leaf, 0, feature), 2)
        self.value2 = np.repeat(np.asarray(self.node_value, dtype=np.float64), 2)
        self.missing_right2 = np.repeat(~np.asarray(self.node_missing_left, dtype=bool), 2)
        self.threshold2 = np.repeat(np.asarray(self.node_threshold, dtype=np.float64), 2)
        with np.errstate(over="ignore"):  # beyond float32: inf, stepped down to its largest value
            threshold32 = self.threshold2.astype(np.float32)
        above = threshold32.astype(np.float64) > self.threshold2
        threshold32[above] = np.nextafter(threshold32[above], np.float32(-np.inf))
        self.threshold2_32 = threshold32
        self.children = 2 * np.stack([left, right], axis=1).ravel()  # last: the others are ready

    def _check_one(self, x: list[float]) -> None:
        """:meth:`_check` of one row (after the float32 cast), without numpy."""
        if self.route_missing and self.allow_inf:
            return
        for column, v in enumerate(x):
            if v - v == 0.0:
                continue
            missing = v != v
            if missing and self.route_missing or not missing and self.allow_inf:
                continue
            raise self._refused(column, missing)

    def _check(self, X: np.ndarray) -> None:
        """Reject NaN / infinity as scikit-learn's check_array does for this estimator."""
        if self.route_missing and self.allow_inf:
            return
        finite = np.isfinite(X)
        if finite.all():
            return
        if self.route_missing:
            bad = ~(finite | np.isnan(X))
        elif self.allow_inf:
            bad = np.isnan(X)
        else:
            bad = ~finite
        if not bad.any():
            return
        row, col = np.argwhere(bad)[0]
        raise self._refused(int(col), bool(np.isnan(X[row, col])))

    def _refused(self, column: int, missing: bool) -> ValueError:
        if missing:
            return ValueError(
                f"feature {self.output_names[column]!r}: value is missing (None/NaN) and {self.estimator} "
                "does not accept missing values here (impute it in the pipeline)"
            )
        return ValueError(
            f"feature {self.output_names[column]!r}: value is infinite or too large for float32, "
            f"which {self.estimator} rejects"
        )

    def _prepare(self, X: np.ndarray) -> np.ndarray:
        if self.cast_float32:
            # scikit-learn trees see float32 features (compared with float64 thresholds).
            with np.errstate(over="ignore"):
                X = X.astype(np.float32)
        self._check(X)
        return X

    def _walk(self, x: np.ndarray) -> np.ndarray:
        """Leaf values reached from the roots (one row: shape (trees,); rows: (rows, trees))."""
        has_nan = self.route_missing and bool(np.isnan(x).any())
        feature, children = self.feature2, self.children
        threshold = self.threshold2_32 if x.dtype == np.float32 else self.threshold2
        flat = x.ravel()
        # Position of each entry's row in the flattened matrix.
        base = 0 if x.ndim == 1 else (np.arange(x.shape[0]) * x.shape[1])[:, None]
        node = np.ascontiguousarray(np.broadcast_to(self.roots2, x.shape[:-1] + self.roots2.shape))
        # One buffer per intermediate, reused level after level; indices are
        # in range by construction (_check_nodes), so take() need not check.
        position, child = np.empty_like(node), np.empty_like(node)
        xv, t = np.empty(node.shape, dtype=x.dtype), np.empty(node.shape, dtype=threshold.dtype)
        went_right = np.empty(node.shape, dtype=bool)
        for _ in range(self.max_depth):
            np.take(feature, node, out=position, mode="clip")
            position += base
            np.take(flat, position, out=xv, mode="clip")
            np.take(threshold, node, out=t, mode="clip")
            # NaN compares False: it goes left unless routed below.
            np.greater(xv, t, out=went_right)
            if has_nan:
                nan = np.isnan(xv)
                if nan.any():
                    went_right[nan] = self.missing_right2[node[nan]]
            node += went_right
            np.take(children, node, out=child, mode="clip")
            node, child = child, node
        return self.value2[node]

    def _combine(self, leaves: np.ndarray) -> np.ndarray:
        """P(class 1) from leaf values (rows, trees), summing tree by tree in order.

        A pairwise np.sum would round differently from scikit-learn's loop.
        """
        n = leaves.shape[0]
        if self.combine == "average":
            acc = np.zeros(n)
            for tree_values in np.ascontiguousarray(leaves.T):
                acc += tree_values
            return acc / self.n_trees
        if self.combine == "boosting":
            leaves = leaves * self.learning_rate
        raw = np.full(n, self.init)
        for tree_values in np.ascontiguousarray(leaves.T):
            raw += tree_values
        with np.errstate(over="ignore"):
            return 1.0 / (1.0 + np.exp(-raw))

    def predict_batch(self, X: np.ndarray, threads: int = 1) -> np.ndarray:
        self._numpy_ready()
        X = self._prepare(X)
        n = X.shape[0]
        out = np.empty(n, dtype=np.float64)
        chunk = max(1, _TREE_CHUNK_CELLS // self.n_trees)

        def walk(starts: Sequence[int]) -> None:
            for start in starts:
                out[start:start + chunk] = self._combine(self._walk(X[start:start + chunk]))

        starts = range(0, n, chunk)
        if threads > 1 and n >= THREADED_MIN_ROWS:
            _in_threads(walk, starts, threads)
        else:
            walk(starts)
        return out

    def _walk_python(self, x: list[float]) -> list[float]:
        feature, threshold = self.node_feature, self.node_threshold
        left, right, value = self.node_left, self.node_right, self.node_value
        leaves = []
        if self.route_missing and not math.isfinite(sum(x)):
            missing_left = self.node_missing_left
            for node in self.node_roots:
                f = feature[node]
                while f >= 0:
                    v = x[f]
                    if v <= threshold[node]:
                        node = left[node]
                    elif v != v:
                        node = left[node] if missing_left[node] else right[node]
                    else:
                        node = right[node]
                    f = feature[node]
                leaves.append(value[node])
        else:
            for node in self.node_roots:
                f = feature[node]
                while f >= 0:
                    node = left[node] if x[f] <= threshold[node] else right[node]
                    f = feature[node]
                leaves.append(value[node])
        return leaves

    def finish(self, raw: float) -> float:
        """P(class 1) from the leaves' sum of :class:`_RowCode` (same operations as below)."""
        return raw / self.n_trees if self.combine == "average" else _expit(raw)

    def predict_one(self, x: list[float]) -> float:
        if self.row_code is not None:
            raw = self.row_code.raw(x)
            if raw is not None:
                return self.finish(raw)
        if self.python_one:
            # array('f') rounds to float32 as numpy's cast does (overflow to +-inf included).
            xs = array("f", x).tolist() if self.cast_float32 else x
            self._check_one(xs)
            leaves = self._walk_python(xs)
        else:
            self._numpy_ready()
            xa = self._prepare(np.array([x], dtype=np.float64))[0]
            leaves = self._walk(xa).tolist()
        # Same operations as _combine, on Python floats (cheaper for one row).
        if self.combine == "average":
            acc = 0.0
            for v in leaves:
                acc += v
            return acc / self.n_trees
        raw = self.init
        if self.combine == "boosting":
            lr = self.learning_rate
            for v in leaves:
                raw += lr * v
        else:
            for v in leaves:
                raw += v
        return _expit(raw)


class _RowCode:
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

    def __init__(self, trees: _Trees, feature: array, threshold: array, left: array,
                 right: array, value: array, roots: array):
        self.cast_float32 = trees.cast_float32
        self._arrays = (feature, threshold, left, right, value, roots)  # as lists only when writing the source
        # What raw() starts from and what each leaf adds: the operations of _Trees.predict_one.
        self._start = 0.0 if trees.combine == "average" else trees.init
        self._scale = trees.learning_rate if trees.combine == "boosting" else None
        self._function: Any = None

    def raw(self, x: list[float]) -> float | None:
        """The leaves' sum (from init for boosting), or None for a non-finite row."""
        values = array("f", x).tolist() if self.cast_float32 else x
        total = sum(values)
        if total - total != 0.0:
            return None
        return self.function()(values)

    def function(self) -> Any:
        """The compiled function (compiled now if this is the first call)."""
        if self._function is None:
            self._function = _define_raw(self.source(), {}, "<pgscore compiled trees>")
        return self._function

    def source(self, prologue: Sequence[str] = (), condition: Any = None) -> str:
        """``def raw(x)``; :class:`_PipelineCode` passes its own prologue and
        ``condition(column, threshold)``: the Python test for "goes left"."""
        feature, threshold, left, right, value, roots = (a.tolist() for a in self._arrays)
        if condition is None:

            def condition(column: int, t: float) -> str:
                return f"x[{column}] <= {_float_literal(t)}"

        lines = ["def raw(x):", *prologue, f"    s = {_float_literal(self._start)}"]

        def emit(node: int, indent: str) -> None:
            if feature[node] < 0:
                leaf = value[node] if self._scale is None else self._scale * value[node]
                lines.append(f"{indent}s += {_float_literal(leaf)}")
                return
            test = condition(int(feature[node]), threshold[node])
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


class _PipelineCode:
    """One row from its raw values through preprocessing and a small
    ensemble as one generated function: no model-input vector at all.

    Numeric columns are converted and scaled with the same operations as
    :meth:`_NumericBlock.fill_one` (constants written in), cast to float32
    like the batch; a one-hot column becomes its category's code, and a
    tree's test on an indicator column becomes a comparison of that code.
    Only the usual row takes this path: a value of another type, a missing
    or non-finite value, or a category the table does not know returns None,
    and :meth:`Evaluator.predict_one` takes the general path, which imputes,
    routes or raises exactly as before.
    """

    def __init__(self, evaluator: "Evaluator", trees: _Trees):
        self._evaluator = evaluator
        self._row_code = trees.row_code
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
            self._function = _define_raw(self.source(), namespace, "<pgscore compiled pipeline>")
        return self._function

    def source(self) -> str:
        evaluator = self._evaluator
        prologue: list[str] = []
        numeric: list[str] = []
        for block in evaluator.numeric:
            for i, out, _name, _fills, ops in block._columns_one:
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
                        prologue.append(f"    {a} = {a} - {_float_literal(c)}")
                    elif code == "div":
                        prologue.append(f"    {a} = {a} / {_float_literal(c)}")
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
                return f"x{column} <= {_float_literal(threshold)}"
            # The indicator is 1.0 for this code and 0.0 for every other one.
            code, out = indicator[column]
            when_one, when_zero = 1.0 <= threshold, 0.0 <= threshold
            if when_one == when_zero:
                return str(when_one)
            return f"{code} == {out}" if when_one else f"{code} != {out}"

        return self._row_code.source(prologue, condition)


def _define_raw(source: str, namespace: dict[str, Any], filename: str) -> Any:
    """The function ``raw`` that ``source`` (generated here from a model's
    numbers, never from text anyone supplied) defines in ``namespace``."""
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102
    return namespace["raw"]


def _float_literal(value: float) -> str:
    if math.isfinite(value):
        return repr(float(value))
    return "float('nan')" if math.isnan(value) else ("float('inf')" if value > 0 else "-float('inf')")


class Evaluator:
    """P(class 1) of a compiled pipeline for rows of plain Python values.

    Rows are dicts keyed by feature name (a missing key counts as NaN, as in
    ``DataFrame.from_records``) or sequences in :attr:`feature_names` order.
    Values are bool, int, float, str or None.
    """

    def __init__(self, manifest: Mapping[str, Any], arrays: Mapping[str, np.ndarray]):
        self.manifest = manifest
        self.arrays = arrays  # kept for pgscore_server.sqlgen, which writes the same model as SQL
        self.feature_names: list[str] = [str(n) for n in manifest["feature_names"]]
        n_inputs = len(self.feature_names)
        transform = manifest["transform"]
        self.n_outputs = int(transform["n_outputs"])
        self.numeric = [_NumericBlock(b, arrays, self.feature_names) for b in transform["numeric"]]
        self.onehot = [_OneHotColumn(c, self.feature_names) for c in transform["onehot"]]
        self.dtype_checks = [_ImputerDtypeCheck(c, self.feature_names) for c in transform["dtype_checks"]]
        output_names = [""] * self.n_outputs
        covered = [0] * self.n_outputs
        for block in self.numeric:
            for i, out in zip(block.inputs, block.outputs):
                output_names[out] = self.feature_names[i]
                covered[out] += 1
        for column in self.onehot:
            for out in column.table.values():
                if out >= 0:
                    output_names[out] = column.name
                    covered[out] += 1
        used = [i for b in self.numeric for i in b.inputs] + [c.input for c in self.onehot]
        used += [i for c in self.dtype_checks for i in c.inputs]
        if any(c != 1 for c in covered) or any(not 0 <= i < n_inputs for i in used):
            raise ValueError("compiled model: transform does not map inputs onto model columns one to one")
        model = manifest["model"]
        if model["kind"] == "linear":
            self.model: _Linear | _Trees = _Linear(model, arrays, output_names)
            if self.model.coef.shape[1] != self.n_outputs:
                raise ValueError("compiled model: coefficient count does not match the transform")
        elif model["kind"] == "trees":
            self.model = _Trees(model, arrays, output_names)
        else:
            raise ValueError(f"compiled model: unknown model kind {model['kind']!r}")
        self._index = {name: k for k, name in enumerate(self.feature_names)}
        # Inputs a batch may send as CategoryCodes: those that only a one-hot
        # column reads, with up to MAX_CODED_CATEGORIES string categories.
        # (A dtype check needs only the column's kind, which codes tell.)
        readers = [i for b in self.numeric for i in b.inputs] + [c.input for c in self.onehot]
        self._coded = {c.input: c for c in self.onehot
                       if readers.count(c.input) == 1 and 0 < len(c.strings) <= MAX_CODED_CATEGORIES}
        self.pipeline_code = (_PipelineCode(self, self.model)
                              if isinstance(self.model, _Trees) and self.model.row_code is not None else None)

    def _row(self, row: Mapping[str, Any] | Sequence[Any]) -> Sequence[Any]:
        if isinstance(row, Mapping):
            get = row.get
            return [get(name, _NAN) for name in self.feature_names]
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
        return x

    def features(self, rows: Sequence[Mapping[str, Any] | Sequence[Any]]) -> np.ndarray:
        """The model-input matrix (n_rows, n_model_columns), float64."""
        n = len(rows)
        if n and isinstance(rows[0], Mapping):
            columns: list[Sequence[Any]] = [
                [r.get(name, _NAN) for r in rows] for name in self.feature_names
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


def _in_threads(work: Any, items: Sequence[Any], threads: int) -> None:
    """``work(part)`` for ``threads`` contiguous parts of ``items``: one in
    this thread, the others in helper threads, joined before returning; the
    first exception is raised here.

    Only numpy runs in the helpers (it releases the GIL, so the tree walk
    of a large batch uses several CPUs), never plpy or anything of
    PostgreSQL's. They are started with every signal blocked, so that the
    server's signal handlers keep running in the backend's own thread.
    """
    import signal
    import threading

    size = -(-len(items) // threads)
    parts = [items[k:k + size] for k in range(0, len(items), size)]
    failures: list[BaseException] = []

    def run(part: Sequence[Any]) -> None:
        try:
            work(part)
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread, which raises it
            failures.append(exc)

    helpers = [threading.Thread(target=run, args=(part,), name="pgscore-walk") for part in parts[1:]]
    unblocked = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        for helper in helpers:
            helper.start()  # a new thread inherits the blocked mask
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)
    run(parts[0])
    for helper in helpers:
        helper.join()
    if failures:
        raise failures[0]

