"""LoRA dropout whose mask is cheap to draw on a CPU.

peft's LoRA applies `nn.Dropout(p)` to the input of every adapted Linear (seven per decoder layer). On a CPU,
torch draws that mask one element at a time from its Mersenne Twister (`aten::bernoulli_`): in a SmolLM2 Stage II
step it was a third of the step's time (docs/benchmarks.md, "Where a step's time goes"). Here the dropped
positions are drawn instead: K ~ Poisson(n·λ) positions uniform over the n elements, with λ = −ln(1 − p). By
Poisson splitting each element's hit count is then an independent Poisson(λ), so an element is dropped
independently with probability 1 − e^−λ = p: the same i.i.d. Bernoulli mask in distribution, from ~p·n random
draws instead of n. Kept elements are scaled by 1/(1 − p) in the input's dtype, as `F.dropout` does. The random
numbers differ from torch's (another stream of the same seed), so runs are reproducible but not bit-identical to
`nn.Dropout`. Off the CPU (CUDA has a fused kernel) and in eval mode it is `nn.Dropout` itself.
Switch: `stage.lora.cpu_poisson_dropout` (default true; false = `nn.Dropout` everywhere).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def poisson_keep_mask(like: torch.Tensor, p: float) -> torch.Tensor:
    """A mask shaped like `like`: 0 with probability p independently per element, else 1/(1 - p)."""
    n = like.numel()
    mask = torch.full(like.shape, 1.0 / (1.0 - p), dtype=like.dtype, device=like.device)
    hits = int(torch.poisson(torch.tensor(n * -math.log1p(-p), dtype=torch.float64)).item())
    if hits:
        mask.view(-1).index_fill_(0, torch.randint(n, (hits,), device=like.device), 0.0)
    return mask


class CpuPoissonDropout(nn.Dropout):
    """`nn.Dropout` that draws its CPU training masks with `poisson_keep_mask`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and x.device.type == "cpu" and 0.0 < self.p < 1.0) or self.inplace:
            return super().forward(x)
        return x * poisson_keep_mask(x, self.p)


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
