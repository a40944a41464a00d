"""The one model module both stages share: a Hugging Face causal LM used as encoder *and* decoder.

- `embed(...)`: hidden states -> pooled vector, padding-side agnostic (position ids from the mask).
- `reconstruction_loss(anchor, ...)`: the anchor (Stage I's decoder prefix) is prepended as one input position
  (`inputs_embeds`) and the other side is decoded with teacher forcing; CE only at label positions.
- `save(...)` / `Backbone.load(...)`: Hugging Face format (full, adapter or merged), plus a small
  `bireco.json` that records the text format and pooling so a checkpoint is self-describing
  (bireco.model.checkpoint writes it, bireco.model.loading reads it).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bireco.core.choices import Choice
from bireco.losses.chunked_ce import chunked_cross_entropy, token_cross_entropy
from bireco.model.checkpoint import checkpoint_weights, save
from bireco.model.loading import as_dict, backbone_parts, checkpoint_model_cfg
from bireco.model.pooling import pool
from bireco.model.text_format import TextFormat

__all__ = ["Attention", "Backbone", "ReconstructionOutput", "checkpoint_weights"]


class Attention(Choice):
    """`model.attention` of embedding passes (decoding is always causal)."""

    causal = "causal"
    bidirectional = "bidirectional"


@dataclass
class ReconstructionOutput:
    loss: torch.Tensor  # token-mean CE over label positions
    n_tokens: int
    n_correct: torch.Tensor  # on the device: reading it would cost a host sync per step
    # per row (pair), with `per_row=True` (no gradient): summed CE, target tokens, correct argmax predictions
    row_loss: torch.Tensor | None = None  # (B,)
    row_tokens: torch.Tensor | None = None  # (B,)
    row_correct: torch.Tensor | None = None  # (B,)

    @property
    def accuracy(self) -> torch.Tensor:
        return self.n_correct.float() / max(self.n_tokens, 1)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """0, 1, 2, ... over real tokens whatever the padding side (pads get 0; they are masked anyway)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)


def right_padding_order(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) column order that moves every row's real tokens to the front, keeping their order."""
    return torch.sort((attention_mask == 0).to(torch.int8), dim=1, stable=True).indices


def to_right_padding(*tensors: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
    """Move real tokens of every row to the front (stable), so 'next position' means 'next real token'."""
    order = right_padding_order(attention_mask)  # (B, T)
    return [t.gather(1, order) for t in (*tensors, attention_mask)]


class Backbone(nn.Module):
    """A causal LM + tokenizer + text format + pooling. Stage modules call only this interface."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        text_format: TextFormat,
        pooling: str = "last",
        attention: str = "causal",
        padding_side: str = "left",
        ce_chunk_size: int = 4096,
        attn_implementation: str = "sdpa",
    ):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.text_format = text_format
        self.pooling = pooling
        self.attention = attention
        self.padding_side = padding_side
        self.ce_chunk_size = ce_chunk_size
        self.attn_implementation = attn_implementation  # as loaded (the CPU fast path switches it for a run)
        text_format.eos_id(tokenizer)  # fail early if the family's EOS is not a token

    # ------------------------------------------------------------------ construction and persistence
    @classmethod
    def from_config(cls, model_cfg: Any, lora_cfg: Any | None = None) -> Backbone:
        """Build from a `conf/model` node: load by hub id / local path, or random-init from an inline config."""
        backbone = cls(**backbone_parts(model_cfg, lora_cfg))
        if as_dict(model_cfg).get(
            "compile", False
        ):  # in place: parameter names, saving and LoRA are unchanged
            backbone.decoder.compile(dynamic=None)
        return backbone

    @classmethod
    def load(cls, path: str | os.PathLike, dtype: str = "auto", lora_cfg: Any | None = None) -> Backbone:
        """Load a directory written by `save` (any mode); text format and pooling come from bireco.json."""
        return cls.from_config(checkpoint_model_cfg(path, dtype), lora_cfg)

    def metadata(self) -> dict:
        """What bireco.json records: everything but the weights that decides how a text is embedded."""
        return {
            "model": {
                "text_format": asdict(self.text_format),
                "pooling": self.pooling,
                "attention": self.attention,
                "padding_side": self.padding_side,
                "ce_chunk_size": self.ce_chunk_size,
            },
        }

    def save(self, path: str | os.PathLike, mode: str = "full") -> Path:
        """A Hugging Face directory + bireco.json, written atomically (bireco.model.checkpoint.save)."""
        return save(self, path, mode)

    # ------------------------------------------------------------------ accessors
    @property
    def causal_lm(self) -> nn.Module:
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    @property
    def decoder(self) -> nn.Module:
        """The transformer body (final norm included, no LM head); LoRA layers are injected in place."""
        return self.causal_lm.get_decoder()

    @property
    def lm_head(self) -> nn.Module:
        return self.causal_lm.get_output_embeddings()

    @property
    def hidden_size(self) -> int:
        return self.causal_lm.config.hidden_size

    @property
    def is_lora(self) -> bool:
        return hasattr(self.model, "peft_config")

    @property
    def pad_id(self) -> int:
        pid = self.tokenizer.pad_token_id
        return pid if pid is not None else self.text_format.eos_id(self.tokenizer)

    # ------------------------------------------------------------------ forward passes
    @contextlib.contextmanager
    def _attention_mode(self, mode: str):
        """Bidirectional attention for embedding passes: transformers reads `config.is_causal` when it builds
        the mask, and attention modules read `is_causal` when the mask is skipped."""
        if mode == "causal":
            yield
            return
        cfg = self.causal_lm.config
        modules = [
            m for m in self.decoder.modules() if hasattr(m, "is_causal") and isinstance(m.is_causal, bool)
        ]
        old = getattr(cfg, "is_causal", None), [m.is_causal for m in modules]
        cfg.is_causal = False
        for m in modules:
            m.is_causal = False
        try:
            yield
        finally:
            if old[0] is None:
                del cfg.is_causal
            else:
                cfg.is_causal = old[0]
            for m, v in zip(modules, old[1]):
                m.is_causal = v

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (B, T, H) final-norm hidden states, in the input's layout (any padding side).

        Rows run right-padded whatever the input: under causal attention a left pad attends to no position at all,
        and such fully masked rows give NaN gradients in some fused SDPA kernels (seen in bf16 on an H100).
        Positions come from the mask, so the values do not depend on the padding side."""
        order = right_padding_order(attention_mask)  # (B, T) real first
        ids, mask = input_ids.gather(1, order), attention_mask.gather(1, order)
        with self._attention_mode(self.attention):
            out = self.decoder(
                input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=False
            )
        hidden = out.last_hidden_state  # (B, T, H) right-padded
        back = order.argsort(dim=1).unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
        return hidden.gather(1, back)

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """One side's batch -> (B, H) raw (unnormalised) embeddings (also the module's forward)."""
        hidden = self.hidden_states(batch["input_ids"], batch["attention_mask"])  # (B, T, H)
        return pool(self.pooling, hidden, batch["attention_mask"], batch.get("embed_mask"))

    forward = embed

    def reconstruction_loss(
        self,
        anchor: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        per_row: bool = False,
    ) -> ReconstructionOutput:
        """Decode `input_ids` from `[anchor; tokens]` (causal), CE on positions whose label is not -100
        (Algorithm 1: the anchor enters as one input position, in the token-embedding space, no projection).

        Args:
            anchor: (B, H) one vector per row, placed before the target's tokens via `inputs_embeds`. Gradients flow
                through it to the encoder side.
            input_ids / attention_mask / labels: (B, T) target side, any padding side; labels -100 = ignore.
            per_row: also each row's summed CE, token count and correct predictions, without gradient (the anchor
                probe's per-pair statistics).

        The last prefix position (the anchor slot) predicts the target side's token 0 and token t predicts token
        t + 1. With a chat template token 0 is the template's first token (label -100 under the paper labels), so
        the anchor slot itself predicts no target; the first *text* token is predicted from the template and
        instruction tokens, which see the anchor through attention.
        """
        ids, labels, mask = to_right_padding(input_ids, labels, attention_mask=attention_mask)  # (B, T) each
        B, T = ids.shape
        tok = self.causal_lm.get_input_embeddings()(ids)  # (B, T, H)
        inputs = torch.cat([anchor.to(tok.dtype).unsqueeze(1), tok], dim=1)  # (B, 1 + T, H)
        full_mask = torch.cat([mask.new_ones(B, 1), mask], dim=1)
        out = self.decoder(
            inputs_embeds=inputs,
            attention_mask=full_mask,
            position_ids=position_ids_from_mask(full_mask),
            use_cache=False,
        )
        # (B, T, H): the anchor slot predicts target token 0, token t predicts token t + 1
        hidden = out.last_hidden_state[:, :T]
        keep = labels != -100  # (B, T)
        n = int(keep.sum())
        if n == 0:
            raise ValueError("reconstruction batch has no target tokens (all labels are -100)")
        # Gemma-2: the model's own logit softcapping
        softcap = getattr(self.causal_lm.config, "final_logit_softcapping", None)
        if per_row:
            ce, hit = token_cross_entropy(
                hidden[keep], labels[keep], self.lm_head, self.ce_chunk_size, softcap
            )
            row = keep.nonzero()[:, 0]  # (N,) the row of each target token
            row_loss = ce.new_zeros(B).index_add_(0, row, ce)
            row_correct = ce.new_zeros(B).index_add_(0, row, hit.float())
            return ReconstructionOutput(loss=ce.sum() / n, n_tokens=n, n_correct=hit.sum(), row_loss=row_loss,
                                        row_tokens=keep.sum(1), row_correct=row_correct)  # fmt: skip
        loss_sum, correct = chunked_cross_entropy(
            hidden[keep], labels[keep], self.lm_head, self.ce_chunk_size, softcap
        )
        return ReconstructionOutput(loss=loss_sum / n, n_tokens=n, n_correct=correct)
