"""Training callbacks: periodic checkpoints (for resume), the CPU fast path (`trainer.cpu_fast_path`) and the
`callbacks` group's Lightning callbacks (the dev retrieval check is Lightning's validation loop:
bireco.evaluation.dev_check)."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig


def build_callbacks(cfg: DictConfig, run_dir: Path) -> list:
    """bireco's periodic checkpoints, the CPU fast path and the `callbacks` group's (`callbacks=[lr_monitor,...]`)."""
    from hydra.utils import instantiate

    callbacks = [instantiate(node) for node in (cfg.get("callbacks") or {}).values()]
    if cfg.trainer.cpu_fast_path:
        from bireco.cpu.fast_path import CpuFastPath

        callbacks.append(CpuFastPath())
    every = cfg.trainer.checkpoint_every_n_steps
    if every:
        callbacks.append(
            ModelCheckpoint(
                dirpath=str(run_dir / "checkpoints"), every_n_train_steps=every, save_last=True, save_top_k=0
            )
        )
    return callbacks
