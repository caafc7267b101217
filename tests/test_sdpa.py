"""flashbits.scaled_dot_product_attention and patch_sdpa on the CPU (the emulator path).

* the GPU's truth: the forward golden records (tests/data/hw/attention_golden.npz,
  every default-tile entry) replayed through the drop-in on CPU tensors give the
  recorded kernel output bits, every element;
* FlashAttention's test rule against torch float64 SDPA: forward and gradients within
  2× torch's own bf16 SDPA error on the same inputs (plus the bf16 rounding noise of
  the reference), over awkward shapes (N = 1, 97, 1025; Nq != Nk; causal; GQA; MQA);
* the op's plumbing: its outputs are the emulator's (lse from m and l), GQA's shared
  key/value gradients the fp32 sum of the expanded heads' gradients, seeds reproducible
  and never repeated, 3-D inputs;
* torch.compile(fullgraph=True) of a small model runs and gives eager's bits;
* patch_sdpa routes, restores (also on error), nests, decorates, and falls back on
  request; every refusal says what was given and names torch's function.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import flashbits  # noqa: E402
from flashbits import emulator  # noqa: E402
from flashbits.crosscheck.record import load_record  # noqa: E402

sdpa = flashbits.scaled_dot_product_attention
F = torch.nn.functional
HW = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "hw")


def _bits(t):
    return t.detach().contiguous().view(torch.int16).numpy()


def _inputs(B, H, Hk, Nq, Nk, D, seed=0, grad=True):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Nq, D, generator=g).to(torch.bfloat16)
    k = torch.randn(B, Hk, Nk, D, generator=g).to(torch.bfloat16)
    v = torch.randn(B, Hk, Nk, D, generator=g).to(torch.bfloat16)
    do = torch.randn(B, H, Nq, D, generator=g).to(torch.bfloat16)
    return [t.requires_grad_(grad) for t in (q, k, v)] + [do]


def _grads(fn, q, k, v, do, **kw):
    qs, ks, vs = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(qs, ks, vs, **kw)
    out.backward(do.to(out.dtype))
    return out.detach(), qs.grad, ks.grad, vs.grad


# --- the GPU's truth ------------------------------------------------------------------

def _forward_entries():
    entries, _ = load_record(os.path.join(HW, "attention_golden.npz"))
    return [e for e in entries if e["cfg"].tile is None and e["cfg"].recipe in ("fa2", "paper")]


FORWARD_ENTRIES = _forward_entries()


def test_the_record_holds_every_kernel_configuration():
    from flashbits.crosscheck.sides import KERNEL_FIXES, kernel_config

    configs = {(e["cfg"].recipe, e["cfg"].fix, e["cfg"].rounding) for e in FORWARD_ENTRIES}
    assert configs == {(r, f, rd) for r in ("fa2", "paper") for f in KERNEL_FIXES for rd in ("rne", "sr")
                       if kernel_config(r, f, rd)}


@pytest.mark.parametrize("i", range(len(FORWARD_ENTRIES)))
def test_the_drop_in_gives_the_gpu_records_bits_on_the_cpu(i):
    e = FORWARD_ENTRIES[i]
    cfg, case = e["cfg"], e["case"]
    assert (cfg.eps, cfg.beta) == (1e-3, 2.0)   # the drop-in's fix "paper" takes the default eps, beta
    q, k, v = (torch.from_numpy(np.asarray(e[t], np.float32)).to(torch.bfloat16) for t in ("q", "k", "v"))
    out = sdpa(q, k, v, is_causal=case.causal, recipe=cfg.recipe, fix=cfg.fix, rounding=cfg.rounding,
               seed=cfg.seed if cfg.rounding == "sr" or cfg.fix == "unbiased" else None)
    got, want = _bits(out).ravel(), e["prod"]["out"].view(np.int16).ravel()
    assert got.shape == want.shape
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, f"{bad.size} of {got.size} outputs differ from the GPU's, first at {bad[0]}"


# the drop-in's own GPU record (gpu/probes/sdpa_probe.py): forward and gradients
from flashbits.gpu.probes.sdpa_probe import load_record as load_sdpa_record  # noqa: E402
from flashbits.gpu.probes.sdpa_probe import run_case  # noqa: E402

SDPA_ENTRIES, SDPA_PROVENANCE = load_sdpa_record(os.path.join(HW, "sdpa_golden.npz"))


def test_the_drop_in_record_comes_from_a_gpu():
    assert "H100" in SDPA_PROVENANCE["gpu"] or "H200" in SDPA_PROVENANCE["gpu"]
    assert len(SDPA_ENTRIES) == 20 and sum(c[5] for c, _ in SDPA_ENTRIES) == 16   # 16 with gradients


@pytest.mark.parametrize("i", range(len(SDPA_ENTRIES)))
def test_the_drop_in_gives_the_gpus_forward_and_gradients_on_the_cpu(i):
    case, want = SDPA_ENTRIES[i]
    got = run_case(case, "cpu", torch)
    assert set(got) == set(want)
    for name in want:
        bad = np.flatnonzero(got[name].ravel() != want[name].ravel())
        assert bad.size == 0, f"{name}: {bad.size} of {want[name].size} elements differ from the GPU's"


# --- accuracy: FlashAttention's rule --------------------------------------------------

SHAPES = [  # B, H, Hk, Nq, Nk, D, causal
    (1, 2, 2, 1, 97, 64, False),
    (1, 2, 2, 1, 1025, 128, False),
    (2, 2, 2, 97, 97, 64, True),
    (1, 1, 1, 1025, 1025, 64, False),
    (1, 2, 2, 97, 300, 128, False),
    (1, 2, 2, 300, 97, 128, True),
    (1, 4, 2, 97, 97, 64, True),      # GQA
    (1, 4, 1, 65, 130, 64, False),    # MQA
]


def _rule(ours, theirs, ref, name):
    noise = (ref + 0.3 - 0.3 - ref).abs().max().item()   # bf16-level noise of the reference, as FA's tests
    ours_err = (ours.double() - ref).abs().max().item()
    bound = 2 * (theirs.double() - ref).abs().max().item() + 2 * noise
    assert ours_err <= bound, f"{name}: flashbits error {ours_err:.3g} > 2× torch bf16's + noise ({bound:.3g})"


@pytest.mark.parametrize("B,H,Hk,Nq,Nk,D,causal", SHAPES)
def test_error_is_within_twice_torch_bf16_sdpa(B, H, Hk, Nq, Nk, D, causal):
    q, k, v, do = _inputs(B, H, Hk, Nq, Nk, D, seed=Nq * 7 + Nk)
    gqa = H != Hk
    ref = _grads(F.scaled_dot_product_attention, q.double(), k.double(), v.double(), do.double(),
                 is_causal=causal, enable_gqa=gqa)
    # torch's bf16 reference with the same inputs (its own CPU kernel), and the
    # float64 one rounded to bf16 at the same points as the tested output
    theirs = _grads(F.scaled_dot_product_attention, q, k, v, do, is_causal=causal, enable_gqa=gqa)
    ours = _grads(sdpa, q, k, v, do, is_causal=causal, enable_gqa=gqa)
    for name, a, b, r in zip(("out", "dq", "dk", "dv"), ours, theirs, ref):
        assert a.dtype == torch.bfloat16 and a.shape == r.shape
        _rule(a, b, r.detach().double(), name)


def test_a_single_key_gives_v_and_do_exactly_and_only_a_cancellation_residue_in_dq_dk():
    """One key: P = 1, out = v and dV = dO exactly; the exact dS = P·(dP − δ) is 0, but the
    recipe takes dP from the tensor-core dot and δ from the fma chain of O ∘ dO, two fp32
    evaluations of the same sum, so dS (and dQ, dK) keep their difference: at most
    2·D·2^-24·Σ|dO·v| per row (torch's own CPU kernel returns 0 here; FlashAttention's
    rule, 2× torch's error, cannot hold against an error of 0)."""
    q, k, v, do = _inputs(1, 2, 2, 1, 1, 64, seed=1)
    out, dq, dk, dv = _grads(sdpa, q, k, v, do)
    np.testing.assert_array_equal(_bits(out), _bits(v))
    np.testing.assert_array_equal(_bits(dv), _bits(do))
    residue = 2 * 64 * 2.0 ** -24 * (do.double() * v.double()).abs().sum(-1, keepdim=True)
    scale = 64 ** -0.5
    assert (dq.double().abs() <= scale * residue * k.double().abs().amax(-1, keepdim=True) * 1.01).all()
    assert (dk.double().abs() <= scale * residue * q.double().abs().amax(-1, keepdim=True) * 1.01).all()


# --- plumbing -------------------------------------------------------------------------

@pytest.mark.parametrize("fix,rounding", [(None, "rne"), ("paper", "sr")])
def test_the_op_is_the_emulator_forward_and_backward(fix, rounding):
    q, k, v, do = _inputs(1, 2, 2, 70, 90, 64, seed=3)
    out, dq, dk, dv = _grads(sdpa, q, k, v, do, is_causal=True, fix=fix, rounding=rounding, seed=11)
    f32 = [t.detach().float().numpy() for t in (q, k, v, do)]
    fw = emulator.flash_attention(*f32[:3], fix=fix, causal=True, rounding=rounding, seed=11)
    rec = emulator.get_recipe("fa2")
    bw = emulator.flash_attention_backward(*f32[:3], fw.out, rec.lse(fw.m, fw.l), f32[3], fix=fix, causal=True,
                                           rounding=rounding, seed=11)
    for name, got, want in (("out", out, fw.out), ("dq", dq, bw.dq), ("dk", dk, bw.dk), ("dv", dv, bw.dv)):
        np.testing.assert_array_equal(_bits(got), _bits(torch.from_numpy(want).to(torch.bfloat16)), err_msg=name)


def test_gqa_gradients_are_the_fp32_sums_of_the_expanded_heads():
    q, k, v, do = _inputs(1, 6, 2, 40, 50, 64, seed=5)
    _, dq, dk, dv = _grads(sdpa, q, k, v, do, enable_gqa=True)
    ke, ve = (t.detach().repeat_interleave(3, dim=1) for t in (k, v))
    _, dq_e, dk_e, dv_e = _grads(sdpa, q, ke, ve, do)
    np.testing.assert_array_equal(_bits(dq), _bits(dq_e))
    for got, full in ((dk, dk_e), (dv, dv_e)):
        parts = full.reshape(1, 2, 3, 50, 64).float()
        want = ((parts[:, :, 0] + parts[:, :, 1]) + parts[:, :, 2]).to(torch.bfloat16)
        np.testing.assert_array_equal(_bits(got), _bits(want))


def test_three_dim_inputs_are_one_batch():
    q, k, v, _ = _inputs(1, 2, 2, 33, 33, 64, grad=False)
    np.testing.assert_array_equal(_bits(sdpa(q[0], k[0], v[0])), _bits(sdpa(q, k, v)[0]))


def test_sr_keys_never_repeat_and_reproduce_from_torch_manual_seed():
    q, k, v, _ = _inputs(1, 1, 1, 64, 64, 64, grad=False)
    torch.manual_seed(123)
    a, b = sdpa(q, k, v, rounding="sr"), sdpa(q, k, v, rounding="sr")
    torch.manual_seed(123)
    a2 = sdpa(q, k, v, rounding="sr")
    assert (_bits(a) != _bits(b)).any(), "two calls drew the same Philox key"
    np.testing.assert_array_equal(_bits(a), _bits(a2))
    np.testing.assert_array_equal(_bits(sdpa(q, k, v, rounding="sr", seed=7)),
                                  _bits(sdpa(q, k, v, rounding="sr", seed=7)))


def test_the_unbiased_fix_draws_a_key_per_call():
    q, k, v, _ = _inputs(1, 1, 1, 64, 64, 64, grad=False)
    a, b = sdpa(q, k, v, fix="unbiased"), sdpa(q, k, v, fix="unbiased")
    assert (_bits(a) != _bits(b)).any(), "two calls of the unbiased fix drew the same Philox key"
    f32 = [t.float().numpy() for t in (q, k, v)]
    want = emulator.flash_attention(*f32, fix="unbiased", seed=21).out
    np.testing.assert_array_equal(_bits(sdpa(q, k, v, fix="unbiased", seed=21)),
                                  _bits(torch.from_numpy(want).to(torch.bfloat16)))


def test_sr_backward_uses_the_forwards_key():
    q, k, v, do = _inputs(1, 1, 1, 48, 48, 64, seed=9)
    torch.manual_seed(5)
    drawn = _grads(sdpa, q, k, v, do, rounding="sr")
    torch.manual_seed(5)
    key = int(torch.randint(0, 1 << 62, (), dtype=torch.int64))
    given = _grads(sdpa, q, k, v, do, rounding="sr", seed=key)
    for a, b in zip(drawn, given):
        np.testing.assert_array_equal(_bits(a), _bits(b))


class TinyAttention(torch.nn.Module):
    def __init__(self, d=128, heads=2):
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(d, 3 * d, dtype=torch.bfloat16)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return y.transpose(1, 2).reshape(B, N, C)


def test_torch_compile_fullgraph_keeps_the_ops_bits():
    q, k, v, do = _inputs(1, 2, 2, 50, 70, 64, seed=2)

    def attend(q, k, v):
        return sdpa(q, k, v, is_causal=True, fix="paper")

    eager = _grads(attend, q, k, v, do)
    compiled = _grads(torch.compile(attend, fullgraph=True), q, k, v, do)
    for a, b in zip(eager, compiled):
        np.testing.assert_array_equal(_bits(a), _bits(b))
    noisy = torch.compile(lambda q, k, v: sdpa(q, k, v, rounding="sr"), fullgraph=True)
    assert (_bits(noisy(q, k, v)) != _bits(noisy(q, k, v))).any(), "the compiled graph froze the sr key"


def test_torch_compile_fullgraph_of_a_model_under_patch_sdpa_trains():
    torch.manual_seed(0)
    model = TinyAttention()
    x = torch.randn(2, 40, 128).to(torch.bfloat16)
    with flashbits.patch_sdpa(rounding="sr"):
        compiled = torch.compile(model, fullgraph=True)   # a graph break would raise here
        for _ in range(2):
            model.zero_grad()
            out = compiled(x)
            out.float().square().mean().backward()
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert torch.isfinite(model.qkv.weight.grad).all() and model.qkv.weight.grad.abs().sum() > 0


# --- patch_sdpa -----------------------------------------------------------------------

def test_patch_routes_and_restores_also_on_error():
    torch_fn = F.scaled_dot_product_attention
    q, k, v, _ = _inputs(1, 1, 1, 20, 20, 64, grad=False)
    with flashbits.patch_sdpa(fix="paper"):
        assert F.scaled_dot_product_attention is not torch_fn
        np.testing.assert_array_equal(_bits(F.scaled_dot_product_attention(q, k, v)), _bits(sdpa(q, k, v, fix="paper")))
        with flashbits.patch_sdpa(rounding="sr", seed=1):
            np.testing.assert_array_equal(_bits(F.scaled_dot_product_attention(q, k, v)),
                                          _bits(sdpa(q, k, v, rounding="sr", seed=1)))
        np.testing.assert_array_equal(_bits(F.scaled_dot_product_attention(q, k, v)), _bits(sdpa(q, k, v, fix="paper")))
    assert F.scaled_dot_product_attention is torch_fn
    with pytest.raises(ZeroDivisionError):
        with flashbits.patch_sdpa():
            1 / 0
    assert F.scaled_dot_product_attention is torch_fn

    @flashbits.patch_sdpa()
    def decorated():
        return F.scaled_dot_product_attention is not torch_fn

    assert decorated() and F.scaled_dot_product_attention is torch_fn


def test_patch_falls_back_to_torch_only_when_asked():
    q, k, v, _ = _inputs(1, 1, 1, 16, 16, 64, grad=False)
    mask = torch.ones(16, 16, dtype=torch.bool).tril()
    with flashbits.patch_sdpa(unsupported="torch") as patch:
        got = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        F.scaled_dot_product_attention(q, k, v)
    assert (patch.routed, patch.to_torch) == (1, 1)
    np.testing.assert_array_equal(_bits(got), _bits(F.scaled_dot_product_attention(q, k, v, attn_mask=mask)))
    with flashbits.patch_sdpa(), pytest.raises(ValueError, match="attn_mask"):
        F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@pytest.mark.parametrize("options,error,says", [
    ({"recipe": "fa9"}, ValueError, "fa9"),
    ({"fix": "nope"}, ValueError, "nope"),
    ({"rounding": "rz"}, ValueError, "rounding"),
    ({"colour": 1}, TypeError, "colour"),
    ({"unsupported": "maybe"}, ValueError, "unsupported"),
])
def test_patch_refuses_bad_options_at_once(options, error, says):
    with pytest.raises(error, match=says):
        flashbits.patch_sdpa(**options)


def _t(*shape, dtype=torch.bfloat16):
    return torch.zeros(*shape, dtype=dtype)


@pytest.mark.parametrize("args,kw,error,says", [
    ((_t(1, 1, 8, 64),) * 3, {"attn_mask": _t(8, 8)}, ValueError, "attn_mask"),
    ((_t(1, 1, 8, 64),) * 3, {"dropout_p": 0.1}, ValueError, "dropout_p=0.1"),
    ((_t(1, 1, 8, 64, dtype=torch.float16),) * 3, {}, TypeError, "torch.float16"),
    ((_t(1, 1, 8, 64, dtype=torch.float32),) * 3, {}, TypeError, "bfloat16"),
    ((_t(1, 1, 8, 32),) * 3, {}, ValueError, "head dim 32"),
    ((_t(1, 1, 8, 64), _t(1, 1, 8, 64), _t(1, 1, 8, 128)), {}, ValueError, "head dims must be equal"),
    ((_t(1, 4, 8, 64), _t(1, 2, 8, 64), _t(1, 2, 8, 64)), {}, ValueError, "enable_gqa=True"),
    ((_t(1, 4, 8, 64), _t(1, 3, 8, 64), _t(1, 3, 8, 64)), {"enable_gqa": True}, ValueError, "multiple"),
    ((_t(8, 64),) * 3, {}, ValueError, "shape"),
    ((_t(1, 1, 8, 64),) * 3, {"rounding": "sr", "seed": 1.5}, TypeError, "seed"),
    ((_t(1, 1, 8, 64),) * 3, {"recipe": "paper_code"}, ValueError, "emulator only"),
    ((_t(1, 1, 8, 64),) * 3, {"scale": -1.0}, ValueError, "scale"),
])
def test_refusals_say_what_and_name_torchs_function(args, kw, error, says):
    with pytest.raises(error, match=says) as info:
        sdpa(*args, **kw)
    if "scale" not in kw:
        assert "torch.nn.functional.scaled_dot_product_attention" in str(info.value)
