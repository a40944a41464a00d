"""Numeric precision picked from the hardware: bf16 where the CPU or GPU computes it natively, fp32 elsewhere.

CPUs with AVX512-BF16 or AMX compute bf16 matmuls natively, several times faster than fp32 (issue 14 reports a
512-token SmolLM2 forward at 0.35 s vs 1.0 s on this project's Xeon); elsewhere bf16 on a CPU is emulated and slower. `precision: auto`
(trainer=cpu) and the encoders' `bf16=None` ask this module, so the same command is fast on either machine.
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_has_fast_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the CPU advertises native bf16 arithmetic (Linux cpuinfo flags)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return any(flag in line.split() for flag in CPU_BF16_FLAGS)
    except OSError:
        pass
    return False


def resolve_precision(precision: str, accelerator: str) -> str:
    """Lightning precision for `precision: auto`: bf16-mixed (fp32 master weights, bf16 autocast) on a CPU with
    native bf16 or a bf16 GPU, else 32-true. Any other value is passed through unchanged."""
    if str(precision) != "auto":
        return str(precision)
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if on_gpu:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    return "bf16-mixed" if cpu_has_fast_bf16() else "32-true"


def weights_dtype(precision: str) -> str:
    """`model.dtype` that a Lightning precision implies for the weights it trains: `*-true` trains in that dtype;
    `*-mixed` keeps fp32 master weights and autocasts the compute."""
    return {"bf16-true": "bfloat16", "16-true": "float16"}.get(str(precision), "float32")


def bf16_for(device: torch.device | str, bf16: bool | None = None) -> bool:
    """Whether encoding on `device` runs under bf16 autocast: `bf16` if given, else the hardware default
    (always on CUDA; on CPUs with native bf16 unless BIRECO_CPU_BF16=0)."""
    if bf16 is not None:
        return bf16
    kind = torch.device(device).type
    if kind == "cuda":
        return True
    return kind == "cpu" and cpu_has_fast_bf16() and os.environ.get("BIRECO_CPU_BF16", "1") != "0"


def autocast(device: torch.device | str, enabled: bool):
    kind = torch.device(device).type
    if not enabled or kind not in ("cpu", "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(kind, dtype=torch.bfloat16)


def cast_linear_weights(
    model: torch.nn.Module, dtype: torch.dtype = torch.bfloat16, frozen_only: bool = False
) -> list[tuple]:
    """(module, name, its `dtype` copy) for every fp32 nn.Linear weight and bias of `model` (`frozen_only`: those
    that take no gradient), made once, for `weights_swapped`. A tied LM head shares its weight with the input
    embeddings, which must stay as they are."""
    elsewhere = {
        id(p)
        for m in model.modules()
        if not isinstance(m, torch.nn.Linear)
        for p in m.parameters(recurse=False)
    }
    with torch.no_grad():
        return [
            (module, name, torch.nn.Parameter(p.detach().to(dtype), requires_grad=False))
            for module in model.modules()
            if isinstance(module, torch.nn.Linear)
            for name, p in (("weight", module.weight), ("bias", module.bias))
            if p is not None and p.dtype == torch.float32 and id(p) not in elsewhere
            and not (frozen_only and p.requires_grad)
        ]  # fmt: skip


@contextlib.contextmanager
def weights_swapped(casts: list[tuple]):
    """Inference under autocast without autocast's per-call weight casts: each Linear holds its cast copy for the
    block and its own fp32 Parameter again after. The Parameter objects are never touched (no `.data` assignment,
    which would reset their gradient accumulators and with them DDP's hooks), so an optimizer or DDP holding them
    sees nothing. Autocast would round the same fp32 values to the same bf16 values at every call, so the outputs
    are bit-identical; on a CPU those casts were a quarter of encoding time (experiments/bench/encode_vs_st.py).
    For no-grad blocks, or, while autograd records, for weights that take no gradient (a copy would steal it)."""
    if torch.is_grad_enabled():
        trained = [name for module, name, _ in casts if module._parameters[name].requires_grad]
        if trained:
            raise RuntimeError(
                "weights_swapped swaps weights that take a gradient only for inference (torch.no_grad); "
                f"{len(trained)} of these do"
            )
    saved = []
    try:
        for module, name, cast in casts:
            saved.append((module, name, module._parameters[name]))
            module._parameters[name] = cast
        yield
    finally:
        for module, name, param in saved:
            module._parameters[name] = param


def inference_casts(device: torch.device | str, mixed: bool, *models: torch.nn.Module | None) -> list[tuple]:
    """What `weights_swapped` swaps in for one no-grad pass (encoding, the dev check, the anchor probe): on a CPU
    under bf16 autocast, each model's fp32 Linear weights cast once (autocast would recast them at every call, a
    quarter of encoding time there; the same bits); elsewhere nothing (a GPU's casts are cheap, fp32 needs none).
    A model given twice, or None (no separate decoder), is cast once or skipped."""
    if not (mixed and torch.device(device).type == "cpu"):
        return []
    return casts_of(models)


def training_casts(
    device: torch.device | str, precision: str, *models: torch.nn.Module | None
) -> list[tuple]:
    """What `weights_swapped` swaps in for a training step: on a CPU under bf16-mixed, the fp32 Linear weights that
    take no gradient (LoRA's base layers, a frozen decoder) cast to bf16 once for the run. Autocast caches its casts
    only for weights that take a gradient, so it recasts frozen ones at every forward (and every recomputation),
    rounding the same values to the same bits; elsewhere nothing. Cast once, at the start of training: a frozen
    weight never changes."""
    if not cpu_bf16_mixed(device, precision):
        return []
    return casts_of(models, frozen_only=True)


def cpu_bf16_mixed(device: torch.device | str, precision: str) -> bool:
    """Training on a CPU under bf16 autocast: where a cast the autocast would make anyway is worth removing."""
    return str(precision) == "bf16-mixed" and torch.device(device).type == "cpu"


@contextlib.contextmanager
def lora_input_casts_off(model: torch.nn.Module, active: bool):
    """peft's LoRA casts each adapter's input to the adapter's fp32 weight, and autocast casts it back to bf16
    for the matmul: two copies of a bf16 input per forward, and their gradients in the backward (in Llama-like
    layers down_proj's input is bf16; the norms hand q/k/v/gate/up fp32, where the cast is a no-op): a Stage II step on
    a CPU is 0.95x without them (docs/benchmarks.md). Under autocast the adapter's matmul reads the bf16 input directly,
    to the same bits (`CpuPoissonDropout` scales a bf16 input as it did the fp32 copy; not torch's `nn.Dropout`, so
    the caller leaves this off where one is used)."""
    if not active:
        yield
        return
    from peft.helpers import disable_input_dtype_casting

    with disable_input_dtype_casting(model):
        yield


def casts_of(models: tuple, frozen_only: bool = False) -> list[tuple]:
    """`cast_linear_weights` of each model; a model given twice, or None (no separate decoder), cast once or
    skipped."""
    unique = {id(m): m for m in models if m is not None}
    return [cast for m in unique.values() for cast in cast_linear_weights(m, frozen_only=frozen_only)]
