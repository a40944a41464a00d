"""LoRA dropout whose mask is cheap to draw on a CPU.

peft's LoRA applies `nn.Dropout(p)` to the input of every adapted Linear (seven per decoder layer). On a CPU,
torch draws that mask one element at a time from its Mersenne Twister (`aten::bernoulli_`): in a SmolLM2 Stage II
step it was a third of the step's time (docs/benchmarks.md, "Where a step's time goes"). Here the dropped
positions are drawn instead: K ~ Poisson(n·λ) positions uniform over the n elements, with λ = −ln(1 − p). By
Poisson splitting each element's hit count is then an independent Poisson(λ), so an element is dropped
independently with probability 1 − e^−λ = p: the same i.i.d. Bernoulli mask in distribution, from ~p·n random
draws instead of n. Kept elements are x · 1/(1 − p) rounded once to the input's dtype: for a bf16 input, the bits
the same dropout gives on its fp32 copy (peft's LoRA casts the input to the adapter's fp32 weight unless the stage
turns that off; `F.dropout` on a bf16 input would round the scale to bf16 first). Zeros are written into the scaled
copy, so no mask tensor is made. The random numbers differ from torch's (another stream of the same seed), so runs
are reproducible but not bit-identical to `nn.Dropout`. Off the CPU (CUDA has a fused kernel) and in eval mode it is
`nn.Dropout` itself.
Switch: `stage.lora.cpu_poisson_dropout` (default true; false = `nn.Dropout` everywhere).
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


def use_cpu_poisson_dropout(model: nn.Module) -> int:
    """Swap every peft LoRA dropout (`lora_dropout[adapter]`, an `nn.Dropout`) for `CpuPoissonDropout`; returns
    how many were swapped. No parameters or state-dict keys change."""
    swapped = 0
    for module in model.modules():
        slots = getattr(module, "lora_dropout", None)
        if not isinstance(slots, nn.ModuleDict):
            continue
        for name, dropout in slots.items():
            if type(dropout) is nn.Dropout and dropout.p > 0:
                slots[name] = CpuPoissonDropout(dropout.p)
                swapped += 1
    return swapped


def has_torch_lora_dropout(model: nn.Module) -> bool:
    """Whether a LoRA dropout is torch's `nn.Dropout` (`stage.lora.cpu_poisson_dropout=false`), which rounds its
    scale to a bf16 input's dtype first: fed the bf16 input instead of peft's fp32 copy, it would give other bits."""
    return any(
        type(d) is nn.Dropout and d.p > 0
        for m in model.modules()
        if isinstance(getattr(m, "lora_dropout", None), nn.ModuleDict)
        for d in m.lora_dropout.values()
    )
