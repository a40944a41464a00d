"""Per-optimizer-step bookkeeping both stage modules share, kept apart from the LightningModule's hooks:

- `NonFiniteGuard`: records each micro-batch's loss finiteness and sources; once per optimizer step, after
  backward, decides (the same on every rank) whether the step may reach the weights.
- `Throughput`: real (non-pad) tokens and pairs per second between optimizer steps, counted on the device.
- `rng_state` / `set_rng_state`: the random streams an exact resume restores.
"""

from __future__ import annotations

import logging
import random
import time

import torch

log = logging.getLogger(__name__)


class NonFiniteGuard:
    """Non-finite loss or gradient: the optimizer step never reaches the weights. raise: stop with the step and
    source datasets (no checkpoint of broken weights can follow). skip: drop every gradient (AdamW leaves parameters
    without one untouched) and count the step (`skipped`, logged as train/skipped_nonfinite)."""

    def __init__(self, mode: str = "raise"):
        self.mode = mode
        self.skipped = 0
        self._sources: set[str] = set()  # source datasets of the micro-batches since the last optimizer step
        self._loss_finite: torch.Tensor | None = None

    def record(self, loss: torch.Tensor, batch: dict) -> None:
        """This micro-batch's loss finiteness and sources. The check happens once per optimizer step in `check`,
        after backward (one host sync per step; under DDP every rank must join the backward anyway)."""
        self._sources.update(batch.get("dataset", ["?"]))
        finite = torch.isfinite(loss.detach())
        self._loss_finite = finite if self._loss_finite is None else self._loss_finite & finite

    def check(self, optimizer, total_norm: torch.Tensor | None, step: int, reduce=None) -> None:
        """The decision for this optimizer step. The gradient norm is taken after the DDP all-reduce; `reduce` (the
        strategy's sum over ranks, None on one process) makes every rank reach the same decision."""
        sources, self._sources = sorted(self._sources), set()
        loss_ok, self._loss_finite = self._loss_finite, None
        checks = [
            t for t in (loss_ok, None if total_norm is None else torch.isfinite(total_norm)) if t is not None
        ]
        if not checks:
            return
        bad = (~torch.stack(checks).all()).float()
        if reduce is not None:  # one decision for all ranks
            bad = reduce(bad)
        if not bool(bad):
            return
        if loss_ok is not None and not bool(loss_ok):
            what = "loss"
        else:
            what = f"gradient (norm {float(total_norm) if total_norm is not None else 'n/a'})"
        if self.mode == "raise":
            raise FloatingPointError(
                f"non-finite {what} at step {step} on batch(es) from dataset(s) {sources}; the optimizer "
                "step was not taken and no checkpoint of these weights is written "
                "(trainer.on_nonfinite=skip skips such steps and counts them instead)"
            )
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None
        self.skipped += 1
        log.warning("step %d: non-finite %s on dataset(s) %s; step skipped (%d so far)", step, what, sources,
                    self.skipped)  # fmt: skip


class Throughput:
    """Pairs and real tokens since the last optimizer step; token counts stay on the device (no per-step host
    sync) until they are logged."""

    def __init__(self):
        self._t0: float | None = None
        self._pairs = 0
        self._tokens = 0

    def start(self) -> None:
        if self._t0 is None:
            self._t0 = time.perf_counter()

    def count(self, pairs: int, *sides: dict) -> None:
        self._pairs += pairs
        self._tokens = self._tokens + sum(s["attention_mask"].sum() for s in sides)

    def rates(self, world: int) -> dict[str, float | torch.Tensor]:
        """pairs/s, tokens/s (over all ranks) and the step's seconds since the last call; restarts the count."""
        out = {}
        if self._t0 is not None:
            dt = max(time.perf_counter() - self._t0, 1e-9)
            out = {"train/pairs_per_s": self._pairs * world / dt, "train/tokens_per_s": self._tokens * world / dt,
                   "train/step_s": dt}  # fmt: skip
        self._t0, self._pairs, self._tokens = time.perf_counter(), 0, 0
        return out


def rng_state() -> dict:
    """torch (CPU + every CUDA device) and Python RNG streams, as types `torch.load(weights_only=True)` accepts."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
