"""``flash_attention`` and ``reference_attention``: the emulator's public entry points."""

from __future__ import annotations

import math
import sys
import zlib
from dataclasses import dataclass, field

import numba
import numpy as np

from ..formats import FORMATS, get_format
from ..jit_notice import notice_if_cold
from ..hw.sfu import ex2_params, load_exp2_tables
from ..hw.tensor_core import TC_MODELS, decode_operands
from ..philox import seed_to_u64
from ..rounding import RoundMode, as_float_array, quantize, target
from . import units
from .rows import Job, Operand, Operands, Outputs, Scalars, Tiling, Units
from .ledger import NF, RoundingLedger
from .recipes import Fix, Recipe, get_fix, get_recipe

__all__ = ["flash_attention", "reference_attention", "AttentionResult", "stage_seed", "MAX_HEAD_DIM"]

MAX_HEAD_DIM = 256
INPUT_FORMAT = "bf16"


@dataclass
class AttentionResult:
    """What :func:`flash_attention` returns.

    out : output values (float32 array holding values of the output format),
          shape of q.
    lse : log-sum-exp per row in nats (float64 array), from the final m and l:
          fa2: m·ln 2 + ln l (m is in the log2 domain), in float64; paper (and
          paper_code): bf16(fl32(bf16(fl32(ln l)) + m)), a bf16 value, as the
          paper's code computes it on bf16 tensors (fl32(ln l) a correctly rounded
          logf; CUDA's is within 1 ulp); with ``precision="fp64"``: m + ln l.
    m, l : the final running max and row sum per row, as the kernel keeps them.
    ledger : the :class:`RoundingLedger` (``record=True``), else None.
    m_blocks, l_blocks : m and l after each visited key block, (..., rows,
          blocks) — NaN where a row visits fewer blocks (``record`` or ``dump``).
    acc : the accumulator before the final division (fa2: fp32 acc; paper: the
          bf16 running output), shape of out (``record`` or ``dump``).
    """

    out: np.ndarray
    lse: np.ndarray
    m: np.ndarray
    l: np.ndarray
    recipe: Recipe
    fix: Fix | None
    ledger: RoundingLedger | None = None
    m_blocks: np.ndarray | None = None
    l_blocks: np.ndarray | None = None
    acc: np.ndarray | None = None
    info: dict = field(default_factory=dict)


def stage_seed(seed: int, stage: str) -> int:
    """The Philox key of a stage's stochastic rounding: the user's seed XOR a
    per-stage salt (crc32 of the stage name in bits 40..55), as an int64.
    The Triton kernels pass exactly this to ``tl.randint``."""
    s = int(seed_to_u64(seed)) ^ ((zlib.crc32(stage.encode()) & 0xFFFF) << 40)
    return s - (1 << 64) if s >= (1 << 63) else s


def _as_4d(x, name):
    arr = as_float_array(x, name)  # the shared dtype policy (rounding.as_float_array)
    if arr.ndim == 2:
        return arr[None, None], True
    if arr.ndim == 4:
        return arr, False
    raise ValueError(f"{name} must have shape (batch, heads, seq, dim) or (seq, dim); got {arr.shape}")


def _check_inputs(q, k, v):
    q4, squeeze = _as_4d(q, "q")
    k4, _ = _as_4d(k, "k")
    v4, _ = _as_4d(v, "v")
    if not (q4.ndim == k4.ndim == v4.ndim) or (np.ndim(q) != np.ndim(k) or np.ndim(q) != np.ndim(v)):
        raise ValueError(f"q, k, v must all be 2-D or all 4-D; got {np.shape(q)}, {np.shape(k)}, {np.shape(v)}")
    B, H, Nq, D = q4.shape
    if k4.shape[:2] != (B, H) or v4.shape[:2] != (B, H):
        raise ValueError(f"batch and heads must agree: q {q4.shape}, k {k4.shape}, v {v4.shape}")
    if k4.shape[2] != v4.shape[2]:
        raise ValueError(f"k and v must have the same sequence length; got {k4.shape[2]} and {v4.shape[2]}")
    if k4.shape[3] != D or v4.shape[3] != D:
        raise ValueError(f"q, k and v must have the same head dim; got {D}, {k4.shape[3]}, {v4.shape[3]}")
    if not 1 <= D <= MAX_HEAD_DIM:
        raise ValueError(f"head dim {D} is not supported; the emulator accepts 1..{MAX_HEAD_DIM} "
                         "(the GPU kernels accept 64 and 128)")
    if Nq < 1 or k4.shape[2] < 1:
        raise ValueError(f"sequence lengths must be >= 1; got q {Nq}, k {k4.shape[2]}")
    return (*(as_input_values(a, name) for name, a in (("q", q4), ("k", k4), ("v", v4))), squeeze)


def as_input_values(a: np.ndarray, name: str, why: str = "") -> np.ndarray:
    """``a`` as float32, or ValueError unless every value is a bf16 value (the kernels'
    input format; NaN of any payload passes).  ``why`` is added to the message."""
    a32 = a.astype(np.float32)
    if a.dtype == np.float64 and not np.array_equal(a32.astype(np.float64), a, equal_nan=True):
        raise ValueError(f"{name} holds values that are not float32, let alone bf16; "
                         f"round them first: emulator.quantize({name}, 'bf16')")
    bad = quantize(a32, INPUT_FORMAT, "rne")
    same = (bad.view(np.uint32) == a32.view(np.uint32)) | (np.isnan(bad) & np.isnan(a32))
    if not same.all():
        raise ValueError(f"{int((~same).sum())} values of {name} are not representable in "
                         f"{INPUT_FORMAT}{why}; round them first: emulator.quantize({name}, '{INPUT_FORMAT}')")
    return a32


def stage_plan(stages: dict, fp64: bool, seed, seed_prefix: str = "") -> np.ndarray:
    """The int64 plan (stages × units.PLAN_COLUMNS) of a stage table: each stage's target
    format, rounding mode, random bits, saturation, ``exact`` and ``compensated`` flags,
    and for sr its Philox key ``stage_seed(seed, seed_prefix + name)`` (the backward's
    stages use the prefix ``backward.``, so their words never repeat the forward's).
    ``fp64``: every stage in float64, rne."""
    plan = np.zeros((len(stages), len(units.PLAN_COLUMNS)), np.int64)
    needs_seed = []
    for idx, st in enumerate(stages.values()):
        fmt = st.format
        if fp64:
            fmt = "fp64"
        elif fmt in ("same_as_P", "same_as_acc"):
            fmt = "fp32"
        f = get_format(fmt)
        t = target(f)
        plan[idx, units.PLAN_MANT:units.PLAN_HAS_INF + 1] = t
        mode = RoundMode.parse(st.rounding) if not fp64 else RoundMode.rne
        plan[idx, units.PLAN_MODE] = int(mode)
        plan[idx, units.PLAN_RAND_BITS] = st.rand_bits
        plan[idx, units.PLAN_SATURATE] = 1 if f.name.startswith("fp8") else 0
        plan[idx, units.PLAN_EXACT] = 1 if (st.exact and not fp64) else 0
        plan[idx, units.PLAN_COMPENSATED] = 1 if st.accumulation == "compensated" else 0
        if mode == RoundMode.sr:
            needs_seed.append(st.name)
            if seed is not None:
                plan[idx, units.PLAN_SEED] = np.int64(stage_seed(seed, seed_prefix + st.name))
    if needs_seed and seed is None:
        raise ValueError(f"stages {needs_seed} round stochastically: pass seed=<int> (the Philox key; "
                         "the same seed reproduces the run here and on the GPU)")
    return plan


def flash_attention(q, k, v, *, recipe="fa2", fix=None, causal=False, scale=None, block_m=None,
                    block_n=None, rounding=None, overrides=None, seed=None, record=False, dump=False,
                    eps=None, beta=None, delta=None, precision="hw", threads=None) -> AttentionResult:
    """Flash attention, forward, exactly as the recipe's arithmetic does it.

    q, k, v : (batch, heads, seq, dim) or (seq, dim) arrays of bf16 values
        (float32/float64 holding bf16 values, or any dtype of the shared policy of
        ``rounding.as_float_array``: numpy float16, ml_dtypes bfloat16, float8_*, whose
        values are widened exactly to float32 — fp16 values must still be bf16 values).  q and k
        lengths may differ; any lengths (no multiple of the block needed).
    recipe : a name of ``RECIPES`` (``fa2``, ``paper``, ``paper_code``) | a :class:`Recipe`.
    fix : None | ``paper`` | ``offset`` | :class:`Fix`; ``eps``/``beta`` set the
        paper fix's parameters, ``delta`` the offset fix's (recipes.Fix).
    causal : mask keys j > i (top-left aligned, as torch's ``is_causal``).
    scale : softmax scale (default 1/sqrt(dim)).
    block_m, block_n : tile overrides.
    rounding : shorthand for the P̄ and output casts' rounding (``rne``/``sr``/…).
    overrides : {stage: {format, rounding, accumulation, rand_bits, exact}} (stage
        ablation; ``format="fp64"`` removes a rounding, ``exact=True`` replaces a
        hardware unit by the exact operation rounded once to fp32).
    seed : Philox key for every ``sr`` stage (required if any stage uses sr).
    record : keep the rounding ledger and the per-block intermediates.
    dump : keep the intermediates (m, l per block; acc) without the ledger.
    precision : ``hw`` (hardware models) or ``fp64`` (every stage and unit in
        IEEE float64: tiling and the fix change nothing in exact math, so this
        equals :func:`reference_attention` to about 1e-15; paper_code's clamp of
        each block's row sum to 1e-10, a guard against bf16 underflow that would
        change exact math, is dropped there).
    threads : numba threads (default: all cores).

    NaN and inf inputs propagate as the GPU's units propagate them (the
    tensor-core and MUFU models include their special-value rules; PTX max
    ignores NaN); a row whose scores are all NaN gives NaN.
    """
    fx = get_fix(fix, eps, beta, delta)
    rec = get_recipe(recipe).configured(overrides, rounding, block_m=block_m, block_n=block_n).with_fix(fx)
    if fx is not None and fx.needs_seed and seed is None:
        raise ValueError(f"fix={fx.name!r} rounds P̄ and the output cast stochastically: pass seed=<int> (the "
                         "Philox key; a new one per call in training)")
    if precision not in ("hw", "fp64"):
        raise ValueError(f"precision must be 'hw' or 'fp64', got {precision!r}")
    fp64 = precision == "fp64"
    q4, k4, v4, squeeze = _check_inputs(q, k, v)
    B, H, Nq, D = q4.shape
    rec.check_problem(Nq, k4.shape[2], bool(causal))
    sc = 1.0 / math.sqrt(D) if scale is None else float(scale)
    if not (math.isfinite(sc) and sc > 0):
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    plan = stage_plan(rec.stages, fp64, seed)
    if threads is not None and not (isinstance(threads, (int, np.integer)) and threads >= 1):
        raise ValueError(f"threads must be a positive integer (or None: all cores), got {threads!r}")
    nthreads = threads or numba.config.NUMBA_NUM_THREADS
    prev = numba.get_num_threads()
    numba.set_num_threads(nthreads)
    try:
        job = _prepare_job(q4, k4, v4, rec, fx, sc, plan, bool(causal), fp64, bool(record), bool(record or dump),
                           nthreads)
        notice_if_cold(sys.modules[rec.spec.kernel.__module__])
        rec.spec.emulate(job)
    finally:
        numba.set_num_threads(prev)
    with np.errstate(divide="ignore", invalid="ignore"):
        lse = rec.lse(job.outputs.m, job.outputs.l, fp64=fp64)
    return _shape_result(job, lse, rec, fx, (B, H, Nq, D), squeeze, fp64,
                         {"scale": sc, "causal": bool(causal), "precision": precision})


def _int64s(t) -> np.ndarray:
    """A model tuple as int64[n]: the kernels' argument groups must be flat (rows module)."""
    return np.array([int(x) for x in t], np.int64)


def _operand(values: np.ndarray, fmt: str) -> Operand:
    sig, exp, spec = decode_operands(values, fmt)
    return Operand(values.astype(np.float64), sig, exp, spec)


def _prepare_job(q4, k4, v4, rec, fx, sc, plan, causal, fp64, record, keep, nthreads) -> Job:
    """The rows.Job of one call: operands decoded for the tensor-core model (Kᵀ transposed,
    V padded to whole key blocks and cast to the P̄·V operand format where the recipe asks),
    the kernel scalars, hardware-unit parameters, plan, tiling, and the output arrays the
    kernel fills (rows flattened to batch·heads)."""
    B, H, Nq, D = q4.shape
    Nk = k4.shape[2]
    bn = rec.block_n
    nblk = (Nk + bn - 1) // bn
    BH = B * H
    qf = q4.reshape(BH, Nq, D)
    kT = np.ascontiguousarray(k4.reshape(BH, Nk, D).transpose(0, 2, 1))
    vf = np.zeros((BH, nblk * bn, D), np.float32)
    vf[:, :Nk] = v4.reshape(BH, Nk, D)
    stages = list(rec.stages)
    # ledger chunks: each a sequential run of rows (rows.drive_rows), summed in chunk order
    nch = max(1, min(BH * Nq, 8 * nthreads))
    ledgers = np.zeros((nch, len(stages), NF))
    # P̄·V operand format; V is cast to it when it differs from the input's
    pfmt = rec.stages["P_cast"].format if not fp64 else "fp64"
    vcast = not fp64 and pfmt != INPUT_FORMAT and pfmt != "fp32"
    if vcast:
        st_v = stages.index("V_cast") if "V_cast" in stages else None
        vq = quantize(vf, pfmt, "rne", saturate=pfmt.startswith("fp8"))
        if record and st_v is not None:
            _ledger_cast(vf, pfmt, ledgers[0], st_v)
        vf = vq
    tc_qk, tc_pv, fv = _tc_models(pfmt if vcast else INPUT_FORMAT, fp64)
    tpos, tneg, ex2 = load_exp2_tables("sm90")
    ks = rec.scalars(sc, fx, fp64)
    shape_keep = (lambda *s: s) if keep else (lambda *s: (1, 1, 1))
    return Job(
        operands=Operands(_operand(qf, INPUT_FORMAT), _operand(kT, INPUT_FORMAT), _operand(vf, fv.name)),
        scalars=Scalars(ks.qk_scale, ks.eps, ks.beta, ks.delta, units.FIX_KINDS[fx.name if fx else None]),
        units=Units(hw=not fp64, arith=_int64s(target(FORMATS["fp64" if fp64 else "fp32"])), tc_qk=_int64s(tc_qk),
                    tc_pv=_int64s(tc_pv), p_mant=fv.mant_bits, p_emin=fv.emin, ex2_pos=tpos, ex2_neg=tneg,
                    ex2_params=_int64s(ex2_params(ex2))),
        plan=plan,
        tiling=Tiling(Nk=Nk, causal=causal, block_m=rec.block_m, block_n=bn, paper_code=rec.paper_code),
        outputs=Outputs(out=np.empty((BH, Nq, D)), m=np.empty((BH, Nq)), l=np.empty((BH, Nq)),
                        acc=np.full(shape_keep(BH, Nq, D), np.nan),
                        m_blocks=np.full(shape_keep(BH, Nq, nblk), np.nan),
                        l_blocks=np.full(shape_keep(BH, Nq, nblk), np.nan),
                        ledgers=ledgers, record=record, keep=keep))


def _tc_models(v_fmt: str, fp64: bool):
    """(Q·Kᵀ model tuple, P̄·V model tuple, the P̄·V operand format): each tuple is
    (k_step, frac_bits, sum_frac_bits, operand mantissa bits) of the sm90 wgmma model."""
    models = TC_MODELS["sm90"]
    if not fp64 and v_fmt not in models:
        raise ValueError(f"P̄·V operand format {v_fmt!r} has no tensor-core model; "
                         f"accepted: {', '.join(models)}")
    tcm_q = models[INPUT_FORMAT]
    tcm_v = models[v_fmt] if not fp64 else tcm_q
    fq = get_format(INPUT_FORMAT)
    fv = get_format(v_fmt if not fp64 else INPUT_FORMAT)
    return ((tcm_q.k_step, tcm_q.frac_bits, tcm_q.sum_frac_bits, fq.mant_bits),
            (tcm_v.k_step, tcm_v.frac_bits, tcm_v.sum_frac_bits, fv.mant_bits), fv)


def _shape_result(job: Job, lse, rec, fx, shape4, squeeze, fp64, info) -> AttentionResult:
    B, H, Nq, D = shape4
    outs = job.outputs
    Nk = job.tiling.Nk
    blocks = (Nk + job.tiling.block_n - 1) // job.tiling.block_n
    odt = np.float64 if fp64 else np.float32

    def shp(a, last):
        a = a.reshape((B, H, Nq) + ((last,) if last else ()))
        return a[0, 0] if squeeze else a

    res = AttentionResult(
        out=shp(outs.out.astype(odt), D), lse=shp(lse, None), m=shp(outs.m, None), l=shp(outs.l, None),
        recipe=rec, fix=fx, info={**info, "shape": shape4, "Nk": Nk, "blocks": blocks})
    if outs.record:
        res.ledger = RoundingLedger(list(rec.stages), outs.ledgers.sum(axis=0),
                                    {s.name: s.kind for s in rec.stages.values()})
    if outs.keep:
        res.m_blocks = shp(outs.m_blocks, blocks)
        res.l_blocks = shp(outs.l_blocks, blocks)
        res.acc = shp(outs.acc, D)
    return res


def _ledger_cast(values: np.ndarray, fmt: str, L: np.ndarray, st: int):
    """Ledger entries of casting ``values`` (float32) to ``fmt`` (RNE, satfinite for fp8)."""
    units.ledger_cast_f32(np.ascontiguousarray(values, np.float32).reshape(-1).view(np.uint32),
                      target(get_format(fmt)), 1 if fmt.startswith("fp8") else 0, L, st)


def reference_attention(q, k, v, *, causal=False, scale=None):
    """softmax(Q·Kᵀ·scale)·V in float64 (numerically stable), same shapes and
    masks as :func:`flash_attention`.  Returns (out float64, lse float64 in nats)."""
    q4, squeeze = _as_4d(q, "q")
    k4, _ = _as_4d(k, "k")
    v4, _ = _as_4d(v, "v")
    q4, k4, v4 = (a.astype(np.float64) for a in (q4, k4, v4))
    B, H, Nq, D = q4.shape
    Nk = k4.shape[2]
    sc = 1.0 / math.sqrt(D) if scale is None else float(scale)
    s = np.einsum("bhid,bhjd->bhij", q4, k4) * sc
    if causal:
        mask = np.arange(Nk)[None, :] > np.arange(Nq)[:, None]
        s = np.where(mask, -np.inf, s)
    m = s.max(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore"):   # inf − inf: a NaN row, as the NaN rule says
        p = np.exp(s - m)
    l = p.sum(axis=-1, keepdims=True)
    if causal and not np.isfinite(v4).all():
        # masked keys take no part at all (0 · inf would be NaN): one query row at a time
        out = np.empty((B, H, Nq, D))
        for i in range(Nq):
            n = min(i + 1, Nk)
            out[:, :, i] = np.einsum("bhj,bhjd->bhd", p[:, :, i, :n], v4[:, :, :n]) / l[:, :, i]
    else:
        out = np.einsum("bhij,bhjd->bhid", p, v4) / l
    lse = (m + np.log(l))[..., 0]
    if squeeze:
        return out[0, 0], lse[0, 0]
    return out, lse
