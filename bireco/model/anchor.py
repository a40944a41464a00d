"""Stage I's decoder side as functions of a backbone: the anchor of one side, the conditioned decoder input, the
reconstruction targets, and the CE of a target decoded from an anchor.

The Stage I LightningModule (bireco.stages.reconstruction), the in-training anchor probe and `bireco.inspect` all
use these, so a probe or an inspection decodes exactly as training did (docs/method.md §2, §6).
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from bireco.core.files import atomic_path, atomic_write_text
from bireco.model.backbone import Backbone, ReconstructionOutput
from bireco.model.pooling import last_token

ANCHOR_SOURCES = ("embedding", "constant", "shuffled")
DECODERS = ("shared", "frozen")
ANCHOR_SCALES = ("raw", "token_norm", "centered_token_norm", "batch_centered_token_norm", "affine")
CENTERED = ("centered_token_norm", "batch_centered_token_norm")  # the scales that keep a running mean
LABEL_MODES = ("paper", "released_code")
# (anchor side, target side) of each direction: the paper's two, and the two of `stage.target=self` (beyond the paper)
DIRECTIONS = {
    "q2d": ("query", "positive"),
    "d2q": ("positive", "query"),
    "q2q": ("query", "query"),
    "d2d": ("positive", "positive"),
}
# what the decoder regenerates: other (the paper: the pair's other side) | self (the side the anchor came from)
TARGETS = {"other": ("q2d", "d2q"), "self": ("q2q", "d2d")}
CONDITIONING_FILE = "stage1_anchor.json"  # in final/: how Stage I fed the anchor to its decoder
AFFINE_FILE = "stage1_anchor.safetensors"  # ... and, for anchor_scale=affine, the learned map


class AnchorConditioning(torch.nn.Module):
    """How Stage I's decoder receives the anchor: beyond the paper, opt-in, the embedding itself is unchanged.

    raw (the paper): the last-token state as it is (on SmolLM2 ~15x a token's norm, 91-94% one shared vector).
    token_norm: the anchor rescaled to `token_norm` (the median input-embedding row norm), so it enters the decoder
    at the scale the layers expect of an input position.
    centered_token_norm: a running mean of anchors is subtracted first (updated in training from detached batch
    means, momentum 0.01; the same vector in training and inference), then rescaled: what differs between pairs.
    batch_centered_token_norm: in training the batch's own mean is subtracted (with its gradient, as batch norm
    does), so a component every anchor of the batch shares reaches the decoder as nothing at all and cannot serve
    as a generic prompt; inference subtracts a running mean kept as above, at momentum 0.1.
    affine: rescaled as token_norm, then a learned affine map (H x H weight initialised to the identity, bias 0;
    the only new parameters, trained with Stage I, `stage.anchor_affine_lr`): the decoder-side analogue of the
    projector that one-token context compressors train, so the anchor can be moved to where the decoder reads.
    `lead_token_id`: one real token before the anchor (`[token; anchor; tokens]`), so the anchor does not sit at
    position 0, where the model keeps its attention sink. Gradients flow through every option to the encoder side.
    """

    def __init__(self, scale: str = "raw", token_norm: float = 1.0, hidden_size: int = 1,
                 lead_token_id: int | None = None, momentum: float | None = None):  # fmt: skip
        super().__init__()
        if scale not in ANCHOR_SCALES:
            raise ValueError(f"stage.anchor_scale={scale!r}; valid: {', '.join(ANCHOR_SCALES)}")
        # batch centering's running mean is only read in inference: it follows the anchors closely (0.1) so that
        # inference subtracts what training's batches last shared, not the start's anchors
        default = 0.1 if scale == "batch_centered_token_norm" else 0.01
        self.momentum = default if momentum is None else momentum
        self.scale, self.token_norm = scale, float(token_norm)
        self.lead_token_id = lead_token_id
        # in checkpoints only where used: the paper's layout keeps the state dict it always had
        keep = scale in CENTERED
        self.register_buffer("center", torch.zeros(hidden_size), persistent=keep)
        self.register_buffer("center_ready", torch.zeros((), dtype=torch.bool), persistent=keep)
        self.affine = None
        if scale == "affine":
            self.affine = torch.nn.Linear(hidden_size, hidden_size)
            with torch.no_grad():
                self.affine.weight.copy_(torch.eye(hidden_size))
                self.affine.bias.zero_()

    @property
    def is_raw(self) -> bool:
        return self.scale == "raw" and self.lead_token_id is None

    def forward(self, anchor: torch.Tensor) -> torch.Tensor:
        """(B, H) anchor -> (B, H) decoder-input vector."""
        if self.scale == "raw":
            return anchor
        if self.scale in CENTERED:
            if self.training:
                with torch.no_grad():
                    mean = anchor.detach().float().mean(0)
                    if bool(self.center_ready):
                        self.center.lerp_(mean, self.momentum)
                    else:
                        self.center.copy_(mean)
                        self.center_ready.fill_(True)
            if self.training and self.scale == "batch_centered_token_norm":
                anchor = anchor - anchor.mean(0, keepdim=True)
            else:
                anchor = anchor - self.center.to(anchor.dtype)
        norm = anchor.float().norm(dim=-1, keepdim=True).clamp_min(1e-6)
        anchor = anchor * (self.token_norm / norm).to(anchor.dtype)
        return anchor if self.affine is None else self.affine(anchor)

    def decoder_prefix(self, anchor: torch.Tensor, input_embeddings: torch.nn.Module) -> torch.Tensor:
        """(B, H) anchor -> (B, P, H) the positions before the target's tokens: `[anchor]` (the paper) or
        `[lead token; anchor]`, in the input embeddings' dtype."""
        table = input_embeddings.weight
        prefix = [self(anchor).to(table.dtype).unsqueeze(1)]
        if self.lead_token_id is not None:
            lead = torch.full(
                (anchor.shape[0], 1), self.lead_token_id, dtype=torch.long, device=anchor.device
            )
            prefix.insert(0, input_embeddings(lead))
        return torch.cat(prefix, dim=1)

    def record(self) -> dict:
        """What a checkpoint keeps so inspection decodes as training did."""
        out = {"scale": self.scale, "token_norm": self.token_norm, "lead_token_id": self.lead_token_id}
        if self.scale in CENTERED:
            out["center"] = self.center.tolist()
        return out

    @classmethod
    def from_record(cls, record: dict, affine: dict[str, torch.Tensor] | None = None) -> AnchorConditioning:
        center = record.get("center")
        hidden = len(center) if center else affine["weight"].shape[0] if affine else 1
        c = cls(
            record.get("scale", "raw"), record.get("token_norm", 1.0), hidden, record.get("lead_token_id")
        )
        if center:
            c.center.copy_(torch.tensor(center))
            c.center_ready.fill_(True)
        if c.affine is not None:
            c.affine.load_state_dict(affine)
        return c


def save_conditioning(checkpoint: str | os.PathLike, conditioning: AnchorConditioning,
                      frozen_decoder_model: dict | None = None) -> None:  # fmt: skip
    """final/stage1_anchor.json (+ stage1_anchor.safetensors for the learned affine), the weights first so a
    record never names a map that is not there. `frozen_decoder_model`: under `stage.decoder=frozen`, the
    `conf/model` node of the weights the run decoded with (the ones it started from), so inspection rebuilds them."""
    if conditioning.affine is not None:
        from safetensors.torch import save_file

        weights = {
            k: v.detach().float().cpu().contiguous() for k, v in conditioning.affine.state_dict().items()
        }
        with atomic_path(Path(checkpoint) / AFFINE_FILE) as tmp:
            save_file(weights, str(tmp))
    record = conditioning.record()
    if frozen_decoder_model is not None:
        record.update(decoder="frozen", decoder_model=frozen_decoder_model)
    atomic_write_text(Path(checkpoint) / CONDITIONING_FILE, json.dumps(record, indent=2))


def load_conditioning(checkpoint: str | os.PathLike) -> AnchorConditioning | None:
    """The Stage I decoder-input options a checkpoint recorded (final/stage1_anchor.json), None = the paper's."""
    path = Path(checkpoint) / CONDITIONING_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    affine = None
    if record.get("scale") == "affine":
        from safetensors.torch import load_file

        weights = Path(checkpoint) / AFFINE_FILE
        if not weights.is_file():
            raise FileNotFoundError(f"{path} records anchor_scale=affine but {weights} is missing")
        affine = load_file(str(weights))
    return AnchorConditioning.from_record(record, affine)


def load_decoder(checkpoint: str | os.PathLike) -> Backbone | None:
    """The frozen decoder a `stage.decoder=frozen` Stage I decoded with (rebuilt from its recorded model node),
    None when the checkpoint decoded with its own weights (the paper)."""
    path = Path(checkpoint) / CONDITIONING_FILE
    record = json.loads(path.read_text()) if path.is_file() else {}
    if record.get("decoder", "shared") != "frozen":
        return None
    return Backbone.from_config(record["decoder_model"])


def frozen_decoder_model(start_model: dict) -> dict:
    """The model node a frozen decoder is rebuilt from: Stage I's start (loaded by name: validation ensures it)."""
    if not start_model.get("name_or_path"):
        raise ValueError(
            "stage.decoder=frozen: the start model has no name_or_path to rebuild the decoder from"
        )
    return dict(start_model, gradient_checkpointing=False, compile=False)


class FrozenDecoder(torch.nn.Module):
    """`stage.decoder=frozen` (beyond the paper, which decodes with the weights it trains): a frozen copy of the
    backbone as Stage I starts. Only the encoder side (and the conditioning's map) train, so the decoder can learn
    neither the targets' language prior nor to discount a varying anchor: every fall of the reconstruction loss is
    information the embedding carries (docs/results.md §6: with shared weights the decoder learns to ignore it).
    Gradients still pass through it to the anchor. Always in eval mode; costs one more copy of the weights."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        compiled = getattr(backbone.decoder, "_compiled_call_impl", None) is not None
        self.backbone = copy.deepcopy(backbone)
        self.backbone.requires_grad_(False)
        if compiled:  # a deep copy would keep the original's compiled call: compile the copy afresh
            self.backbone.decoder._compiled_call_impl = None
            self.backbone.decoder.compile(dynamic=None)
        self.train(False)

    def train(self, mode: bool = True) -> FrozenDecoder:
        return super().train(False)


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


def conditioning_for(
    backbone: Backbone, scale: str = "raw", lead_token: str | None = None
) -> AnchorConditioning:
    """The conditioning `stage.anchor_scale` / `stage.anchor_lead_token` ask for, sized to this backbone."""
    return AnchorConditioning(
        scale,
        median_token_norm(backbone) if scale != "raw" else 1.0,
        backbone.hidden_size,
        lead_token_id_of(backbone, lead_token),
    )


def target_labels(side: dict, mode: str, reconstruct_instruction: bool) -> torch.Tensor:
    """-100 except on reconstruction targets, from the masks only.

    paper: the text tokens and the final EOS (plus the instruction if `reconstruct_instruction`).
    released_code: every real token except the final EOS (BOS, template and instruction included; the released
    code masks `labels == eos` with pad = eos, which drops the EOS target). Only the targets: the released code's
    attention mask, packing and positions are not reproduced (docs/method.md §2.4).
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
        raise ValueError(f"stage.labels={mode!r}; valid: {', '.join(LABEL_MODES)}")
    return torch.where(keep & attn, ids, torch.full_like(ids, -100))  # (B, T)


@dataclass
class AnchorReader:
    """Stage I's two halves for one backbone: `anchor(side)` and `decode(anchor, target)`.

    source: `embedding` (the paper: the last-token final-norm state), `constant` (the control: one fixed vector
    for every pair) or `shuffled` (a control: the embedding, which the Stage I step rolls by one pair in the batch;
    read here as `embedding`, so a probe measures the model's own anchors). labels / reconstruct_instruction: which
    target tokens carry the CE (target_labels).
    decoder: the backbone that decodes (`stage.decoder=frozen`: a FrozenDecoder's), None = `backbone` (the paper).
    """

    backbone: Backbone
    conditioning: AnchorConditioning
    source: str = "embedding"
    labels: str = "paper"
    reconstruct_instruction: bool = False
    decoder: Backbone | None = None

    def __post_init__(self):
        if self.source not in ANCHOR_SOURCES:
            raise ValueError(f"stage.anchor={self.source!r}; valid: {', '.join(ANCHOR_SOURCES)}")

    def anchor(self, side: dict) -> torch.Tensor:
        """(B, H) last-token final-norm hidden state (Stage I always reads the [EOS], whatever model.pooling);
        under the `stage.anchor=constant` control, one fixed vector for every pair, the mean input-token embedding
        (no encoder pass: the decoder learns the text alone). Not an all-zero vector: on SmolLM2 an exact zero
        prefix stays zero through every layer and its backward pass gives NaN gradients."""
        if self.source == "constant":
            table = self.backbone if self.decoder is None else self.decoder  # the decoder's own token scale
            return constant_anchor(table).expand(side["input_ids"].shape[0], -1)
        hidden = self.backbone.hidden_states(side["input_ids"], side["attention_mask"])  # (B, T, H)
        return last_token(hidden, side["attention_mask"])

    def decode(self, anchor: torch.Tensor, target: dict, per_row: bool = False) -> ReconstructionOutput:
        """CE of `target` decoded from `anchor` (B, H), through the conditioning (`per_row`: per pair too)."""
        labels = target_labels(target, self.labels, self.reconstruct_instruction)
        decoder = self.backbone if self.decoder is None else self.decoder
        prefix = self.conditioning.decoder_prefix(anchor, decoder.causal_lm.get_input_embeddings())
        return decoder.reconstruction_loss(
            prefix, target["input_ids"], target["attention_mask"], labels, per_row
        )


def constant_anchor(backbone: Backbone) -> torch.Tensor:
    """(H,) the `stage.anchor=constant` control's vector: the mean input-token embedding."""
    return backbone.causal_lm.get_input_embeddings().weight.detach().mean(0)
