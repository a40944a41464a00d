"""Training callbacks: periodic checkpoints (for resume), malloc's reuse of large buffers on a CPU, and the
`callbacks` group's Lightning callbacks (the dev retrieval check is Lightning's validation loop:
bireco.evaluation.dev_check)."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from omegaconf import DictConfig

from bireco.core.allocator import keep_freed_memory


class KeepFreedMemory(Callback):
    """`trainer.cpu_keep_freed_memory` (default on): when the run trains on a CPU, malloc keeps large freed buffers
    for the next step instead of mapping them afresh (bireco.core.allocator; the same computation)."""

    def on_fit_start(self, trainer, pl_module):
        if pl_module.device.type == "cpu":
            keep_freed_memory()


def build_callbacks(cfg: DictConfig, run_dir: Path) -> list:
    """bireco's periodic checkpoints, malloc's buffer reuse on a CPU and the `callbacks` group's (`callbacks=[lr_monitor,early_stopping]`)."""
    from hydra.utils import instantiate

    callbacks = [instantiate(node) for node in (cfg.get("callbacks") or {}).values()]
    if cfg.trainer.cpu_keep_freed_memory:
        callbacks.append(KeepFreedMemory())
    every = cfg.trainer.checkpoint_every_n_steps
    if every:
        callbacks.append(
            ModelCheckpoint(
                dirpath=str(run_dir / "checkpoints"), every_n_train_steps=every, save_last=True, save_top_k=0
            )
        )
    return callbacks
