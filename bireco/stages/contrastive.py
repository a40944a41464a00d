"""Stage II: InfoNCE with in-batch + hard negatives gathered across devices (docs/method.md §3), optional GradCache."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bireco.config.schema import ContrastiveStageConfig
from bireco.losses.grad_cache import cached_embed
from bireco.losses.info_nce import InfoNCELoss, InfoNCEOutput
from bireco.model.backbone import Backbone
from bireco.stages.base import StageModule


def freeze_untied_lm_head(backbone: Backbone) -> None:
    """Stage II embeds, it never decodes: an untied output head (Llama-3.1-8B, Mistral) gets no gradient, which DDP
    rejects as an unused parameter, and the optimizer would carry its state for nothing. A head tied to the input
    embeddings is the same tensor as those and stays trainable."""
    head = backbone.lm_head.weight
    if head is not backbone.causal_lm.get_input_embeddings().weight:
        for param in backbone.lm_head.parameters():
            param.requires_grad_(False)


class ContrastiveModule(StageModule):
    """Stage II from its typed config node (`stage=contrastive` / `baseline`): the InfoNCE settings and the optimizer."""

    def __init__(
        self, backbone: Backbone, stage: ContrastiveStageConfig, lr_horizon: int, on_nonfinite: str = "raise"
    ):
        super().__init__(backbone, stage.optim, lr_horizon, on_nonfinite)
        freeze_untied_lm_head(backbone)
        self.loss_fn = InfoNCELoss(scale=stage.scale, symmetric=stage.symmetric)
        self.gather_across_devices = stage.gather_across_devices
        self.grad_cache_chunk_size = stage.grad_cache_chunk_size

    # GradCache under DDP: the second pass back-propagates chunk by chunk inside the loss's backward, which DDP's
    # bucketed gradient hooks cannot follow (they expect one backward per forward). So DDP's own sync is switched
    # off for this module, like the non-final micro-batches of gradient accumulation, and the gradients are
    # averaged over ranks in one flat all-reduce before clipping and the optimizer step (same update as DDP's).
    def _manual_grad_sync(self) -> bool:
        return bool(self.grad_cache_chunk_size) and self.world_size > 1

    def on_train_batch_start(self, batch, batch_idx):
        super().on_train_batch_start(batch, batch_idx)
        if self._manual_grad_sync():
            from torch.nn.parallel import DistributedDataParallel

            ddp = self.trainer.strategy.model
            if not isinstance(ddp, DistributedDataParallel):
                raise RuntimeError(
                    f"stage.grad_cache_chunk_size with several devices needs ddp, got {type(ddp).__name__}"
                )
            ddp.require_backward_grad_sync = False

    def on_before_optimizer_step(self, optimizer):
        if self._manual_grad_sync():
            grads = [p.grad for p in self.parameters() if p.grad is not None]
            flat = self.trainer.strategy.reduce(torch.cat([g.reshape(-1) for g in grads]), reduce_op="mean")
            offset = 0
            for g in grads:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()
        super().on_before_optimizer_step(optimizer)

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
        distributed = self.world_size > 1 and self.gather_across_devices
        if not distributed:
            return self.loss_fn(q, p, n)
        # Every rank issues the same collectives, whatever its local batch holds: ranks may have different numbers
        # of hard negatives, or none (the collator then omits them), so the count is always gathered, and a rank
        # without negatives joins the gather with padding that is part of its graph (so its backward joins too).
        local = 0 if n is None else n.shape[0]
        width = int(self.all_gather(torch.tensor([local], device=q.device)).max())
        if width == 0:
            return self.loss_fn(q, p, None, gather=self._gather, rank=self.global_rank)
        if n is None:
            n = q[:0]  # (0, H), connected to this rank's graph
        n_mask = torch.arange(width, device=q.device) < local
        n = F.pad(n, (0, 0, 0, width - local))
        return self.loss_fn(q, p, n, gather=self._gather, rank=self.global_rank, n_mask=n_mask)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self.forward_step(self.step_loss, batch)
        self.nonfinite.record(out.loss, batch)
        B = batch["query"]["input_ids"].shape[0]
        # every rank holds B queries: the mean over ranks is the global mean
        sync = self.trainer.world_size > 1
        self.log("train/loss", out.loss.detach(), on_step=True, prog_bar=True, batch_size=B, sync_dist=sync)
        self.log("train/acc", out.accuracy, on_step=True, prog_bar=True, batch_size=B, sync_dist=sync)
        self.log("train/pos_sim", out.pos_sim, on_step=True, batch_size=B, sync_dist=sync)
        self.log("train/hard_neg_sim", out.hard_neg_sim, on_step=True, batch_size=B, sync_dist=sync)
        sides = [batch["query"], batch["positive"]] + ([batch["negatives"]] if "negatives" in batch else [])
        self.throughput.count(B, *sides)
        self.log_truncation(batch)
        return out.loss
