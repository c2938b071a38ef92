"""What the commands print: tables, and the progress of a rescore."""

from __future__ import annotations

import re
import sys
from typing import Any, Sequence

import psycopg

from .connection import connect


def rescore_with_progress(dsn: str, name: str, batch_size: int, quiet: bool = False) -> int:
    """CALL scoring.rescore with a progress bar fed by its NOTICEs; returns profiles rescored."""
    from tqdm import tqdm

    progress = re.compile(r"pgscore rescore: (\d+)/(\d+) profiles")
    # Shown after a second only: an error at once (no such model, say) prints its line alone.
    bar = tqdm(unit=" profiles", disable=quiet, file=sys.stderr, delay=1)
    done = 0

    def on_notice(diag: psycopg.errors.Diagnostic) -> None:
        nonlocal done
        found = progress.match(diag.message_primary or "")
        if found:
            done, total = int(found.group(1)), int(found.group(2))
            bar.total = total
            bar.update(done - bar.n)

    try:
        with connect(dsn, autocommit=True) as conn:
            conn.add_notice_handler(on_notice)
            conn.execute("CALL scoring.rescore(%s, %s)", [name, batch_size])
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
