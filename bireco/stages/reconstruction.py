"""Stage I: bidirectional reconstruction (docs/method.md §2). EBQ2D decodes the document from the query's [EOS]
state; EBD2Q decodes the query from the document's. The anchor is the raw final-norm hidden state of the last
token (no normalisation), gradients flow through it, and the same weights encode and decode.

`stage.decoder=frozen` (beyond the paper) decodes with a frozen copy of the start weights instead
(bireco.model.anchor.FrozenDecoder): only the encoder side learns, so the loss falls only as the embedding informs.
`stage.target=self` (beyond the paper) regenerates the side the anchor came from (Q2Q, D2D: an autoencoder), where
the language prior cannot predict the text and only the anchor can: a warm-up that may teach the decoder to read,
before the paper's Stage I (stage.init_from) on the same schedule and α.

Schedules: `joint` (default) computes both directions on every batch, loss = a*L_Q2D + (1-a)*L_D2Q (Algorithm 1,
4 transformer passes; a direction of weight 0 is skipped). `alternate` trains one direction per micro-batch (2 passes) with a deterministic
interleave whose share of Q2D batches is exactly a, so the expected gradient is the paper's objective at half
the compute per pair. The interleave counter is checkpointed and identical on every rank.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import torch

from bireco.model.anchor import DECODERS, DIRECTIONS, TARGETS, AnchorReader, FrozenDecoder, conditioning_for
from bireco.model.backbone import Backbone, ReconstructionOutput
from bireco.stages.base import StageModule, restore_buffers

Q2D, D2Q = "q2d", "d2q"
SCHEDULES = ("alternate", "joint")


def direction_at(micro_step: int, alpha: float) -> str:
    """Q2D exactly when floor((k+1)*a) > floor(k*a): a share of a, evenly spread (a=0.2 -> 1 in 5)."""
    a = Fraction(alpha).limit_denominator(10_000)
    return Q2D if ((micro_step + 1) * a).__floor__() > (micro_step * a).__floor__() else D2Q


class ReconstructionModule(StageModule):
    def __init__(
        self,
        backbone: Backbone,
        optim: Any,
        lr_horizon: int,
        alpha: float = 0.2,
        schedule: str = "joint",
        labels: str = "paper",
        reconstruct_instruction: bool = False,
        on_nonfinite: str = "raise",
        anchor: str = "embedding",
        anchor_scale: str = "raw",
        anchor_lead_token: str | None = None,
        anchor_affine_lr: float | None = None,
        anchor_detach: bool = False,
        decoder: str = "shared",
        target: str = "other",
    ):
        super().__init__(backbone, optim, lr_horizon, on_nonfinite)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"stage.alpha={alpha} must be in [0, 1]")
        if schedule not in SCHEDULES:
            raise ValueError(f"stage.schedule={schedule!r}; valid: {', '.join(SCHEDULES)}")
        self.alpha, self.schedule = alpha, schedule
        if target not in TARGETS:
            raise ValueError(f"stage.target={target!r}; valid: {', '.join(TARGETS)}")
        self.target = target
        # the log name of the query-anchor and the document-anchor direction: q2d / d2q, or q2q / d2d under self
        self.names = dict(zip((Q2D, D2Q), TARGETS[target]))
        if decoder not in DECODERS:
            raise ValueError(f"stage.decoder={decoder!r}; valid: {', '.join(DECODERS)}")
        # a submodule: the centred option's running mean is in the state dict and follows the module's device
        self.conditioning = conditioning_for(backbone, anchor_scale, anchor_lead_token)
        # stage.decoder=frozen: a submodule too (moved with the module, restored exactly on resume)
        self.frozen_decoder = FrozenDecoder(backbone) if decoder == "frozen" else None
        self.reader = AnchorReader(backbone, self.conditioning, anchor, labels, reconstruct_instruction,
                                   None if self.frozen_decoder is None else self.frozen_decoder.backbone)  # fmt: skip
        self.anchor_affine_lr = anchor_affine_lr
        self.anchor_detach = anchor_detach
        self.micro_step = 0  # drives the interleave; saved in checkpoints

    def on_fit_start(self):
        super().on_fit_start()
        if self.frozen_decoder is not None:  # the copy's rotary frequencies too (a deep copy: the same names)
            restore_buffers(self.frozen_decoder.backbone, self._rotary_fp32)

    def lr_of(self, param) -> float | None:
        """`stage.anchor_affine_lr` for the learned anchor map of `stage.anchor_scale=affine` (null = the stage's)."""
        affine = self.conditioning.affine
        if affine is not None and any(param is p for p in affine.parameters()):
            return self.anchor_affine_lr
        return None

    def anchor(self, side: dict) -> torch.Tensor:
        """(B, H) the anchor of one side (bireco.model.anchor.AnchorReader.anchor); `stage.anchor_detach`: without
        its gradient, so the reconstruction loss trains the decoder's reading but not the embedding (a diagnostic);
        `stage.anchor=shuffled`: pair i gets pair i-1's anchor (a control: the same steps and gradients into the
        encoder and decoder, but what an anchor says about its own pair cannot lower the loss)."""
        anchor = self.reader.anchor(side)
        if self.reader.source == "shuffled":
            anchor = anchor.roll(1, 0)
        return anchor.detach() if self.anchor_detach else anchor

    def decode(self, anchor: torch.Tensor, target: dict) -> ReconstructionOutput:
        """CE of `target` decoded from `anchor` (B, H), through the stage's anchor conditioning."""
        return self.reader.decode(anchor, target)

    def q2d(self, batch: dict) -> ReconstructionOutput:
        """The query's anchor decodes the document (the paper), or the query itself under `stage.target=self`."""
        src, tgt = DIRECTIONS[self.names[Q2D]]
        return self.decode(self.anchor(batch[src]), batch[tgt])

    def d2q(self, batch: dict) -> ReconstructionOutput:
        """The document's anchor decodes the query (the paper), or the document itself under `stage.target=self`."""
        src, tgt = DIRECTIONS[self.names[D2Q]]
        return self.decode(self.anchor(batch[src]), batch[tgt])

    @property
    def probe_directions(self) -> tuple[str, ...]:
        """What the anchor probe measures: the paper's two directions, and the ones this stage trains."""
        return tuple(dict.fromkeys(("q2d", "d2q", *TARGETS[self.target])))

    def global_mean(self, out: ReconstructionOutput) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss to back-propagate, global token-mean loss, global accuracy). With several ranks each rank's sum is
        divided by the token count of the whole global batch (times the world size, which DDP's gradient averaging
        divides out), so the update is the one a single process would make on the global batch."""
        world = self.trainer.world_size if self._trainer is not None else 1
        if world == 1:
            return out.loss, out.loss.detach(), out.accuracy
        n = torch.tensor([float(out.n_tokens)], device=out.loss.device)
        stats = self.trainer.strategy.reduce(
            torch.cat([n, (out.loss.detach() * out.n_tokens)[None], out.n_correct.float()[None]]),
            reduce_op="sum",
        )
        n_global = stats[0]
        return out.loss * (out.n_tokens * world / n_global), stats[1] / n_global, stats[2] / n_global

    def direction_logs(
        self, direction: str, loss: torch.Tensor, acc: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """A direction's loss and accuracy under the name it trains as (q2d / d2q, or q2q / d2d)."""
        return {f"train/loss_{self.names[direction]}": loss, f"train/acc_{self.names[direction]}": acc}

    def step_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float | torch.Tensor]]:
        if self.schedule == "joint" and self.alpha not in (0.0, 1.0):
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
        if self.schedule == "joint":
            direction = Q2D if self.alpha == 1.0 else D2Q
        else:
            direction = direction_at(self.micro_step, self.alpha)
        loss, logged, acc = self.global_mean(self.q2d(batch) if direction == Q2D else self.d2q(batch))
        return loss, {**self.direction_logs(direction, logged, acc), "train/loss": logged}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        with self.training_forward_casts():
            loss, logs = self.step_loss(batch)
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
