"""Per-family text formatting: how one side of a pair becomes token ids.

Every fact about a model family (chat header, the [EOS] token that "last" pooling reads, whether a BOS is
added) comes from `conf/model/<family>.yaml`; nothing here looks at model names. A side is tokenised in one
piece and the prefix / instruction / text spans are read from character offsets, so the collator knows exactly
which positions are instruction, text or template -- the masks are built from these spans, never from token values.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from bireco.core.choices import Choice


class PaddingSide(Choice):
    """`model.padding_side`: where a batch pads (every mask and position is read from the mask, so either works)."""

    left = "left"
    right = "right"


@dataclass(frozen=True)
class TextFormat:
    """How a family wraps a text. `eos_token` is the token whose hidden state is the embedding."""

    eos_token: str
    prefix: str = ""
    add_bos: bool = False
    instruction_separator: str = "; "

    def for_instruction(self, instruction: str | None) -> TextFormat:
        """mteb-table instructions end in ":" and take the text after a space ("...query: text"), not after
        `instruction_separator` ("; "): the one place this rule lives (encoder and export both use it)."""
        if instruction and instruction.rstrip().endswith(":"):
            return dataclasses.replace(self, instruction_separator=" ")
        return self

    def eos_id(self, tokenizer) -> int:
        token_id = tokenizer.convert_tokens_to_ids(self.eos_token)
        if token_id is None or token_id == tokenizer.unk_token_id or not isinstance(token_id, int):
            raise ValueError(
                f"model.text_format.eos_token={self.eos_token!r} is not a single token of tokenizer "
                f"{getattr(tokenizer, 'name_or_path', '?')!r}; set it in conf/model/<family>.yaml"
            )
        return token_id


@dataclass
class EncodedSide:
    """Token ids of one text plus the spans the masks are built from (all lists of equal length)."""

    input_ids: list[int]
    is_instruction: list[bool]
    is_text: list[bool]  # the text itself plus the final EOS (what "embed_mask" and paper labels cover)
    truncated: bool = False
    length: int = field(init=False)

    def __post_init__(self):
        self.length = len(self.input_ids)


def encode_side(
    tokenizer,
    fmt: TextFormat,
    text: str,
    max_length: int,
    instruction: str | None = None,
) -> EncodedSide:
    """`[BOS] prefix [instruction sep] text EOS`, text truncated on the right so the EOS always survives.

    The string `prefix + instruction + sep + text` is tokenised in one piece (as sentence-transformers and the
    HF tokenizer would with a prompt), and the instruction / text spans are read from the character offsets.
    """
    head = fmt.prefix
    instr = instruction + fmt.instruction_separator if instruction else ""
    full = head + instr + text
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    instr_start, text_start = len(head), len(head) + len(instr)
    ends = [o[1] for o in offsets]  # a token joins the first span whose characters it covers ("; a" -> text)
    n_head = sum(e <= instr_start for e in ends)
    n_instr = sum(instr_start < e <= text_start for e in ends)
    bos = [tokenizer.bos_token_id] if fmt.add_bos and tokenizer.bos_token_id is not None else []
    eos = [fmt.eos_id(tokenizer)]
    budget = max_length - len(bos) - n_head - n_instr - len(eos)
    if budget < 1:
        raise ValueError(
            f"max_length={max_length} leaves no room for text after the template and instruction "
            f"({len(bos) + n_head + n_instr + 1} tokens); raise data.max_query_length / data.max_doc_length"
        )
    body = ids[n_head + n_instr :]
    truncated = len(body) > budget
    body = body[:budget]
    out = bos + ids[: n_head + n_instr] + body + eos
    n_pre = len(bos) + n_head
    return EncodedSide(
        input_ids=out,
        is_instruction=[False] * n_pre + [True] * n_instr + [False] * (len(body) + 1),
        is_text=[False] * (n_pre + n_instr) + [True] * (len(body) + 1),
        truncated=truncated,
    )


def pad_sides(sides: list[EncodedSide], pad_id: int, padding_side: str) -> dict[str, torch.Tensor]:
    """Stack encoded sides into padded tensors; every mask is explicit (no mask from token values)."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    T = max(s.length for s in sides)
    B = len(sides)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((B, T), dtype=torch.long)
    instruction_mask = torch.zeros((B, T), dtype=torch.bool)
    text_mask = torch.zeros((B, T), dtype=torch.bool)
    for i, s in enumerate(sides):
        sl = slice(T - s.length, T) if padding_side == "left" else slice(0, s.length)
        input_ids[i, sl] = torch.tensor(s.input_ids)
        attention_mask[i, sl] = 1
        instruction_mask[i, sl] = torch.tensor(s.is_instruction)
        text_mask[i, sl] = torch.tensor(s.is_text)
    return {
        "input_ids": input_ids,  # (B, T)
        "attention_mask": attention_mask,  # (B, T) 1 = real token
        "instruction_mask": instruction_mask,  # (B, T) instruction tokens
        "embed_mask": text_mask,  # (B, T) text + EOS: pooled by mean/weighted_mean, reconstructed by default
    }
