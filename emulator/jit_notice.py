"""A visible notice before numba compiles the emulator (issue 14).

The first run compiles the emulator's kernels (a minute or two; numba caches them
in ``__pycache__`` beside the sources, or under ``$NUMBA_CACHE_DIR``), and prints
nothing meanwhile: a newcomer thinks it hung.  :func:`notice_if_cold` checks,
cheaply (one small index file per compiled function, read once per process), whether
numba's cache holds the functions of the given modules, and if not says so on stderr
— on a terminal or not, since a log file is where a waiting user looks too.
A warm cache prints nothing.
"""

from __future__ import annotations

import sys

__all__ = ["cache_is_cold", "notice_if_cold"]

MESSAGE = "flashbits: compiling the emulator (first run only, about a minute)…"
_checked: set = set()
_said = False


def _dispatchers(module):
    for obj in vars(module).values():
        cache = getattr(obj, "_cache", None)
        if getattr(obj, "__module__", None) == module.__name__ and hasattr(cache, "_cache_file"):
            yield obj


def cache_is_cold(*modules) -> bool:
    """Whether numba's on-disk cache lacks (or holds stale) code for a cached function of ``modules``."""
    for m in modules:
        for d in _dispatchers(m):
            if d.signatures:  # compiled or loaded in this process already
                continue
            try:
                if not d._cache._cache_file._load_index():  # {} when missing or stale (source changed)
                    return True
            except Exception:  # an unreadable index: numba recompiles
                return True
    return False


def notice_if_cold(*modules, stream=None) -> bool:
    """Print :data:`MESSAGE` on stderr (once per process) when :func:`cache_is_cold`; returns whether it did."""
    global _said
    todo = tuple(m for m in modules if m.__name__ not in _checked)
    if _said or not todo:
        return False
    cold = cache_is_cold(*todo)
    _checked.update(m.__name__ for m in todo)
    if cold:
        _said = True
        print(MESSAGE, file=stream or sys.stderr, flush=True)
    return cold
