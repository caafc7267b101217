"""gpu/probes/ws_fa2.py (the warp-specialised Gluon experiment) compiles for
sm_90 on the CPU into what its GPU record measured: no register spills, no
wgmma serialisation by ptxas (C7514, C7515), and one consumer loop per warpgroup role
whose size differs between fix and no fix only by the fix's work.  Child
process: compiler_child."""

from __future__ import annotations

import importlib.util

import pytest

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)

from compiler_child import json_lines_of


@pytest.fixture(scope="module")
def reports():
    return json_lines_of("gpu.probes.ws_fa2", "--ptx")


def test_compiles_without_spills_or_serialisation(reports):
    assert [r["fix"] for r in reports] == [False, True]
    for r in reports:
        assert r["spill_bytes"] == 0, r
        assert not r["ptxas_serialised_wgmma"], r


def test_the_fix_adds_its_fold_to_both_consumer_loops(reports):
    # the two consumer roles compile to one block loop each; the fix adds the
    # top-2 fold (two ops for each of a thread's 32 scores) and its per-row tail
    plain, fixed = (sorted(n for n in r["loop_instructions"] if 200 < n < 1000) for r in reports)
    assert len(plain) == len(fixed) == 2, reports
    for a, b in zip(plain, fixed):
        assert 64 <= b - a <= 128, (plain, fixed)
