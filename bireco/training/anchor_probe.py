"""Is my Stage I reading its anchor? The anchor probe as a training callback.

Every `stage.probe.every_n_steps` optimizer steps it measures, on held-out pairs never trained on, the anchor gain
of bireco.evaluation.anchor_diagnostics.anchor_use (CE with another pair's anchor of the same pair set - CE with the
pair's own, nats per token; 0 = the anchor is not read), with a 95% bootstrap interval over the pairs, overall and
per pair set. The pairs are drawn by `stage.probe.seed`, not the training seed, so runs of different seeds are
probed on the same pairs. It runs without gradients, in eval mode, reads and decodes as the stage does (a control's
anchor, a frozen decoder), and never touches the global RNG streams, so a run trains the same with or without.
"""

from __future__ import annotations

import logging

import lightning as L

from bireco.evaluation.anchor_diagnostics import anchor_use, gain_text, wordnet_dev_pairs

log = logging.getLogger(__name__)


def heldout_records(cfg, datamodule, n: int) -> list[dict]:
    """`n` pairs never trained on, drawn by `stage.probe.seed` (whatever the training seed): WordNet's dev split, else
    the pairs the data module held out (held out with a fixed seed too)."""
    if cfg.data.format == "wordnet":
        return wordnet_dev_pairs(n, cfg.stage.probe.seed, cfg.data)
    import random

    held = list(datamodule.dev_records)
    return [
        held[i]
        for i in sorted(random.Random(cfg.stage.probe.seed).sample(range(len(held)), min(n, len(held))))
    ]


class AnchorProbe(L.Callback):
    """Logs `probe/{ce,acc,anchor_gain}_{q2d,d2q}`, each gain's interval
    (`_lo`, `_hi`) and the same per pair set (`probe/<set>/...`) before the first optimizer step, every
    `every_n_steps` steps and after the last one, to every logger (CSV, wandb) at the optimizer step it ran after.
    `last` holds the latest values (bireco.training.run writes them into final/train_summary.json)."""

    def __init__(self, batches: list[dict], every_n_steps: int, seed: int = 0):
        self.batches, self.every, self.seed = batches, every_n_steps, seed
        self.last: dict[str, float] = {}
        self._done_at: int | None = None

    def probe(self, trainer: L.Trainer, module) -> None:
        step = trainer.global_step
        if step == self._done_at:
            return
        self._done_at = step
        from functools import partial

        from bireco.cpu.casts import run_with

        # the run's weight copies, if any (the CPU fast path), cast once per probe
        run = partial(run_with, module, module.weight_casts.inference(module))
        use = anchor_use(module.reader, self.batches, seed=self.seed, run=run)
        self.last = {f"probe/{k}": v for k, v in use.items()}
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(self.last, step=step)
            log.info("step %d anchor probe on %d held-out pairs: gain %s nats per token", step, use["pairs"],
                     " / ".join(f"{d} {gain_text(use, d)}" for d in ("q2d", "d2q")))  # fmt: skip

    def on_train_start(self, trainer, module):
        self.probe(trainer, module)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step % self.every == 0:
            self.probe(trainer, module)

    def on_train_end(self, trainer, module):
        self.probe(trainer, module)
