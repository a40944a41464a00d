"""Texts -> embeddings with a Backbone: `encode_texts` (length-sorted batches, bf16 autocast where it pays) and
`bireco.encode(texts, checkpoint)` for users. The mteb wrapper is bireco.evaluation.mteb_encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bireco.core.precision import autocast, bf16_for
from bireco.model.backbone import Backbone
from bireco.model.text_format import encode_side, pad_sides


def encode_sides(
    backbone: Backbone, texts: list[str], instruction: str | list[str | None] | None, max_length: int
) -> list:
    """Each text tokenised in the backbone's format (with its instruction: one for every text or one per text)."""
    instructions = instruction if isinstance(instruction, list) else [instruction] * len(texts)
    fmt = backbone.text_format
    return [
        encode_side(backbone.tokenizer, fmt.for_instruction(i), t, max_length, i)
        for t, i in zip(texts, instructions)
    ]


@torch.no_grad()
def encode_texts(
    backbone: Backbone,
    texts: list[str],
    instruction: str | list[str | None] | None = None,
    max_length: int = 512,
    batch_size: int | None = None,
    normalize: bool = True,
    progress: bool = False,
    bf16: bool | None = None,
) -> torch.Tensor:
    """(N, H) fp32 embeddings; length-sorted batches (less padding), input order restored. `instruction`: one for
    every text or one per text. `bf16`: run under bf16 autocast (None = the hardware default, bireco.core.precision).
    `batch_size`: None = default_batch_size(device)."""
    from tqdm.auto import tqdm

    was_training = backbone.training
    backbone.eval()
    device = next(backbone.parameters()).device
    batch_size = batch_size or default_batch_size(device)
    sides = encode_sides(backbone, texts, instruction, max_length)
    order = sorted(range(len(texts)), key=lambda i: -sides[i].length)
    out = torch.empty(len(texts), backbone.hidden_size)
    mixed = bf16_for(device, bf16)
    with autocast(device, mixed):
        for start in tqdm(
            range(0, len(order), batch_size), desc="encoding", disable=not progress, leave=False
        ):
            idx = order[start : start + batch_size]
            batch = {
                k: v.to(device)
                for k, v in pad_sides([sides[i] for i in idx], backbone.pad_id, backbone.padding_side).items()
            }
            emb = backbone.embed(batch).float()
            out[idx] = (torch.nn.functional.normalize(emb, dim=-1) if normalize else emb).cpu()
    backbone.train(was_training)
    return out


def default_batch_size(device: torch.device | str) -> int:
    """Sequences per forward when encoding: 64 on an accelerator; 16 on a CPU, where larger batches are slower
    (cache-bound; docs/benchmarks.md)."""
    return 16 if torch.device(device).type == "cpu" else 64


def encode(texts: list[str], checkpoint: str | Path, instruction: str | None = None, batch_size: int | None = None,
           max_length: int = 512, device: str | None = None, dtype: str = "auto") -> np.ndarray:  # fmt: skip
    """Embed `texts` with a bireco checkpoint (L2-normalised). Queries take an `instruction`, documents none.
    `dtype`: the weights' dtype (`auto`: bf16 on a bf16 GPU, fp32 + bf16 autocast on a CPU; `bfloat16`: every op in
    bf16, as a bf16 sentence-transformers export)."""
    from bireco.model.loading import resolve_dtype

    resolve_dtype(dtype, "dtype")  # a typo is named as this argument, before any weights load
    backbone = Backbone.load(checkpoint, dtype=dtype)
    if device:
        backbone.to(device)
    elif torch.cuda.is_available():
        backbone.to("cuda")
    return encode_texts(backbone, list(texts), instruction, max_length, batch_size).numpy()
