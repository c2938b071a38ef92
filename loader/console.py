"""What the commands print: tables, and the progress of a rescore."""

from __future__ import annotations

import sys
from typing import Any, Sequence

from . import api


def rescore_with_progress(dsn: str | None, name: str, batch_size: int, quiet: bool = False) -> int:
    """:func:`pgscore.api.rescore` with a progress bar; returns profiles rescored."""
    from tqdm import tqdm

    # Shown after a second only: an error at once (no such model, say) prints its line alone.
    bar = tqdm(unit=" profiles", disable=quiet, file=sys.stderr, delay=1)

    def advance(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        done = api.rescore(dsn, name, batch_size, progress=advance)
    finally:
        bar.close()
    if not quiet:
        print(f"rescored {done} profiles with the active {name!r} model")
    return done


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], out: Any = None) -> None:
    out = out or sys.stdout
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip(), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip(), file=out)
