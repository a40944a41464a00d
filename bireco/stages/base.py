"""What both stage modules share: optimizer wiring, lr / grad-norm / throughput logging, the non-finite guard and
the extra state an exact resume needs (RNG streams)."""

from __future__ import annotations

import functools
import logging
from collections import Counter

import lightning as L
import torch

from bireco.config.schema import OptimConfig
from bireco.core.precision import autocast, bf16_for
from bireco.cpu.casts import WeightCasts, run_with
from bireco.evaluation.dev_check import score
from bireco.model.backbone import Backbone
from bireco.stages.optim import build_optimizer, build_scheduler
from bireco.stages.sharding import full_state_dict, is_fsdp, is_sharded
from bireco.stages.step_monitors import NonFiniteGuard, Throughput, rng_state, set_rng_state

log = logging.getLogger(__name__)
__all__ = ["StageModule"]


def restore_buffers(module: torch.nn.Module, saved: dict[str, torch.Tensor]) -> None:
    """Put these buffer values back (dtype included) on the device each buffer is on now."""
    for name, value in saved.items():
        owner, _, leaf = name.rpartition(".")
        sub = module.get_submodule(owner)
        setattr(sub, leaf, value.to(getattr(sub, leaf).device))


class StageModule(L.LightningModule):
    """Base of ReconstructionModule / ContrastiveModule: everything but the training step."""

    def __init__(self, backbone: Backbone, optim: OptimConfig, lr_horizon: int, on_nonfinite: str = "raise"):
        super().__init__()
        self.backbone = backbone
        self.optim_cfg = optim
        self.lr_horizon = lr_horizon  # optimizer steps the LR decay is sized for (builders.lr_horizon)
        self.nonfinite = NonFiniteGuard(on_nonfinite)
        self.throughput = Throughput()
        self._rng_to_restore: dict | None = None
        self.gathered_state: dict | None = None  # full weights gathered at the end of a sharded run (rank 0)
        self.truncated: Counter = Counter()  # texts cut to the max length so far, per kind (query / document)
        # rotary frequencies as loaded (fp32): a precision plugin's module.to(bf16) would round them too, so training
        # would see other positions than evaluation and export, which load them in fp32 (restored in on_fit_start)
        self._rotary_fp32 = {
            n: b.detach().float().clone() for n, b in backbone.named_buffers() if n.endswith("inv_freq")
        }
        # weights the passes use in place of the module's own: none, unless the CPU fast path gives bf16 copies
        self.weight_casts = WeightCasts()

    def on_fit_start(self):
        restore_buffers(self.backbone, self._rotary_fp32)

    @property
    def attached(self) -> bool:
        """Whether a Trainer runs this module (steps called by hand, in tests and benches, have none)."""
        try:
            return self.trainer is not None  # Lightning's property raises when the module has no Trainer
        except RuntimeError:
            return False

    @property
    def world_size(self) -> int:
        """Processes of the run: the trainer's, 1 for a module stepped by hand."""
        return self.trainer.world_size if self.attached else 1

    def forward_step(self, step_loss, batch: dict):
        """A training step's forward (`step_loss(batch)`) with the weight casts of the run, if any."""
        return run_with(self, self.weight_casts.training(), step_loss, batch)

    # ---- the dev retrieval check (bireco.evaluation.dev_check): Lightning's validation loop over dev queries and documents
    def on_validation_epoch_start(self):
        self._dev_parts: tuple[list, list] = ([], [])
        self._dev_weights = self.weight_casts.inference(self.backbone)  # once per check, not per forward

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        # as bireco.model.encode.encode_texts encodes
        with autocast(self.device, bf16_for(self.device)):
            emb = run_with(self.backbone, self._dev_weights, self.backbone.embed, batch).float()
        self._dev_parts[dataloader_idx].append((batch["index"], torch.nn.functional.normalize(emb, dim=-1)))

    def on_validation_epoch_end(self):
        metrics = score(self, *self._dev_parts, self.trainer.datamodule.dev_check.rs)
        self._dev_parts, self._dev_weights = ([], []), {}
        # to the loggers at the optimizer step the check ran after (Lightning would log a validation epoch one step
        # earlier, and nothing from the sanity check, which is the check before the first step)
        if self.trainer.is_global_zero:
            for logger in self.trainer.loggers:
                logger.log_metrics(metrics, step=self.trainer.global_step)
        # callback metrics, what ModelCheckpoint / EarlyStopping monitor; every rank scored the same gathered
        # embeddings, so no reduction
        if not self.trainer.sanity_checking:
            for name, value in metrics.items():
                self.log(name, value, on_step=False, on_epoch=True, logger=False, rank_zero_only=False)

    def configure_optimizers(self):
        opt = build_optimizer(
            self.trainer.model.parameters() if self.attached else self.parameters(), self.optim_cfg
        )
        return {"optimizer": opt, "lr_scheduler": build_scheduler(opt, self.optim_cfg, self.lr_horizon)}

    def on_train_start(self):
        self.backbone.train()  # from_pretrained returns eval mode; dropout (e.g. LoRA) must be on

    def on_train_batch_start(self, batch, batch_idx):
        if self._rng_to_restore is not None:  # after resume: continue the interrupted run's random streams
            set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None
        self.throughput.start()

    def on_before_optimizer_step(self, optimizer):
        grads = [p.grad for p in self.backbone.parameters() if p.grad is not None]
        total = torch.nn.utils.get_total_norm(grads) if grads else None  # fused, no per-parameter host sync
        if total is not None and self._sharded():  # each rank holds a shard of the gradients
            total = self.trainer.strategy.reduce(total.float() ** 2, reduce_op="sum").sqrt()
        reduce = None
        if self.world_size > 1:
            reduce = functools.partial(self.trainer.strategy.reduce, reduce_op="sum")
        self.nonfinite.check(optimizer, total, self.global_step, reduce)
        if total is not None:
            self.log("train/grad_norm", total, on_step=True)
        self.log("train/lr", optimizer.param_groups[0]["lr"], on_step=True)
        if self.nonfinite.mode == "skip":
            self.log("train/skipped_nonfinite", float(self.nonfinite.skipped), on_step=True)
        for name, value in self.throughput.rates(self.trainer.world_size).items():
            self.log(name, value, on_step=True)
        if self.device.type == "cuda":  # allocator statistics: no device sync
            self.log("train/peak_mem_gb", torch.cuda.max_memory_allocated(self.device) / 2**30, on_step=True)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """FSDP clips with its own method (the norm spans every rank's shards); Lightning's default refuses. Under
        bf16 autocast there is no loss scaler, so a fused AdamW's gradients are already unscaled and are clipped
        here as Lightning clips any other optimizer's; Lightning refuses every optimizer that *could* unscale in
        its step (a fused AdamW), with or without a scaler."""
        if gradient_clip_val and is_fsdp(self.trainer.strategy):
            self.trainer.strategy.model.clip_grad_norm_(gradient_clip_val)
            return
        unscales_in_step = getattr(optimizer, "_step_supports_amp_scaling", False)
        if (
            gradient_clip_val
            and unscales_in_step
            and getattr(self.trainer.precision_plugin, "scaler", None) is None
        ):
            params = [p for group in optimizer.param_groups for p in group["params"]]
            if gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
            return
        self.clip_gradients(
            optimizer, gradient_clip_val=gradient_clip_val, gradient_clip_algorithm=gradient_clip_algorithm
        )

    def _sharded(self) -> bool:
        return self.attached and is_sharded(self.trainer.strategy)

    def on_train_end(self):
        """Under a sharded strategy, gather the full weights for the final export while the strategy is still live
        (Lightning tears it down after fit). Every rank joins; rank 0 keeps the result."""
        self.gathered_state = full_state_dict(self.trainer)

    def log_truncation(self, batch: dict) -> None:
        """Running totals of texts cut to the max length (counted per batch by the collator, in whichever process
        collated it; summed over ranks)."""
        self.truncated.update(batch.get("truncated", {}))
        sync = self.world_size > 1
        for kind, n in self.truncated.items():
            self.log(f"data/truncated_{kind}", float(n), on_step=True, sync_dist=sync, reduce_fx="sum")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        for logger in self.trainer.loggers:  # rows up to this step reach the disk before the checkpoint does
            logger.save()
        checkpoint["bireco_rng"] = rng_state()
        checkpoint["bireco_skipped_nonfinite"] = self.nonfinite.skipped

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._rng_to_restore = checkpoint.get("bireco_rng")
        self.nonfinite.skipped = checkpoint.get("bireco_skipped_nonfinite", 0)
