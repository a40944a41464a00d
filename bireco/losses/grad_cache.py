"""GradCache as an autograd function: large contrastive batches in the memory of one chunk.

Forward embeds the batch chunk by chunk *without* a graph. When the loss back-propagates into these
embeddings, backward re-embeds each chunk with a graph (same RNG state, so dropout matches) and pushes the
cached embedding gradient into the parameters chunk by chunk. The loss, optimizer, clipping and accumulation
stay ordinary. Reference: Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory
Limited Setup" (luyug/GradCache); ST CachedMultipleNegativesRankingLoss.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def _slice(side: dict, start: int, stop: int) -> dict:
    return {k: v[start:stop] for k, v in side.items() if isinstance(v, torch.Tensor)}


class _CachedEmbed(torch.autograd.Function):
    @staticmethod
    def forward(ctx, dummy, embed_fn, side, chunk_size):
        B = side["input_ids"].shape[0]
        ctx.embed_fn, ctx.side, ctx.chunk_size, ctx.states = embed_fn, side, chunk_size, []
        outs = []
        with torch.no_grad():
            for start in range(0, B, chunk_size):
                ctx.states.append(_rng_state())
                outs.append(embed_fn(_slice(side, start, start + chunk_size)))  # (b, H)
        return torch.cat(outs, 0)  # (B, H)

    @staticmethod
    def backward(ctx, grad):
        B = ctx.side["input_ids"].shape[0]
        for k, start in enumerate(range(0, B, ctx.chunk_size)):
            with torch.random.fork_rng(devices=_cuda_devices()), torch.enable_grad():
                _set_rng_state(ctx.states[k])
                emb = ctx.embed_fn(_slice(ctx.side, start, start + ctx.chunk_size))  # (b, H)
                torch.autograd.backward(emb, grad[start : start + ctx.chunk_size].to(emb.dtype))
        return None, None, None, None


def cached_embed(embed_fn: Callable[[dict], torch.Tensor], side: dict, chunk_size: int) -> torch.Tensor:
    """Embeddings of `side` (B, H) whose backward recomputes `embed_fn` per chunk of `chunk_size`."""
    dummy = torch.empty(0, requires_grad=True)
    return _CachedEmbed.apply(dummy, embed_fn, side, chunk_size)


def _cuda_devices() -> list[int]:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def _rng_state():
    return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in _cuda_devices()]


def _set_rng_state(state) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    for d, s in zip(_cuda_devices(), cuda):
        torch.cuda.set_rng_state(s, d)
