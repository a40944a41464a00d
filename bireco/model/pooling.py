"""Pooling: hidden states (B, T, H) + masks -> one vector per sequence (B, H).

All functions are padding-side agnostic: they read positions from the mask, never assume where pads are.
"""

from __future__ import annotations

import torch

from bireco.core.choices import Choice


class Pooling(Choice):
    """`model.pooling`: the hidden states' summary (the paper pools the last token, its [EOS])."""

    last = "last"
    mean = "mean"
    weighted_mean = "weighted_mean"


def last_token(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden state of the last real token ([EOS]) of each row, for left or right padding."""
    T = attention_mask.shape[1]
    positions = torch.arange(T, device=attention_mask.device)  # (T,)
    last = (attention_mask.bool() * positions).amax(dim=1)  # (B,) index of the last real token
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, H)


def mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average over masked positions (e.g. the text without instruction)."""
    m = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, H)


def weighted_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Position-weighted mean (SGPT): later tokens, which saw more context, weigh more."""
    m = mask.to(hidden.dtype)  # (B, T)
    weights = m.cumsum(dim=1) * m  # (B, T) 1, 2, ..., n on masked positions
    weights = weights / weights.sum(dim=1, keepdim=True).clamp(min=1.0)
    return (hidden * weights.unsqueeze(-1)).sum(1)  # (B, H)


def pool(
    mode: str, hidden: torch.Tensor, attention_mask: torch.Tensor, embed_mask: torch.Tensor | None
) -> torch.Tensor:
    if mode == "last":
        return last_token(hidden, attention_mask)
    mask = embed_mask if embed_mask is not None else attention_mask
    if mode == "mean":
        return mean(hidden, mask)
    if mode == "weighted_mean":
        return weighted_mean(hidden, mask)
    raise ValueError(f"unknown pooling {mode!r}; valid: {', '.join(Pooling.values())}")
