"""Stage I: bidirectional reconstruction, the paper's Algorithm 1 (docs/method.md §2).

For a batch of (query, document) pairs:

    e_Q, e_D = anchor(query), anchor(document)        final-norm hidden state of each side's last token ([EOS])
    L_Q2D    = CE(document | [e_Q; document tokens])  EBQ2D: the query's anchor decodes the document
    L_D2Q    = CE(query    | [e_D; query tokens])     EBD2Q: the document's anchor decodes the query
    loss     = alpha * L_Q2D + (1 - alpha) * L_D2Q    alpha = stage.alpha (paper: 0.2)

The anchor is raw (no normalisation), its gradient flows back into the encoder pass, and the same weights encode and
decode; each CE is the token mean over the whole global batch's targets (bireco.model.anchor has both halves).

Schedules: `joint` (the paper, default) computes both directions on every batch (4 transformer passes; a direction of
weight 0 is skipped). `alternate` trains one direction per micro-batch (2 passes) with a deterministic interleave whose
share of Q2D batches is exactly alpha, so the expected gradient is the paper's objective at half the compute per pair.
The interleave counter is checkpointed and identical on every rank.

What goes beyond the paper (the controls, a frozen decoder) is bireco.stages.reconstruction_controls.
"""

from __future__ import annotations

from fractions import Fraction

import torch

from bireco.config.schema import ReconstructionStageConfig, Schedule
from bireco.model.anchor import AnchorReader
from bireco.model.backbone import Backbone, ReconstructionOutput
from bireco.stages.base import StageModule

Q2D, D2Q = "q2d", "d2q"


def direction_at(micro_step: int, alpha: float) -> str:
    """Q2D exactly when floor((k+1)*a) > floor(k*a): a share of a, evenly spread (a=0.2 -> 1 in 5)."""
    a = Fraction(alpha).limit_denominator(10_000)
    return Q2D if ((micro_step + 1) * a).__floor__() > (micro_step * a).__floor__() else D2Q


class ReconstructionModule(StageModule):
    """Stage I from its typed config node (`stage=reconstruction`): alpha, schedule, labels and the optimizer."""

    def __init__(
        self,
        backbone: Backbone,
        stage: ReconstructionStageConfig,
        lr_horizon: int,
        on_nonfinite: str = "raise",
    ):
        super().__init__(backbone, stage.optim, lr_horizon, on_nonfinite)
        self.alpha, self.schedule = stage.alpha, stage.schedule
        self.reader = AnchorReader(backbone, stage.labels, stage.reconstruct_instruction)
        self.micro_step = 0  # drives the interleave; saved in checkpoints

    def anchor(self, side: dict) -> torch.Tensor:
        """(B, H) the anchor a training step decodes from: the final-norm state of the side's own last token."""
        return self.reader.anchor(side)

    def decode(self, anchor: torch.Tensor, target: dict) -> ReconstructionOutput:
        """CE of the `target` side decoded from `anchor` (B, H), teacher forced."""
        return self.reader.decode(anchor, target)

    def q2d(self, batch: dict) -> ReconstructionOutput:
        """EBQ2D: the query's anchor decodes the document."""
        return self.decode(self.anchor(batch["query"]), batch["positive"])

    def d2q(self, batch: dict) -> ReconstructionOutput:
        """EBD2Q: the document's anchor decodes the query."""
        return self.decode(self.anchor(batch["positive"]), batch["query"])

    def global_mean(self, out: ReconstructionOutput) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss to back-propagate, global token-mean loss, global accuracy). With several ranks each rank's sum is
        divided by the token count of the whole global batch (times the world size, which DDP's gradient averaging
        divides out), so the update is the one a single process would make on the global batch."""
        world = self.world_size
        if world == 1:
            return out.loss, out.loss.detach(), out.accuracy
        n = torch.tensor([float(out.n_tokens)], device=out.loss.device)
        stats = self.trainer.strategy.reduce(
            torch.cat([n, (out.loss.detach() * out.n_tokens)[None], out.n_correct.float()[None]]),
            reduce_op="sum",
        )
        n_global = stats[0]
        return out.loss * (out.n_tokens * world / n_global), stats[1] / n_global, stats[2] / n_global

    @staticmethod
    def direction_logs(direction: str, loss: torch.Tensor, acc: torch.Tensor) -> dict[str, torch.Tensor]:
        return {f"train/loss_{direction}": loss, f"train/acc_{direction}": acc}

    def step_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float | torch.Tensor]]:
        if self.schedule == Schedule.joint and self.alpha not in (0.0, 1.0):
            (q, q_log, q_acc), (d, d_log, d_acc) = (
                self.global_mean(self.q2d(batch)),
                self.global_mean(self.d2q(batch)),
            )
            loss = self.alpha * q + (1 - self.alpha) * d
            logs = {**self.direction_logs(Q2D, q_log, q_acc), **self.direction_logs(D2Q, d_log, d_acc)}
            logs["train/loss"] = self.alpha * q_log + (1 - self.alpha) * d_log
            return loss, logs
        # one direction per batch: the alternate schedule's, or the joint one's where the other has weight 0 (its
        # passes skipped)
        if self.schedule == Schedule.joint:
            direction = Q2D if self.alpha == 1.0 else D2Q
        else:
            direction = direction_at(self.micro_step, self.alpha)
        loss, logged, acc = self.global_mean(self.q2d(batch) if direction == Q2D else self.d2q(batch))
        return loss, {**self.direction_logs(direction, logged, acc), "train/loss": logged}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, logs = self.forward_step(self.step_loss, batch)
        self.micro_step += 1
        self.nonfinite.record(loss, batch)
        B = batch["query"]["input_ids"].shape[0]
        for k, v in logs.items():  # already global means over all ranks
            self.log(k, v, on_step=True, prog_bar=k == "train/loss", batch_size=B)
        self.throughput.count(B, batch["query"], batch["positive"])
        self.log_truncation(batch)
        return loss

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["bireco_micro_step"] = self.micro_step

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.micro_step = checkpoint.get("bireco_micro_step", 0)
