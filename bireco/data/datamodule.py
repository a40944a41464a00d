"""PairDataModule: global batch from config, per-rank batch derived; the same loader feeds both stages."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from bireco.data.collate import PairCollator
from bireco.data.samplers import PairBatchSampler

log = logging.getLogger(__name__)
# draws the records held out of training (dev check, anchor probe): fixed, so runs of every training seed train on
# the same records and are checked on the same held-out pairs
HELDOUT_SEED = 42


class PairDataModule(L.LightningDataModule):
    def __init__(
        self, cfg: Any, collator: PairCollator, seed: int = 42, dev_pairs: int = 0, probe_pairs: int = 0
    ):
        """`dev_pairs`: records to hold out of training for the dev check (non-WordNet data; WordNet has a dev split).
        `probe_pairs`: what the Stage I anchor probe needs held out when the dev check holds out nothing; taken only
        from data of at least 20x that many records (a small data set keeps every record for training)."""
        super().__init__()
        self.cfg = cfg
        self.collator = collator
        self.seed = seed
        self.dev_pairs = dev_pairs
        self.probe_pairs = probe_pairs
        self.dev_records: list[dict] = []
        self.train = None
        self.sampler: PairBatchSampler | None = None
        self._resume_state: dict | None = None
        self.dev_check = None  # bireco.evaluation.dev_check.DevCheckData: the validation loaders (trainer.dev_check_every_n_steps)

    def load(self) -> None:
        """Load and validate the training records (called before any output is written)."""
        if self.train is None:
            # imported here, not at module level: `datasets` is heavy and only needed once data loads
            from bireco.data.records import load_pairs

            ds = load_pairs(self.cfg, "train")
            if self.cfg.max_train_records:
                ds = ds.select(range(min(self.cfg.max_train_records, len(ds))))
            hold = self.dev_pairs or (self.probe_pairs if len(ds) >= 20 * self.probe_pairs else 0)
            # removed from training, so the dev check and the probe score pairs never trained on
            if hold:
                import random

                held = set(random.Random(HELDOUT_SEED).sample(range(len(ds)), min(hold, len(ds) // 2)))
                self.dev_records = [ds[i] for i in sorted(held)]
                ds = ds.select([i for i in range(len(ds)) if i not in held])
                log.info("%d pairs held out of training (dev check / anchor probe)", len(held))
            self.train = ds
            log.info("training records: %d", len(ds))

    def batches_per_epoch(self) -> int:
        """Global batches in one epoch of the loaded records (what the LR schedule's epoch sizing counts)."""
        from bireco.data.samplers import global_batches_per_epoch

        self.load()
        return global_batches_per_epoch(
            self.train["dataset"], self.cfg.global_batch_size, self.cfg.batching == "homogeneous"
        )

    def setup(self, stage: str | None = None) -> None:
        self.load()
        rank = self.trainer.global_rank if self.trainer else 0
        world = self.trainer.world_size if self.trainer else 1
        lengths = None
        if self.cfg.bucket_by_length:
            lengths = [len(q) + len(p) for q, p in zip(self.train["query"], self.train["positive"])]
        self.sampler = PairBatchSampler(
            self.train["dataset"],
            self.cfg.global_batch_size,
            rank=rank,
            world_size=world,
            seed=self.seed,
            homogeneous=self.cfg.batching == "homogeneous",
            lengths=lengths,
        )
        self._apply_resume()

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train,
            batch_sampler=self.sampler,
            collate_fn=self.collator,
            num_workers=self.cfg.num_workers,
            persistent_workers=self.cfg.num_workers > 0,
        )

    def val_dataloader(self) -> list[DataLoader]:
        """The dev check's [queries, documents] loaders, this rank's share (bireco.evaluation.dev_check); none without it."""
        if self.dev_check is None:
            return []
        from bireco.model.encode import default_batch_size

        trainer = self.trainer
        return self.dev_check.loaders(
            trainer.global_rank, trainer.world_size, default_batch_size(trainer.strategy.root_device)
        )

    def state_dict(self) -> dict:
        """Sampler position for exact resume: the epoch and the batches the training loop has *processed* in it
        (not what the loader has prefetched), read from Lightning's progress counters at checkpoint time."""
        trainer = self.trainer
        if trainer is None:
            return {"epoch": 0, "consumed": 0}
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        return {"epoch": trainer.current_epoch, "consumed": progress.processed}

    def load_state_dict(self, state: dict) -> None:
        self._resume_state = state
        self._apply_resume()

    def _apply_resume(self) -> None:
        """Lightning may restore this state before or after `setup` builds the sampler: apply it whichever is last."""
        if self._resume_state is not None and self.sampler is not None:
            self.sampler.resume(self._resume_state.get("epoch", 0), self._resume_state.get("consumed", 0))
