"""Progress bars of the long runs (bias grid cells, crosscheck cases, record replays).

On stderr, and only when stderr is a terminal (a log file gets no bar), or never with
FLASHBITS_NO_PROGRESS=1.  tqdm is a dependency; without it the iterable comes back bare.
"""

from __future__ import annotations

import os
import sys


def enabled() -> bool:
    return sys.stderr.isatty() and os.environ.get("FLASHBITS_NO_PROGRESS", "") in ("", "0")


def progress(iterable=None, *, total=None, desc=""):
    """``tqdm(iterable, total, desc)`` on stderr when :func:`enabled`, else a stand-in with
    the same ``update``/``close``/iteration (and no output)."""
    if enabled():
        try:
            from tqdm import tqdm

            return tqdm(iterable, total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)
        except ImportError:
            pass
    return _Quiet(iterable)


class _Quiet:
    def __init__(self, iterable):
        self._it = iterable

    def __iter__(self):
        return iter(self._it if self._it is not None else ())

    def update(self, n=1):
        pass

    def close(self):
        pass
