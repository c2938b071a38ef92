"""Reading a compiled model's archive (a ``.npz``: a JSON manifest plus flat
arrays, as ``pgscore.compile`` writes it) with the standard library alone:
no numpy, zipfile or json, which a backend scoring one row never imports.
:func:`read` gives the manifest and arrays; :meth:`.ir.Model.read` parses them.
"""

from __future__ import annotations

import struct
import sys
import zlib
from array import array

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (package docstring)
if TYPE_CHECKING:
    from typing import Any

# The .npy element types pgscore.compile writes, as array typecodes.
_NPY_TYPECODES = {"<f8": "d", "<i4": "i", "<i8": "q", "|u1": "B", "|b1": "B"}


def read(data: bytes) -> tuple[Any, dict[str, array]]:
    """(manifest, arrays) of bytes written by ``pgscore.compile.CompiledModel.to_bytes``.

    Raises ValueError if the bytes are not such an archive.
    """
    try:
        arrays = _read_npz(bytes(data))
    except (ValueError, struct.error, zlib.error, UnicodeDecodeError) as exc:  # all "not ours"
        raise ValueError(f"not a compiled pgscore model: {exc}") from exc
    if "manifest" not in arrays:
        raise ValueError("not a compiled pgscore model: no manifest")
    return _json_document(arrays.pop("manifest").tobytes().decode("utf-8")), arrays


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


# The most bytes an archive's arrays may inflate to. A crafted archive (a loader role can
# write scoring.models.compiled itself) deflates about 1,000:1; real models are far
# smaller: the 100-tree demo forest is 1.4 MB of arrays, a 1,000-tree depth-12 forest
# about 230 MB would still fit.
MAX_INFLATED_BYTES = 256 * 1024 * 1024


def _read_npz(data: bytes) -> dict[str, array]:
    """The flat arrays of a ``.npz`` archive as ``pgscore.compile`` writes it
    (a zip of ``.npy`` files, stored or deflated), without numpy or zipfile.

    Raises ValueError for anything else: another zip layout, a damaged
    member (CRC), an element type or memory order it does not write, or
    arrays of more than MAX_INFLATED_BYTES in all (checked before inflating).
    """
    end = data.rfind(b"PK\x05\x06", max(0, len(data) - 65_557))
    if end < 0:
        raise ValueError("not a zip archive")
    count, _size, offset = struct.unpack_from("<HII", data, end + 10)
    arrays: dict[str, array] = {}
    inflated = 0
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
        inflated += size
        if inflated > MAX_INFLATED_BYTES:
            raise ValueError(f"the compiled model's arrays exceed {MAX_INFLATED_BYTES // 2**20} MiB")
        if method == 8:
            # Never more than the member says it holds (+1 to notice a longer one).
            body = zlib.decompressobj(-15).decompress(body, size + 1)
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

