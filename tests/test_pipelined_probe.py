"""gpu/probes/pipelined_fa2.py: what its docstring claims about the compiler holds.

The probe (a negative result, benchmarks/results/h200_pipelined_fa2_probe.json)
says it gets past Triton's wgmma pipeliner — the P·V wgmma of block j−1 is
committed and then the whole softmax of block j (its E = 32 ex2 per thread, plus
α's two) comes before the next wait in the PTX — without ptxas serialising every
wgmma (performance note C7515).  Compiled for sm_90 on the CPU, in a child
process (compiler_child).
"""

from __future__ import annotations

import importlib.util

import pytest

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)

from compiler_child import json_lines_of


@pytest.fixture(scope="module")
def reports():
    return json_lines_of("gpu.probes.pipelined_fa2", "--ptx")


def test_both_variants_reported(reports):
    assert [r["fix"] for r in reports] == [False, True]


def test_ptxas_does_not_serialise_the_wgmmas(reports):
    for r in reports:
        assert not r["ptxas_serialised_wgmma"], r
        assert r["spill_bytes"] == 0, r


def test_softmax_is_emitted_while_pv_is_in_flight(reports):
    for r in reports:
        # one P·V group per loop body (two loops) plus one drain after each loop
        groups = r["ex2_in_flight_ptx"]
        assert len(groups) == 4, r
        assert sorted(groups) == [0, 0, 34, 34], r
