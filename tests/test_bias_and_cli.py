"""The offset fix, stage ablation, the bias study, the command line and the examples."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from flashbits.crosscheck.bias_study import ablations, run_grid, worked_example
from flashbits.crosscheck.regimes import REGIMES, regime_inputs
from flashbits.emulator import flash_attention, reference_attention, to_bits
from flashbits.emulator.attention.stats import bias_stats, signed_error_ulps
from flashbits.emulator.attention.recipes import Fix

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("recipe", ["fa2", "paper"])
def test_offset_fix_leaves_exact_softmax_unchanged_and_changes_bf16(recipe):
    q, k, v = regime_inputs("ties-12", rows=256)
    ref, _ = reference_attention(q, k, v)
    r64 = flash_attention(q, k, v, recipe=recipe, fix="offset", precision="fp64")
    assert _rel(r64.out, ref) < 1e-12
    a = flash_attention(q, k, v, recipe=recipe)
    b = flash_attention(q, k, v, recipe=recipe, fix="offset")
    assert (to_bits(a.out, "bf16") != to_bits(b.out, "bf16")).any()


def test_offset_fix_parameters_are_checked():
    with pytest.raises(ValueError, match="delta"):
        Fix("offset", delta=0.0)
    q, k, v = regime_inputs("ties-12", rows=16)
    with pytest.raises(ValueError, match="eps/beta belong to fix='paper'"):
        flash_attention(q, k, v, fix="offset", beta=2.0)
    with pytest.raises(ValueError, match="delta belongs to fix='offset'"):
        flash_attention(q, k, v, fix="paper", delta=0.5)


def test_exact_ablation_overrides():
    q, k, v = regime_inputs("ties-15", rows=256)
    hw = flash_attention(q, k, v, recipe="fa2", record=True)
    ex = flash_attention(q, k, v, recipe="fa2", overrides={"PV": {"exact": True}}, record=True)
    # the exact P̄V is one IEEE rounding per element: no truncation bias left in that stage
    assert hw.ledger["PV"]["mean_ulp"] > 1.0
    assert abs(ex.ledger["PV"]["mean_ulp"]) <= 0.5
    # a fp32 rounding made exact (fp64) records no error at all
    x64 = flash_attention(q, k, v, recipe="fa2", overrides={"x": {"format": "fp64"}}, record=True)
    assert x64.ledger["x"]["inexact"] == 0 and hw.ledger["x"]["inexact"] > 0
    with pytest.raises(ValueError, match="is a rounding"):
        flash_attention(q, k, v, recipe="fa2", overrides={"x": {"exact": True}})


def test_bias_grid_small_cell_and_ablation():
    table, kept, secs = run_grid(["ties-12"], ["paper"], ["none"], ["rne"], rows=512, log=lambda *_: None)
    (cell,) = table
    # 512 rows × 64 features; the full-size cell has t = −264.5 (docs/bias/bias.md)
    assert cell["rows"] == 512 * 64 and cell["t"] < -10 and cell["biased"]
    assert set(cell["ablation"]) == set(ablations("paper"))
    # the finding of docs/mechanism.md: no single cast made fp32 removes it (it moves on)
    assert "PV_cast→fp32" not in cell["ablation_removers"]
    assert cell["ablation"]["PV_cast→fp32"]["t"] < -10
    # either path alone in fp32 changes nothing (the near-tie reaches the next bf16 cast);
    # both paths in fp32 remove the negative bias (what is left is fa2's positive residue)
    assert cell["ablation"]["Ō path→fp32"]["t"] == pytest.approx(cell["t"], rel=1e-9)
    assert cell["ablation"]["l path→fp32"]["t"] == pytest.approx(cell["t"], rel=1e-9)
    assert cell["ablation"]["Ō+l paths→fp32"]["t"] > 0
    assert cell["stages"]["PV_cast"]["sticky_ties"] > 0
    assert cell["stages"]["PV_cast"]["sticky_ties_away"] > 0.9 * cell["stages"]["PV_cast"]["sticky_ties"]


def test_worked_example_shows_a_sticky_tie():
    text = worked_example(rows=64)
    assert "low 16 bits 0x8000" in text and "rounded away from zero" in text
    # the printed fp32 sum's low half lies just over one half of a bf16 ulp
    low = int(text.split("tensor-core sum")[1].split("low 16 bits 0x")[1][:4], 16)
    assert 0x8000 < low < 0x9000


def test_regimes_are_bf16_and_sized():
    for name in REGIMES:
        q, k, v = regime_inputs(name, rows=32)
        keys = 128 if name == "repeated" else 64   # repeated: two key blocks (regimes' docstring)
        assert q.shape == (1, 1, 32, 64) and k.shape == v.shape == (1, 1, keys, 64), name
        for x in (q, k, v):
            assert np.array_equal(to_bits(x, "bf16").astype(np.uint32) << 16, x.view(np.uint32))


def _cli(*args, env=None):
    e = dict(os.environ, PYTHONPATH=ROOT)
    e.pop("TRITON_INTERPRET", None)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "flashbits.crosscheck.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, env=e, timeout=900)


def test_cli_help_and_docs_are_current():
    from flashbits.crosscheck.cli_docs import render

    r = _cli("--help")
    assert r.returncode == 0 and "emulate" in r.stdout and "crosscheck" in r.stdout and "bias" in r.stdout
    for sub in ("formats", "emulate", "crosscheck", "bias"):
        r = _cli(sub, "--help")
        assert r.returncode == 0 and "usage: flashbits " + sub in r.stdout
    os.environ["COLUMNS"] = "100"
    with open(os.path.join(ROOT, "docs", "cli.md")) as f:
        assert f.read().strip() == render().strip(), "docs/cli.md is stale: python -m flashbits.crosscheck.cli_docs > docs/cli.md"


def test_cli_formats_table():
    r = _cli("formats")
    assert r.returncode == 0
    for name in ("fp64", "fp32", "bf16", "fp16", "fp8_e4m3", "fp8_e5m2"):
        assert name in r.stdout
    assert "448" in r.stdout and "57344" in r.stdout


def test_cli_emulate_preset_shows_the_bias(tmp_path):
    r = _cli("emulate", "--preset", "ties", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "BIASED" in r.stdout and "PV_cast" in r.stdout
    with open(tmp_path / "emulate.json") as f:
        d = json.load(f)
    assert d["bias"]["t"] < -10 and d["bias"]["n"] == 2**18


def test_cli_bad_input_is_a_clear_error():
    r = _cli("emulate", "--preset", "ties", "--override", "P_cast:format=int8")
    assert r.returncode == 2 and "unknown format 'int8'" in r.stderr
    r = _cli("emulate", "--preset", "ties", "--override", "nonsense")
    assert r.returncode != 0 and "STAGE:KEY=VALUE" in r.stderr
    r = _cli("bias", "--out", "/tmp/x", "--regimes", "nope")
    assert r.returncode != 0 and "unknown regimes" in r.stderr


def test_gpu_wrapper_without_cuda_points_to_the_emulator(monkeypatch):
    torch = pytest.importorskip("torch")
    # CPU tensors are refused whether or not this machine has a GPU
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    from flashbits.gpu import flash_attention as gpu_fa

    x = torch.zeros(1, 1, 8, 64, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="emulator"):
        gpu_fa(x, x, x)
    with pytest.raises(ValueError, match="head dim 32 is not supported"):
        y = torch.zeros(1, 1, 8, 32, dtype=torch.bfloat16)
        gpu_fa(y, y, y)
    with pytest.raises(ValueError, match="emulator only"):
        gpu_fa(x, x, x, fix="offset")


@pytest.mark.parametrize("script", ["01_formats_and_rounding.py", "02_tensor_core_truncation.py", "06_torch_drop_in.py"])
def test_examples_run(script):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "examples", script)], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=ROOT), timeout=600)
    assert r.returncode == 0, r.stderr


def test_bias_stats_arithmetic():
    err = np.array([1.0, -1.0, 2.0, np.nan, 0.0])
    s = bias_stats(err)
    assert s["n"] == 4 and s["mean_ulp"] == 0.5
    assert math.isclose(s["sem_ulp"], np.std([1, -1, 2, 0], ddof=1) / 2)
    e = signed_error_ulps(np.array([1.0078125, 1.0]), np.array([1.0, 1.0]), "bf16")
    assert np.array_equal(e, [1.0, 0.0])


def test_records_regenerate_runs_steps_in_chunks(tmp_path, monkeypatch):
    """records regenerate: steps as child processes, a manifest of what ran, a budget
    that stops before a step that no longer fits (exit 3), done steps skipped on the
    next call, a hung step killed at its cap; no GPU needed for the bookkeeping."""
    import json

    from flashbits.crosscheck import records

    def fake_plan(out, cases=None, workers=None, python=sys.executable):
        def step(part, name, code):
            return records.Step(part, name, part, [([python, "-c", code], os.path.join(part, "log.txt"))])
        return [step("dots", "dots", "print('dots ran')"),
                step("casts", "casts", "import sys; print('mismatch'); sys.exit(1)"),
                step("bench", "bench", "import time; time.sleep(60)")]

    monkeypatch.setattr(records, "plan", fake_plan)
    monkeypatch.setattr(records, "_has_cuda", lambda: True)
    monkeypatch.setitem(records.ESTIMATE_S, "bench", 1000)
    monkeypatch.setitem(records.CAP_S, "bench", 2)
    out = str(tmp_path / "OUT")
    lines = []
    assert records.regenerate(out, budget=500, log=lines.append) == 1   # casts mismatched; bench does not fit
    man = json.load(open(os.path.join(out, "manifest.json")))
    assert {k: v["status"] for k, v in man["steps"].items()} == {"dots": "ok", "casts": "mismatch"}
    assert "dots ran" in open(os.path.join(out, "dots", "log.txt")).read()
    assert any("stopped before bench" in line for line in lines)
    assert records.regenerate(out, only="dots,bench", budget=500, log=lines.append) == 3   # dots done: skipped
    assert records.regenerate(out, only="bench", log=lines.append) == 1                    # killed at its cap
    man = json.load(open(os.path.join(out, "manifest.json")))
    assert man["steps"]["bench"]["status"] == "timeout" and man["steps"]["dots"]["status"] == "ok"
    assert man["commit"] and man["steps"]["dots"]["commands"] == ["-c print('dots ran')"]
    with pytest.raises(ValueError, match="unknown parts or steps"):
        records.regenerate(out, only="exp3")
