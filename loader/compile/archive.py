"""A compiled model as stored: the archive's manifest and arrays, and its bytes."""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from pgscore_server import compiled as _server
from pgscore_server.compiled import archive as server_archive
from pgscore_server.compiled import ir


def _array(values: Any, dtype: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """How :meth:`ir.Model.write` makes an archive's array here."""
    out = np.asarray(values, dtype=dtype)
    return out if shape is None else out.reshape(shape)


@dataclass(frozen=True)
class CompiledModel:
    """A compiled pipeline: a JSON-able manifest and named numeric arrays
    (the archive's layout, :mod:`pgscore_server.compiled.ir`)."""

    manifest: dict[str, Any]
    arrays: dict[str, np.ndarray]

    @classmethod
    def from_ir(cls, model: ir.Model) -> "CompiledModel":
        """The archive of a model the converters built (which it keeps as its :attr:`ir`)."""
        compiled = cls(*model.write(_array))
        object.__setattr__(compiled, "_ir", model)  # frozen dataclass: a cache, not a field
        return compiled

    @property
    def ir(self) -> ir.Model:
        """The model as typed objects (parsed from the manifest, once)."""
        cached = self.__dict__.get("_ir")
        if cached is None:
            cached = ir.Model.read(self.manifest, self.arrays)
            object.__setattr__(self, "_ir", cached)
        return cached

    @property
    def feature_names(self) -> list[str]:
        return list(self.manifest["feature_names"])

    def to_bytes(self) -> bytes:
        """The ``.npz`` archive (no pickle; deterministic for the same model)."""
        entries = dict(self.arrays)
        entries["manifest"] = np.frombuffer(
            json.dumps(self.manifest, sort_keys=True, allow_nan=False).encode("utf-8"), dtype=np.uint8
        )
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name in sorted(entries):
                # A fixed timestamp: the same model gives the same bytes and sha256.
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                with archive.open(info, "w") as member:
                    np.lib.format.write_array(member, np.ascontiguousarray(entries[name]), allow_pickle=False)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "CompiledModel":
        """The model :meth:`to_bytes` wrote (as stored in scoring.models.compiled),
        read as the server reads it (its arrays flat). Raises ValueError for
        bytes that are not such an archive."""
        manifest, arrays = server_archive.read(data)
        return cls(manifest, {name: np.asarray(values) for name, values in arrays.items()})

    def evaluator(self) -> _server.Evaluator:
        """The server-side evaluator of these bytes (what the database will run).

        Built once per CompiledModel (parity checks call this per row); the
        evaluator holds no per-call state, so sharing it is safe.
        """
        cached = self.__dict__.get("_evaluator")
        if cached is None:
            cached = _server.load(self.to_bytes())
            object.__setattr__(self, "_evaluator", cached)  # frozen dataclass: a cache, not a field
        return cached
