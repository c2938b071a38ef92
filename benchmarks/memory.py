"""A backend's resident memory, read from /proc where the server runs on this machine (P6)."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg


def memory_mib(pid: int, database: str) -> dict[str, float]:
    """A backend's resident memory in MiB: ``rss`` (VmRSS) and its parts
    ``private`` (RssAnon), ``libraries`` (RssFile) and ``shared_buffers``
    (RssShmem); empty where /proc does not show that backend (a server on
    another machine, or in a container, where the pid is another process's)."""
    if not backend_here(pid, database):
        return {}
    fields = {"VmRSS": "rss", "RssAnon": "private", "RssFile": "libraries", "RssShmem": "shared_buffers"}
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    memory = {}
    for line in lines:
        key = line.split(":", 1)[0]
        if key in fields:
            memory[fields[key]] = int(line.split()[1]) / 1024.0
    return memory


def backend_here(pid: int, database: str) -> bool:
    """Whether process ``pid`` of this machine is a PostgreSQL backend
    connected to ``database`` (its title reads "postgres: USER DATABASE ...")."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    words = title.split()
    return len(words) >= 3 and words[0] == "postgres:" and words[2] == database


def first_score(dsn: str) -> tuple[float, dict[str, float]]:
    """P6's probe: seconds of ``scoring.score(1)`` in a brand-new connection, and
    that backend's memory growth over it (:func:`memory_mib`'s parts)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        before = memory_mib(pid, conn.info.dbname)
        started = time.perf_counter()
        conn.execute("SELECT scoring.score(1::bigint)").fetchone()
        elapsed = time.perf_counter() - started
        after = memory_mib(pid, conn.info.dbname)
        return elapsed, {key: after[key] - before[key] for key in before}
