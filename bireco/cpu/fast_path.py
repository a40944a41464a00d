"""The CPU fast path as one Lightning callback: every CPU-only speed trick, applied when a training run starts on a
CPU and undone when it ends (or fails).

`trainer.cpu_fast_path` (true in `trainer=cpu`, false everywhere else) adds it; GPU runs and library use never see
it. What it does, each the same computation or the same distribution (docs/benchmarks.md has what each buys):

- malloc keeps large freed buffers for the next step (allocator.py), glibc's defaults back at the end;
- LoRA dropout draws the positions it drops (dropout.py; the same i.i.d. mask from another random stream), torch's
  `nn.Dropout` back at the end;
- under bf16-mixed: attention in fp32 while autograd records (attention.py), the frozen Linear weights cast to bf16
  once for the run and every Linear weight once per dev check or probe (casts.py: the same bits as autocast's
  per-call casts), and LoRA's inputs left in bf16 where peft would cast them to its fp32 adapters and autocast back
  (peft's public `disable_input_dtype_casting`; the same bits).
"""

from __future__ import annotations

import contextlib

import lightning as L

from bireco.cpu.allocator import keep_freed_memory, restore_default_memory
from bireco.cpu.attention import CPU_FP32_SDPA, register, set_attention
from bireco.cpu.casts import Bf16Casts, WeightCasts
from bireco.cpu.dropout import use_cpu_poisson_dropout, use_torch_dropout


def backbones_of(module) -> list:
    """The backbones a stage module trains or decodes with (the paper's one, and a frozen decoder if it has one)."""
    return [
        m
        for m in (getattr(module, "backbone", None), getattr(module, "decoder_backbone", None))
        if m is not None
    ]


class CpuFastPath(L.Callback):
    def __init__(self):
        self._undo = contextlib.ExitStack()

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if module.device.type != "cpu":
            return
        undo = self._undo
        if keep_freed_memory():
            undo.callback(restore_default_memory)
        for backbone in backbones_of(module):
            if use_cpu_poisson_dropout(backbone.model):
                undo.callback(use_torch_dropout, backbone.model)
        if str(trainer.precision) != "bf16-mixed":
            return
        for backbone in backbones_of(module):
            if backbone.attn_implementation == "sdpa":
                set_attention(backbone.causal_lm, register())
                undo.callback(set_attention, backbone.causal_lm, backbone.attn_implementation)
        from peft.helpers import disable_input_dtype_casting

        undo.enter_context(disable_input_dtype_casting(module.backbone.model))
        # bf16-mixed keeps the weights fp32 on the CPU; the frozen ones never change from here on
        module.weight_casts = Bf16Casts(module)
        undo.callback(setattr, module, "weight_casts", WeightCasts())

    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._undo.close()

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        self._undo.close()


__all__ = ["CPU_FP32_SDPA", "CpuFastPath"]
