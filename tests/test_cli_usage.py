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
    e = {**os.environ, "PYTHONPATH": ROOT, **(env or {})}
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


_NOTICE_SNIPPET = ("from flashbits.emulator.attention.families import paper; "
                   "from flashbits.emulator.jit_notice import notice_if_cold; "
                   "print(notice_if_cold(paper))")


def test_compile_notice_on_a_cold_cache_only(tmp_path):
    """A cold numba cache (an empty NUMBA_CACHE_DIR) is announced on stderr, even when stderr
    is not a terminal; the warm cache of this checkout says nothing."""
    cold = subprocess.run([sys.executable, "-c", _NOTICE_SNIPPET], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT, NUMBA_CACHE_DIR=str(tmp_path)), timeout=120)
    assert cold.stdout.strip() == "True" and "compiling the emulator (first run only" in cold.stderr
    # warm: after one emulate run (the rerun test below, or any earlier run) the checkout's cache holds it
    _cli("emulate", "--preset", "random", "--threads", "2")
    warm = subprocess.run([sys.executable, "-c", _NOTICE_SNIPPET], capture_output=True, text=True, cwd=ROOT,
                          env={k: v for k, v in dict(os.environ, PYTHONPATH=ROOT).items()
                               if k != "NUMBA_CACHE_DIR"}, timeout=120)
    assert warm.stdout.strip() == "False" and "compiling" not in warm.stderr


def test_emulate_rerun_reproduces_the_saved_run(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    r = _cli("emulate", "--preset", "ties", "--rounding", "sr", "--seed", "7", "--causal",
             "--override", "PV_cast:format=fp32", "--fix", "paper", "--beta", "4", "--out", str(a))
    assert r.returncode == 0, r.stderr
    assert "overrides: PV_cast:format=fp32" in r.stdout and "seed 7" in r.stdout
    with open(a / "emulate.json") as f:
        d = json.load(f)
    run = d["run"]
    assert run["seed"] == 7 and run["causal"] is True and run["override"] == ["PV_cast:format=fp32"]
    assert run["rounding"] == "sr" and run["preset"] == "ties" and run["recipe"] is None
    assert d["fix_params"]["beta"] == 4.0 and d["fix_params"]["name"] == "paper"
    r2 = _cli("emulate", "--rerun", str(a / "emulate.json"), "--out", str(b))
    assert r2.returncode == 0, r2.stderr
    with open(b / "emulate.json") as f:
        d2 = json.load(f)
    assert d2["bias"] == d["bias"] and d2["ledger"] == d["ledger"] and d2["run"] == run
    assert np.array_equal(np.load(a / "emulate.npz")["out"], np.load(b / "emulate.npz")["out"])
    # an --inputs run reruns from the inputs saved beside its emulate.json
    c = tmp_path / "c"
    r3 = _cli("emulate", "--inputs", str(a / "emulate.npz"), "--recipe", "fa2", "--out", str(c))
    assert r3.returncode == 0, r3.stderr
    r4 = _cli("emulate", "--rerun", str(c / "emulate.json"))
    assert r4.returncode == 0, r4.stderr
    assert r3.stdout.split("signed error")[1].split("\n")[0] == r4.stdout.split("signed error")[1].split("\n")[0]


def test_paper_text_exists_and_every_reference_points_to_it():
    """The text the CLI references exists in the repository (docs/paper.md), and nothing
    points at a file that is not there (the mission file of the project's workspace)."""
    paper = open(os.path.join(ROOT, "docs", "paper.md")).read()
    assert "2510.04212" in paper and "bm = β · bm" in paper and "ε = 1e-3" in paper
    for args in (["--help"], ["emulate", "--help"], ["crosscheck", "--help"]):
        r = _cli(*args)
        assert "MISSION" not in r.stdout
    assert "docs/paper.md" in _cli("--help").stdout and "docs/paper.md" in _cli("emulate", "--help").stdout
    # the repository's own files (git ls-files where there is a .git; local scratch
    # folders and build outputs are not the repository)
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode == 0 and listed.stdout:
        paths = [os.path.join(ROOT, p) for p in listed.stdout.split("\n") if p]
    else:
        paths = [os.path.join(d, n) for d, _, names in os.walk(ROOT) for n in names
                 if not any(part.startswith(".") or part in ("__pycache__", "build")
                            for part in os.path.relpath(d, ROOT).split(os.sep))]
    for path in paths:
        if path.endswith((".py", ".md", ".toml")) and os.path.join("tests", "data") not in path:
            with open(path, encoding="utf-8") as f:
                text = f.read()
            assert "MISSION" + ".md" not in text, path


def test_bias_helpers_of_example_03_are_public():
    import flashbits
    import flashbits.crosscheck

    for name in ("bias_stats", "signed_error_ulps", "flash_attention", "reference_attention"):
        assert name in flashbits.__all__
    assert "regime_inputs" in flashbits.crosscheck.__all__
    with open(os.path.join(ROOT, "examples", "03_bias_and_fixes.py")) as f:
        imports = [ln for ln in f if ln.startswith(("from ", "import "))]
    assert all(ln.startswith(("from flashbits import", "from flashbits.crosscheck import", "import numpy"))
               for ln in imports), imports


def test_dependencies_include_matplotlib_and_tqdm():
    text = open(os.path.join(ROOT, "pyproject.toml")).read()
    deps = text.split("dependencies = [", 1)[1].split("]", 1)[0]
    assert '"matplotlib' in deps and '"tqdm' in deps


def test_progress_bar_on_a_terminal_only(tmp_path):
    """The replay shows a tqdm bar on stderr when stderr is a terminal, none in a log."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal has a size
    r = subprocess.run([sys.executable, "-m", "flashbits.crosscheck.cli", "crosscheck", "--replay", GOLDEN],
                       stdout=subprocess.PIPE, stderr=slave, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                       timeout=600)
    os.close(slave)
    chunks = []
    while True:
        try:
            b = os.read(master, 65536)
        except OSError:
            break
        if not b:
            break
        chunks.append(b)
    os.close(master)
    tty_err = b"".join(chunks).decode(errors="replace")
    assert r.returncode == 0 and "all bits equal" in r.stdout.decode()
    assert "replay" in tty_err and ("it/s" in tty_err or "s/it" in tty_err), tty_err
    logged = _cli("crosscheck", "--replay", GOLDEN)
    assert logged.returncode == 0 and "it/s" not in logged.stderr and "s/it" not in logged.stderr


def test_bias_writes_plots_or_says_loudly_why_not(tmp_path):
    grid = ["bias", "--regimes", "ties-12", "--recipes", "fa2", "--fixes", "none", "--roundings", "rne",
            "--rows", "64", "--no-ablation"]
    r = _cli(*grid, "--out", str(tmp_path / "ok"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "ok" / "bias_vs_gap.png").exists() and "warning" not in r.stderr
    broken = tmp_path / "site" / "matplotlib"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('matplotlib hidden by the test')\n")
    r = _cli(*grid, "--out", str(tmp_path / "no"), env={"PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{ROOT}"})
    assert r.returncode == 0, r.stderr
    assert "warning: plots NOT written" in r.stderr and not (tmp_path / "no" / "bias_vs_gap.png").exists()
    assert "plots NOT written" in (tmp_path / "no" / "bias.md").read_text()
