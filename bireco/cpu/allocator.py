"""Large CPU buffers reused from step to step instead of mapped afresh (glibc's malloc, Linux), for one training run.

Why: glibc serves every allocation above its mmap threshold with a fresh `mmap` and returns it to the kernel on
`free`, so each training step's vocabulary-sized buffers (the embedding table's gradient, the LM head's gradient and
its bf16 casts) are page-faulted and zeroed by the kernel again at every step. `keep_freed_memory()` makes malloc take
them from its heap and keep what is freed there for the next step (docs/benchmarks.md has what that buys). The
computation is the same; only where its memory comes from changes. The setting is the process's, so the fast path
applies it for a run and puts glibc's default values back at its end (`restore_default_memory`); meanwhile the
process keeps its peak memory mapped.
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
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536  # glibc's defaults (mallopt(3))


@functools.cache
def _libc():
    """glibc's handle, None elsewhere (musl, macOS, Windows: their allocators are left alone)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def keep_freed_memory() -> bool:
    """Large allocations come from malloc's heap and freed memory stays there for reuse, until
    `restore_default_memory`. True when applied (glibc), False where there is no glibc to tune."""
    libc = _libc()
    return libc is not None and bool(
        libc.mallopt(M_TRIM_THRESHOLD, KEEP_FREED) and libc.mallopt(M_MMAP_MAX, 0)
    )


def restore_default_memory() -> None:
    """glibc's default trim threshold and mapping limit again (its dynamic threshold stays off once set: mallopt(3))."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
        libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)


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
