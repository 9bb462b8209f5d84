"""How the process's allocator treats the training step's large temporary buffers.

A training step allocates and frees several multi-MB arrays (the gradients of W_enc and W_dec, the
reconstruction, the meta SAE's reconstruction of the rows, the penalty's gradient). glibc's malloc serves
such sizes with fresh ``mmap`` regions or trims them off the heap when they are freed, so the next step's
arrays arrive as untouched pages and pay one page fault (and a page of zeroing) per 4 KiB on first write.
Measured on the default profile's solo step with AuxK active (16 dead latents): 2,700–4,400 faults a step
without this setting, 50–120 with it; 3,000 faults cost ~3 ms on the development machine (a step: ~40–50 ms).

:func:`keep_freed_memory` raises glibc's two thresholds (``mallopt``): blocks up to ``MMAP_THRESHOLD``
come from the heap, and freed memory at the top of the heap is kept up to ``TRIM_THRESHOLD``, so a step
reuses the previous step's pages. It changes addresses, never values. It is process-wide, idempotent and
a no-op where the C library has no ``mallopt`` (macOS, musl) or when ``PAPERLIB_MALLOPT=0``.
"""

from __future__ import annotations

import ctypes
import os
from functools import cache

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
"""glibc's ``mallopt`` parameter numbers (malloc.h)."""
MMAP_THRESHOLD = 32 * 2**20
"""Blocks below this come from the heap (32 MiB: glibc's largest accepted value on 64-bit)."""
TRIM_THRESHOLD = 512 * 2**20
"""Free memory at the top of the heap kept for reuse instead of being returned to the kernel."""


@cache
def keep_freed_memory() -> bool:
    """Make glibc reuse freed multi-MB blocks instead of returning them to the kernel (see the module docstring).
    Returns whether the setting took effect (False: disabled by ``PAPERLIB_MALLOPT=0``, or no glibc)."""
    if os.environ.get("PAPERLIB_MALLOPT", "1") == "0":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
