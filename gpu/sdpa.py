"""``flashbits.scaled_dot_product_attention``: torch's SDPA signature on a flashbits recipe.

A ``torch.library`` custom op pair (``flashbits::attention_forward`` and
``flashbits::attention_backward``) with a registered autograd formula and fake
(meta) implementations, so eager mode, autograd and ``torch.compile(fullgraph=True)``
all see one opaque op.  Where it runs:

* CUDA tensors: the Triton kernels (``gpu.flash_attention`` and
  ``gpu.flash_attention_backward``);
* CPU tensors: the emulator (``emulator.flash_attention`` and
  ``emulator.flash_attention_backward``), slow and bit-identical to the kernels: the
  same recipe, the same op sequence (crosscheck, tests/data/hw/).

Numerical contract, both devices alike:

* query, key, value bf16 (batch, heads, seq, dim) or (heads, seq, dim); dim 64 or 128;
  the output bf16, as the recipe's forward table (docs/recipes.md) computes it.
* The forward keeps the kernel's final running max m and row sum l (fp32); the
  backward's log-sum-exp is ``Recipe.lse(m, l)`` in float64 on the host, the emulator's
  own function, so both devices hand the backward kernels the same lse operand
  (``Family.backward.lse_operand``) bit for bit.
* GQA / MQA (``enable_gqa=True``, key and value with H/g heads): query head h reads
  key/value head h // g, as torch's ``repeat_interleave``; the kernels run on the
  expanded heads, and the gradient of a shared key/value head is the fp32 sum, in
  ascending query-head order, of its g bf16 head gradients, rounded once to bf16 (rne).
* Stochastic rounding (``rounding="sr"``, or ``fix="unbiased"``, which rounds P̄ and the
  output stochastically itself): each call's Philox key is ``seed`` if given
  (an int: that call reproduces exactly), else drawn from torch's default CPU
  generator (``torch.randint``), so calls and steps never reuse a key and
  ``torch.manual_seed`` makes a whole run reproducible; the backward of a call uses
  the forward's key with its own stage salts (``stage_seed(key, "backward." + stage)``).
  Under ``torch.compile`` the draw is a traced random op, not a Python counter that
  would be frozen into the graph.

Refused, with an error naming ``torch.nn.functional.scaled_dot_product_attention`` as
the alternative: ``attn_mask``, ``dropout_p > 0``, dtypes other than bf16, other head
dims, head dims of value unlike query's, devices other than CPU and CUDA, and on CUDA
a recipe without backward kernels when a gradient is needed.
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np
import torch

from flashbits.emulator.attention.recipes import get_fix, get_recipe

from .attention import SUPPORTED_HEAD_DIMS, softmax_scale

TORCH_SDPA = "torch.nn.functional.scaled_dot_product_attention"
ROUNDINGS = ("rne", "sr")
_SEED_HIGH = 1 << 62


def _refuse(what: str, exc=ValueError):
    raise exc(f"flashbits.scaled_dot_product_attention: {what}; for this call use torch's own {TORCH_SDPA}")


def _recipe_and_fix(recipe, fix):
    try:
        rec = get_recipe(recipe)
        fx = get_fix(fix)
    except (KeyError, ValueError, TypeError) as e:
        _refuse(str(e).strip("'\""))
    if rec.paper_code:
        _refuse(f"recipe {rec.name!r} (the paper's published code exactly) runs in the emulator only "
                "(flashbits.emulator.flash_attention); choose 'fa2' or 'paper'")
    return rec, fx


def _check_call(query, key, value, attn_mask, dropout_p, enable_gqa, rounding, seed):
    """(query, key, value as 4-D, squeeze, groups) or an error a user can act on."""
    if attn_mask is not None:
        _refuse("attn_mask is not supported (the recipes mask only causally: is_causal=True)")
    if dropout_p != 0.0:
        _refuse(f"dropout_p={dropout_p!r} is not supported (the recipes have no dropout); pass 0.0")
    if rounding not in ROUNDINGS:
        _refuse(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        _refuse(f"seed must be an int or None (None: drawn from torch's generator per call), got {seed!r}",
                TypeError)
    ts = {"query": query, "key": key, "value": value}
    for name, t in ts.items():
        if not isinstance(t, torch.Tensor):
            _refuse(f"{name} must be a torch.Tensor, got {type(t).__name__}", TypeError)
        if t.dtype != torch.bfloat16:
            _refuse(f"{name} is {t.dtype}; the recipes take bfloat16 (cast with .to(torch.bfloat16))", TypeError)
        if t.dim() not in (3, 4):
            _refuse(f"{name} must be (batch, heads, seq, dim) or (heads, seq, dim), got shape {tuple(t.shape)}")
        if t.device.type not in ("cpu", "cuda"):
            _refuse(f"{name} is on {t.device}; flashbits runs on CUDA (Triton kernels) or the CPU (emulator)")
    if len({t.dim() for t in ts.values()}) != 1 or len({t.device for t in ts.values()}) != 1:
        _refuse(f"query, key, value must have the same number of dims and device, got "
                f"{[(tuple(t.shape), str(t.device)) for t in ts.values()]}")
    squeeze = query.dim() == 3
    q, k, v = (t.unsqueeze(0) if squeeze else t for t in (query, key, value))
    B, H, Nq, D = q.shape
    Bk, Hk, Nk, Dk = k.shape
    if k.shape != v.shape[:3] + (Dk,) or v.shape[:3] != (Bk, Hk, Nk):
        _refuse(f"key {tuple(key.shape)} and value {tuple(value.shape)} must agree in batch, heads and length")
    if v.shape[3] != D or Dk != D:
        _refuse(f"head dims must be equal (query {D}, key {Dk}, value {v.shape[3]})")
    if D not in SUPPORTED_HEAD_DIMS:
        _refuse(f"head dim {D} is not supported; supported: {SUPPORTED_HEAD_DIMS}")
    if Bk != B:
        _refuse(f"batch sizes differ (query {B}, key {Bk}); broadcasting is not supported")
    if Nq < 1 or Nk < 1:
        _refuse(f"sequence lengths must be >= 1, got query {Nq}, key {Nk}")
    if Hk != H:
        if not enable_gqa:
            _refuse(f"query has {H} heads, key and value {Hk}; pass enable_gqa=True for grouped-query attention")
        if Hk < 1 or H % Hk:
            _refuse(f"enable_gqa needs the query's heads ({H}) to be a multiple of key's ({Hk})")
    return q, k, v, squeeze, H // Hk


# --- the two ops: each a pure function of its tensors and options ---------------------

def _expand(t, groups):
    return t if groups == 1 else t.repeat_interleave(groups, dim=1)


def _reduce_groups(g, groups):
    """dK (or dV) of the shared heads: per shared head, the fp32 sum of its ``groups``
    bf16 head gradients in ascending head order, rounded once to bf16 (rne)."""
    if groups == 1:
        return g
    B, H, N, D = g.shape
    g = g.reshape(B, H // groups, groups, N, D)
    acc = g[:, :, 0].float()
    for i in range(1, groups):
        acc = acc + g[:, :, i].float()
    return acc.to(torch.bfloat16)


def _np(t):
    """A bf16 (or fp32) tensor's values as a float32 numpy array (exact)."""
    return t.detach().to("cpu", torch.float32).numpy()


def _from_np(a, like, dtype=torch.bfloat16):
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(device=like.device, dtype=dtype)


@torch.library.custom_op("flashbits::attention_forward", mutates_args=())
def attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float,
                      recipe: str, fix: str, rounding: str, seed: torch.Tensor, groups: int
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out bf16 shaped as q, m fp32 (B, H, Nq), l fp32 (B, H, Nq)) of the recipe's forward;
    k, v have H / groups heads; ``fix`` "" for none; ``seed`` an int64 scalar tensor."""
    fx = fix or None
    key = int(seed.item()) if _random(rounding, fx) else None
    ke, ve = _expand(k, groups), _expand(v, groups)
    if q.is_cuda:
        from .attention import flash_attention

        r = flash_attention(q.contiguous(), ke.contiguous(), ve.contiguous(), recipe=recipe, fix=fx,
                            causal=causal, scale=scale, rounding=rounding, seed=key)
        return (r.out.contiguous(), r.m.reshape(q.shape[:3]).float().contiguous(),
                r.l.reshape(q.shape[:3]).float().contiguous())
    from flashbits.emulator import flash_attention as emulate

    r = emulate(_np(q), _np(ke), _np(ve), recipe=recipe, fix=fx, causal=causal, scale=scale, rounding=rounding,
                seed=key)
    return _from_np(r.out, q), _from_np(r.m, q, torch.float32), _from_np(r.l, q, torch.float32)


@attention_forward.register_fake
def _(q, k, v, causal, scale, recipe, fix, rounding, seed, groups):
    # contiguous, as the real implementations return them (empty_like would keep a
    # permuted q's strides, and the traced graph's views would then disagree)
    return (q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=torch.float32),
            q.new_empty(q.shape[:3], dtype=torch.float32))


@torch.library.custom_op("flashbits::attention_backward", mutates_args=())
def attention_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, m: torch.Tensor,
                       l: torch.Tensor, dout: torch.Tensor, causal: bool, scale: float, recipe: str, fix: str,
                       rounding: str, seed: torch.Tensor, groups: int
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) bf16 of the recipe's backward; the lse is ``Recipe.lse(m, l)`` in
    float64 on the host (see the module docstring); k, v with H / groups heads."""
    rec = get_recipe(recipe)
    fx = fix or None
    key = int(seed.item()) if _random(rounding, fx) else None
    lse = rec.lse(m.detach().cpu().double().numpy(), l.detach().cpu().double().numpy())
    ke, ve = _expand(k, groups), _expand(v, groups)
    dout = dout.to(torch.bfloat16)
    if q.is_cuda:
        from .backward import flash_attention_backward

        r = flash_attention_backward(q.contiguous(), ke.contiguous(), ve.contiguous(), out.contiguous(),
                                     torch.from_numpy(lse).to(q.device), dout.contiguous(), recipe=recipe,
                                     fix=fx, causal=causal, scale=scale, rounding=rounding, seed=key)
        dq, dk, dv = r.dq, r.dk, r.dv
    else:
        from flashbits.emulator import flash_attention_backward as emulate_backward

        r = emulate_backward(_np(q), _np(ke), _np(ve), _np(out), lse, _np(dout), recipe=recipe, fix=fx,
                             causal=causal, scale=scale, rounding=rounding, seed=key)
        dq, dk, dv = _from_np(r.dq, q), _from_np(r.dk, q), _from_np(r.dv, q)
    return dq.contiguous(), _reduce_groups(dk, groups).contiguous(), _reduce_groups(dv, groups).contiguous()


@attention_backward.register_fake
def _(q, k, v, out, m, l, dout, causal, scale, recipe, fix, rounding, seed, groups):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, causal, scale, recipe, fix, rounding, seed, groups = inputs
    out, m, l = output
    ctx.save_for_backward(q, k, v, out, m, l, seed)
    ctx.options = (causal, scale, recipe, fix, rounding, groups)


def _backward(ctx, dout, _dm, _dl):
    q, k, v, out, m, l, seed = ctx.saved_tensors
    causal, scale, recipe, fix, rounding, groups = ctx.options
    dq, dk, dv = attention_backward(q, k, v, out, m, l, dout, causal, scale, recipe, fix, rounding, seed, groups)
    return dq, dk, dv, None, None, None, None, None, None, None


attention_forward.register_autograd(_backward, setup_context=_setup_context)


# --- the public functions -------------------------------------------------------------

def _random(rounding, fix) -> bool:
    """Whether a call draws random words: sr, or a fix that rounds stochastically itself
    (``Fix.needs_seed``: unbiased); ``fix`` a name or None."""
    return rounding == "sr" or (fix is not None and get_fix(fix).needs_seed)


def _call_seed(rounding, seed, fix):
    """The call's Philox key as an int64 scalar tensor (0 when nothing is random: unused)."""
    if not _random(rounding, fix):
        return torch.zeros((), dtype=torch.int64)
    if seed is not None:
        return torch.tensor(int(seed), dtype=torch.int64)
    return torch.randint(0, _SEED_HIGH, (), dtype=torch.int64)


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                                 enable_gqa=False, *, recipe="fa2", fix=None, rounding="rne", seed=None):
    """Attention with the signature of ``torch.nn.functional.scaled_dot_product_attention``,
    computed by a flashbits recipe: the Triton kernels on CUDA, the emulator on the CPU,
    the same bits on both (module docstring: lse, GQA, seeds).

    query (B, H, Nq, D), key and value (B, H_kv, Nk, D) or without the batch axis; bf16;
    D in (64, 128); ``is_causal``: query i attends keys j <= i (top-left, as torch's);
    ``scale``: default 1/sqrt(D); ``enable_gqa``: H a multiple of H_kv.  Options:
    ``recipe`` ("fa2", "paper"), ``fix`` (None, "paper", or another name of
    ``flashbits.FIXES`` the device implements), ``rounding`` ("rne" or "sr": the P̄ and
    output casts of the forward and the backward's casts), ``seed`` (the sr Philox key of
    this call; None draws one per call from torch's generator).  Returns bf16 shaped as
    query; differentiable in query, key, value.
    """
    rec, fx = _recipe_and_fix(recipe, fix)
    q, k, v, squeeze, groups = _check_call(query, key, value, attn_mask, dropout_p, enable_gqa, rounding, seed)
    if q.is_cuda and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        from .backward import backward_module

        try:
            backward_module(rec)
        except ValueError as e:
            _refuse(f"{e}; a gradient is needed here")
    sc = softmax_scale(scale, q.shape[-1])
    out, _, _ = attention_forward(q, k, v, bool(is_causal), sc, rec.name, "" if fx is None else fx.name,
                                  rounding, _call_seed(rounding, seed, None if fx is None else fx.name), groups)
    return out.squeeze(0) if squeeze else out


class patch_sdpa(contextlib.ContextDecorator):
    """Route ``torch.nn.functional.scaled_dot_product_attention`` to flashbits inside a
    ``with`` block (or a decorated function): ``with flashbits.patch_sdpa(fix="paper"):``.

    ``options``: the keyword options of :func:`scaled_dot_product_attention` (recipe, fix,
    rounding, seed), plus ``unsupported``: ``"error"`` (default: a call flashbits
    cannot compute, such as one with an ``attn_mask``, raises) or ``"torch"`` (such a
    call goes to torch's own function, unchanged).  Torch's function is restored on
    exit, also when the block raises; patches nest.  Code that bound the function
    before the block (``from torch.nn.functional import scaled_dot_product_attention``)
    is not rerouted: models that call it as ``F.scaled_dot_product_attention`` or
    ``torch.nn.functional.scaled_dot_product_attention`` (nanoGPT, transformers'
    sdpa attention) are.  ``routed`` and ``to_torch`` count the calls each way (under
    ``torch.compile``, the traced calls).
    """

    def __init__(self, **options):
        unsupported = options.pop("unsupported", "error")
        if unsupported not in ("error", "torch"):
            raise ValueError(f"unsupported must be 'error' or 'torch', got {unsupported!r}")
        bad = set(options) - {"recipe", "fix", "rounding", "seed"}
        if bad:
            raise TypeError(f"patch_sdpa options are recipe, fix, rounding, seed and unsupported; got {sorted(bad)}")
        _recipe_and_fix(options.get("recipe", "fa2"), options.get("fix"))   # fail at the patch, not mid-model
        if options.get("rounding", "rne") not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {ROUNDINGS}, got {options['rounding']!r}")
        self.options, self.unsupported, self._saved = options, unsupported, []
        self.routed = self.to_torch = 0   # calls sent to flashbits, and to torch's function

    def _route(self, torch_sdpa):
        @functools.wraps(torch_sdpa)
        def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
            if self.unsupported == "torch" and not _supported(query, key, value, attn_mask, dropout_p, enable_gqa):
                self.to_torch += 1
                return torch_sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                                  scale=scale, enable_gqa=enable_gqa)
            self.routed += 1
            return scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, is_causal, scale,
                                                enable_gqa, **self.options)
        return sdpa

    def __enter__(self):
        saved = torch.nn.functional.scaled_dot_product_attention
        self._saved.append(saved)
        torch.nn.functional.scaled_dot_product_attention = self._route(saved)
        return self

    def __exit__(self, *exc):
        torch.nn.functional.scaled_dot_product_attention = self._saved.pop()
        return False


def _supported(query, key, value, attn_mask, dropout_p, enable_gqa) -> bool:
    try:
        _check_call(query, key, value, attn_mask, dropout_p, enable_gqa, "rne", None)
    except (TypeError, ValueError):
        return False
    return True


__all__ = ["scaled_dot_product_attention", "patch_sdpa", "attention_forward", "attention_backward"]
