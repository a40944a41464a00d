"""Training callbacks: periodic checkpoints (for resume)."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig


def build_callbacks(cfg: DictConfig, run_dir: Path) -> list:
    callbacks = []
    every = cfg.trainer.checkpoint_every_n_steps
    if every:
        callbacks.append(
            ModelCheckpoint(dirpath=str(run_dir / "checkpoints"), every_n_train_steps=every, save_last=True, save_top_k=0)
        )
    return callbacks
