"""Numeric precision picked from the hardware: bf16 where the CPU or GPU computes it natively, fp32 elsewhere.

CPUs with AVX512-BF16 or AMX compute bf16 matmuls natively, several times faster than fp32 (docs/benchmarks.md);
elsewhere bf16 on a CPU is emulated and slower. `precision: auto` (trainer=cpu) and the encoders' `bf16=None` ask
this module, so the same command is fast on either machine.
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
