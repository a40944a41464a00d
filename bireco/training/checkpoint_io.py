"""Lightning checkpoints written atomically (bireco.core.files): `last.ckpt` is always a complete file, and a crash
mid-write leaves at most `<name>.tmp-<pid>-<id>` in the run's checkpoints/ (removed by the next run there), never a
model-sized file in the system temp dir (Lightning's fsspec transaction writes there)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from bireco.core.files import atomic_path


class RunDirCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        with atomic_path(Path(path)) as tmp:
            torch.save(checkpoint, tmp)
