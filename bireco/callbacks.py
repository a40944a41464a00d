"""Training callbacks: periodic checkpoints (for resume) and a cheap dev retrieval check."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from omegaconf import DictConfig

from bireco.retrieval import RetrievalSet, records_retrieval_set, scores_of, wordnet_retrieval_set


class DevRetrievalCallback(Callback):
    """nDCG@10 / MRR@10 on a dev retrieval set every `every` optimizer steps and before the first.

    Every rank encodes its share of the queries and documents (shares padded to the same length, so sharded
    strategies see the same forward calls on every rank), the embeddings are gathered, and every rank scores them.
    The scores go to the loggers as val/ndcg@10 and val/mrr@10 at that step, and into `self.log` (logger=False), so
    ModelCheckpoint / EarlyStopping can monitor them."""

    def __init__(self, rs: RetrievalSet, every: int, max_query_length: int, max_doc_length: int):
        self.rs, self.every = rs, every
        self.max_query_length, self.max_doc_length = max_query_length, max_doc_length
        self.history: list[tuple[int, float, float]] = []

    def _encode(self, trainer: L.Trainer, pl_module: L.LightningModule, texts: list, instr, max_length: int):
        from bireco.encoder import encode_texts

        rank, world = trainer.global_rank, trainer.world_size
        per = -(-len(texts) // world)  # ceil
        idx = [
            min(i, len(texts) - 1) for i in range(rank * per, (rank + 1) * per)
        ]  # padded with the last text
        mine = [instr[i] for i in idx] if isinstance(instr, list) else instr
        emb = encode_texts(pl_module.backbone, [texts[i] for i in idx], mine, max_length).to(pl_module.device)
        if world > 1:
            emb = trainer.strategy.all_gather(emb).reshape(-1, emb.shape[-1])
        return emb[: len(texts)].cpu()

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        q = self._encode(trainer, pl_module, self.rs.queries, self.rs.instruction, self.max_query_length)
        d = self._encode(trainer, pl_module, self.rs.corpus, None, self.max_doc_length)
        scores = scores_of(q, d, self.rs.relevant)
        self.history.append((trainer.global_step, scores["ndcg@10"], scores["mrr@10"]))
        metrics = {"val/ndcg@10": scores["ndcg@10"], "val/mrr@10": scores["mrr@10"]}
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
        return metrics

    def on_train_start(self, trainer, pl_module):
        self._run(trainer, pl_module)  # step 0 (loggers only: Lightning takes no self.log in this hook)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step  # advances once per optimizer step, not per micro-batch
        if step and step % self.every == 0 and (not self.history or self.history[-1][0] != step):
            for name, value in self._run(
                trainer, pl_module
            ).items():  # visible to ModelCheckpoint / EarlyStopping
                pl_module.log(name, value, on_step=True, on_epoch=False, logger=False, rank_zero_only=False)


def dev_retrieval_set(cfg: DictConfig, datamodule=None) -> RetrievalSet:
    """WordNet keeps its dev split; any other data is checked on pairs held out of the run's own training records
    (PairDataModule.dev_records), against their documents and training documents as distractors."""
    if cfg.data.format == "wordnet":
        return wordnet_retrieval_set(
            "dev", n_queries=cfg.data.dev_queries, corpus_size=cfg.data.dev_corpus_size, seed=cfg.seed
        )
    if datamodule is None or not datamodule.dev_records:
        raise ValueError("the dev check on non-WordNet data needs the data module's held-out records")
    return records_retrieval_set(
        datamodule.dev_records, list(datamodule.train["positive"]), cfg.data.dev_corpus_size, cfg.seed
    )


def build_callbacks(cfg: DictConfig, run_dir: Path, datamodule=None) -> list:
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
    if cfg.trainer.dev_check_every_n_steps:
        rs = dev_retrieval_set(cfg, datamodule)
        callbacks.append(
            DevRetrievalCallback(
                rs, cfg.trainer.dev_check_every_n_steps, cfg.data.max_query_length, cfg.data.max_doc_length
            )
        )
    return callbacks
