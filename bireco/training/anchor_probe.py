"""Is my Stage I reading its anchor? The anchor probe as a training callback.

Every `stage.probe.every_n_steps` optimizer steps it measures, on held-out pairs never trained on, the anchor gain
of bireco.evaluation.anchor_diagnostics.anchor_use (CE with another pair's anchor - CE with the pair's own, nats per
token; 0 = the anchor is not read). It runs without gradients, in eval mode, on the stage's own anchor and decoder
input (conditioning included), and never touches the global RNG streams, so a run trains the same with or without.
"""

from __future__ import annotations

import logging

import lightning as L

from bireco.evaluation.anchor_diagnostics import anchor_use, wordnet_dev_pairs

log = logging.getLogger(__name__)


def heldout_records(cfg, datamodule, n: int) -> list[dict]:
    """`n` pairs never trained on, seeded: WordNet's dev split, else the pairs the data module held out."""
    if cfg.data.format == "wordnet":
        return wordnet_dev_pairs(n, cfg.seed, cfg.data)
    return list(datamodule.dev_records[:n])


class AnchorProbe(L.Callback):
    """Logs `probe/{ce,acc,anchor_gain}_{q2d,d2q}` (and `_{q2q,d2d}` under `stage.target=self`) before the first
    optimizer step, every `every_n_steps` steps and after the last one, to every logger (CSV, wandb) at the optimizer step it ran after. `last` holds the latest
    values (bireco.training.run writes them into final/train_summary.json)."""

    def __init__(self, batches: list[dict], every_n_steps: int):
        self.batches, self.every = batches, every_n_steps
        self.last: dict[str, float] = {}
        self._done_at: int | None = None

    def probe(self, trainer: L.Trainer, module) -> None:
        step = trainer.global_step
        if step == self._done_at:
            return
        self._done_at = step
        use = anchor_use(module.reader, self.batches, directions=module.probe_directions)
        self.last = {f"probe/{k}": v for k, v in use.items()}
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(self.last, step=step)
            log.info(
                "step %d anchor probe: gain q2d %.3f / d2q %.3f nats per token",
                step, self.last["probe/anchor_gain_q2d"], self.last["probe/anchor_gain_d2q"],
            )  # fmt: skip

    def on_train_start(self, trainer, module):
        self.probe(trainer, module)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step % self.every == 0:
            self.probe(trainer, module)

    def on_train_end(self, trainer, module):
        self.probe(trainer, module)
