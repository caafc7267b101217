"""``flash_attention_backward``: the emulator's backward pass of a recipe.

The family's backward (``Family.backward``: families/<family>_backward.py) holds the
op sequence of docs/recipes.md, "The backward pass"; this module checks the inputs,
builds the job the family's kernels fill, and shapes the result.
"""

from __future__ import annotations

import math
import sys
from collections import namedtuple
from dataclasses import dataclass, field, replace

import numba
import numpy as np

from ..formats import FORMATS
from ..hw.sfu import ex2_params, load_exp2_tables
from ..jit_notice import notice_if_cold
from ..rounding import RoundMode, as_float_array, target
from .api import INPUT_FORMAT, _check_inputs, as_input_values, _int64s, _operand, _tc_models, stage_plan
from .ledger import NF, RoundingLedger
from .recipes import Fix, Recipe, get_fix, get_recipe
from .rows import BackwardOperands, BackwardOutputs, BackwardScalars, Operand, Units

__all__ = ["flash_attention_backward", "BackwardResult", "BackwardJob", "SEED_PREFIX"]

# the backward's sr stages draw their Philox keys as stage_seed(seed, SEED_PREFIX + stage)
SEED_PREFIX = "backward."

BackwardJob = namedtuple("BackwardJob", "operands o do_values lse2 scalars units plan tiling outputs")
BackwardJob.__doc__ = """One backward call as a family's ``Backward.run`` takes it: the tensor-core
operands (rows.BackwardOperands), O and dO as float64 values (BH, Nq, D), the per-row
lse operand (BH, Nq; ``Backward.lse_operand``), rows.BackwardScalars, rows.Units (int64
arrays, as the forward's kernels take them), the stage plan, the forward recipe's tiles
(block_m, block_n) and the outputs (rows.BackwardOutputs)."""


@dataclass
class BackwardResult:
    """What :func:`flash_attention_backward` returns.

    dq, dk, dv : gradients (float32 arrays holding values of the output casts' format,
        bf16 by default; float64 with ``precision="fp64"``), shapes of q, k, v.
    delta : δ = rowsum(O ∘ dO) per row as the recipe computes it (fa2: fp32; paper: bf16
        values), shape of lse.
    ledger : the backward's :class:`RoundingLedger` (``record=True``), else None.
    p, ds : P and dS before their casts (``record`` or ``dump``), (..., Nq, Nk); +0 where
        masked.  These are what the GPU kernels' dump launch stores.
    """

    dq: np.ndarray
    dk: np.ndarray
    dv: np.ndarray
    delta: np.ndarray
    recipe: Recipe
    fix: Fix | None
    ledger: RoundingLedger | None = None
    p: np.ndarray | None = None
    ds: np.ndarray | None = None
    info: dict = field(default_factory=dict)


def backward_stages(rec: Recipe, rounding=None) -> dict:
    """The backward stage table of ``rec``'s family, with the ``rounding`` shorthand applied
    to its rounding stages (checked against each stage's accepted roundings)."""
    bwd = rec.spec.backward
    if bwd is None:
        raise ValueError(f"recipe {rec.name!r} (family {rec.family!r}) has no backward pass")
    stages = dict(bwd.stages)
    if rounding is not None:
        mode = RoundMode.parse(rounding).name
        for name in bwd.rounding_stages:
            st = stages[name]
            if mode not in st.roundings:
                raise ValueError(f"backward stage {name!r} cannot take rounding {mode!r}; accepted: "
                                 f"{', '.join(st.roundings)}")
            stages[name] = replace(st, rounding=mode)
    return stages


def _bf16_values(x, name, shape, fp64):
    """``x`` as float32 bf16 values (float64 values as given with ``fp64``)."""
    a = as_float_array(x, name)
    if a.shape != shape:
        raise ValueError(f"{name} must have the shape of q, {shape}; got {a.shape}")
    if fp64:
        return a.astype(np.float64)
    return as_input_values(a, name, f" (the backward reads bf16 {name}, as the GPU kernels do)")


def flash_attention_backward(q, k, v, out, lse, dout, *, recipe="fa2", fix=None, causal=False, scale=None,
                             rounding=None, seed=None, record=False, dump=False, precision="hw",
                             threads=None) -> BackwardResult:
    """The backward pass of flash attention, exactly as the recipe's arithmetic does it.

    q, k, v : the forward's inputs, (batch, heads, seq, dim) or (seq, dim), bf16 values
        (the dtype policy of :func:`flash_attention`).
    out, lse : the forward's output (bf16 values, shape of q) and log-sum-exp per row in
        nats (``AttentionResult.out``, ``.lse``; shape of q without its last axis).
    dout : the gradient of the loss with respect to out (bf16 values, shape of q).
    recipe : a name of ``RECIPES`` or a :class:`Recipe` (its family's backward runs;
        the forward's stage overrides do not apply to the backward).
    fix : accepted for symmetry with the forward and checked, but it enters no
        backward operation: it changes only the forward's running max, which the
        backward never reads; it reaches the gradients through ``out`` and ``lse``.
    causal, scale : as the forward (scale default 1/sqrt(dim)).
    rounding : shorthand for the rounding of the backward's casts
        (``Family.backward.rounding_stages``: fa2 P_cast, dS_cast and the three output
        casts; paper P_cast, dS_cast and the casts of the dQ, dK, dV running sums; ``rne``,
        ``sr``, …; the GPU kernels take rne and sr); sr draws its words from
        ``stage_seed(seed, "backward." + stage)``, never the forward's.
    seed : Philox key (required with sr).
    record : keep the backward's rounding ledger and P, dS.  dump : keep P, dS only.
    precision : ``hw`` or ``fp64`` (every stage and unit in float64: then dq, dk, dv equal
        float64 autograd of :func:`reference_attention` given the same out and lse).
    threads : numba threads (default: all cores).
    """
    rec = get_recipe(recipe)
    fx = get_fix(fix)
    rec.with_fix(fx)   # the family must define the fix (which then enters no backward operation)
    if precision not in ("hw", "fp64"):
        raise ValueError(f"precision must be 'hw' or 'fp64', got {precision!r}")
    fp64 = precision == "fp64"
    stages = backward_stages(rec, rounding)
    q4, k4, v4, squeeze = _check_inputs(q, k, v)
    B, H, Nq, D = q4.shape
    Nk = k4.shape[2]
    rec.check_problem(Nq, Nk, bool(causal))
    shape = (Nq, D) if squeeze else (B, H, Nq, D)
    # fp64 mode reads out and dout as given (float64 autograd's out is no bf16 tensor)
    o4 = _bf16_values(out, "out", shape, fp64).reshape(B, H, Nq, D)
    do4 = _bf16_values(dout, "dout", shape, fp64).reshape(B, H, Nq, D)
    lse_a = np.asarray(lse, np.float64) if not hasattr(lse, "numpy") else lse.detach().cpu().double().numpy()
    if lse_a.shape != shape[:-1]:
        raise ValueError(f"lse must have the shape of q without its last axis, {shape[:-1]}; got {lse_a.shape} "
                         "(pass the forward's AttentionResult.lse)")
    sc = 1.0 / math.sqrt(D) if scale is None else float(scale)
    if not (math.isfinite(sc) and sc > 0):
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    if threads is not None and not (isinstance(threads, (int, np.integer)) and threads >= 1):
        raise ValueError(f"threads must be a positive integer (or None: all cores), got {threads!r}")
    plan = stage_plan(stages, fp64, seed, SEED_PREFIX)
    nthreads = threads or numba.config.NUMBA_NUM_THREADS
    prev = numba.get_num_threads()
    numba.set_num_threads(nthreads)
    try:
        job = _prepare_job(q4, k4, v4, o4, do4, lse_a.reshape(B * H, Nq), rec, sc, plan, bool(causal), fp64,
                           bool(record), bool(record or dump), nthreads, len(stages))
        notice_if_cold(sys.modules[rec.spec.backward.run.__module__])
        rec.spec.backward.run(job)
    finally:
        numba.set_num_threads(prev)
    outs = job.outputs
    odt = np.float64 if fp64 else np.float32

    def shp(a, rows, last):
        a = a.reshape((B, H, rows) + ((last,) if last else ())).astype(odt)
        return a[0, 0] if squeeze else a

    res = BackwardResult(dq=shp(outs.dq, Nq, D), dk=shp(outs.dk, Nk, D), dv=shp(outs.dv, Nk, D),
                         delta=shp(outs.delta, Nq, None), recipe=rec, fix=fx,
                         info={"scale": sc, "causal": bool(causal), "precision": precision, "rounding": rounding,
                               "shape": (B, H, Nq, D), "Nk": Nk})
    if outs.record:
        res.ledger = RoundingLedger(list(stages), outs.ledgers.sum(axis=0), {s.name: s.kind for s in stages.values()})
    if outs.keep:
        res.p = shp(outs.p, Nq, Nk)
        res.ds = shp(outs.ds, Nq, Nk)
    return res


def _padded(a, rows):
    """(BH, n, D) → (BH, rows, D), zero rows appended."""
    out = np.zeros((a.shape[0], rows, a.shape[2]), a.dtype)
    out[:, :a.shape[1]] = a
    return out


def _values_operand(values):
    """An Operand of float64 values only (fp64 mode: the units read values, not decodings)."""
    z = np.zeros(values.shape, np.int64)
    return Operand(values.astype(np.float64), z, z, np.zeros(values.shape, np.int8))


def _prepare_job(q4, k4, v4, o4, do4, lse, rec, sc, plan, causal, fp64, record, keep, nthreads, n_stages):
    B, H, Nq, D = q4.shape
    Nk = k4.shape[2]
    BH = B * H
    # padded to whole blocks of every tile a family's backward may use (powers of two)
    pad_m = max(64, rec.block_m)
    pad_n = max(64, rec.block_n)
    nq_pad = -(-Nq // pad_m) * pad_m
    nk_pad = -(-Nk // pad_n) * pad_n
    qf = _padded(q4.reshape(BH, Nq, D), nq_pad)
    kf = _padded(k4.reshape(BH, Nk, D), nk_pad)
    vf = _padded(v4.reshape(BH, Nk, D), nk_pad)
    dof = _padded(do4.reshape(BH, Nq, D), nq_pad)
    ops = BackwardOperands(q=_operand(qf, INPUT_FORMAT), k=_operand(kf, INPUT_FORMAT),
                           kT=_operand(np.ascontiguousarray(kf.transpose(0, 2, 1)), INPUT_FORMAT),
                           vT=_operand(np.ascontiguousarray(vf.transpose(0, 2, 1)), INPUT_FORMAT),
                           do=_operand(dof, INPUT_FORMAT) if not fp64 else _values_operand(dof))
    tc_qk, tc_pv, fv = _tc_models(INPUT_FORMAT, fp64)
    tpos, tneg, ex2 = load_exp2_tables("sm90")
    units = Units(hw=not fp64, arith=_int64s(target(FORMATS["fp64" if fp64 else "fp32"])), tc_qk=_int64s(tc_qk),
                  tc_pv=_int64s(tc_pv), p_mant=fv.mant_bits, p_emin=fv.emin, ex2_pos=tpos, ex2_neg=tneg,
                  ex2_params=_int64s(ex2_params(ex2)))
    fwd = rec.scalars(sc, None, fp64)
    scalars = BackwardScalars(qk_scale=fwd.qk_scale, scale=sc if fp64 else float(np.float32(sc)))
    nch = max(1, min(BH * Nq, 8 * nthreads))
    big = (lambda *s: s) if keep else (lambda *s: (1, 1, 1))
    outs = BackwardOutputs(dq=np.zeros((BH, Nq, D)), dk=np.zeros((BH, Nk, D)), dv=np.zeros((BH, Nk, D)),
                           delta=np.zeros((BH, Nq)), ds_cast=np.zeros((BH, Nq, Nk)),
                           p=np.zeros(big(BH, Nq, Nk)), ds=np.zeros(big(BH, Nq, Nk)),
                           ledgers=np.zeros((nch, n_stages, NF)), record=record, keep=keep, causal=causal)
    return BackwardJob(operands=ops, o=o4.reshape(BH, Nq, D).astype(np.float64),
                       do_values=do4.reshape(BH, Nq, D).astype(np.float64),
                       lse2=rec.spec.backward.lse_operand(lse, fp64), scalars=scalars, units=units, plan=plan,
                       tiling=(rec.block_m, rec.block_n), outputs=outs)
