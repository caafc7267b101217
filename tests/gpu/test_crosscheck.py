"""The kernels against the emulator on the GPU itself: every bit (marked ``gpu``;
skipped without CUDA by tests/conftest.py).

* every recipe × fix the kernels implement × rounding (rne, sr): a small suite of
  crosscheck cases (crosscheck.cases.suite: random, the bias regimes and the
  adversarial kinds, both head dims, causal and not, odd lengths) through
  crosscheck.runner.crosscheck_config, production and dump launches, 0
  mismatching elements;
* the same through the backward kernels (δ, dV, dK, dQ; dump: P, dS);
* the kernels refuse bad inputs on the GPU with errors that say what is wrong;
* the golden records of tests/data/hw/ replayed against the live GPU: today's
  kernels write the recorded bits.

``FLASHBITS_GPU_CASES`` (default 32: every kind × head dim × causal) sets the
suite size; the full 1000-case run is ``python -m flashbits.crosscheck.records
regenerate OUT --only attention``.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from flashbits.crosscheck.cases import KINDS, suite
from flashbits.crosscheck.compare import compare_sides
from flashbits.crosscheck.record import load_record
from flashbits.crosscheck.sides import KERNEL_FIXES, Config, gpu_side
from flashbits.emulator import get_recipe
from flashbits.gpu.attention import KERNEL_RECIPES

pytestmark = pytest.mark.gpu

HW = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "hw")
CASES = int(os.environ.get("FLASHBITS_GPU_CASES", 2 * 2 * len(KINDS)))
WORKERS = min(8, os.cpu_count() or 1)


def _first_mismatch(summary: dict, launch: str) -> str:
    s = summary[launch]
    bad = {n: t["mismatches"] for n, t in s["tensors"].items() if t["mismatches"]}
    return (f"{summary['name']} [{launch}]: {s['mismatches']} of {s['elements']} elements differ in "
            f"{s['cases_mismatching']} of {s['cases']} cases (per tensor {bad}); first: "
            f"{json.dumps(s['first_mismatch'])}")


@pytest.fixture(scope="module")
def cases():
    return suite(CASES, seed=0)


@pytest.mark.parametrize("rounding", ["rne", "sr"])
@pytest.mark.parametrize("fix", KERNEL_FIXES, ids=lambda f: f or "nofix")
@pytest.mark.parametrize("recipe", list(KERNEL_RECIPES))
def test_kernels_match_the_emulator_bit_for_bit(recipe, fix, rounding, cases):
    from flashbits.crosscheck.runner import crosscheck_config

    cfg = Config(recipe=recipe, fix=fix, rounding=rounding, seed=0)
    s = crosscheck_config(cases, cfg, dump_launch=True, workers=WORKERS, log=lambda *_: None)
    for launch in ("production", "dump"):
        assert s[launch]["cases"] == len(cases)
        # the compared tensors are the recipe's, every one of them present on both sides
        assert tuple(s[launch]["tensors"]) == get_recipe(recipe).compared_tensors[launch]
        assert s[launch]["mismatches"] == 0, _first_mismatch(s, launch)


BACKWARD_RECIPES = [r for r in KERNEL_RECIPES if get_recipe(r).spec.backward
                    and get_recipe(r).spec.backward.gpu_module]


@pytest.mark.parametrize("rounding", ["rne", "sr"])
@pytest.mark.parametrize("fix", KERNEL_FIXES, ids=lambda f: f or "nofix")
@pytest.mark.parametrize("recipe", BACKWARD_RECIPES)
def test_backward_kernels_match_the_emulator_bit_for_bit(recipe, fix, rounding, cases):
    """The same suite through the backward pass (crosscheck --backward): δ, dV, dK, dQ, and
    with the dump launch P and dS, on the GPU forward's out and lse and a seeded dO."""
    from flashbits.crosscheck.runner import crosscheck_config

    cfg = Config(recipe=recipe, fix=fix, rounding=rounding, seed=0)
    s = crosscheck_config(cases, cfg, dump_launch=True, workers=WORKERS, log=lambda *_: None, pass_name="backward")
    for launch in ("production", "dump"):
        assert s[launch]["cases"] == len(cases)
        assert tuple(s[launch]["tensors"]) == get_recipe(recipe).spec.backward.compared[launch]
        assert s[launch]["mismatches"] == 0, _first_mismatch(s, launch)


# ------------------------------------------------------------ refusals ------

def _qkv(torch, D=64, N=16, dtype=None, device="cuda"):
    x = torch.randn(1, 2, N, D, device=device).to(dtype or torch.bfloat16)
    return x, x.clone(), x.clone()


@pytest.mark.parametrize("what, call, error, says", [
    ("float32 inputs", lambda fa, t: fa(*_qkv(t, dtype=t.float32)), TypeError, "must be bfloat16"),
    ("3-d inputs", lambda fa, t: fa(*(x[0] for x in _qkv(t))), ValueError, "(batch, heads, seq, dim)"),
    ("head dim 32", lambda fa, t: fa(*_qkv(t, D=32)), ValueError, "head dim 32 is not supported"),
    ("k and v lengths differ", lambda fa, t: fa(_qkv(t)[0], _qkv(t)[1], _qkv(t, N=17)[2]), ValueError,
     "shapes disagree"),
    ("an emulator-only fix", lambda fa, t: fa(*_qkv(t), fix="offset"), ValueError, "emulator only"),
    ("sr without a seed", lambda fa, t: fa(*_qkv(t), rounding="sr"), ValueError, "needs seed"),
    ("a rounding the kernels lack", lambda fa, t: fa(*_qkv(t), rounding="rz"), ValueError, "rne or sr only"),
    ("a tile the kernels lack", lambda fa, t: fa(*_qkv(t), block_n=16), ValueError, "kernel tiles"),
    ("an uncrosschecked depth", lambda fa, t: fa(*_qkv(t), num_stages=7), ValueError, "num_stages must be"),
    ("a negative scale", lambda fa, t: fa(*_qkv(t), scale=-1.0), ValueError, "positive finite"),
    ("an unknown recipe", lambda fa, t: fa(*_qkv(t), recipe="nope"), ValueError, "unknown recipe"),
    ("inputs left on the CPU", lambda fa, t: fa(*_qkv(t, device="cpu")), RuntimeError, "need a CUDA GPU"),
], ids=lambda x: x.replace(" ", "-") if isinstance(x, str) and " " in x else None)
def test_kernels_refuse_bad_inputs_clearly(what, call, error, says, monkeypatch):
    import torch

    from flashbits.gpu import flash_attention

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(error) as e:
        call(flash_attention, torch)
    assert says in str(e.value), f"{what}: {e.value}"


# ------------------------------------------------ golden records, live ------

RECORDS = ("attention_golden.npz", "attention_tiles_golden.npz", "attention_bias_golden.npz")


@pytest.mark.parametrize("record", RECORDS)
def test_golden_record_replays_on_the_live_gpu(record):
    """The recorded GPU bits are what the GPU writes today (same kernels, same bits)."""
    import torch

    entries, prov = load_record(os.path.join(HW, record))
    cap = torch.cuda.get_device_capability(0)
    if prov.get("compute_capability") not in (None, f"{cap[0]}.{cap[1]}"):
        pytest.skip(f"{record} comes from compute capability {prov['compute_capability']}, this GPU is "
                    f"{cap[0]}.{cap[1]}")
    failures, elements = [], 0
    for e in entries:
        for launch, kind in (("prod", "production"), ("dump", "dump")):
            want = e[launch]
            if want is None:
                continue
            got = gpu_side(e["q"], e["k"], e["v"], e["case"].causal, e["cfg"], dump=launch == "dump")
            tensors = tuple(t for t in e["cfg"].compared(kind) if t in want)
            r = compare_sides(got, want, tensors)
            elements += r["elements"]
            if r["mismatches"]:
                failures.append(f"{e['case'].name} {e['cfg'].name} [{launch}]: {r['mismatches']} differ, first "
                                f"{json.dumps(r['first_mismatch'])} (emulator_bits = live GPU, gpu_bits = record)")
    assert elements > 0
    assert not failures, f"{len(failures)} of {len(entries)} entries differ; " + "; ".join(failures[:3])


def test_gpu_side_bits_are_the_recipes_tensors():
    """A launch's side holds exactly the recipe's compared tensors, as raw bits."""
    q = np.zeros((1, 1, 8, 64), np.float32)
    for recipe in KERNEL_RECIPES:
        cfg = Config(recipe=recipe)
        for dump, launch in ((False, "production"), (True, "dump")):
            side = gpu_side(q, q, q, False, cfg, dump=dump)
            assert tuple(side) == get_recipe(recipe).compared_tensors[launch]
            assert all(a.dtype in (np.uint16, np.uint32) for a in side.values())
