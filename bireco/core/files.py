"""Atomic writes: a file or directory is complete under its final name, or absent.

Every write goes to a temp name beside the target (same filesystem, so the rename is atomic), unique per process
and call (`<name>.tmp-<pid>-<random>`: two processes writing the same target never share a temp file), is flushed
and fsynced, then renamed over the target. A crash leaves at most a `*.tmp-*` entry, which `remove_partial`
clears and which is never mistaken for the real thing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

TMP_MARK = ".tmp-"


def temp_name(path: Path) -> Path:
    """A fresh temp path beside `path`, unique to this process and call."""
    return path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temp file path beside `path` to write however the caller likes (lzma, torch.save, ...); on success
    it is fsynced and renamed to `path`, on any error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes | memoryview) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yields an empty temp directory beside `path` to fill; on success it replaces `path` (an existing directory
    there is moved aside first and removed after), on any error it is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    tmp.mkdir()
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                _fsync(f)
        if path.exists():
            old = temp_name(path)
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old)
        else:
            tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def partial_writes(path: str | os.PathLike) -> list[Path]:
    """Temp entries a killed writer of `path` left beside it."""
    path = Path(path)
    return sorted(path.parent.glob(f"{path.name}{TMP_MARK}*")) if path.parent.is_dir() else []


def remove_partial(directory: str | os.PathLike) -> list[Path]:
    """Remove every temp entry a killed writer left in `directory` (SIGKILL gives it no chance); returns them."""
    directory = Path(directory)
    partial = sorted(directory.glob(f"*{TMP_MARK}*")) if directory.is_dir() else []
    for p in partial:
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    return partial
