"""bf16 copies of fp32 Linear weights, made once and used in their place for a pass, with the same bits.

Under bf16 autocast every fp32 Linear weight is rounded to bf16 at every call; autocast caches that copy only for
weights that take a gradient, so frozen weights (LoRA's base layers, a frozen decoder) are recast at every forward,
and in a no-grad pass (the dev check, the anchor probe) every weight is. On a CPU those casts are a real share of the
time (docs/benchmarks.md). Rounding the same fp32 values to bf16 once gives the same bf16 values, so a pass that uses
the copies computes the same bits. The copies are swapped in with `torch.func.functional_call` (`run_with`): the
modules and their Parameter objects are never touched, so an optimizer, DDP or a checkpoint holding them sees
nothing, and the fp32 weights are the module's own again as soon as the call returns.

`WeightCasts` is what a stage module asks for those copies; its default gives none (GPU, fp32, library use), the CPU
fast path gives `Bf16Casts`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def bf16_copies(root: nn.Module, frozen_only: bool = False, dtype: torch.dtype = torch.bfloat16) -> dict:
    """{name under `root`: a bf16 copy} of every fp32 nn.Linear weight and bias (`frozen_only`: those that take no
    gradient). A tied LM head shares its weight with the input embeddings, which must stay as they are."""
    elsewhere = {
        id(p) for m in root.modules() if not isinstance(m, nn.Linear) for p in m.parameters(recurse=False)
    }
    out = {}
    with torch.no_grad():
        for module_name, module in root.named_modules():
            if not isinstance(module, nn.Linear):
                continue
            for leaf in ("weight", "bias"):
                p = getattr(module, leaf)
                if (
                    p is None
                    or p.dtype != torch.float32
                    or id(p) in elsewhere
                    or (frozen_only and p.requires_grad)
                ):
                    continue
                out[f"{module_name}.{leaf}" if module_name else leaf] = p.detach().to(dtype)
    return out


class _Call(nn.Module):
    """A module that holds `root` and whose forward is `fn`: what functional_call needs to run any function of `root`
    with some of its weights replaced."""

    def __init__(self, root: nn.Module, fn: Callable):
        super().__init__()
        self.root = root
        self.fn = fn

    def forward(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


def run_with(root: nn.Module, weights: dict, fn: Callable, *args, **kwargs):
    """`fn(*args, **kwargs)` with the parameters of `root` named in `weights` replaced by those tensors for the call
    (torch.func.functional_call); `fn` itself when there are none."""
    if not weights:
        return fn(*args, **kwargs)
    call = _Call(root, fn)
    return torch.func.functional_call(
        call, {f"root.{k}": v for k, v in weights.items()}, args, kwargs, strict=False
    )


class WeightCasts:
    """The weights a stage module's passes use in place of its own: none (every path but the CPU fast path)."""

    def training(self) -> dict:
        """For a training step's forward, named under the stage module."""
        return {}

    def inference(self, root: nn.Module) -> dict:
        """For one no-grad pass over `root` (a dev check, a probe), named under `root`."""
        return {}


class Bf16Casts(WeightCasts):
    """The CPU fast path under bf16-mixed: the frozen fp32 Linear weights of `module` cast once for the run (a frozen
    weight never changes), and every fp32 Linear weight cast once per no-grad pass."""

    def __init__(self, module: nn.Module):
        self._training = bf16_copies(module, frozen_only=True)

    def training(self) -> dict:
        return self._training

    def inference(self, root: nn.Module) -> dict:
        return bf16_copies(root)
