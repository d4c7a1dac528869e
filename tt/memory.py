"""Process-wide memory settings for CPU work, applied by the `tt` command and offered to callers.

A CPU plan allocates and frees tens of megabytes per planned transition (the re-encoded windows'
activations). With glibc's default, freed memory past a threshold goes back to the kernel and
comes back page-faulted and zeroed on the next allocation: hundreds of thousands of page faults a
beam-128 plan, about 15% of its time on the machines of RESULTS.md. Keeping it in the process
costs at most the peak working set, which planning reaches anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def retain_freed_memory() -> bool:
    """Have glibc keep freed memory for reuse (blocks up to 32 MiB from the heap, the heap never
    trimmed below 1 GiB of free space). Process-wide; True where it applied (Linux with glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))
