"""What both stage modules share: optimizer wiring, lr / grad-norm / throughput logging, backbone saving."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import grad_norm

from bireco.backbone import Backbone
from bireco.optim import build_optimizer, build_scheduler


class StageModule(L.LightningModule):
    """Base of ReconstructionModule / ContrastiveModule: everything but the training step."""

    def __init__(self, backbone: Backbone, optim: Any, max_steps: int):
        super().__init__()
        self.backbone = backbone
        self.optim_cfg = optim
        self.max_steps = max_steps
        self._t0: float | None = None
        self._pairs = 0
        self._tokens = 0

    def configure_optimizers(self):
        opt = build_optimizer(self.trainer.model.parameters() if self._trainer else self.parameters(), self.optim_cfg)
        return {"optimizer": opt, "lr_scheduler": build_scheduler(opt, self.optim_cfg, self.max_steps)}

    def count_throughput(self, pairs: int, *sides: dict) -> None:
        """Accumulate real (non-pad) tokens and pairs of this micro-batch for pairs/s and tokens/s."""
        self._pairs += pairs
        self._tokens += sum(int(s["attention_mask"].sum()) for s in sides)

    def on_train_start(self):
        self.backbone.train()  # from_pretrained returns eval mode; dropout (e.g. LoRA) must be on

    def on_train_batch_start(self, batch, batch_idx):
        if self._t0 is None:
            self._t0 = time.perf_counter()

    def on_before_optimizer_step(self, optimizer):
        norms = grad_norm(self.backbone, norm_type=2)
        if "grad_2.0_norm_total" in norms:
            self.log("train/grad_norm", norms["grad_2.0_norm_total"], on_step=True)
        self.log("train/lr", optimizer.param_groups[0]["lr"], on_step=True)
        if self._t0 is not None:
            dt = max(time.perf_counter() - self._t0, 1e-9)
            world = self.trainer.world_size
            self.log("train/pairs_per_s", self._pairs * world / dt, on_step=True)
            self.log("train/tokens_per_s", self._tokens * world / dt, on_step=True)
        self._t0, self._pairs, self._tokens = time.perf_counter(), 0, 0

    def log_truncation(self) -> None:
        dm = self.trainer.datamodule if self._trainer else None
        if dm is not None and getattr(dm, "collator", None) is not None:
            for kind, n in dm.collator.truncated.items():
                self.log(f"data/truncated_{kind}", float(n), on_step=True)

    def check_finite(self, loss: torch.Tensor, batch: dict) -> None:
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite loss {loss.item()} at step {self.global_step} on a batch from dataset(s) "
                f"{sorted(set(batch.get('dataset', ['?'])))}; no checkpoint of these weights is written"
            )
