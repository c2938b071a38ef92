"""The settings pgscore reads (its scoring.* GUCs and PostgreSQL's own), in one place."""

from __future__ import annotations

import os

from . import plans
from .errors import INVALID_PARAMETER_VALUE, ScoringError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (package docstring)
if TYPE_CHECKING:
    from typing import Any

ON_ERROR_CHOICES = ("keep", "raise")


def on_error(plpy: Any, cache: dict) -> str:
    """``scoring.on_error``: 'keep' (default) or 'raise'.

    Raises ScoringError for any other value, naming the allowed ones.
    """
    rows = plans.run(plpy, cache, "SELECT current_setting('scoring.on_error', true) AS v")
    value = (rows[0]["v"] or "keep").strip().lower()
    if value not in ON_ERROR_CHOICES:
        raise ScoringError(
            f"scoring.on_error is {value!r}; it must be 'keep' or 'raise'",
            sqlstate=INVALID_PARAMETER_VALUE,
            hint="SET scoring.on_error = 'keep'  -- or 'raise'",
        )
    return value


def batch_threads(plpy: Any, cache: dict, rows: int) -> int:
    """Threads the tree walk of a batch of ``rows`` may use in this backend:
    the leader plus ``max_parallel_workers_per_gather`` (PostgreSQL's own
    bound for one query's parallelism, so 0 means one thread), at most one
    per CPU; one, without asking, for a batch too small to be walked in threads."""
    # Imported here: a backend on the sql path never loads compiled.
    from .compiled import THREADED_MIN_ROWS

    if rows < THREADED_MIN_ROWS:
        return 1
    setting = plans.run(plpy, cache, "SELECT current_setting('max_parallel_workers_per_gather')::int AS v")
    return max(1, min(1 + setting[0]["v"], os.cpu_count() or 1))
