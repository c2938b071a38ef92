"""numpy, imported on first use: a backend that never scores a batch never imports it (~12 MiB, ~0.1 s)."""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (package docstring)
if TYPE_CHECKING:
    from typing import Any


class Numpy:
    """Stands in for numpy in one module (``np = Numpy(globals())``) until
    first used; then that module's ``np`` is numpy itself, so later uses cost
    nothing extra."""

    __slots__ = ("_namespace",)

    def __init__(self, namespace: dict[str, Any]):
        self._namespace = namespace

    def __getattr__(self, name: str) -> Any:
        import numpy

        self._namespace["np"] = numpy
        return getattr(numpy, name)
