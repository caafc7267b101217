"""Issue 14, point 10 (numba part): numba's cache cannot go stale after an edit to a
module a kernel inlines.

numba stamps a cached kernel with its own file's hash only; flashbits.emulator.numba_cache
adds the hash of every emulator source file.  The test copies the package into a temporary
directory, adds a cached kernel (``_probe_a``) that inlines a function of another module
(``_probe_b``), runs it, edits only ``_probe_b`` and runs again in a fresh process: the
result reflects the edit.  With numba's own locators (the control) the same steps return
the stale result, so the test would notice the mechanism failing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
A = '''import numba as nb

from ._probe_b import g


@nb.njit(cache=True)
def f(x):
    return g(x) + 1
'''
B = '''import numba as nb


@nb.njit
def g(x):
    return x * {k}
'''
RUN = "import flashbits.emulator\nfrom flashbits.emulator._probe_a import f\nprint(f(10))"


def _tree(tmp_path):
    dst = tmp_path / "tree"
    ignore = shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc")
    for part in ("flashbits", "emulator", "gpu", "crosscheck"):
        shutil.copytree(os.path.join(ROOT, part), dst / part, ignore=ignore)
    (dst / "emulator" / "_probe_a.py").write_text(A)
    (dst / "emulator" / "_probe_b.py").write_text(B.format(k=2))
    return dst


def _run(tree, env_extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_")}
    env.update(PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE="1", **(env_extra or {}))
    r = subprocess.run([sys.executable, "-c", RUN], capture_output=True, text=True, cwd=tree, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    return int(r.stdout.split()[-1])


@pytest.mark.parametrize("control", [False, True], ids=["flashbits-locator", "numba-default"])
def test_an_edit_to_an_inlined_module_reaches_the_cached_kernel(tmp_path, control):
    tree = _tree(tmp_path)
    env = {"NUMBA_CACHE_LOCATOR_CLASSES": "InTreeCacheLocator"} if control else None
    assert _run(tree, env) == 21
    assert list((tree / "emulator" / "__pycache__").glob("_probe_a.f-*.nbi"))  # cached on disk
    (tree / "emulator" / "_probe_b.py").write_text(B.format(k=3))  # edit only the inlined module
    assert _run(tree, env) == (21 if control else 31)  # numba alone: stale; with the stamp: fresh
    if not control:
        assert _run(tree, env) == 31  # and cached again under the new stamp


def test_the_source_hash_covers_every_emulator_file(tmp_path):
    from flashbits.emulator import numba_cache

    tree = _tree(tmp_path)
    h0 = numba_cache.source_hash(str(tree / "emulator"))
    assert h0 == numba_cache.source_hash(str(tree / "emulator"))
    with open(tree / "emulator" / "hw" / "sfu.py", "a") as f:
        f.write("\n# an edit\n")
    assert numba_cache.source_hash(str(tree / "emulator")) != h0
    assert numba_cache.SOURCE_HASH == numba_cache.source_hash()  # this checkout, as imported
