"""Prepared SPI plans, prepared once per backend and kept in the cache dict."""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (package docstring)
if TYPE_CHECKING:
    from typing import Any, Sequence


def run(plpy: Any, cache: dict, sql: str, types: Sequence[str] = (), args: Sequence[Any] = ()) -> Any:
    """Execute ``sql`` through a plan prepared on first use in this backend."""
    plans = cache.setdefault("pgscore.plans", {})
    plan = plans.get(sql)
    if plan is None:
        plan = plpy.prepare(sql, list(types))
        plans[sql] = plan
    return plpy.execute(plan, list(args))
