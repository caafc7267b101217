"""Rounding stages: what one step of a recipe computes, into which format, how it rounds.

A family's stage table (``families/<family>.py``) is an ordered dict of
:class:`StageSpec`; its order is the rounding ledger's row order and the
compiled kernels' stage indices (:func:`stage_indices`).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["StageSpec", "stage_table", "stage_indices", "CASTS", "ROUNDINGS"]


@dataclass(frozen=True)
class StageSpec:
    """One rounding stage: what it computes, into which format, how it rounds.

    ``kind``: ``round`` (an IEEE-style rounding of an exactly computed value),
    ``approx`` (a hardware approximation, e.g. MUFU.EX2: the ledger records
    its error against the exact function), ``tensor_core`` (a wgmma chain: the
    error against the exact dot product), ``sum`` (a fixed-order fp32 tree of
    additions, each one a rounding).
    ``formats``: formats a user may choose for this stage (empty: fixed).
    ``roundings``: rounding modes a user may choose (empty: fixed).
    ``accumulations``: ``plain`` and, for running bf16 accumulators,
    ``compensated`` (Kahan–Neumaier with a compensation term in the same
    format).
    ``exact`` (ablation, emulator only): a ``tensor_core``/``approx``/``sum``
    stage computed exactly and rounded once to its format (IEEE fp32) instead of
    by the hardware unit.  A ``round`` stage is ablated with ``format="fp64"``.
    """

    name: str
    doc: str
    kind: str = "round"
    format: str = "fp32"
    rounding: str = "rne"
    accumulation: str = "plain"
    formats: tuple = ()
    roundings: tuple = ()
    accumulations: tuple = ("plain",)
    rand_bits: int = 16
    exact: bool = False


# formats a cast stage may take, and its roundings (emulator.RoundMode names)
CASTS = ("bf16", "fp16", "fp8_e4m3", "fp8_e5m2", "fp32")
ROUNDINGS = ("rne", "rna", "rz", "ru", "rd", "sr")


def stage_table(*specs: StageSpec) -> dict:
    """{name: spec} in the given order (the ledger's rows)."""
    table = {s.name: s for s in specs}
    if len(table) != len(specs):
        raise ValueError("stage names must be unique")
    return table


def stage_indices(table: dict):
    """A namedtuple of the table's stage indices by name (``IDX.P_cast == 9``): what the
    compiled kernels use for ledger rows and plan rows, derived from the table, never
    numbered by hand."""
    from collections import namedtuple

    return namedtuple("StageIndex", list(table))(*range(len(table)))
