"""The rounding ledger: per stage, what every rounding did.

Fields per stage (accumulated by the compiled kernels in a float64 array):
ops (roundings applied), inexact, ties (exactly half an ulp discarded),
ties_away (of those, rounded away from zero), sticky_ties ("ties decided by
sticky bits": the discarded fraction is within 2^-4 ulp of one half but not
exactly one half, :data:`emulator.rounding.NEAR_TIE_WINDOW_LOG2`),
sticky_ties_away, away (inexact roundings that increased the magnitude),
overflow, specials (NaN/inf inputs), and the sum and sum of squares of the
signed error (rounded − exact, in ulps of the result's format at the exact
value's binade) over ``n_err`` roundings (all but specials and overflows).

From those: mean signed error, its standard error sqrt(var/n), and
t = mean / standard error per stage — "where is the bias".

``approx`` stages (MUFU.EX2) and ``tensor_core`` stages record the error of
the hardware result against the exact function / exact dot product, one
entry per result; their tie counts are zero by construction.
"""

from __future__ import annotations

import math

import numpy as np

FIELDS = ("ops", "inexact", "ties", "ties_away", "sticky_ties", "sticky_ties_away", "away", "overflow",
          "specials", "sum_err", "sum_err2", "n_err")
NF = len(FIELDS)
F_OPS, F_INEXACT, F_TIES, F_TIES_AWAY, F_NEAR, F_NEAR_AWAY, F_AWAY, F_OVER, F_SPEC, F_SUM, F_SUM2, F_N = range(NF)


class RoundingLedger:
    """Per-stage rounding statistics of one emulator run (see module docstring)."""

    def __init__(self, stages, table: np.ndarray, kinds=None):
        self.stages = list(stages)
        self.table = np.asarray(table, dtype=np.float64)
        self.kinds = dict(kinds or {})
        if self.table.shape != (len(self.stages), NF):
            raise ValueError(f"ledger table must be ({len(self.stages)}, {NF}), got {self.table.shape}")

    def __getitem__(self, stage) -> dict:
        i = self.stages.index(stage)
        row = self.table[i]
        d = {f: (int(row[k]) if k not in (F_SUM, F_SUM2) else float(row[k])) for k, f in enumerate(FIELDS)}
        n = row[F_N]
        mean = row[F_SUM] / n if n else 0.0
        var = max(row[F_SUM2] / n - mean * mean, 0.0) * n / (n - 1) if n > 1 else 0.0
        sem = math.sqrt(var / n) if n > 1 else 0.0
        # the names these fields had before (records and scripts written then read them)
        d.update(near_ties=d["sticky_ties"], near_ties_away=d["sticky_ties_away"])
        d.update(stage=stage, kind=self.kinds.get(stage, "round"), mean_ulp=mean, sem_ulp=sem,
                 t=(mean / sem if sem > 0 else (0.0 if mean == 0 else math.copysign(math.inf, mean))))
        return d

    def rows(self, include_idle: bool = False) -> list[dict]:
        return [self[s] for s in self.stages if include_idle or self.table[self.stages.index(s), F_OPS] > 0]

    def to_dict(self) -> dict:
        return {r["stage"]: r for r in self.rows(include_idle=True)}

    def __add__(self, other: "RoundingLedger") -> "RoundingLedger":
        if self.stages != other.stages:
            raise ValueError("cannot add ledgers of different recipes")
        return RoundingLedger(self.stages, self.table + other.table, self.kinds)

    def format_table(self) -> str:
        """A fixed-width text table, one line per active stage."""
        w = max([12] + [len(r["stage"]) + 1 for r in self.rows()])   # the stage column fits every name
        head = (f"{'stage':<{w}}{'kind':<12}{'ops':>11}{'inexact':>11}{'ties':>9}{'sticky-ties':>12}"
                f"{'away':>7}{'mean ulp':>12}{'t':>9}")
        lines = [head, "-" * len(head)]
        for r in self.rows():
            st = f"{r['sticky_ties']}"
            if r["sticky_ties"]:
                st += f"({100 * r['sticky_ties_away'] / r['sticky_ties']:.0f}%)"
            away = f"{100 * r['away'] / r['inexact']:.0f}%" if r["inexact"] else "-"
            lines.append(f"{r['stage']:<{w}}{r['kind']:<12}{r['ops']:>11}{r['inexact']:>11}{r['ties']:>9}"
                         f"{st:>12}{away:>7}{r['mean_ulp']:>12.3e}{r['t']:>9.1f}")
        lines.append("sticky-ties: ties decided by sticky bits (in brackets: share rounded away from zero); "
                     "away: share of inexact roundings that grew the magnitude")
        return "\n".join(lines)

    def __repr__(self):
        return f"RoundingLedger({len(self.stages)} stages)\n{self.format_table()}"
