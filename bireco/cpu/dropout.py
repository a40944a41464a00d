"""LoRA dropout whose mask is cheap to draw on a CPU.

peft's LoRA applies `nn.Dropout(p)` to the input of every adapted Linear (seven per decoder layer). On a CPU,
torch draws that mask one element at a time from its Mersenne Twister (`aten::bernoulli_`), a large share of a
LoRA step (docs/benchmarks.md). Here the dropped
positions are drawn instead: K ~ Poisson(n·λ) positions uniform over the n elements, with λ = −ln(1 − p). By
Poisson splitting each element's hit count is then an independent Poisson(λ), so an element is dropped
independently with probability 1 − e^−λ = p: the same i.i.d. Bernoulli mask in distribution, from ~p·n random
draws instead of n. Kept elements are x · 1/(1 − p) rounded once to the input's dtype: for a bf16 input, the bits
the same dropout gives on its fp32 copy (peft's LoRA casts the input to the adapter's fp32 weight unless the stage
turns that off; `F.dropout` on a bf16 input would round the scale to bf16 first). Zeros are written into the scaled
copy, so no mask tensor is made. The random numbers differ from torch's (another stream of the same seed), so runs
are reproducible but not bit-identical to `nn.Dropout`. Off the CPU (CUDA has a fused kernel) and in eval mode it is
`nn.Dropout` itself. The CPU fast path swaps it in for a training run and `nn.Dropout` back at its end.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def poisson_drop_positions(n: int, p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """Flat indices in [0, n) to zero: each element dropped independently with probability p (a repeated index
    drops it once)."""
    hits = int(torch.poisson(torch.tensor(n * -math.log1p(-p), dtype=torch.float64)).item())
    return torch.randint(n, (hits,), device=device)


class CpuPoissonDropout(nn.Dropout):
    """`nn.Dropout` that draws its CPU training drops with `poisson_drop_positions`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and x.device.type == "cpu" and 0.0 < self.p < 1.0) or self.inplace:
            return super().forward(x)
        out = x * (1.0 / (1.0 - self.p))  # a new tensor: the product's backward needs neither x nor out
        drop = poisson_drop_positions(x.numel(), self.p, x.device)
        if drop.numel():
            out.view(-1).index_fill_(0, drop, 0.0)
        return out


def _lora_dropouts(model: nn.Module, kind: type[nn.Module]):
    """(slots, adapter name, dropout) for every peft LoRA dropout of exactly this type with p > 0."""
    for module in model.modules():
        slots = getattr(module, "lora_dropout", None)
        if isinstance(slots, nn.ModuleDict):
            for name, dropout in slots.items():
                if type(dropout) is kind and dropout.p > 0:
                    yield slots, name, dropout


def use_cpu_poisson_dropout(model: nn.Module) -> int:
    """Swap every peft LoRA dropout (`lora_dropout[adapter]`, an `nn.Dropout`) for `CpuPoissonDropout`; returns
    how many were swapped. No parameters or state-dict keys change."""
    swaps = list(_lora_dropouts(model, nn.Dropout))
    for slots, name, dropout in swaps:
        slots[name] = CpuPoissonDropout(dropout.p)
    return len(swaps)


def use_torch_dropout(model: nn.Module) -> int:
    """The reverse of `use_cpu_poisson_dropout`: `nn.Dropout` back in every slot; returns how many."""
    swaps = list(_lora_dropouts(model, CpuPoissonDropout))
    for slots, name, dropout in swaps:
        slots[name] = nn.Dropout(dropout.p)
    return len(swaps)
