"""CPU training attention in fp32 (bireco.cpu.attention): exact where it claims to be, the same as transformers' sdpa
in inference; the fast path sets it for a run (tests/unit/cpu/test_fast_path.py)."""

import torch
import torch.nn.functional as F
from conftest import TEXTS, compose_cfg, make_side

from bireco.cpu.attention import CPU_FP32_SDPA, register, set_attention
from bireco.model.backbone import Backbone


def tiny(fp32_grad: bool) -> Backbone:
    cfg = compose_cfg(["model=tiny_llama"])
    torch.manual_seed(0)
    bb = Backbone.from_config(cfg.model)
    if fp32_grad:
        set_attention(bb.causal_lm, register())
    return bb


def attention_calls(bb: Backbone, train: bool) -> list[dict]:
    """What the first layer's attention receives and returns in one bf16-autocast pass."""
    calls = []
    attn = bb.decoder.layers[0].self_attn

    def hook(module, args, kwargs, out):
        calls.append(
            {"out": out[0].detach(), "hidden": kwargs.get("hidden_states", args[0] if args else None)}
        )

    handle = attn.register_forward_hook(hook, with_kwargs=True)
    side = make_side(bb, TEXTS)
    try:
        with torch.set_grad_enabled(train), torch.autocast("cpu", dtype=torch.bfloat16):
            h = bb.hidden_states(side["input_ids"], side["attention_mask"])
            if train:
                h.float().sum().backward()
    finally:
        handle.remove()
    return calls


def test_cpu_training_runs_attention_in_fp32_and_inference_is_untouched():
    on, off = tiny(True), tiny(False)
    assert on.model.config._attn_implementation == CPU_FP32_SDPA
    assert off.model.config._attn_implementation == "sdpa"
    # inference: the same transformers sdpa, bit for bit
    assert torch.equal(
        attention_calls(on, train=False)[0]["out"], attention_calls(off, train=False)[0]["out"]
    )
    # training under bf16 autocast: the attention output is what fp32 sdpa gives, cast to bf16 at the end
    trained_on, trained_off = (
        attention_calls(on, train=True)[0]["out"],
        attention_calls(off, train=True)[0]["out"],
    )
    assert trained_on.dtype == trained_off.dtype == torch.bfloat16
    assert not torch.equal(trained_on, trained_off)  # the bf16 kernel differs...
    assert torch.allclose(
        trained_on.float(), trained_off.float(), atol=5e-2, rtol=5e-2
    )  # ...within bf16 rounding


def test_fp32_attention_matches_a_hand_written_fp32_attention():
    """The function itself: causal attention with padding, bf16 autocast, grad on = fp32 softmax(QK^T/sqrt(d))V."""
    from bireco.cpu.attention import sdpa_fp32_when_training_on_cpu

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 6, 8, requires_grad=True) for _ in range(3))
    mask = torch.ones(2, 1, 6, 6, dtype=torch.bool).tril()
    mask[1, :, :, :2] = False  # row 1 has two pads on the left
    mask[1, :, :2, 0] = True  # keep every query row attending to something

    class Module(torch.nn.Module):
        is_causal, num_key_value_groups = True, 1

    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = sdpa_fp32_when_training_on_cpu(Module(), q, k, v, mask, scaling=8**-0.5)
    scores = (q @ k.transpose(-1, -2)) * 8**-0.5
    expected = F.softmax(scores.masked_fill(~mask, float("-inf")), -1) @ v  # (B, H, T, D)
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), expected.transpose(1, 2).bfloat16().float(), atol=1e-2)
    out.float().sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_longer_sequences_keep_the_bf16_kernel():
    """Beyond FP32_UP_TO query tokens the bf16 kernel is as fast, so transformers' sdpa runs as is (same bits)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from bireco.cpu.attention import FP32_UP_TO, sdpa_fp32_when_training_on_cpu

    class Module(torch.nn.Module):
        is_causal, num_key_value_groups = True, 1

    torch.manual_seed(0)
    for n, same in ((FP32_UP_TO, False), (FP32_UP_TO + 1, True)):
        q, k, v = (torch.randn(1, 2, n, 8, requires_grad=True) for _ in range(3))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ours, _ = sdpa_fp32_when_training_on_cpu(Module(), q, k, v, None, scaling=8**-0.5)
            plain, _ = sdpa_attention_forward(Module(), q, k, v, None, scaling=8**-0.5)
        assert torch.equal(ours, plain) == same, n
