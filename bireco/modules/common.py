"""What both stage modules share: optimizer wiring, lr / grad-norm / throughput logging, the non-finite guard and
the extra state an exact resume needs (RNG streams)."""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from typing import Any

import lightning as L
import torch

from bireco.backbone import Backbone
from bireco.optim import build_optimizer, build_scheduler

log = logging.getLogger(__name__)


def restore_buffers(module: torch.nn.Module, saved: dict[str, torch.Tensor]) -> None:
    """Put these buffer values back (dtype included) on the device each buffer is on now."""
    for name, value in saved.items():
        owner, _, leaf = name.rpartition(".")
        sub = module.get_submodule(owner)
        setattr(sub, leaf, value.to(getattr(sub, leaf).device))


class StageModule(L.LightningModule):
    """Base of ReconstructionModule / ContrastiveModule: everything but the training step."""

    def __init__(self, backbone: Backbone, optim: Any, lr_horizon: int, on_nonfinite: str = "raise"):
        super().__init__()
        if on_nonfinite not in ("raise", "skip"):
            raise ValueError(f"trainer.on_nonfinite={on_nonfinite!r}; valid: raise, skip")
        self.backbone = backbone
        self.optim_cfg = optim
        self.lr_horizon = lr_horizon  # optimizer steps the LR decay is sized for (builders.lr_horizon)
        self.on_nonfinite = on_nonfinite
        self.skipped_nonfinite = (
            0  # optimizer steps skipped for a non-finite loss/gradient (on_nonfinite=skip)
        )
        self._sources: set[str] = set()  # source datasets of the micro-batches since the last optimizer step
        self._loss_finite: torch.Tensor | None = None
        self._rng_to_restore: dict | None = None
        self.gathered_state: dict | None = None  # full weights gathered at the end of a sharded run (rank 0)
        self._t0: float | None = None
        self._pairs = 0
        self._tokens = 0
        self.truncated: Counter = Counter()  # texts cut to the max length so far, per kind (query / document)
        # rotary frequencies as loaded (fp32): a precision plugin's module.to(bf16) would round them too, so training
        # would see other positions than evaluation and export, which load them in fp32 (restored in on_fit_start)
        self._rotary_fp32 = {
            n: b.detach().float().clone() for n, b in backbone.named_buffers() if n.endswith("inv_freq")
        }

    def on_fit_start(self):
        restore_buffers(self.backbone, self._rotary_fp32)

    # ---- the dev retrieval check (bireco.dev_check): Lightning's validation loop over dev queries and documents
    def on_validation_epoch_start(self):
        self._dev_parts: tuple[list, list] = ([], [])

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        from bireco.precision import autocast, bf16_for

        with autocast(self.device, bf16_for(self.device)):  # as bireco.encoder.encode_texts encodes
            emb = self.backbone.embed(batch).float()
        self._dev_parts[dataloader_idx].append((batch["index"], torch.nn.functional.normalize(emb, dim=-1)))

    def on_validation_epoch_end(self):
        from bireco.dev_check import score

        metrics = score(self, *self._dev_parts, self.trainer.datamodule.dev_check.rs)
        self._dev_parts = ([], [])
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
            self.trainer.model.parameters() if self._trainer else self.parameters(), self.optim_cfg
        )
        return {"optimizer": opt, "lr_scheduler": build_scheduler(opt, self.optim_cfg, self.lr_horizon)}

    def count_throughput(self, pairs: int, *sides: dict) -> None:
        """Accumulate real (non-pad) tokens and pairs of this micro-batch for pairs/s and tokens/s. Token counts
        stay on the device (no per-step host sync) until they are logged."""
        self._pairs += pairs
        self._tokens = self._tokens + sum(s["attention_mask"].sum() for s in sides)

    def on_train_start(self):
        self.backbone.train()  # from_pretrained returns eval mode; dropout (e.g. LoRA) must be on

    def on_train_batch_start(self, batch, batch_idx):
        if self._rng_to_restore is not None:  # after resume: continue the interrupted run's random streams
            _set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None
        if self._t0 is None:
            self._t0 = time.perf_counter()

    def on_before_optimizer_step(self, optimizer):
        grads = [p.grad for p in self.backbone.parameters() if p.grad is not None]
        total = torch.nn.utils.get_total_norm(grads) if grads else None  # fused, no per-parameter host sync
        if total is not None and self._sharded():  # each rank holds a shard of the gradients
            total = self.trainer.strategy.reduce(total.float() ** 2, reduce_op="sum").sqrt()
        self.guard(optimizer, total)
        if total is not None:
            self.log("train/grad_norm", total, on_step=True)
        self.log("train/lr", optimizer.param_groups[0]["lr"], on_step=True)
        if self.on_nonfinite == "skip":
            self.log("train/skipped_nonfinite", float(self.skipped_nonfinite), on_step=True)
        if self._t0 is not None:
            dt = max(time.perf_counter() - self._t0, 1e-9)
            world = self.trainer.world_size
            self.log("train/pairs_per_s", self._pairs * world / dt, on_step=True)
            self.log("train/tokens_per_s", self._tokens * world / dt, on_step=True)
            self.log("train/step_s", dt, on_step=True)
        if self.device.type == "cuda":  # allocator statistics: no device sync
            self.log("train/peak_mem_gb", torch.cuda.max_memory_allocated(self.device) / 2**30, on_step=True)
        self._t0, self._pairs, self._tokens = time.perf_counter(), 0, 0

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """FSDP clips with its own method (the norm spans every rank's shards); Lightning's default refuses."""
        from bireco.strategies import is_fsdp

        if gradient_clip_val and is_fsdp(self.trainer.strategy):
            self.trainer.strategy.model.clip_grad_norm_(gradient_clip_val)
            return
        self.clip_gradients(
            optimizer, gradient_clip_val=gradient_clip_val, gradient_clip_algorithm=gradient_clip_algorithm
        )

    def _sharded(self) -> bool:
        from bireco.strategies import is_sharded

        return self._trainer is not None and is_sharded(self.trainer.strategy)

    def on_train_end(self):
        """Under a sharded strategy, gather the full weights for the final export while the strategy is still live
        (Lightning tears it down after fit). Every rank joins; rank 0 keeps the result."""
        from bireco.strategies import full_state_dict

        self.gathered_state = full_state_dict(self.trainer)

    def log_truncation(self, batch: dict) -> None:
        """Running totals of texts cut to the max length (counted per batch by the collator, in whichever process
        collated it; summed over ranks)."""
        self.truncated.update(batch.get("truncated", {}))
        sync = self._trainer is not None and self.trainer.world_size > 1
        for kind, n in self.truncated.items():
            self.log(f"data/truncated_{kind}", float(n), on_step=True, sync_dist=sync, reduce_fx="sum")

    def check_finite(self, loss: torch.Tensor, batch: dict) -> None:
        """Record this micro-batch's loss finiteness and sources. The check itself happens once per optimizer step in
        `guard`, after backward (one host sync per step; under DDP every rank must join the backward anyway)."""
        self._sources.update(batch.get("dataset", ["?"]))
        finite = torch.isfinite(loss.detach())
        self._loss_finite = finite if self._loss_finite is None else self._loss_finite & finite

    def guard(self, optimizer, total_norm: torch.Tensor | None) -> None:
        """Non-finite loss or gradient: the optimizer step never reaches the weights. The gradient norm is taken
        after the DDP all-reduce, so every rank reaches the same decision. raise: stop with the step and source
        datasets (no checkpoint of broken weights can follow). skip: drop every gradient (AdamW leaves parameters
        without one untouched) and count the step in train/skipped_nonfinite."""
        sources, self._sources = sorted(self._sources), set()
        loss_ok, self._loss_finite = self._loss_finite, None
        checks = [
            t for t in (loss_ok, None if total_norm is None else torch.isfinite(total_norm)) if t is not None
        ]
        if not checks:
            return
        bad = (~torch.stack(checks).all()).float()
        if self._trainer is not None and self.trainer.world_size > 1:  # one decision for all ranks
            bad = self.trainer.strategy.reduce(bad, reduce_op="sum")
        if not bool(bad):
            return
        what = (
            "loss"
            if loss_ok is not None and not bool(loss_ok)
            else f"gradient (norm {float(total_norm) if total_norm is not None else 'n/a'})"
        )
        if self.on_nonfinite == "raise":
            raise FloatingPointError(
                f"non-finite {what} at step {self.global_step} on batch(es) from dataset(s) {sources}; the optimizer "
                "step was not taken and no checkpoint of these weights is written "
                "(trainer.on_nonfinite=skip skips such steps and counts them instead)"
            )
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None
        self.skipped_nonfinite += 1
        log.warning(
            "step %d: non-finite %s on dataset(s) %s; step skipped (%d so far)",
            self.global_step,
            what,
            sources,
            self.skipped_nonfinite,
        )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        for logger in self.trainer.loggers:  # rows up to this step reach the disk before the checkpoint does
            logger.save()
        checkpoint["bireco_rng"] = _get_rng_state()
        checkpoint["bireco_skipped_nonfinite"] = self.skipped_nonfinite

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._rng_to_restore = checkpoint.get("bireco_rng")
        self.skipped_nonfinite = checkpoint.get("bireco_skipped_nonfinite", 0)


def _get_rng_state() -> dict:
    """torch (CPU + every CUDA device) and Python RNG streams, as types `torch.load(weights_only=True)` accepts."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
