"""Attention for training on a CPU in bf16: torch's CPU flash-attention kernel is fast forward in bf16 but its bf16
backward is slow at the short lengths of embedding training (batch 16, 9 heads, 2 threads, forward + backward:
12 ms bf16 vs 1.9 ms fp32 at 16 tokens, 18 vs 6.5 at 48, 59 vs 28 at 128, even from ~256 on;
experiments/bench/attention_kernels.py, docs/benchmarks.md).
So when autograd records on a CPU over at most FP32_UP_TO tokens, this runs SDPA in fp32 (more precise, not less)
and casts the output back; inference, longer sequences and every GPU keep transformers' own SDPA untouched.
Registered with transformers' AttentionInterface under its own name, so the saved config.json and the export never
mention it. `attn_implementation` is where a model config's attention name becomes the one a model loads with."""

from __future__ import annotations

import torch

CPU_FP32_SDPA = "bireco_sdpa_cpu_fp32_grad"
FP32_UP_TO = 256  # query length; longer, the bf16 kernel is as fast (0.93x at 256, 1.04x at 384)
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


def attn_implementation(name: str, *, cpu_fp32_grad: bool) -> str:
    """The name to load a model with (`model.attn_implementation`): `sdpa` becomes the fp32-on-CPU-training variant
    when `cpu_fp32_grad`; flash_attention_2 fails here, before any weights load, when flash-attn is missing."""
    if name == "flash_attention_2":
        try:
            import flash_attn  # noqa: F401
        except ImportError as err:
            raise ValueError(
                "model.attn_implementation=flash_attention_2 needs `pip install flash-attn`"
            ) from err
    if name != "sdpa" or not cpu_fp32_grad:
        return name
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(CPU_FP32_SDPA, sdpa_fp32_when_training_on_cpu)
    ALL_MASK_ATTENTION_FUNCTIONS.register(CPU_FP32_SDPA, sdpa_mask)  # the masks sdpa itself would get
    return CPU_FP32_SDPA
