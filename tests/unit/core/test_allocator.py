"""bireco.core.allocator: after keep_freed_memory() a large buffer comes from malloc's heap (no fresh mapping), and
a CPU training run turns it on unless trainer.cpu_keep_freed_memory=false."""

import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from bireco.core import allocator

pytestmark = pytest.mark.skipif(allocator._libc() is None, reason="glibc only")

CHILD = """
import torch
from bireco.core.allocator import keep_freed_memory, mapped_bytes
before = mapped_bytes()
a = torch.empty(49152 * 576)                  # SmolLM2's vocabulary x hidden, 113 MB
fresh = mapped_bytes() - before
del a
assert keep_freed_memory()
a = torch.empty(49152 * 576)
kept = mapped_bytes() - before
print(fresh, kept)
"""


def test_large_buffers_come_from_the_heap_once_freed_memory_is_kept():
    # a process of its own: malloc's setting lasts for the rest of the process
    out = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, check=True
    ).stdout.split()
    fresh, kept = int(out[0]), int(out[1])
    assert fresh >= 49152 * 576 * 4 and kept == 0, (fresh, kept)


def test_cpu_training_keeps_freed_memory_unless_switched_off(monkeypatch, tmp_path):
    from bireco.training import callbacks as cb

    calls = []
    monkeypatch.setattr(cb, "keep_freed_memory", lambda: calls.append(1))

    class Cfg(dict):
        __getattr__ = dict.__getitem__

    on = Cfg(trainer=Cfg(checkpoint_every_n_steps=None, cpu_keep_freed_memory=True), callbacks={})
    off = Cfg(trainer=Cfg(checkpoint_every_n_steps=None, cpu_keep_freed_memory=False), callbacks={})
    (keep,) = [c for c in cb.build_callbacks(on, tmp_path) if isinstance(c, cb.KeepFreedMemory)]
    assert not [c for c in cb.build_callbacks(off, tmp_path) if isinstance(c, cb.KeepFreedMemory)]
    keep.on_fit_start(None, SimpleNamespace(device=torch.device("cpu")))
    assert calls == [1]
    keep.on_fit_start(None, SimpleNamespace(device=torch.device("meta")))  # not a CPU run: left alone
    assert calls == [1]
