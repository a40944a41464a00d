"""Stage I's two halves for one backbone, as the paper's Algorithm 1 has them (docs/method.md §2):

    e = f(side)[last]                         the anchor: the final-norm hidden state of the side's last token ([EOS]),
                                              raw (no normalisation, no projection), its gradient flowing back
    CE(other side | [e; its tokens])          the anchor as one input position (`inputs_embeds`), teacher forcing,
                                              the model's own LM head, CE on the reconstruction targets only

The Stage I LightningModule (bireco.stages.reconstruction), the in-training anchor probe and `bireco.inspect` all
read and decode through an `AnchorReader`, so a probe or an inspection decodes exactly as training did. What goes
beyond the paper (the controls, a frozen decoder) is bireco.model.anchor_controls.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bireco.core.choices import Choice
from bireco.model.backbone import Backbone, ReconstructionOutput
from bireco.model.pooling import last_token

# (anchor side, target side) of each direction: EBQ2D decodes the document from the query's anchor, EBD2Q the query
# from the document's
DIRECTIONS = {"q2d": ("query", "positive"), "d2q": ("positive", "query")}


class Labels(Choice):
    """`stage.labels`: which target tokens carry the CE (target_labels)."""

    paper = "paper"
    released_code = "released_code"


def target_labels(side: dict, mode: str, reconstruct_instruction: bool) -> torch.Tensor:
    """-100 except on reconstruction targets, from the masks only.

    paper: the text tokens and the final EOS (plus the instruction if `reconstruct_instruction`).
    released_code: every real token except the final EOS (BOS, template and instruction included; the released
    code masks `labels == eos` with pad = eos, which drops the EOS target). Only the targets: the released code's
    attention mask, packing and positions are not reproduced (docs/method.md §2.4).
    """
    ids, attn = side["input_ids"], side["attention_mask"].bool()
    if mode == Labels.paper:
        keep = side["embed_mask"].bool()
        if reconstruct_instruction:
            keep = keep | side["instruction_mask"].bool()
    else:
        T = attn.shape[1]
        last = (attn * torch.arange(T, device=attn.device)).amax(1)  # (B,) final EOS position
        keep = attn.clone()
        keep[torch.arange(attn.shape[0], device=attn.device), last] = False
    return torch.where(keep & attn, ids, torch.full_like(ids, -100))  # (B, T)


@dataclass
class AnchorReader:
    """`anchor(side)` and `decode(anchor, target)` of one backbone: Stage I as the paper trains it (the same weights
    encode and decode). `labels` / `reconstruct_instruction`: which target tokens carry the CE (target_labels)."""

    backbone: Backbone
    labels: str = Labels.paper
    reconstruct_instruction: bool = False

    @property
    def decoder(self) -> Backbone:
        """The backbone that decodes: the one that encodes (the paper's shared weights)."""
        return self.backbone

    def anchor(self, side: dict) -> torch.Tensor:
        """(B, H) the final-norm hidden state of each row's last token (Stage I always reads the [EOS], whatever
        model.pooling)."""
        hidden = self.backbone.hidden_states(side["input_ids"], side["attention_mask"])  # (B, T, H)
        return last_token(hidden, side["attention_mask"])

    def decode(self, anchor: torch.Tensor, target: dict, per_row: bool = False) -> ReconstructionOutput:
        """CE of `target` decoded from `anchor` (B, H) (`per_row`: per pair too, without gradient)."""
        labels = target_labels(target, self.labels, self.reconstruct_instruction)
        return self.decoder.reconstruction_loss(
            anchor, target["input_ids"], target["attention_mask"], labels, per_row
        )
