"""Walking a large batch in several threads (numpy releases the GIL)."""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (package docstring)
if TYPE_CHECKING:
    from typing import Any, Sequence

# Below this many rows a batch walks in the calling thread alone
# (pgscore_server.settings.batch_threads asks for no threads then).
THREADED_MIN_ROWS = 20_000


def in_threads(work: Any, items: Sequence[Any], threads: int) -> None:
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

