"""Scoring a compiled scikit-learn pipeline with numpy alone.

This package runs inside PostgreSQL: it imports only numpy and the standard
library, never scikit-learn, pandas or scipy, and numpy only on first use: a
tree model scoring one row at a time (the complaint trigger) runs on the
standard library alone. ``pgscore.compile`` turns a fitted pipeline into
bytes (a ``.npz`` archive: a JSON manifest plus plain numeric arrays, no
pickle); :func:`load` reads them back and the returned :class:`Evaluator`
reproduces ``pipeline.predict_proba(to_frame(rows))[:, 1]``, quirks of
pandas' dtype inference included (:mod:`.dtypes`).

One module per concern:

- :mod:`.archive`: the archive's bytes to a manifest and arrays;
- :mod:`.ir`: the model as typed objects, parsed (and checked) once from
  them; also what the SQL generator (``pgscore_server.sqlgen``) reads;
- :mod:`.dtypes`, :mod:`.codes`: pandas' column kinds, text columns as codes;
- :mod:`.transforms`, :mod:`.linear`, :mod:`.trees`: the steps evaluated;
  :mod:`.rowcode`: one row of a small tree ensemble as generated Python;
  :mod:`.threads`: a large batch's tree walk in several threads;
- :mod:`.evaluator`: :func:`load` and :class:`Evaluator`.

The names below are what the rest of ``pgscore_server`` and the loader use.
"""

from __future__ import annotations

from .archive import _json_document, _read_npz  # noqa: F401 - tests read archives with them
from .codes import CODE_FIRST, CODE_NULL, CODE_OTHER, MAX_CODED_CATEGORIES, CategoryCodes
from .evaluator import Evaluator, load
from .ir import FORMAT, FORMAT_VERSION, NAN_KEY, decode_value
from .threads import THREADED_MIN_ROWS
from .threads import in_threads as _in_threads  # noqa: F401 - tests run it

__all__ = ["CODE_FIRST", "CODE_NULL", "CODE_OTHER", "FORMAT", "FORMAT_VERSION", "MAX_CODED_CATEGORIES", "NAN_KEY",
           "THREADED_MIN_ROWS", "CategoryCodes", "Evaluator", "decode_value", "load"]
