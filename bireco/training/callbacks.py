"""Training callbacks: periodic checkpoints (for resume) and the `callbacks` group's Lightning callbacks (the dev
retrieval check is Lightning's validation loop: bireco.evaluation.dev_check)."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig


def build_callbacks(cfg: DictConfig, run_dir: Path) -> list:
    """bireco's periodic checkpoints and the `callbacks` group's (`callbacks=[lr_monitor,early_stopping]`)."""
    from hydra.utils import instantiate

    callbacks = [instantiate(node) for node in (cfg.get("callbacks") or {}).values()]
    every = cfg.trainer.checkpoint_every_n_steps
    if every:
        callbacks.append(
            ModelCheckpoint(
                dirpath=str(run_dir / "checkpoints"), every_n_train_steps=every, save_last=True, save_top_k=0
            )
        )
    return callbacks
