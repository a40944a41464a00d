"""Attention for training on a CPU in bf16: torch's CPU flash-attention kernel is fast forward in bf16, but its bf16
backward is slow at the short lengths of embedding training (docs/benchmarks.md has the kernels side by side).
So when autograd records on a CPU over at most FP32_UP_TO tokens, this runs SDPA in fp32 (more precise, not less)
and casts the output back; inference, longer sequences and every GPU keep transformers' own SDPA untouched.
Registered with transformers' AttentionInterface under its own name and set on a model for a training run by the
CPU fast path (`use_fp32_training_attention`), which puts the model's own implementation back at the run's end, so
no saved config.json or export ever names it."""

from __future__ import annotations

import torch

CPU_FP32_SDPA = "bireco_sdpa_cpu_fp32_grad"
FP32_UP_TO = 256  # query length; from about here on the bf16 kernel is as fast (docs/benchmarks.md)
_LOW_PRECISION = (torch.bfloat16, torch.float16)


def sdpa_fp32_when_training_on_cpu(module, query, key, value, attention_mask, *args, **kwargs):
    """transformers' `sdpa_attention_forward`, in fp32 (autocast off) when autograd records on a CPU in bf16/fp16."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    # under autocast the rotary embedding hands over fp32 queries / keys, and autocast runs sdpa in its dtype
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else query.dtype
    training_on_cpu = query.device.type == "cpu" and torch.is_grad_enabled() and query.shape[2] <= FP32_UP_TO
    if not training_on_cpu or dtype not in _LOW_PRECISION:
        return sdpa_attention_forward(module, query, key, value, attention_mask, *args, **kwargs)
    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()  # an additive mask must match the query's dtype
    with torch.autocast("cpu", enabled=False):
        out, weights = sdpa_attention_forward(
            module, query.float(), key.float(), value.float(), attention_mask, *args, **kwargs
        )
    return out.to(dtype), weights


def register() -> str:
    """CPU_FP32_SDPA registered with transformers (the masks sdpa itself would get); returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(CPU_FP32_SDPA, sdpa_fp32_when_training_on_cpu)
    ALL_MASK_ATTENTION_FUNCTIONS.register(CPU_FP32_SDPA, sdpa_mask)
    return CPU_FP32_SDPA


def set_attention(causal_lm, name: str) -> None:
    """The attention implementation a loaded model uses from now on (transformers' public switch); the CPU fast path
    sets CPU_FP32_SDPA for a run (`register()`) and the backbone's own implementation back at its end."""
    causal_lm.set_attn_implementation(name)
