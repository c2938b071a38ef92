"""The bench's sizes, and its table of figures (printed as measured, saved as JSON)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Sizes:
    profiles: int
    inserts: int          # P1/P2 transactions per run
    bulk: int             # P3 rows
    per_row: int          # P4 per-row score() sample
    parity: int           # P7 rows
    concurrent: int       # P8 transactions per client
    naive_starts: int     # P6 cold starts on the naive path (each ~2.5 s)
    updates: int = 1_000          # P9 single-row UPDATE transactions per run
    bulk_updates: int = 20_000    # P9b rows of the one bulk UPDATE
    rescore_rounds: int = 3       # P5n/P5g alternating rounds of the three rescores
    scorer_families: tuple[str, ...] = ("logreg", "gbm", "rf")  # P5n/P5g's models

    @classmethod
    def for_run(cls, quick: bool) -> "Sizes":
        if quick:
            return cls(profiles=50_000, inserts=1_000, bulk=20_000, per_row=1_000, parity=20_000, concurrent=150,
                       naive_starts=1, updates=1_000, bulk_updates=20_000, rescore_rounds=3)
        return cls(profiles=1_000_000, inserts=4_000, bulk=100_000, per_row=5_000, parity=100_000, concurrent=500,
                   naive_starts=3, updates=4_000, bulk_updates=50_000, rescore_rounds=2,
                   scorer_families=("logreg",))  # 1M: each family's P5n/P5g took ~6 min


HEADER = f"{'fig':<4} {'family':<7} {'measured':<34} {'baseline':<34} {'ratio':>9} {'target':<10} met"


@dataclass
class Report:
    rows: list[dict] = field(default_factory=list)

    def add(self, figure: str, family: str, measured: str, baseline: str, ratio: float | None, target: str,
            **extra: Any) -> None:
        met = _meets(ratio, target)
        row = dict(figure=figure, family=family, measured=measured, baseline=baseline,
                   ratio=None if ratio is None else round(ratio, 4), target=target, met=met, **extra)
        self.rows.append(row)
        mark = {True: "yes", False: "NO", None: "-"}[met]
        shown = "-" if ratio is None else (f"{ratio:.3g}" if ratio < 1e-3 else f"{ratio:.3f}")
        print(f"{figure:<4} {family:<7} {measured:<34} {baseline:<34} {shown:>9} {target:<10} {mark}", flush=True)


def _meets(ratio: float | None, target: str) -> bool | None:
    found = re.match(r"(>=|<=)\s*([\d.e-]+)", target)
    if ratio is None or not found:
        return None
    bound = float(found.group(2))
    return ratio >= bound if found.group(1) == ">=" else ratio <= bound
