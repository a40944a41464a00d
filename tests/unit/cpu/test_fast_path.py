"""The CPU fast path as one switch: `trainer=cpu` turns it on and nothing else does; for the length of a run it sets
malloc's reuse, the Poisson LoRA dropout, fp32 training attention and the weight casts, and it undoes each at the
run's end."""

import pytest
import torch
from torch import nn

from bireco.cpu.attention import CPU_FP32_SDPA
from bireco.cpu.casts import Bf16Casts, WeightCasts
from bireco.cpu.dropout import CpuPoissonDropout
from bireco.cpu.fast_path import CpuFastPath


@pytest.mark.parametrize("trainer, on", [("cpu", True), ("ddp_cpu", True), ("gpu", False), ("ddp", False)])
def test_only_the_cpu_trainers_turn_it_on(cfg_factory, tmp_path, trainer, on):
    from bireco.training.callbacks import build_callbacks

    cfg = cfg_factory(f"trainer={trainer}")
    assert cfg.trainer.cpu_fast_path is on
    assert any(isinstance(c, CpuFastPath) for c in build_callbacks(cfg, tmp_path)) is on


@pytest.mark.integration
def test_a_run_applies_every_trick_and_undoes_them_at_its_end(cfg_factory, monkeypatch):
    """During a bf16-mixed Stage II run on a CPU: the Poisson LoRA dropout, fp32 training attention, bf16 weight casts
    and malloc's reuse are on; after it every one is back (nn.Dropout, sdpa, no casts, glibc's defaults)."""
    import lightning as L

    import bireco.cpu.fast_path as fast_path
    from bireco.training.builders import build_backbone, build_datamodule, build_module

    memory = []
    monkeypatch.setattr(fast_path, "keep_freed_memory", lambda: memory.append("keep") or True)
    monkeypatch.setattr(fast_path, "restore_default_memory", lambda: memory.append("default"))
    cfg = cfg_factory(
        "stage=baseline", "trainer.max_steps=2", "data.global_batch_size=4", "data.max_train_records=8"
    )
    backbone = build_backbone(cfg)
    dm = build_datamodule(cfg, backbone)
    module = build_module(cfg, backbone, dm.batches_per_epoch())

    def dropouts():
        return {type(d) for m in backbone.model.modules() if isinstance(getattr(m, "lora_dropout", None), nn.ModuleDict)
                for d in m.lora_dropout.values()}  # fmt: skip

    during = {}

    class Watch(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            during.update(dropout=dropouts(), attention=backbone.causal_lm.config._attn_implementation,
                          casts=type(module.weight_casts), memory=list(memory))  # fmt: skip

    trainer = L.Trainer(max_steps=2, precision="bf16-mixed", accelerator="cpu", devices=1, logger=False,
                        callbacks=[CpuFastPath(), Watch()], enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)  # fmt: skip
    assert dropouts() == {nn.Dropout} and backbone.causal_lm.config._attn_implementation == "sdpa"
    trainer.fit(module, datamodule=dm)
    assert during == {"dropout": {CpuPoissonDropout}, "attention": CPU_FP32_SDPA, "casts": Bf16Casts,
                      "memory": ["keep"]}  # fmt: skip
    assert dropouts() == {nn.Dropout} and backbone.causal_lm.config._attn_implementation == "sdpa"
    assert type(module.weight_casts) is WeightCasts and memory == ["keep", "default"]


def test_off_the_cpu_it_does_nothing(backbone):
    from types import SimpleNamespace

    module = SimpleNamespace(device=torch.device("meta"), backbone=backbone, weight_casts=WeightCasts())
    fast = CpuFastPath()
    fast.on_fit_start(SimpleNamespace(precision="bf16-mixed"), module)
    assert (
        type(module.weight_casts) is WeightCasts and backbone.causal_lm.config._attn_implementation == "sdpa"
    )
    fast.on_fit_end(None, module)


def test_library_encoding_never_uses_it(backbone, monkeypatch):
    """bireco.encode / encode_texts: plain autocast, no weight copies (the fast path is for training runs only)."""
    import bireco.cpu.casts as casts
    from bireco.model.encode import encode_texts

    monkeypatch.setattr(casts, "bf16_copies", lambda *a, **k: pytest.fail("encoding made weight copies"))
    assert encode_texts(backbone, ["a dog", "a cat"], bf16=True).shape == (2, backbone.hidden_size)
