"""Replay the H200 golden records of the attention kernels through the emulator, bit for bit.

* ``attention_golden.npz`` — the first 3 cases of each crosscheck
  configuration, {fa2, paper} × {no fix, paper fix} × {rne, sr}, production
  launch and dump launch (m, l after every key block, the accumulator before the
  division); reports in ``tests/data/hw/crosscheck/``;
* ``attention_bias_golden.npz`` — cells of the bias study (4096 × 64 × 64):
  ``fa2`` and ``paper``, with and without the paper fix, production outputs;
* ``attention_tiles_golden.npz`` — one case of each crosscheck configuration
  of the ``tiles`` part of the regeneration: every tile the kernels accept other than the
  recipe's own, for both recipes, no fix with rne and the paper fix with sr,
  both launches; reports in ``tests/data/hw/crosscheck/tiles_*``.

Each entry is re-run by the emulator (crosscheck.record.replay_record) and
compared as raw bits, NaN payloads aside (crosscheck/compare.py).  The GPU's
bits are the truth: nothing here is computed by the code under test except the
emulator's answer.  Regenerate with ``python -m flashbits.crosscheck.records
regenerate OUT --only attention,bias,tiles`` on the GPU and ``... records install
OUT`` here (docs/hardware.md).
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

from flashbits.crosscheck.cli import crosscheck_main
from flashbits.crosscheck.record import load_record, replay_record

HW = os.path.join(os.path.dirname(__file__), "data", "hw")
GOLDEN = os.path.join(HW, "attention_golden.npz")
BIAS = os.path.join(HW, "attention_bias_golden.npz")
TILES = os.path.join(HW, "attention_tiles_golden.npz")
RECORDS = [GOLDEN, BIAS, TILES]


@pytest.mark.parametrize("path", RECORDS, ids=os.path.basename)
def test_replay_bit_exact(path):
    res = replay_record(path, log=lambda *_: None)
    assert res["entries"] >= 5
    assert res["elements"] > 0
    assert res["mismatches"] == 0, res["failures"][:5]


@pytest.mark.parametrize("path", RECORDS, ids=os.path.basename)
def test_record_provenance(path):
    _, prov = load_record(path)
    assert "H200" in prov["gpu"], prov
    assert prov["triton"] == "3.6.0", prov
    assert prov["compute_capability"] == "9.0"
    assert re.fullmatch(r"[0-9a-f]{7,40}", prov["git_commit"]), prov["git_commit"]


def test_golden_record_covers_what_it_claims():
    """Every kernel configuration (both recipes, with and without the paper fix, rne and
    sr; fa2 with the unbiased fix, which sets its casts itself); both launches; the dump
    tensors hold the NaN padding of rows that visit fewer key blocks, and the GPU's out is
    bf16 codes."""
    from flashbits.crosscheck.sides import KERNEL_FIXES, kernel_config

    entries, _ = load_record(GOLDEN)
    cfgs = {(e["cfg"].recipe, e["cfg"].fix, e["cfg"].rounding) for e in entries}
    assert cfgs == {(r, f, rd) for r in ("fa2", "paper") for f in KERNEL_FIXES for rd in ("rne", "sr")
                    if kernel_config(r, f, rd)}
    assert ("fa2", "unbiased", "rne") in cfgs
    for e in entries:
        assert e["prod"] is not None and e["dump"] is not None
        assert set(e["dump"]) >= {"out", "m", "l", "m_blocks", "l_blocks", "acc"}
        assert e["prod"]["out"].dtype == np.uint16 and e["dump"]["m_blocks"].dtype == np.uint32
        c = e["case"]
        assert e["prod"]["out"].shape == (c.B, c.H, c.Nq, c.D)
        # production and dump launches agree with each other on the GPU too
        for t in ("out", "m", "l"):
            np.testing.assert_array_equal(e["prod"][t], e["dump"][t])


def test_tile_record_covers_every_tile_the_kernels_accept():
    """With GOLDEN (the recipes' own tiles at 3 stages), every (block_m, block_n,
    num_warps, num_stages) gpu.flash_attention accepts, for both recipes."""
    from flashbits.emulator.attention.recipes import get_recipe
    from flashbits.gpu.attention import CROSSCHECKED_STAGES

    entries, _ = load_record(TILES)
    got = {(e["cfg"].recipe, e["cfg"].fix, e["cfg"].rounding, e["cfg"].tile) for e in entries}
    want = set()
    for r in ("fa2", "paper"):
        rec = get_recipe(r)
        own = f"{rec.block_m}x{rec.block_n}w{rec.num_warps}"
        tiles = {f"{bm}x{bn}w{w}s3" for bm in (64, 128) for bn in (32, 64, 128) for w in (4, 8)}
        tiles = (tiles - {own + "s3"}) | {f"{own}s{st}" for st in CROSSCHECKED_STAGES if st != 3}
        want |= {(r, f, rd, t) for f, rd in ((None, "rne"), ("paper", "sr")) for t in tiles}
    assert got == want, (sorted(got - want), sorted(want - got))
    for e in entries:
        assert e["prod"] is not None and e["dump"] is not None
        for t in ("out", "m", "l"):
            np.testing.assert_array_equal(e["prod"][t], e["dump"][t])


def test_tile_reports_found_no_mismatch():
    """The full tile crosscheck runs behind the record: 0 mismatching elements."""
    import json

    for name in ("fa2_nofix", "fa2_fix", "paper_nofix", "paper_fix"):
        with open(os.path.join(HW, "crosscheck", f"tiles_{name}.json")) as f:
            rep = json.load(f)
        assert rep["mismatches"] == 0 and rep["cases_total"] >= 1000 and len(rep["configs"]) == 13, name


def test_bias_record_covers_what_it_claims():
    entries, _ = load_record(BIAS)
    recipes = {e["cfg"].recipe for e in entries}
    fixes = {e["cfg"].fix for e in entries}
    assert recipes == {"fa2", "paper"} and fixes == {None, "paper"}
    for e in entries:
        c = e["case"]
        assert (c.Nq, c.Nk, c.D) == (4096, 64, 64)
        assert e["prod"]["out"].size == 2**18


def test_replay_detects_a_flipped_bit(tmp_path):
    """The replay is not vacuous: one flipped output bit in a copy of the record is reported."""
    with np.load(GOLDEN) as z:
        arrays = {k: z[k] for k in z.files}
    key = "e0_prod_out"
    arrays[key] = arrays[key].copy()
    arrays[key].reshape(-1)[5] ^= np.uint16(1)
    bad = tmp_path / "flipped.npz"
    np.savez_compressed(bad, **arrays)
    res = replay_record(str(bad), log=lambda *_: None)
    assert res["mismatches"] == 1
    assert res["failures"][0]["tensor"] == "out" and res["failures"][0]["launch"] == "prod"


def test_cli_replay_exit_status(capsys):
    assert crosscheck_main(["--replay", GOLDEN]) == 0
    out = capsys.readouterr().out
    assert "0 mismatching" in out and "all bits equal" in out


def test_cli_without_gpu_points_to_replay(capsys, monkeypatch):
    import torch

    # a machine without a GPU, here or on the GPU host alike
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert crosscheck_main([]) == 2
    err = capsys.readouterr().err
    assert "no CUDA GPU" in err and "--replay" in err


@pytest.mark.parametrize("args, says", [(["--tiles", "64x64"], "--tiles: a tile is BMxBNwW"),
                                        (["--tiles", "default,128x64w8s"], "--tiles: a tile is BMxBNwW"),
                                        (["--kinds", "random,nope"], "unknown case kinds ['nope']"),
                                        (["--recipes", "fa2,fa9"], "unknown recipes ['fa9']; accepted: fa2"),
                                        (["--fixes", "offset"], "unknown fixes ['offset']; accepted: none, paper"),
                                        (["--roundings", "rz"], "unknown roundings ['rz']; accepted: rne, sr"),
                                        (["--replay", "no/such/record.npz"], "no such record")])
def test_cli_bad_arguments_exit_2_and_say_why(args, says, capsys):
    # 1 means "bits mismatch": a bad argument must not look like one, GPU or not
    assert crosscheck_main(args) == 2
    assert says in capsys.readouterr().err


def test_install_recognises_a_regeneration_tree(tmp_path):
    """records install sorts what an OUT tree holds: crosscheck folders of the
    attention part and of the tiles part (told apart by their configurations, not
    their paths), the bias files; a record installed over an existing one keeps
    the entries of configurations it does not replace."""
    import json
    import shutil

    from flashbits.crosscheck.record import save_record
    from flashbits.crosscheck.records import install

    hw = os.path.join(os.path.dirname(GOLDEN))
    out, repo = tmp_path / "OUT", tmp_path / "repo"
    entries, prov = load_record(GOLDEN)
    tiles, _ = load_record(os.path.join(hw, "attention_tiles_golden.npz"))
    steps = {"attention/fa2nofix": ("fa2nofix", [e for e in entries if e["cfg"].name.startswith("fa2/nofix")]),
             "tiles/fa2_nofix": ("tiles_fa2_nofix", [e for e in tiles if e["cfg"].name.startswith("fa2/nofix")][:2])}
    for d, (report, ents) in steps.items():
        (out / d).mkdir(parents=True)
        for ext in ("md", "json"):
            shutil.copy(os.path.join(hw, "crosscheck", f"{report}.{ext}"), out / d / f"crosscheck.{ext}")
        save_record(str(out / d / "attention_golden.npz"), ents, prov)
    (out / "bias").mkdir()
    shutil.copy(os.path.join(hw, "bias_gpu_confirmation.json"), out / "bias")
    (repo / "tests" / "data" / "hw").mkdir(parents=True)
    # an installed record with one configuration this install replaces and one it keeps
    old = [e for e in entries if e["cfg"].name.startswith(("fa2/nofix/rne", "paper/nofix/rne"))]
    save_record(str(repo / "tests" / "data" / "hw" / "attention_golden.npz"), old, {**prov, "runs": []})
    with open(out / "manifest.json", "w") as f:
        json.dump({"commit": "abc1234", "steps": {"attention/fa2nofix": {"status": "ok"}}}, f)
    found = install([str(out)], repo=str(repo), log=lambda *_: None)
    assert [os.path.basename(d) for d in found["crosscheck"]] == ["fa2nofix", "fa2_nofix"]
    got = repo / "tests" / "data" / "hw"
    assert (got / "crosscheck" / "fa2nofix.md").exists() and (got / "crosscheck" / "tiles_fa2_nofix.json").exists()
    assert (got / "bias_gpu_confirmation.json").exists()
    new, new_prov = load_record(str(got / "attention_golden.npz"))
    names = sorted({e["cfg"].name for e in new})
    assert names == ["fa2/nofix/rne", "fa2/nofix/sr", "paper/nofix/rne"], names
    assert len(new) == len(steps["attention/fa2nofix"][1]) + sum(e["cfg"].name == "paper/nofix/rne" for e in old)
    assert [r["step"] for r in new_prov["runs"]] == ["fa2nofix"]
    assert len(load_record(str(got / "attention_tiles_golden.npz"))[0]) == 2
