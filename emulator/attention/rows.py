"""The shared row driver of the attention kernels and the argument groups they take.

A recipe family supplies its per-key-block step (and its row finish) as numba
functions; :func:`drive_rows` does everything else the same way for every
family: the rows of all (batch·head) pairs split into ledger chunks, the
per-row initialisation, the loop over the key blocks the kernel's program
visits, the per-block m/l dump, the final division and output cast, the m/l
store.

Numerical contract of the driver:

* Rows are split into ``n_chunks = ledgers.shape[0]`` chunks at
  ``ch · n_rows // n_chunks``; each chunk runs its rows in order and records
  into its own ledger table, so the ledger's float sums do not depend on the
  thread count (api sums the chunks in chunk order).
* A row starts from m = ``start_max(job)`` (−inf unless the family says
  otherwise), l = 0, every accumulator 0; its blocks are the kernel's
  (:func:`n_visited_blocks`; with ``tiling.paper_code`` every key block, as the
  paper's code loops), ascending; each step gets the running (m, l, l_comp) and
  returns the new one.
* The row ends with ``finish_row`` (e.g. folding compensation terms in), then
  per column: out = cast(acc / l) by the family's ``div`` and ``O_cast`` stages,
  the cast's random word at the element's flat index row·D + d.

Every argument group is a ``collections.namedtuple``, which numba types as a
(heterogeneous) named tuple, so the code reads ``job.tiling.block_n`` instead
of a 30th positional parameter.

A family builds its driver once, ``drive_rows = make_row_driver(block_step,
finish_row, STAGE.div, STAGE.O_cast)``, and its kernel is a top-level
``@njit(cache=True, parallel=True)`` function of the flat groups
(:func:`kernel_args`) whose prange over ledger chunks calls it::

    for ch in nb.prange(n_chunks):
        drive_rows(make_job(q, kT, v, scalars, units, plan, tiling, outputs), ch, n_chunks)

Two numba constraints shape this (numba 0.68, measured).  Step functions
passed as *arguments* down a call chain from a cached kernel make it
uncachable ("dynamic globals": recompiled in every process), while the same
functions as closure constants of the driver cache.  And values live into a
prange become arguments of a gufunc: arrays, scalars and tuples of those one
level deep, so the kernel's groups are flat (small int64 arrays where a group
holds a model tuple) and ``job`` is built inside the loop (:func:`make_job`).
"""

from __future__ import annotations

from collections import namedtuple

import numba as nb
import numpy as np

from ..formats import get_format
from .units import StageContext, decode_as, round_div, round_stage

__all__ = ["Operand", "Operands", "Scalars", "Units", "Tiling", "Outputs", "Job", "Work", "Running",
           "make_row_driver", "make_job", "kernel_args", "n_visited_blocks", "valid_key", "row_operand",
           "block_operand", "set_p_operand", "set_operand", "zeros_operand", "BF16_MANT", "BF16_EMIN", "unit_tuples", "BackwardOperands", "BackwardScalars",
           "BackwardOutputs"]

Operand = namedtuple("Operand", "values sig exp spec")
Operand.__doc__ = """A tensor-core operand: values (float64) and their decoding for the wgmma
model (sign·significand int64, unit exponent int64, special code int8), same shape."""

Operands = namedtuple("Operands", "q kT v")
Operands.__doc__ = """q (BH, Nq, D), Kᵀ (BH, D, Nk), V (BH, blocks·block_n, D; zero-padded) as Operands."""

Scalars = namedtuple("Scalars", "qk_scale eps beta delta fix_kind")
Scalars.__doc__ = """The family's kernel constants (families.KernelScalars) and the fix kind (units.FIX_*)."""

Units = namedtuple("Units", "hw arith tc_qk tc_pv p_mant p_emin ex2_pos ex2_neg ex2_params")
Units.__doc__ = """Hardware units: ``hw`` (False: float64 IEEE units), ``arith`` (target of the
un-staged arithmetic, a rounding.target: fp32 with hw, fp64 without), the tensor-core
models of Q·Kᵀ and P̄·V (k_step, frac_bits, sum_frac_bits, mant_bits), the P̄·V operand
format of P̄ (mantissa bits, emin), the MUFU.EX2 tables and parameters (F, round_key,
twos, nan_code; hw.sfu.load_exp2_tables).  A kernel takes the tuples as int64 arrays
(the prange's live values must be flat); :func:`make_job` turns them back into tuples."""

Tiling = namedtuple("Tiling", "Nk causal block_m block_n paper_code")
Tiling.__doc__ = """Key length, causal mask, the kernel's tiles (which key blocks a row visits),
and the paper-code mode (recipes.Recipe.paper_code): every row visits every key block; what
the family does differently then is the family's (families/paper.py)."""

Outputs = namedtuple("Outputs", "out m l acc m_blocks l_blocks ledgers record keep")
Outputs.__doc__ = """Arrays the kernel fills (rows flattened to BH): out (BH, Nq, D), final m, l
(BH, Nq); with ``keep``: acc before the division, m and l after each block; with
``record``: the ledger chunks (n_chunks, stages, ledger.NF)."""

Job = namedtuple("Job", "operands scalars units plan tiling outputs")
Job.__doc__ = """One emulator call as a family kernel takes it; ``plan``: the stage plan
(stages × units.PLAN_COLUMNS)."""

Work = namedtuple("Work", "scores probs p_operand acc acc_comp")
Work.__doc__ = """Per-chunk scratch: a block's scores and probabilities (block_n), P̄ as a
(1, block_n) tensor-core Operand, the row's accumulator and its compensation (D)."""

BackwardOperands = namedtuple("BackwardOperands", "q k kT vT do")
BackwardOperands.__doc__ = """The backward's tensor-core operands (rows flattened to BH): q, dO
(BH, Nq padded to whole query blocks, D), k (BH, Nk padded, D), Kᵀ and Vᵀ (BH, D, Nk
padded); padding zeros."""

BackwardScalars = namedtuple("BackwardScalars", "qk_scale scale")
BackwardScalars.__doc__ = """The backward's constants: the forward's score scale (fa2:
fl32(scale·log2 e); paper: fl32(scale)) and fl32(scale) (fp64 mode: unrounded)."""

BackwardOutputs = namedtuple("BackwardOutputs", "dq dk dv delta ds_cast p ds ledgers record keep causal")
BackwardOutputs.__doc__ = """Arrays the backward kernels fill: dq (BH, Nq, D), dk, dv (BH, Nk,
D), delta (BH, Nq); ds_cast (BH, Nq, Nk): dS̃ as the dK/dV pass casts it (read by the dQ
pass); with ``keep``: p, ds (BH, Nq, Nk), P and dS before their casts (+0 where masked);
the ledger chunks (n_chunks, stages, ledger.NF), summed in chunk order; ``causal``."""

Running = namedtuple("Running", "m l l_comp")
Running.__doc__ = """A row's running max, row sum, and the row sum's compensation term."""


@nb.njit(inline="always", error_model="numpy")
def n_visited_blocks(i, Nk, causal, block_m, block_n):
    """Key blocks the kernel's program for row i visits (ascending from 0)."""
    if causal:
        hi = min(Nk, (i // block_m + 1) * block_m)
    else:
        hi = Nk
    return (hi + block_n - 1) // block_n


@nb.njit(inline="always", error_model="numpy")
def valid_key(i, j, Nk, causal):
    """Key j takes part in row i's softmax (in range, and not masked)."""
    return j < Nk and (not causal or j <= i)


@nb.njit(inline="always", error_model="numpy")
def row_operand(op, bh):
    """The (batch·head) ``bh`` matrix of a 3-D Operand."""
    return Operand(op.values[bh], op.sig[bh], op.exp[bh], op.spec[bh])


@nb.njit(inline="always", error_model="numpy")
def block_operand(op, bh, j0, j1):
    """Rows j0..j1 of the (batch·head) ``bh`` matrix of a 3-D Operand (a key block of V)."""
    return Operand(op.values[bh, j0:j1], op.sig[bh, j0:j1], op.exp[bh, j0:j1], op.spec[bh, j0:j1])


@nb.njit(inline="always", error_model="numpy")
def set_p_operand(p, jj, value, mant, emin):
    """Column jj of the (1, block_n) P̄ operand: ``value`` and its decoding in the P̄·V format."""
    p.values[0, jj] = value
    s, e, sp = decode_as(value, mant, emin)
    p.sig[0, jj] = s
    p.exp[0, jj] = e
    p.spec[0, jj] = sp


@nb.njit(inline="always", error_model="numpy")
def minus_inf(job):
    """The running max a row starts from, unless a family says otherwise: −inf."""
    return -np.inf


def make_row_driver(block_step, finish_row, div_stage, out_stage, start_max=minus_inf):
    """The row driver of one family: ``drive_rows(job, ch, n_chunks)`` (numba).

    ``block_step(job, stages, work, bh, i, jb, running) -> Running``: key block jb of
    row i; it updates ``work.acc`` (and ``work.acc_comp``) in place.
    ``finish_row(job, stages, work, running) -> l``: the row sum the division uses,
    after any final fold of compensation terms into l and ``work.acc``.
    ``div_stage``, ``out_stage``: the family's stage indices of acc / l and the output cast.
    ``start_max(job) -> float``: the running max before the first block (default −inf).

    The step functions are closure constants (numba freezes them as it freezes
    globals), not arguments: see the module docstring for why.
    """

    @nb.njit(error_model="numpy")
    def drive_rows(job, ch, n_chunks):
        """Rows ch · n_rows // n_chunks .. (ch + 1) · n_rows // n_chunks of ``job``, in order,
        recorded into ledger chunk ch (module docstring)."""
        outs = job.outputs
        tiling = job.tiling
        BH, Nq, D = job.operands.q.values.shape
        block_n = tiling.block_n
        plan = job.plan
        ledger = outs.ledgers[ch]
        record = outs.record
        stages = StageContext(plan, ledger, record)
        work = Work(np.empty(block_n), np.empty(block_n), zeros_operand(1, block_n), np.empty(D), np.empty(D))
        # the chunk boundaries fix the ledger's summation order: keep them as they are
        R_total = BH * Nq
        for r in range(ch * R_total // n_chunks, (ch + 1) * R_total // n_chunks):
            bh = r // Nq
            i = r % Nq
            running = Running(start_max(job), 0.0, 0.0)
            for d in range(D):
                work.acc[d] = 0.0
                work.acc_comp[d] = 0.0
            # the paper code visits every key block, also those above the causal diagonal
            for jb in range(n_visited_blocks(i, tiling.Nk, tiling.causal and not tiling.paper_code, tiling.block_m,
                                             block_n)):
                running = block_step(job, stages, work, bh, i, jb, running)
                if outs.keep:
                    outs.m_blocks[bh, i, jb] = running.m
                    outs.l_blocks[bh, i, jb] = running.l
            l = finish_row(job, stages, work, running)
            for d in range(D):
                if outs.keep:
                    outs.acc[bh, i, d] = work.acc[d]
                o = round_div(plan, ledger, record, div_stage, work.acc[d], l, 0)
                outs.out[bh, i, d] = round_stage(plan, ledger, record, out_stage, o, 0.0, (bh * Nq + i) * D + d)
            outs.m[bh, i] = running.m
            outs.l[bh, i] = l

    return drive_rows


# the decoding of a bf16 tensor-core operand (P̃, dS̃ in the backward)
BF16_MANT, BF16_EMIN = get_format("bf16").mant_bits, get_format("bf16").emin


@nb.njit(cache=True, error_model="numpy")
def zeros_operand(rows, cols):
    """A zero (rows, cols) tensor-core Operand: scratch a kernel fills per block."""
    return Operand(np.zeros((rows, cols)), np.zeros((rows, cols), np.int64), np.zeros((rows, cols), np.int64),
                   np.zeros((rows, cols), np.int8))


@nb.njit(inline="always", error_model="numpy")
def set_operand(op, r, c, value, mant, emin):
    """Element (r, c) of a 2-D tensor-core Operand: ``value`` and its decoding in a format
    of ``mant`` mantissa bits and minimum exponent ``emin``."""
    op.values[r, c] = value
    s, e, sp = decode_as(value, mant, emin)
    op.sig[r, c] = s
    op.exp[r, c] = e
    op.spec[r, c] = sp


@nb.njit(inline="always", error_model="numpy")
def unit_tuples(units):
    """``units`` with its int64 arrays (what a kernel's prange takes) turned back into the
    tuples the units take."""
    a, tq, tv, p = units.arith, units.tc_qk, units.tc_pv, units.ex2_params
    return Units(units.hw, (a[0], a[1], a[2], a[3], a[4]), (tq[0], tq[1], tq[2], tq[3]),
                 (tv[0], tv[1], tv[2], tv[3]), units.p_mant, units.p_emin, units.ex2_pos, units.ex2_neg,
                 (p[0], p[1] != 0, p[2] != 0, np.uint32(p[3])))


@nb.njit(inline="always", error_model="numpy")
def make_job(q, kT, v, scalars, units, plan, tiling, outputs):
    """The Job the row driver reads, built inside a kernel's prange from its flat groups."""
    return Job(Operands(q, kT, v), scalars, unit_tuples(units), plan, tiling, outputs)


def kernel_args(job):
    """The arguments of a family kernel for ``job``: (q, kT, v, scalars, units, plan, tiling,
    outputs), every one an array or a flat named tuple (module docstring)."""
    return (*job.operands, job.scalars, job.units, job.plan, job.tiling, job.outputs)
