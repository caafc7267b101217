"""Run the sm_90 compiler in a child process, for the PTX/SASS tests.

The interpreter tests (test_kernels_interpreter.py) set TRITON_INTERPRET=1 before
triton is imported in the pytest process, which makes triton's library functions
interpreter objects; the compiler needs them compiled-mode, so compile in a
fresh process without the variable."""

from __future__ import annotations

import json
import os
import subprocess
import sys

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)


def child_stdout(args, stdin=None):
    """stdout of ``python args`` run from the repository root without TRITON_INTERPRET,
    with the root and tests/ importable; fails the test on a nonzero exit."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([ROOT, TESTS] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    r = subprocess.run([sys.executable, *args], input=stdin, capture_output=True, text=True, env=env, cwd=ROOT,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    return r.stdout


def json_lines_of(module, *args):
    """The JSON lines that ``python -m module args`` prints."""
    return [json.loads(line) for line in child_stdout(["-m", module, *args]).splitlines()]
