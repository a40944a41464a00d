"""Lightning checkpoints written atomically (bireco.core.files): `last.ckpt` is always a complete file, and a crash
mid-write leaves at most `<name>.tmp-<pid>-<id>` in the run's checkpoints/ (removed by the next run there), never a
model-sized file in the system temp dir (Lightning's fsspec transaction writes there)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from bireco.core.files import atomic_path


def _write(f, data: bytes) -> None:
    f.write(data)


class RunDirCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        with atomic_path(Path(path)) as tmp, open(tmp, "wb") as f:
            _write(f, buffer.getbuffer())
