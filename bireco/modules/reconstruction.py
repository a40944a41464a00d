"""Stage I: bidirectional reconstruction (paper-spec 2). EBQ2D decodes the document from the query's [EOS]
state; EBD2Q decodes the query from the document's. The anchor is the raw final-norm hidden state of the last
token (no normalisation), gradients flow through it, and the same weights encode and decode.

Schedules: `joint` (default) computes both directions on every batch, loss = a*L_Q2D + (1-a)*L_D2Q (Algorithm 1,
4 transformer passes; a direction of weight 0 is skipped). `alternate` trains one direction per micro-batch (2 passes) with a deterministic
interleave whose share of Q2D batches is exactly a, so the expected gradient is the paper's objective at half
the compute per pair. The interleave counter is checkpointed and identical on every rank.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import torch

from bireco.backbone import Backbone, ReconstructionOutput
from bireco.modules.common import StageModule
from bireco.pooling import last_token

Q2D, D2Q = "q2d", "d2q"
ANCHOR_SCALES = ("raw", "token_norm", "centered_token_norm")
CONDITIONING_FILE = (
    "stage1_anchor.json"  # in final/: how Stage I fed the anchor to its decoder (bireco.inspect)
)


class AnchorConditioning(torch.nn.Module):
    """How Stage I's decoder receives the anchor: beyond the paper, opt-in, the embedding itself is unchanged.

    raw (the paper): the last-token state as it is (on SmolLM2 ~15x a token's norm, 91-94% one shared vector).
    token_norm: the anchor rescaled to `token_norm` (the median input-embedding row norm), so it enters the decoder
    at the scale the layers expect of an input position.
    centered_token_norm: a running mean of anchors is subtracted first (updated in training from detached batch
    means, momentum 0.01; the same vector in training and inference), then rescaled: what differs between pairs.
    `lead_token_id`: one real token before the anchor (`[token; anchor; tokens]`), so the anchor does not sit at
    position 0, where the model keeps its attention sink. Gradients flow through every option to the encoder side.
    """

    def __init__(self, scale: str = "raw", token_norm: float = 1.0, hidden_size: int = 1,
                 lead_token_id: int | None = None, momentum: float = 0.01):  # fmt: skip
        super().__init__()
        if scale not in ANCHOR_SCALES:
            raise ValueError(f"stage.anchor_scale={scale!r}; valid: {', '.join(ANCHOR_SCALES)}")
        self.scale, self.token_norm, self.momentum = scale, float(token_norm), momentum
        self.lead_token_id = lead_token_id
        # in checkpoints only where used: the paper's layout keeps the state dict it always had
        keep = scale == "centered_token_norm"
        self.register_buffer("center", torch.zeros(hidden_size), persistent=keep)
        self.register_buffer("center_ready", torch.zeros((), dtype=torch.bool), persistent=keep)

    @property
    def is_raw(self) -> bool:
        return self.scale == "raw" and self.lead_token_id is None

    def forward(self, anchor: torch.Tensor) -> torch.Tensor:
        """(B, H) anchor -> (B, H) decoder-input vector."""
        if self.scale == "raw":
            return anchor
        if self.scale == "centered_token_norm":
            if self.training:
                with torch.no_grad():
                    mean = anchor.detach().float().mean(0)
                    if bool(self.center_ready):
                        self.center.lerp_(mean, self.momentum)
                    else:
                        self.center.copy_(mean)
                        self.center_ready.fill_(True)
            anchor = anchor - self.center.to(anchor.dtype)
        norm = anchor.float().norm(dim=-1, keepdim=True).clamp_min(1e-6)
        return anchor * (self.token_norm / norm).to(anchor.dtype)

    def record(self) -> dict:
        """What a checkpoint keeps so inspection decodes as training did."""
        out = {"scale": self.scale, "token_norm": self.token_norm, "lead_token_id": self.lead_token_id}
        if self.scale == "centered_token_norm":
            out["center"] = self.center.tolist()
        return out

    @classmethod
    def from_record(cls, record: dict) -> AnchorConditioning:
        center = record.get("center")
        c = cls(record.get("scale", "raw"), record.get("token_norm", 1.0), len(center) if center else 1,
                record.get("lead_token_id"))  # fmt: skip
        if center:
            c.center.copy_(torch.tensor(center))
            c.center_ready.fill_(True)
        return c


def median_token_norm(backbone: Backbone) -> float:
    """The median L2 norm of the input-embedding rows: the scale of an ordinary input position."""
    table = backbone.causal_lm.get_input_embeddings().weight.detach()
    return float(table.float().norm(dim=-1).median())


def lead_token_id_of(backbone: Backbone, token: str | None) -> int | None:
    """`stage.anchor_lead_token`: null (the paper), `bos` (the tokenizer's BOS), or one token of the tokenizer."""
    if token is None:
        return None
    tok = backbone.tokenizer
    name = tok.bos_token if token == "bos" else token
    token_id = tok.convert_tokens_to_ids(name) if name is not None else None
    if not isinstance(token_id, int) or token_id == tok.unk_token_id:
        raise ValueError(
            f"stage.anchor_lead_token={token!r} is not a single token of this tokenizer; "
            f"use null, bos ({tok.bos_token!r}) or a special token such as {tok.eos_token!r}"
        )
    return token_id


def direction_at(micro_step: int, alpha: float) -> str:
    """Q2D exactly when floor((k+1)*a) > floor(k*a): a share of a, evenly spread (a=0.2 -> 1 in 5)."""
    a = Fraction(alpha).limit_denominator(10_000)
    return Q2D if ((micro_step + 1) * a).__floor__() > (micro_step * a).__floor__() else D2Q


def target_labels(side: dict, mode: str, reconstruct_instruction: bool) -> torch.Tensor:
    """-100 except on reconstruction targets, from the masks only.

    paper: the text tokens and the final EOS (plus the instruction if `reconstruct_instruction`).
    released_code: every real token except the final EOS (BOS, template and instruction included; the
    released code masks `labels == eos` with pad = eos, which drops the EOS target; paper-spec 2.4).
    """
    ids, attn = side["input_ids"], side["attention_mask"].bool()
    if mode == "paper":
        keep = side["embed_mask"].bool()
        if reconstruct_instruction:
            keep = keep | side["instruction_mask"].bool()
    elif mode == "released_code":
        T = attn.shape[1]
        last = (attn * torch.arange(T, device=attn.device)).amax(1)  # (B,) final EOS position
        keep = attn.clone()
        keep[torch.arange(attn.shape[0], device=attn.device), last] = False
    else:
        raise ValueError(f"stage.labels={mode!r}; valid: paper, released_code")
    return torch.where(keep & attn, ids, torch.full_like(ids, -100))  # (B, T)


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
    ):
        super().__init__(backbone, optim, lr_horizon, on_nonfinite)
        if anchor not in ("embedding", "constant"):
            raise ValueError(f"stage.anchor={anchor!r}; valid: embedding, constant")
        self.anchor_source = anchor
        self.conditioning = AnchorConditioning(
            anchor_scale,
            median_token_norm(backbone) if anchor_scale != "raw" else 1.0,
            backbone.hidden_size,
            lead_token_id_of(backbone, anchor_lead_token),
        )
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"stage.alpha={alpha} must be in [0, 1]")
        if schedule not in ("alternate", "joint"):
            raise ValueError(f"stage.schedule={schedule!r}; valid: alternate, joint")
        self.alpha, self.schedule = alpha, schedule
        self.labels_mode, self.reconstruct_instruction = labels, reconstruct_instruction
        self.micro_step = 0  # drives the interleave; saved in checkpoints

    def anchor(self, side: dict) -> torch.Tensor:
        """(B, H) last-token final-norm hidden state (Stage I always reads the [EOS], whatever model.pooling);
        under the `stage.anchor=constant` control, one fixed vector for every pair, the mean input-token embedding
        (no encoder pass: the decoder learns the text alone). Not an all-zero vector: on SmolLM2 an exact zero
        prefix stays zero through every layer and its backward pass gives NaN gradients."""
        if self.anchor_source == "constant":
            table = self.backbone.causal_lm.get_input_embeddings().weight.detach()
            return table.mean(0).expand(side["input_ids"].shape[0], -1)
        hidden = self.backbone.hidden_states(side["input_ids"], side["attention_mask"])  # (B, T, H)
        return last_token(hidden, side["attention_mask"])

    def decode(self, anchor: torch.Tensor, target: dict) -> ReconstructionOutput:
        """CE of `target` decoded from `anchor` (B, H), through the stage's anchor conditioning."""
        labels = target_labels(target, self.labels_mode, self.reconstruct_instruction)
        return self.backbone.reconstruction_loss(
            self.conditioning(anchor), target["input_ids"], target["attention_mask"], labels,
            lead_token_id=self.conditioning.lead_token_id,
        )  # fmt: skip

    def q2d(self, batch: dict) -> ReconstructionOutput:
        return self.decode(self.anchor(batch["query"]), batch["positive"])

    def d2q(self, batch: dict) -> ReconstructionOutput:
        return self.decode(self.anchor(batch["positive"]), batch["query"])

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

    def step_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float | torch.Tensor]]:
        logs: dict[str, float | torch.Tensor] = {}
        if self.schedule == "joint" and self.alpha in (
            0.0,
            1.0,
        ):  # one direction has weight 0: skip its passes
            direction = Q2D if self.alpha == 1.0 else D2Q
            loss, logged, acc = self.global_mean(self.q2d(batch) if direction == Q2D else self.d2q(batch))
            logs.update(
                {f"train/loss_{direction}": logged, f"train/acc_{direction}": acc, "train/loss": logged}
            )
        elif self.schedule == "joint":
            (q, q_log, q_acc), (d, d_log, d_acc) = (
                self.global_mean(self.q2d(batch)),
                self.global_mean(self.d2q(batch)),
            )
            loss = self.alpha * q + (1 - self.alpha) * d
            logs.update(
                {
                    "train/loss_q2d": q_log,
                    "train/acc_q2d": q_acc,
                    "train/loss_d2q": d_log,
                    "train/acc_d2q": d_acc,
                }
            )
            logs["train/loss"] = self.alpha * q_log + (1 - self.alpha) * d_log
        else:
            direction = direction_at(self.micro_step, self.alpha)
            loss, logged, acc = self.global_mean(self.q2d(batch) if direction == Q2D else self.d2q(batch))
            logs.update(
                {f"train/loss_{direction}": logged, f"train/acc_{direction}": acc, "train/loss": logged}
            )
        return loss, logs

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, logs = self.step_loss(batch)
        self.micro_step += 1
        self.check_finite(loss, batch)
        B = batch["query"]["input_ids"].shape[0]
        for k, v in logs.items():  # already global means over all ranks
            self.log(k, v, on_step=True, prog_bar=k == "train/loss", batch_size=B)
        self.count_throughput(B, batch["query"], batch["positive"])
        self.log_truncation(batch)
        return loss

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["bireco_micro_step"] = self.micro_step

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.micro_step = checkpoint.get("bireco_micro_step", 0)
