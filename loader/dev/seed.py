"""Loading synthetic profiles into customer_profiles with COPY (demo, tests, bench)."""

from __future__ import annotations

import psycopg

from .demo_data import PROFILE_COLUMNS, synthetic_columns

# complaint_count is the trigger's to maintain; profiles start with the
# generated history as their count, as if loaded from an existing system.
COPY_COLUMNS = ("customer_id", *PROFILE_COLUMNS)
CHUNK = 100_000


def seed_profiles(conn: psycopg.Connection, n: int, seed: int = 0, start_id: int = 1) -> int:
    """COPYs ``n`` synthetic profiles with ids start_id.. into customer_profiles; returns n."""
    columns = ", ".join(COPY_COLUMNS)
    done = 0
    while done < n:
        size = min(CHUNK, n - done)
        data = synthetic_columns(size, seed=seed + done, start_id=start_id + done)
        with conn.cursor().copy(f"COPY public.customer_profiles ({columns}) FROM STDIN") as copy:
            for row in zip(*(data[column] for column in COPY_COLUMNS)):
                copy.write_row(row)
        done += size
    return n
