"""Scores as they cross from Python to SQL: the bigint of each float8's bits.

PL/Python converts a float parameter or result through its text form
(Python prints it, PostgreSQL parses it: ~1 us a score, about 1 s per 1M
profiles); an int costs a fraction of that. scoring._float8_from_bits
(sql/idempotent/030-score.sql) turns the bits back into the same float8.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (package docstring)
if TYPE_CHECKING:
    from typing import Any

# What SQL writes around a bigint of bits to get the float8 back.
FROM_BITS = "scoring._float8_from_bits({})"


def as_bits(scores: Any) -> list[int]:
    """The IEEE 754 bits of each score, as ints. Scores are probabilities,
    so never negative; -0.0 is sent as 0.0 (adding 0.0 makes it so)."""
    import numpy as np

    return (np.asarray(scores, dtype=np.float64) + 0.0).view(np.int64).tolist()
