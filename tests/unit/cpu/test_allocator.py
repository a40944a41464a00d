"""bireco.cpu.allocator: after keep_freed_memory() a large buffer comes from malloc's heap (no fresh mapping), and after
restore_default_memory() it is mapped afresh again (the fast path's scope: one training run)."""

import subprocess
import sys

import pytest

from bireco.cpu import allocator

pytestmark = pytest.mark.skipif(allocator._libc() is None, reason="glibc only")

CHILD = """
import torch
from bireco.cpu.allocator import keep_freed_memory, mapped_bytes, restore_default_memory
before = mapped_bytes()
a = torch.empty(49152 * 576)                  # SmolLM2's vocabulary x hidden, 113 MB
fresh = mapped_bytes() - before
del a
assert keep_freed_memory()
a = torch.empty(49152 * 576)
kept = mapped_bytes() - before
del a
restore_default_memory()
b = torch.empty(2 * 49152 * 576)              # larger than anything the heap holds: mapped again
again = mapped_bytes() - before
print(fresh, kept, again)
"""


def test_large_buffers_come_from_the_heap_once_freed_memory_is_kept():
    # a process of its own: malloc's setting lasts for the rest of the process
    out = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, check=True
    ).stdout.split()
    fresh, kept, again = int(out[0]), int(out[1]), int(out[2])
    assert fresh >= 49152 * 576 * 4 and kept == 0 and again >= 2 * 49152 * 576 * 4, (fresh, kept, again)
