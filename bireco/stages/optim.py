"""AdamW + linear warmup, then linear / cosine decay or constant (HF Trainer semantics)."""

from __future__ import annotations

import math

import torch

from bireco.config.schema import OptimConfig

# where torch's AdamW has a fused kernel (it has one for fp32 and bf16 weights)
FUSED_DEVICES = ("cuda", "cpu")


def build_optimizer(params, optim: OptimConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable `params` at `optim.lr`. `optim.fused=None` takes torch's fused kernel wherever every
    parameter lies on a device that has it (CUDA, CPU): the same update up to float rounding, and much faster than the
    per-parameter loop on a CPU (docs/benchmarks.md)."""
    params = [p for p in params if p.requires_grad]
    fused = optim.fused if optim.fused is not None else all(p.device.type in FUSED_DEVICES for p in params)
    return torch.optim.AdamW(
        params,
        lr=optim.lr,
        betas=tuple(optim.betas),
        eps=optim.eps,
        weight_decay=optim.weight_decay,
        fused=bool(fused),
    )


def lr_lambda(warmup: int, total: int, schedule: str):
    def f(step: int) -> float:
        if warmup and step < warmup:
            # the first step already trains (HF starts at 0; a zero step wastes a batch)
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def build_scheduler(optimizer, optim: OptimConfig, horizon: int) -> dict:
    """`horizon`: the optimizer steps the decay is sized for (optim.schedule_steps wins when set)."""
    total = optim.schedule_steps or horizon
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(optim.warmup_steps, total, optim.schedule))
    return {"scheduler": sched, "interval": "step", "frequency": 1}
