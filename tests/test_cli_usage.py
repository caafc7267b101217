"""The CLI as a new user meets it (issue 14): one error style, exit 2 for usage and input
errors (``prog: error: ...``, no traceback), 1 only for a bit mismatch; --out checked before
any computation; --replay --out writes its report; a saved run reruns to the same numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(ROOT, "tests", "data", "hw", "attention_golden.npz")


def _run(module, *args, env=None, timeout=900):
    e = dict(os.environ, PYTHONPATH=ROOT, **(env or {}))
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=ROOT,
                          env=e, timeout=timeout)


def _cli(*args, **kw):
    return _run("flashbits.crosscheck.cli", *args, **kw)


def _usage_error(r, prog, *says):
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    assert f"{prog}: error:" in r.stderr, r.stderr
    for s in says:
        assert s in r.stderr, r.stderr


@pytest.fixture
def bad_files(tmp_path):
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    text = tmp_path / "notes.npz"
    text.write_text("q, k, v are in another file\n")
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    return {"corrupt": str(corrupt), "text": str(text), "other": str(other)}


@pytest.mark.parametrize("which, says", [("corrupt", "corrupt or truncated"), ("text", "not an .npz archive"),
                                         ("other", "lacks the arrays q, k, v")])
def test_emulate_inputs_bad_file(bad_files, which, says):
    r = _cli("emulate", "--inputs", bad_files[which])
    _usage_error(r, "flashbits emulate", bad_files[which], says, "expected an .npz with arrays q, k, v")
    assert "allow_pickle" not in r.stderr


@pytest.mark.parametrize("which, says", [("corrupt", "corrupt or truncated"), ("text", "not an .npz archive"),
                                         ("other", "lacks the arrays provenance, n")])
def test_replay_bad_file(bad_files, which, says):
    r = _run("flashbits.crosscheck.cli", "crosscheck", "--replay", bad_files[which])
    _usage_error(r, "flashbits crosscheck", says, "golden record")
    r = subprocess.run([sys.executable, "-c", "import sys; from flashbits.crosscheck.cli import crosscheck_main;"
                        f"sys.exit(crosscheck_main(['--replay', {bad_files[which]!r}]))"],
                       capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    _usage_error(r, "crosscheck", says)


@pytest.mark.parametrize("args, prog, says", [
    (["emulate", "--override", "nonsense"], "flashbits emulate", "STAGE:KEY=VALUE"),
    (["emulate", "--override", "P_cast:rand_bits=many"], "flashbits emulate", "rand_bits takes an integer"),
    (["emulate", "--threads", "0"], "flashbits emulate", "must be at least 1"),
    (["emulate", "--threads", "-2"], "flashbits emulate", "must be at least 1"),
    (["bias", "--out", "OUTDIR", "--regimes", "bogus"], "flashbits bias", "unknown regimes ['bogus']"),
    (["bias"], "flashbits bias", "needs --out DIR"),
    (["bias", "--rows", "0", "--out", "OUTDIR"], "flashbits bias", "must be at least 1"),
    (["emulate", "--out", "/proc/flashbits-nope"], "flashbits emulate", "--out /proc/flashbits-nope"),
    (["bias", "--quick", "--out", "/proc/flashbits-nope"], "flashbits bias", "cannot create"),
    (["crosscheck", "--replay", GOLDEN, "--out", "/proc/flashbits-nope"], "flashbits crosscheck", "cannot create"),
])
def test_usage_errors_exit_2_with_prog_error(tmp_path, args, prog, says):
    args = [str(tmp_path / "o") if a == "OUTDIR" else a for a in args]
    _usage_error(_cli(*args, timeout=120), prog, says)


def test_fix_none_is_accepted_by_emulate():
    """--fix none parses (as --fixes none does for crosscheck); a bad --out still stops it first."""
    r = _cli("emulate", "--fix", "none", "--out", "/proc/flashbits-nope")
    _usage_error(r, "flashbits emulate", "cannot create")
    assert "invalid choice" not in r.stderr


def test_library_threads_zero_is_refused():
    from flashbits.emulator import flash_attention

    x = np.zeros((4, 64), np.float32)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="threads must be a positive integer"):
            flash_attention(x, x, x, threads=bad)


def test_replay_out_writes_the_report(tmp_path):
    r = _cli("crosscheck", "--replay", GOLDEN, "--out", str(tmp_path / "rep"))
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "rep" / "replay.json") as f:
        d = json.load(f)
    assert d["mismatches"] == 0 and d["entries"] > 0
    assert "all bits equal" in (tmp_path / "rep" / "replay.md").read_text()
