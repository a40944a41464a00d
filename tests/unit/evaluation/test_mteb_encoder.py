"""The mteb model name of a checkpoint: what bireco keys the reuse of saved results by."""

import torch

from bireco.evaluation.mteb_encoder import make_mteb_encoder


def test_auto_dtype_is_named_by_what_it_resolves_to_on_this_machine(backbone, tmp_path, monkeypatch):
    """`auto` is fp32 weights on a CPU and bf16 on a bf16 GPU: a result saved by one is not the other's."""
    name = lambda dtype: make_mteb_encoder(backbone, tmp_path, dtype=dtype).mteb_model_meta.name  # noqa: E731
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cpu = name("auto")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    gpu = name("auto")
    assert cpu.endswith("-auto-float32") and gpu.endswith("-auto-bfloat16")
    assert name("bfloat16").endswith("-bfloat16") and len({cpu, gpu, name("bfloat16")}) == 3
