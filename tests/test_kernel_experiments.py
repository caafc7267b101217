"""The three kernel-schedule experiments (negative results on the fix's cost, see
benchmarks/kernel_experiments/LAB.md) compile for sm_90 on the CPU into what
their GPU records measured.  Compiled in a child process (compiler_child).

Opt-in (marker ``experiments``): skipped unless pytest runs with ``-m experiments``
(the experiments are not part of the package; they take minutes to compile).

benchmarks/kernel_experiments/pipelined_fa2.py says it gets past Triton's wgmma pipeliner — the P·V
wgmma of block j−1 is committed and then the whole softmax of block j (its
E = 32 ex2 per thread, plus α's two) comes before the next wait in the PTX —
without ptxas serialising every wgmma (performance notes C7514, C7515).

benchmarks/kernel_experiments/ws_fa2.py (the warp-specialised Gluon experiment, seven variants): no
register spills, no wgmma serialisation, and one consumer loop per warpgroup role
whose size differs between fix and no fix only by the fix's work (and, in the
speculative schedule, the redone exps).

benchmarks/kernel_experiments/speculative_fa2.py (exps before the fix's decision, a per-warp redo):
no spills or serialisation, a redo test that sees both rows of its thread, and
the compiler fact behind its GPU record (the rescale pushed past the branch).
"""

from __future__ import annotations

import importlib.util

import pytest

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)

from compiler_child import json_lines_of

pytestmark = pytest.mark.experiments


@pytest.fixture(autouse=True, scope="module")
def _opt_in(request):
    """Skip unless the run selected the marker (``-m experiments``)."""
    if "experiments" not in (request.config.getoption("markexpr", "") or ""):
        pytest.skip("kernel experiments are opt-in: pytest -m experiments tests/test_kernel_experiments.py")


@pytest.fixture(scope="module")
def pipelined():
    return json_lines_of("benchmarks.kernel_experiments.pipelined_fa2", "--ptx")


@pytest.fixture(scope="module")
def ws():
    return json_lines_of("benchmarks.kernel_experiments.ws_fa2", "--ptx")


def test_pipelined_both_variants_reported(pipelined):
    assert [r["fix"] for r in pipelined] == [False, True]


def test_pipelined_ptxas_does_not_serialise_the_wgmmas(pipelined):
    for r in pipelined:
        assert not r["ptxas_serialised_wgmma"], r
        assert r["spill_bytes"] == 0, r


def test_pipelined_softmax_is_emitted_while_pv_is_in_flight(pipelined):
    for r in pipelined:
        # one P·V group per loop body (two loops) plus one drain after each loop
        groups = r["ex2_in_flight_ptx"]
        assert len(groups) == 4, r
        assert sorted(groups) == [0, 0, 34, 34], r


def _ws_consumer_loops(r):
    """(instructions, ex2) of the consumer loops (one per consumer warpgroup role)."""
    loops = [(n, e) for n, e in zip(r["loop_instructions"], r["loop_ex2"]) if 200 < n < 1000]
    consumers = 3 if r["schedule"].startswith("pingpong3") else 2
    assert len(loops) == consumers, r
    return loops


def test_ws_compiles_without_spills_or_serialisation(ws):
    from benchmarks.kernel_experiments.ws_fa2 import SCHEDULES

    assert [(r["schedule"], r["fix"]) for r in ws] == [(s, f) for s in SCHEDULES for f in (False, True)]
    for r in ws:
        assert r["spill_bytes"] == 0, r
        assert not r["ptxas_serialised_wgmma"], r


@pytest.mark.parametrize("schedule, blocks", [("free", 1), ("pingpong", 1), ("pingpong-early-max", 1),
                                              ("pingpong-pairs", 2), ("pingpong3-early-max", 1),
                                              ("pingpong3-count", 1)])
def test_ws_the_fix_adds_its_fold_to_every_consumer_loop(ws, schedule, blocks):
    # per key block in the loop body, the fix adds its decision (the top-2 fold:
    # two ops for each of a thread's 32 scores; the count: a multiply, a set and
    # an add) and its per-row tail, and no ex2: 32 scores' ex2 plus α's two
    plain, fixed = (_ws_consumer_loops(r) for r in ws if r["schedule"] == schedule)
    for (a, ea), (b, eb) in zip(sorted(plain), sorted(fixed)):
        assert 64 * blocks <= b - a <= 128 * blocks, (plain, fixed)
        assert ea == eb == 34 * blocks, (plain, fixed)


def test_ws_speculative_schedule_holds_the_redo_of_the_exps(ws):
    # without the fix it is pingpong-early-max; with it, each consumer loop also
    # holds the redone exps (32 more ex2) behind the warpgroup-wide test
    by = {(r["schedule"], r["fix"]): _ws_consumer_loops(r) for r in ws}
    assert by[("pingpong-speculative", False)] == by[("pingpong-early-max", False)]
    assert [e for _, e in by[("pingpong-speculative", True)]] == [34 + 32, 34 + 32]


@pytest.fixture(scope="module")
def speculative():
    return json_lines_of("benchmarks.kernel_experiments.speculative_fa2", "--sass")


def test_speculative_variants_compile_and_their_redo_sees_every_row(speculative):
    # the redo tests the moved-flags of a few elements only; its bits are the
    # production kernel's only if those elements cover both rows a thread holds
    from benchmarks.kernel_experiments.speculative_fa2 import STEPS

    assert [r["kernel"] for r in speculative] == ["production", *STEPS]
    for r in speculative:
        assert r["spill_bytes"] == 0 and not r["ptxas_serialised_wgmma"], r
    for r in speculative[1:]:
        assert r["redo_test_covers_rows"], r
        assert r["MUFU.EX2"] == 34 + 32, r   # the plain exps and α's two, and the redo's 32


def test_speculative_branch_moves_the_rescale_out_from_under_the_exps(speculative):
    # what the H200 record's slowdown comes down to: production issues acc·α
    # between its exps; behind the redo's branch all 64 multiplies come after them
    prod, *variants = speculative
    assert prod["fmul_after_last_ex2"] == 0, prod
    assert [r["fmul_after_last_ex2"] for r in variants] == [64] * len(variants), variants
