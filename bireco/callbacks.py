"""Training callbacks: periodic checkpoints (for resume) and a cheap dev retrieval check."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from omegaconf import DictConfig

from bireco.retrieval import RetrievalSet, evaluate, wordnet_retrieval_set


class DevRetrievalCallback(Callback):
    """nDCG@10 / MRR@10 on a dev retrieval set every `every` optimizer steps (and before the first), computed on
    rank 0 while the other ranks wait at a barrier; logged as val/ndcg@10 and val/mrr@10 for both stages."""

    def __init__(self, rs: RetrievalSet, every: int, max_query_length: int, max_doc_length: int):
        self.rs, self.every = rs, every
        self.max_query_length, self.max_doc_length = max_query_length, max_doc_length
        self.history: list[tuple[int, float, float]] = []

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = torch.zeros(2, device=pl_module.device)
        if trainer.is_global_zero:
            out = evaluate(pl_module.backbone, self.rs, self.max_query_length, self.max_doc_length)
            metrics = torch.tensor([out["ndcg@10"], out["mrr@10"]], device=pl_module.device)
        trainer.strategy.barrier()
        metrics = trainer.strategy.broadcast(metrics, src=0)
        self.history.append((trainer.global_step, *metrics.tolist()))
        for logger in trainer.loggers:
            logger.log_metrics(
                {"val/ndcg@10": float(metrics[0]), "val/mrr@10": float(metrics[1])}, step=trainer.global_step
            )

    def on_train_start(self, trainer, pl_module):
        self._run(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step  # advances once per optimizer step, not per micro-batch
        if step and step % self.every == 0 and (not self.history or self.history[-1][0] != step):
            self._run(trainer, pl_module)


def build_callbacks(cfg: DictConfig, run_dir: Path) -> list:
    """bireco's own (checkpoints, dev check) and the `callbacks` group's (`callbacks=[lr_monitor,early_stopping]`)."""
    from hydra.utils import instantiate

    callbacks = [instantiate(node) for node in (cfg.get("callbacks") or {}).values()]
    every = cfg.trainer.checkpoint_every_n_steps
    if every:
        callbacks.append(
            ModelCheckpoint(
                dirpath=str(run_dir / "checkpoints"), every_n_train_steps=every, save_last=True, save_top_k=0
            )
        )
    if cfg.trainer.val_check_interval:
        rs = wordnet_retrieval_set(
            "dev", n_queries=cfg.data.dev_queries, corpus_size=cfg.data.dev_corpus_size, seed=cfg.seed
        )
        callbacks.append(
            DevRetrievalCallback(
                rs, cfg.trainer.val_check_interval, cfg.data.max_query_length, cfg.data.max_doc_length
            )
        )
    return callbacks
