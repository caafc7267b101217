"""A numba cache that cannot go stale silently.

numba's on-disk cache (``cache=True``) stamps each compiled kernel with the content
hash of *its own* source file only.  The emulator's kernels inline functions from other
modules (rounding.py, exact.py, hw/, attention/units.py, rows.py, ...), so after an edit
to one of those numba would load the old machine code and the edit would silently do
nothing.

Here every cached kernel of the emulator (and of ``gpu/``, whose probes inline emulator
functions) is stamped with :data:`SOURCE_HASH` as well: the SHA-256 of every ``.py``
file under ``emulator/`` (paths and contents).  At import, :func:`install` puts a cache
locator in front of numba's own: it finds the cache folder exactly as numba would
(``NUMBA_CACHE_DIR``, else ``__pycache__``, else the user-wide cache) and only changes
the stamp.  An index written by another version of the emulator's sources then no longer
matches, and numba recompiles and overwrites it — no cache files to delete by hand.

``NUMBA_CACHE_LOCATOR_CLASSES`` (numba's own override of the locator list) bypasses
this; so does ``NUMBA_DISABLE_JIT`` trivially.
"""

from __future__ import annotations

import hashlib
import os

from numba.core import caching

# numba 0.60 calls these _CacheImpl/_CacheLocator; later versions CacheImpl (and either)
_CACHE_IMPL = getattr(caching, "CacheImpl", None) or caching._CacheImpl
_LOCATOR_BASE = getattr(caching, "_CacheLocator", None) or caching.CacheLocator

EMULATOR_DIR = os.path.dirname(os.path.abspath(__file__))
# folders whose cached kernels inline emulator code: the emulator and the GPU side's probes
COVERED_DIRS = (EMULATOR_DIR, os.path.join(os.path.dirname(EMULATOR_DIR), "gpu"))


def source_hash(root: str = EMULATOR_DIR) -> str:
    """SHA-256 (hex) of every .py file under ``root``: relative paths and contents."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                h.update(os.path.relpath(path, root).replace(os.sep, "/").encode() + b"\0")
                with open(path, "rb") as f:
                    h.update(f.read() + b"\0")
    return h.hexdigest()


SOURCE_HASH = source_hash()


def _covered(py_file: str) -> bool:
    path = os.path.abspath(py_file)
    return any(path.startswith(d + os.sep) for d in COVERED_DIRS)


class SourceTreeLocator(_LOCATOR_BASE):
    """numba's own choice of cache folder for the function, with the emulator's source
    hash added to the stamp that decides whether a cached kernel is current."""

    def __init__(self, inner):
        self._inner = inner

    def ensure_cache_path(self):
        self._inner.ensure_cache_path()

    def get_cache_path(self):
        return self._inner.get_cache_path()

    def get_source_stamp(self):
        return (self._inner.get_source_stamp(), SOURCE_HASH)

    def get_disambiguator(self):
        return self._inner.get_disambiguator()

    @classmethod
    def from_function(cls, py_func, py_file):
        if not _covered(py_file):
            return None
        for other in _CACHE_IMPL._locator_classes:
            if other is cls:
                continue
            inner = other.from_function(py_func, py_file)
            if inner is not None:
                return cls(inner)
        return None


def install() -> None:
    """Put :class:`SourceTreeLocator` first in numba's locator list (idempotent).  Runs
    when ``flashbits.emulator`` is imported, before any of its kernels is decorated."""
    classes = _CACHE_IMPL._locator_classes
    if not any(getattr(c, "__name__", "") == SourceTreeLocator.__name__ and c.__module__ == __name__
               for c in classes):
        classes.insert(0, SourceTreeLocator)


install()
