"""Stage II: InfoNCE with in-batch + hard negatives gathered across devices (paper-spec 3), optional GradCache."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from bireco.backbone import Backbone
from bireco.losses.grad_cache import cached_embed
from bireco.losses.info_nce import InfoNCELoss, InfoNCEOutput
from bireco.modules.common import StageModule


class ContrastiveModule(StageModule):
    def __init__(
        self,
        backbone: Backbone,
        optim: Any,
        max_steps: int,
        scale: float = 50.0,
        symmetric: bool = False,
        gather_across_devices: bool = True,
        grad_cache_chunk_size: int | None = None,
        on_nonfinite: str = "raise",
    ):
        super().__init__(backbone, optim, max_steps, on_nonfinite)
        self.loss_fn = InfoNCELoss(scale=scale, symmetric=symmetric)
        self.gather_across_devices = gather_across_devices
        self.grad_cache_chunk_size = grad_cache_chunk_size

    def embed(self, side: dict) -> torch.Tensor:
        if self.grad_cache_chunk_size and torch.is_grad_enabled():
            return cached_embed(self.backbone.embed, side, self.grad_cache_chunk_size)
        return self.backbone.embed(side)

    def _gather(self, t: torch.Tensor) -> torch.Tensor:
        g = self.all_gather(t, sync_grads=True)  # (W, X, H)
        return g.reshape(-1, *t.shape[1:])

    def step_loss(self, batch: dict) -> InfoNCEOutput:
        q = self.embed(batch["query"])  # (B, H)
        p = self.embed(batch["positive"])  # (B, H)
        n = self.embed(batch["negatives"]) if "negatives" in batch else None  # (N, H)
        distributed = self._trainer is not None and self.trainer.world_size > 1 and self.gather_across_devices
        if not distributed:
            return self.loss_fn(q, p, n)
        n_mask = None
        if n is not None:  # ranks may hold different numbers of negatives: pad to the largest
            sizes = self.all_gather(torch.tensor([n.shape[0]], device=q.device))
            width = int(sizes.max())
            n_mask = torch.arange(width, device=q.device) < n.shape[0]
            n = F.pad(n, (0, 0, 0, width - n.shape[0]))
        return self.loss_fn(q, p, n, gather=self._gather, rank=self.global_rank, n_mask=n_mask)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self.step_loss(batch)
        self.check_finite(out.loss, batch)
        B = batch["query"]["input_ids"].shape[0]
        self.log("train/loss", out.loss.detach(), on_step=True, prog_bar=True, batch_size=B)
        self.log("train/acc", out.accuracy, on_step=True, prog_bar=True, batch_size=B)
        self.log("train/pos_sim", out.pos_sim, on_step=True, batch_size=B)
        self.log("train/hard_neg_sim", out.hard_neg_sim, on_step=True, batch_size=B)
        sides = [batch["query"], batch["positive"]] + ([batch["negatives"]] if "negatives" in batch else [])
        self.count_throughput(B, *sides)
        self.log_truncation()
        return out.loss
