"""Large CPU buffers reused from step to step instead of mapped afresh (glibc's malloc, Linux).

Why: glibc serves every allocation above its mmap threshold (32 MB at most) with a fresh `mmap` and returns it to
the kernel on `free`, so each training step's vocabulary-sized buffers (the embedding table's gradient, the LM
head's gradient and its bf16 casts: 113 MB each for SmolLM2's 49,152 x 576 table) are page-faulted and zeroed by the
kernel again at every step (~190,000 page faults per Stage I step on SmolLM2). `keep_freed_memory()` makes malloc
take them from its heap and keep what is freed there for the next step: the step takes 0.85x the time on the 2-core
CPU (experiments/bench/malloc_reuse.py). The computation is the same; only where its memory comes from
changes. The process keeps its peak memory mapped until it exits (it does not shrink between steps).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform

M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
M_MMAP_MAX = -4
# trim threshold (mallopt takes an int): give the heap's free top back to the kernel only above 2 GiB
KEEP_FREED = 2**31 - 1


@functools.cache
def _libc():
    """glibc's handle, None elsewhere (musl, macOS, Windows: their allocators are left alone)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def keep_freed_memory() -> bool:
    """Large allocations come from malloc's heap and freed memory stays there for reuse, for the rest of the
    process. True when applied (glibc), False where there is no glibc to tune."""
    libc = _libc()
    return libc is not None and bool(
        libc.mallopt(M_TRIM_THRESHOLD, KEEP_FREED) and libc.mallopt(M_MMAP_MAX, 0)
    )


def mapped_bytes() -> int | None:
    """Bytes malloc holds in separately mapped regions now (glibc's mallinfo2().hblkhd), None without glibc 2.33+."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                     "keepcost")]  # fmt: skip

    libc.mallinfo2.restype = MallInfo2
    return int(libc.mallinfo2().hblkhd)
