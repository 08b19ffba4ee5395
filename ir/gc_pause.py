"""Building or rewriting a graph allocates enough Python objects to trigger the
garbage collector's full scans, and each scans every live object (the libraries
alone are 1e5 of them): 20-70 ms a time, as long as the whole -O2 of a small model.
Loading and the pass pipeline run with cyclic collection paused; what they leave
behind is collected as usual afterwards (reference counting frees the rest)."""
from __future__ import annotations

import contextlib
import gc


@contextlib.contextmanager
def gc_paused():
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
