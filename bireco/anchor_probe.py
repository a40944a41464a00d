"""Is my Stage I reading its anchor? The anchor probe, in training (a callback) and for a checkpoint.

On held-out pairs, Stage I's token CE per direction is measured twice, with each pair's own anchor and with the
anchor of another pair of the batch (rolled by one). `anchor_gain_<dir>` = CE(other) - CE(own), in nats per token:
0 means the decoder ignores the embedding and regenerates the text from its language prior alone, which lowers
the loss just as well (docs/results.md: on SmolLM2 at CPU budgets the gain stays ~0.003 while the CE falls).
The probe runs without gradients, in eval mode, on the stage's own anchor and decoder input (conditioning
included), and never touches the global RNG streams, so a run trains the same with or without it.
"""

from __future__ import annotations

import logging
import random

import lightning as L
import torch

log = logging.getLogger(__name__)

DIRECTIONS = {"q2d": ("query", "positive"), "d2q": ("positive", "query")}


def probe_batches(records: list[dict], collate, batch_size: int) -> list[dict]:
    """Records -> collated batches of at least two pairs (the other pair's anchor needs a second pair)."""
    batches = []
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        if len(chunk) >= 2:
            batches.append(collate(chunk))
    if not batches:
        raise ValueError(f"the anchor probe needs at least 2 pairs, got {len(records)}")
    return batches


@torch.no_grad()
def anchor_use(stage1, batches: list[dict], bf16: bool | None = None) -> dict[str, float]:
    """Token CE, accuracy and anchor gain per direction of a ReconstructionModule (its anchor() and decode())
    over collated `batches`; the backbone's train/eval mode is restored afterwards."""
    from bireco.precision import autocast, bf16_for

    backbone = stage1.backbone
    device = next(backbone.parameters()).device
    was_training = stage1.training
    stage1.eval()  # dropout off; the conditioning's running mean is read, not updated
    sums = {f"{k}_{d}": 0.0 for k in ("own", "other", "acc") for d in DIRECTIONS}
    tokens = dict.fromkeys(DIRECTIONS, 0)
    try:
        for batch in batches:
            sides = {k: {kk: vv.to(device) for kk, vv in batch[k].items()} for k in ("query", "positive")}
            with autocast(device, bf16_for(device, bf16)):
                for direction, (src, tgt) in DIRECTIONS.items():
                    anchor = stage1.anchor(sides[src])
                    own, other = (
                        stage1.decode(anchor, sides[tgt]),
                        stage1.decode(anchor.roll(1, 0), sides[tgt]),
                    )
                    sums[f"own_{direction}"] += float(own.loss) * own.n_tokens
                    sums[f"other_{direction}"] += float(other.loss) * other.n_tokens
                    sums[f"acc_{direction}"] += float(own.n_correct)
                    tokens[direction] += own.n_tokens
    finally:
        stage1.train(was_training)
    out = {}
    for d in DIRECTIONS:
        out[f"ce_{d}"] = sums[f"own_{d}"] / tokens[d]
        out[f"acc_{d}"] = sums[f"acc_{d}"] / tokens[d]
        out[f"anchor_gain_{d}"] = (sums[f"other_{d}"] - sums[f"own_{d}"]) / tokens[d]
    return out


def wordnet_dev_pairs(n: int, seed: int = 42, data_cfg=None) -> list[dict]:
    """`n` seeded pairs of the WordNet dev split (as `data=wordnet` loads them, instructions included)."""
    from omegaconf import OmegaConf

    from bireco.data.records import load_pairs

    data_cfg = data_cfg or OmegaConf.create({"format": "wordnet", "instructions": None, "datasets": None})
    pool = load_pairs(data_cfg, "dev")
    return [pool[i] for i in sorted(random.Random(seed).sample(range(len(pool)), min(n, len(pool))))]


def heldout_records(cfg, datamodule, n: int) -> list[dict]:
    """`n` pairs never trained on, seeded: WordNet's dev split, else the pairs the data module held out."""
    if cfg.data.format == "wordnet":
        return wordnet_dev_pairs(n, cfg.seed, cfg.data)
    return list(datamodule.dev_records[:n])


class AnchorProbe(L.Callback):
    """Logs `probe/{ce,acc,anchor_gain}_{q2d,d2q}` before the first optimizer step, every `every_n_steps` steps and
    after the last one, to every logger (CSV, wandb) at the optimizer step it ran after. `last` holds the latest
    values (bireco.train writes them into final/train_summary.json)."""

    def __init__(self, batches: list[dict], every_n_steps: int):
        self.batches, self.every = batches, every_n_steps
        self.last: dict[str, float] = {}
        self._done_at: int | None = None

    def probe(self, trainer: L.Trainer, module) -> None:
        step = trainer.global_step
        if step == self._done_at:
            return
        self._done_at = step
        self.last = {f"probe/{k}": v for k, v in anchor_use(module, self.batches).items()}
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
