"""Lightning checkpoints written beside their final name, then renamed: `last.ckpt` is always a complete file, and
a crash mid-write leaves at most `<name>.tmp-<pid>` in the run's checkpoints/ (removed by the next run there),
never a model-sized file in the system temp dir (Lightning's fsspec transaction writes there)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

TMP_MARK = ".tmp-"


def _write(f, data: bytes) -> None:
    f.write(data)


class RunDirCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        tmp = path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                _write(f, buffer.getbuffer())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def remove_partial_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """Partial writes a killed run left (SIGKILL gives it no chance to remove them)."""
    partial = sorted(Path(checkpoint_dir).glob(f"*{TMP_MARK}*")) if Path(checkpoint_dir).is_dir() else []
    for p in partial:
        p.unlink(missing_ok=True)
    return partial
