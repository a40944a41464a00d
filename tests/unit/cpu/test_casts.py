"""The CPU fast path's bf16 weight copies (bireco.cpu.casts): made once per run (frozen weights) or per pass (the dev
check, the probe), used through torch.func.functional_call, the same bits as autocast's per-call casts, and the
module's own fp32 Parameters untouched before, between and after."""

import pytest
import torch
from conftest import TEXTS, make_side

from bireco.cpu.casts import Bf16Casts, WeightCasts, bf16_copies, run_with


def test_copies_are_the_fp32_linear_weights_in_bf16_and_leave_a_tied_head_alone(backbone):
    backbone.causal_lm.tie_weights()
    copies = bf16_copies(backbone)
    assert copies and all(c.dtype == torch.bfloat16 and not c.requires_grad for c in copies.values())
    params = dict(backbone.named_parameters())
    assert all(torch.equal(c, params[n].detach().bfloat16()) for n, c in copies.items())
    assert not any("lm_head" in n or "embed_tokens" in n for n in copies)  # tied to the input embeddings
    assert bf16_copies(backbone, frozen_only=True) == {}  # a full fine-tune: every weight trains
    q_proj = backbone.decoder.layers[0].self_attn.q_proj
    q_proj.weight.requires_grad_(False)
    assert list(bf16_copies(backbone, frozen_only=True)) == ["model.model.layers.0.self_attn.q_proj.weight"]


def test_run_with_uses_the_copies_for_the_call_only(backbone):
    """Inside the call the Linear reads the bf16 copy; the Parameter objects are never replaced, so after the call
    (and for any optimizer, DDP hook or checkpoint) the module is as it was; no weights: the plain call."""
    side = make_side(backbone, TEXTS)
    params = {n: (p, p.detach().clone()) for n, p in backbone.named_parameters()}
    q_proj = backbone.decoder.layers[0].self_attn.q_proj
    seen = []
    q_proj.register_forward_pre_hook(lambda m, args: seen.append(m.weight.dtype))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        cast = run_with(backbone, bf16_copies(backbone), backbone.embed, side)
        plain = run_with(backbone, {}, backbone.embed, side)
    assert seen == [torch.bfloat16, torch.float32]
    assert torch.equal(cast, plain)  # autocast rounds the same fp32 values to the same bf16 values
    for name, p in backbone.named_parameters():
        assert p is params[name][0] and p.dtype == torch.float32 and torch.equal(p, params[name][1]), name


def test_the_dev_check_casts_once_per_check_with_the_same_bits(backbone, monkeypatch):
    """The in-training dev check with the fast path's casts: the Linear weights cast once per check (not by autocast
    at every batch), the same embeddings bit for bit, the weights their fp32 selves between batches and after (a
    training step may follow any batch of a failed check), and each parameter's gradient accumulator (DDP's hooks)
    kept."""
    import bireco.cpu.casts as casts_module
    import bireco.stages.base as base
    from bireco.config.schema import ContrastiveStageConfig
    from bireco.stages.contrastive import ContrastiveModule

    monkeypatch.setattr(base, "bf16_for", lambda device, bf16=None: True)
    module = ContrastiveModule(backbone, ContrastiveStageConfig(), lr_horizon=10)
    params = {n: (p, p.detach().clone()) for n, p in backbone.named_parameters()}
    q_proj = backbone.decoder.layers[0].self_attn.q_proj.weight
    accumulator, fired = q_proj.expand_as(q_proj).grad_fn.next_functions[0][0], []
    accumulator.register_hook(lambda *args: fired.append(True))
    batches = [dict(make_side(backbone, TEXTS[i : i + 2]), index=torch.tensor([i, i + 1])) for i in (0, 1, 2)]
    calls = []
    real = casts_module.bf16_copies
    monkeypatch.setattr(casts_module, "bf16_copies", lambda *a, **k: calls.append(1) or real(*a, **k))

    def check(casts: WeightCasts) -> list:
        module.weight_casts = casts
        module.on_validation_epoch_start()
        with torch.no_grad():
            for i, batch in enumerate(batches):
                module.validation_step(batch, i, dataloader_idx=0)
                for name, p in backbone.named_parameters():
                    assert p is params[name][0] and p.dtype == torch.float32, name
        return [e for _, e in module._dev_parts[0]]

    fast = Bf16Casts(module)
    calls.clear()
    once, per_call = check(fast), check(WeightCasts())
    assert calls == [1]  # one cast per check, not per batch
    assert all(torch.equal(a, b) for a, b in zip(once, per_call, strict=True))
    for name, p in backbone.named_parameters():
        assert torch.equal(p, params[name][1]), name
    backbone.embed(batches[0]).sum().backward()
    assert fired and q_proj.grad is not None  # the same accumulator (and its hooks) after the checks


def test_the_anchor_probe_casts_once_with_the_same_bits(backbone):
    """anchor_use through the fast path's copies (as the in-training probe runs it): the same CE and gains as
    autocast's per-call casts, the fp32 weights back after."""
    from functools import partial

    from bireco.evaluation.anchor_diagnostics import anchor_use, pair_batches
    from bireco.model.anchor import AnchorReader

    records = [
        {"query": TEXTS[i], "positive": TEXTS[(i + 1) % 4], "instruction": None, "dataset": "t"}
        for i in range(4)
    ]
    batches = pair_batches(backbone, records, batch_size=2, max_query_length=16, max_doc_length=16)
    reader = AnchorReader(backbone)
    params = {n: (p, p.detach().clone()) for n, p in backbone.named_parameters()}
    once = anchor_use(reader, batches, bf16=True, run=partial(run_with, backbone, bf16_copies(backbone)))
    assert anchor_use(reader, batches, bf16=True) == once
    for name, p in backbone.named_parameters():
        assert p is params[name][0] and p.dtype == torch.float32 and torch.equal(p, params[name][1]), name


def fit(cfg, fast_path: bool = True, watch=None):
    """Three bf16-mixed steps of the run `cfg` builds, with or without the CPU fast path; its module, losses and
    trained weights."""
    import lightning as L

    from bireco.cpu.fast_path import CpuFastPath
    from bireco.training.builders import build_backbone, build_datamodule, build_module

    torch.manual_seed(0)
    backbone = build_backbone(cfg)
    dm = build_datamodule(cfg, backbone)
    module = build_module(cfg, backbone, dm.batches_per_epoch())
    losses: list = []

    class Watch(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            losses.append(outputs["loss"].item())

    if watch:
        watch(module)
    trainer = L.Trainer(max_steps=3, precision="bf16-mixed", accelerator="cpu", devices=1, logger=False,
                        callbacks=[Watch(), *([CpuFastPath()] if fast_path else [])], enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0)  # fmt: skip
    trainer.fit(module, datamodule=dm)
    return module, losses, {n: p.detach().clone() for n, p in module.named_parameters()}


@pytest.mark.integration
@pytest.mark.parametrize("stage", ["baseline", "frozen_decoder"])
def test_training_steps_read_frozen_weights_cast_once_with_the_same_bits(
    cfg_factory, monkeypatch, tmp_path, stage
):
    """The fast path's training casts: a step's forward reads bf16 copies of the weights that take no gradient (LoRA's
    base layers; a frozen decoder) made once for the run, with the same losses and trained weights bit for bit as
    autocast's own casts, and every weight its fp32 Parameter again between steps; none of the trained weights is
    ever cast (their gradient would be lost)."""
    import bireco.cpu.fast_path as fast_path

    start = []
    if stage == "frozen_decoder":
        from bireco.training.builders import build_backbone

        cfg0 = cfg_factory("stage=baseline", "stage.lora.enabled=false")
        start = [f"model.name_or_path={build_backbone(cfg0).save(tmp_path / 'start')}"]
    overrides = (
        ["stage=baseline"]
        if stage == "baseline"
        else ["stage=reconstruction", "stage.decoder=frozen", *start]
    )
    cfg = cfg_factory(
        *overrides, "trainer.max_steps=3", "data.global_batch_size=4", "data.max_train_records=16"
    )
    seen: dict = {}

    def watch(module):
        params = dict(module.named_parameters())
        seen["params"] = params
        for m in module.modules():  # the dtype each frozen Linear weight has when a step's forward reads it
            if isinstance(m, torch.nn.Linear) and not m.weight.requires_grad:
                m.register_forward_pre_hook(
                    lambda m, args: seen.setdefault("frozen in a step", set()).add(m.weight.dtype)
                    if torch.is_grad_enabled() else None
                )  # fmt: skip

    module, losses, weights = fit(cfg, watch=watch)
    assert seen["frozen in a step"] == {torch.bfloat16}
    assert all(seen["params"][n] is p and p.dtype == torch.float32 for n, p in module.named_parameters())
    assert (
        isinstance(module.weight_casts, WeightCasts) and not module.weight_casts.training()
    )  # undone at the end
    monkeypatch.setattr(fast_path, "Bf16Casts", lambda module: WeightCasts())  # autocast's own casts
    seen.clear()
    _, per_call_losses, per_call_weights = fit(cfg, watch=watch)
    assert seen["frozen in a step"] == {torch.float32}
    assert losses == per_call_losses and len(losses) == 3
    assert all(torch.equal(weights[n], per_call_weights[n]) for n in weights)


@pytest.mark.integration
def test_lora_inputs_stay_bf16_in_a_fast_path_step_with_the_same_bits(cfg_factory, monkeypatch):
    """peft's cast of each LoRA input to the adapter's fp32 weight (which autocast casts back) is off under the fast
    path: the adapters read bf16, with the same losses and trained weights as with peft's casts."""
    import contextlib

    import peft.helpers

    cfg = cfg_factory(
        "stage=baseline", "trainer.max_steps=3", "data.global_batch_size=4", "data.max_train_records=16"
    )
    inputs: set = set()

    def watch(module):
        for name, m in module.named_modules():  # the dtype each adapter's A matrix reads while training
            if name.endswith("lora_A.default"):
                m.register_forward_pre_hook(
                    lambda m, args: inputs.add(args[0].dtype) if torch.is_grad_enabled() else None
                )

    _, losses, weights = fit(cfg, watch=watch)
    assert torch.bfloat16 in inputs  # (o_proj reads the fp32 attention output)
    inputs.clear()
    monkeypatch.setattr(peft.helpers, "disable_input_dtype_casting", lambda model: contextlib.nullcontext())
    _, peft_losses, peft_weights = fit(cfg, watch=watch)
    assert inputs == {torch.float32}
    assert losses == peft_losses and all(torch.equal(weights[n], peft_weights[n]) for n in weights)
