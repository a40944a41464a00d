"""bf16 where the CPU computes it natively, fp32 elsewhere: training (trainer=cpu, precision auto) and encoding."""

import pytest
import torch
from conftest import TEXTS

from bireco.core import precision
from bireco.model.encode import encode_texts


@pytest.mark.parametrize("fast, expected", [(True, "bf16-mixed"), (False, "32-true")])
def test_auto_precision_follows_the_cpu(monkeypatch, fast, expected):
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: fast)
    assert precision.resolve_precision("auto", "cpu") == expected
    assert precision.resolve_precision("32-true", "cpu") == "32-true"  # an explicit choice is never changed
    assert precision.bf16_for("cpu") is fast
    assert precision.bf16_for("cpu", bf16=False) is False


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    for i, (flags, fast) in enumerate(
        (("fpu avx512f avx512_bf16", True), ("fpu avx2 amx_bf16", True), ("fpu avx2 avx512f", False))
    ):
        info = tmp_path / f"cpuinfo{i}"
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        assert precision.cpu_has_fast_bf16(str(info)) is fast
    assert precision.cpu_has_fast_bf16(str(tmp_path / "missing")) is False


def test_trainer_cpu_picks_the_hardware_precision(cfg_factory, tmp_path):
    from bireco.training.builders import build_trainer

    cfg = cfg_factory("trainer=cpu")
    assert cfg.trainer.precision == "auto"
    trainer = build_trainer(cfg, tmp_path, callbacks=[])
    want = "bf16-mixed" if precision.cpu_has_fast_bf16() else "32-true"
    assert trainer.precision == want


def test_encoding_runs_under_bf16_autocast_when_asked(backbone, monkeypatch):
    """bf16 encoding is the fp32 one up to bf16 rounding; BIRECO_CPU_BF16=0 turns the hardware default off."""
    seen = []
    real = precision.autocast
    monkeypatch.setattr(
        "bireco.model.encode.autocast", lambda device, enabled: seen.append(enabled) or real(device, enabled)
    )
    fp32 = encode_texts(backbone, TEXTS, bf16=False)
    bf16 = encode_texts(backbone, TEXTS, bf16=True)
    assert seen == [False, True]
    assert not torch.equal(fp32, bf16)
    assert torch.nn.functional.cosine_similarity(fp32, bf16).min() > 0.99
    monkeypatch.setenv("BIRECO_CPU_BF16", "0")
    assert torch.equal(encode_texts(backbone, TEXTS), fp32)


@pytest.mark.integration
@pytest.mark.parametrize("decoder", ["shared", "frozen"])
def test_rotary_frequencies_stay_fp32_under_bf16_true(cfg_factory, decoder):
    """Lightning's bf16-true casts the module with .to(bfloat16), buffers included; the rotary inv_freq must stay
    the fp32 values a fresh load has (evaluation and export load those), while the weights do go to bf16; in a
    `stage.decoder=frozen` Stage I the frozen decoder's too."""
    import lightning as L

    from bireco.model.backbone import Backbone
    from bireco.training.builders import build_backbone, build_datamodule, build_module

    seen = {}

    class Probe(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.update(
                {n: b.clone() for n, b in pl_module.backbone.named_buffers() if n.endswith("inv_freq")}
            )
            if pl_module.frozen_decoder is not None:
                buffers = pl_module.frozen_decoder.backbone.named_buffers()
                seen.update({f"frozen {n}": b.clone() for n, b in buffers if n.endswith("inv_freq")})
            seen["weight dtype"] = next(pl_module.backbone.parameters()).dtype

    cfg = cfg_factory("stage=reconstruction", "trainer.max_steps=1", "data.global_batch_size=2",
                      "data.max_train_records=8", f"stage.decoder={decoder}")  # fmt: skip
    backbone = build_backbone(cfg)
    dm = build_datamodule(cfg, backbone)
    module = build_module(cfg, backbone, dm.batches_per_epoch())
    trainer = L.Trainer(max_steps=1, precision="bf16-true", accelerator="cpu", devices=1, logger=False, callbacks=[Probe()],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(module, datamodule=dm)
    assert seen.pop("weight dtype") == torch.bfloat16  # the precision plugin did convert the module
    fresh = {n: b for n, b in Backbone.from_config(cfg.model).named_buffers() if n.endswith("inv_freq")}
    if decoder == "frozen":
        fresh.update({f"frozen {n}": b for n, b in fresh.items()})
    assert fresh and seen.keys() == fresh.keys()
    for name, value in seen.items():
        assert value.dtype == torch.float32 and torch.equal(value, fresh[name]), name


def test_weights_load_in_the_dtype_the_precision_trains(cfg_factory, monkeypatch):
    """model.dtype=auto follows trainer.precision (bf16-mixed keeps fp32 master weights even on a bf16 GPU), and a
    half-precision full fine-tune under a mixed precision is refused."""
    from bireco.config.validate import validate
    from bireco.core.errors import ConfigError
    from bireco.training.builders import build_backbone

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # what `auto` used to read: a bf16 GPU
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    for prec, dtype in (
        ("bf16-mixed", torch.float32),
        ("32-true", torch.float32),
        ("bf16-true", torch.bfloat16),
    ):
        cfg = cfg_factory("stage=reconstruction", f"trainer.precision={prec}")
        assert next(build_backbone(cfg).parameters()).dtype == dtype, prec
    with pytest.raises(ConfigError, match="bf16-mixed keeps fp32 master weights"):
        validate(cfg_factory("stage=reconstruction", "trainer.precision=bf16-mixed", "model.dtype=bfloat16"))
    validate(
        cfg_factory("stage=baseline", "trainer.precision=bf16-mixed", "model.dtype=bfloat16")
    )  # LoRA: frozen bf16 base


def _spy_casts(monkeypatch, module) -> list:
    """Record the models of each inference_casts call made through `module`'s import of it."""
    calls = []

    def spying(device, mixed, *models):
        casts = precision.inference_casts(device, mixed, *models)
        calls.append([m for m in models if m is not None] if casts else [])
        return casts

    monkeypatch.setattr(module, "inference_casts", spying)
    return calls


def test_encoding_casts_linear_weights_once_with_the_same_bits_and_puts_them_back(backbone, monkeypatch):
    """On a CPU under bf16 autocast, encode_texts casts the Linear weights once instead of at every call: the same
    embeddings bit for bit, the fp32 weights (same Parameter objects, same values) back after, and a tied LM head
    (which shares the input embeddings' weight) left alone."""
    import bireco.model.encode as encode_module

    backbone.causal_lm.tie_weights()
    head, table = backbone.causal_lm.get_output_embeddings(), backbone.causal_lm.get_input_embeddings()
    params = {n: (p, p.detach().clone()) for n, p in backbone.named_parameters()}
    calls = _spy_casts(monkeypatch, encode_module)
    once = encode_texts(backbone, TEXTS * 3, None, 32, 4, bf16=True)
    assert calls == [[backbone]]
    casts = precision.inference_casts("cpu", True, backbone)
    q_proj = backbone.decoder.layers[0].self_attn.q_proj
    assert any(m is q_proj and name == "weight" and c.dtype == torch.bfloat16 for m, name, c in casts)
    assert not any(m is head for m, _, _ in casts)  # tied to the input embeddings, which stay fp32
    monkeypatch.setattr(encode_module, "inference_casts", lambda device, mixed, *models: [])
    per_call = encode_texts(backbone, TEXTS * 3, None, 32, 4, bf16=True)
    assert torch.equal(once, per_call)
    for name, p in backbone.named_parameters():
        assert p is params[name][0] and p.dtype == torch.float32 and torch.equal(p, params[name][1]), name
    assert table.weight.dtype == torch.float32
    with pytest.raises(RuntimeError, match="inference"):
        with precision.weights_swapped(casts):
            pass


def test_casts_only_pay_on_a_cpu_under_bf16_and_each_model_is_cast_once(backbone):
    one = precision.inference_casts("cpu", True, backbone)
    assert one and len(precision.inference_casts("cpu", True, backbone, None, backbone)) == len(one)
    assert precision.inference_casts("cpu", False, backbone) == []
    assert precision.inference_casts("meta", True, backbone) == []  # any accelerator: autocast's own casts


def test_the_dev_check_casts_linear_weights_once_per_check_with_the_same_bits(backbone, monkeypatch):
    """The in-training dev check on a CPU under bf16 autocast: the Linear weights are cast once per check (not by
    autocast at every batch), the embeddings are the same bit for bit, and the weights are their fp32 selves between
    batches and after (a training step may follow any batch of a failed check)."""
    from conftest import make_side

    import bireco.stages.base as base
    from bireco.config.schema import OptimConfig
    from bireco.stages.contrastive import ContrastiveModule

    monkeypatch.setattr(base, "bf16_for", lambda device, bf16=None: True)
    module = ContrastiveModule(backbone, OptimConfig(lr=1e-3, warmup_steps=0), lr_horizon=10)
    params = {n: (p, p.detach().clone()) for n, p in backbone.named_parameters()}
    # DDP hooks each parameter's gradient accumulator: a check must not replace it (a `.data` swap to another
    # dtype did, and DDP then saw "unused parameters" at the next step)
    q_proj = backbone.decoder.layers[0].self_attn.q_proj.weight
    accumulator, fired = q_proj.expand_as(q_proj).grad_fn.next_functions[0][0], []
    accumulator.register_hook(lambda *args: fired.append(True))
    batches = [dict(make_side(backbone, TEXTS[i : i + 2]), index=torch.tensor([i, i + 1])) for i in (0, 1, 2)]
    calls = _spy_casts(monkeypatch, base)

    def check(casts: bool) -> list:
        module.on_validation_epoch_start()
        if not casts:
            module._dev_casts = []
        with torch.no_grad():
            for i, batch in enumerate(batches):
                module.validation_step(batch, i, dataloader_idx=0)
                for name, p in backbone.named_parameters():
                    assert p is params[name][0] and p.dtype == torch.float32, name
        return [e for _, e in module._dev_parts[0]]

    once, per_call = check(True), check(False)
    assert calls == [[backbone], [backbone]]  # one cast per check, not per batch
    assert all(torch.equal(a, b) for a, b in zip(once, per_call, strict=True))
    for name, p in backbone.named_parameters():
        assert torch.equal(p, params[name][1]), name
    backbone.embed(batches[0]).sum().backward()
    assert fired and q_proj.grad is not None  # the same accumulator (and its hooks) after the checks


def test_the_anchor_probe_casts_linear_weights_once_with_the_same_bits(backbone, monkeypatch):
    """anchor_use (the in-training probe, bireco.inspect) on a CPU under bf16: one cast per model per probe, the same
    CE and gains as autocast's per-call casts, the fp32 weights back after."""
    import bireco.evaluation.anchor_diagnostics as diagnostics
    from bireco.evaluation.anchor_diagnostics import anchor_use, pair_batches
    from bireco.model.anchor import AnchorConditioning, AnchorReader

    records = [
        {"query": TEXTS[i], "positive": TEXTS[(i + 1) % 4], "instruction": None, "dataset": "t"}
        for i in range(4)
    ]
    batches = pair_batches(backbone, records, batch_size=2, max_query_length=16, max_doc_length=16)
    reader = AnchorReader(backbone, AnchorConditioning())
    params = {n: (p, p.detach().clone()) for n, p in backbone.named_parameters()}
    calls = _spy_casts(monkeypatch, diagnostics)
    once = anchor_use(reader, batches, bf16=True)
    assert calls == [[backbone]]
    monkeypatch.setattr(diagnostics, "inference_casts", lambda device, mixed, *models: [])
    assert anchor_use(reader, batches, bf16=True) == once
    for name, p in backbone.named_parameters():
        assert p is params[name][0] and p.dtype == torch.float32 and torch.equal(p, params[name][1]), name


@pytest.mark.integration
@pytest.mark.parametrize("stage", ["baseline", "frozen_decoder"])
def test_training_casts_frozen_weights_once_with_the_same_bits(cfg_factory, monkeypatch, stage):
    """On a CPU under bf16-mixed, a training step swaps in bf16 copies of the weights that take no gradient (LoRA's
    base layers; a `stage.decoder=frozen` Stage I's frozen copy) made once at the start, instead of autocast
    recasting them at every forward: the same losses and trained weights bit for bit as autocast's own casts, and
    every weight its fp32 Parameter again outside the step (checkpoints, the dev check)."""
    import lightning as L

    import bireco.stages.base as base
    from bireco.training.builders import build_backbone, build_datamodule, build_module

    overrides = (
        ["stage=baseline"] if stage == "baseline" else ["stage=reconstruction", "stage.decoder=frozen"]
    )
    cfg = cfg_factory(
        *overrides, "trainer.max_steps=3", "data.global_batch_size=4", "data.max_train_records=16"
    )
    seen: dict = {}

    class Watch(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            seen["between steps"] = {p.dtype for p in module.parameters()}

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            seen.setdefault("losses", []).append(outputs["loss"].item())

    def fit(casts: bool) -> tuple:
        if not casts:
            monkeypatch.setattr(base, "training_casts", lambda device, prec, *models: [])
        seen.clear()
        torch.manual_seed(0)
        backbone = build_backbone(cfg)
        dm = build_datamodule(cfg, backbone)
        module = build_module(cfg, backbone, dm.batches_per_epoch())
        params = dict(module.named_parameters())
        for m in module.modules():  # the dtype each frozen Linear weight has when a step's forward reads it
            if isinstance(m, torch.nn.Linear) and not m.weight.requires_grad:
                m.register_forward_pre_hook(
                    lambda m, args: seen.setdefault("frozen in a step", set()).add(m.weight.dtype)
                    if torch.is_grad_enabled() else None
                )  # fmt: skip
        trainer = L.Trainer(max_steps=3, precision="bf16-mixed", accelerator="cpu", devices=1, logger=False,
                            callbacks=[Watch()], enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)  # fmt: skip
        trainer.fit(module, datamodule=dm)
        assert all(params[n] is p and p.dtype == torch.float32 for n, p in module.named_parameters())
        assert seen["between steps"] == {torch.float32}
        assert seen["frozen in a step"] == {torch.bfloat16 if casts else torch.float32}
        return module, seen["losses"], {n: p.detach().clone() for n, p in module.named_parameters()}

    module, losses, weights = fit(casts=True)
    casts = module._frozen_casts
    assert casts and all(c.dtype == torch.bfloat16 and not c.requires_grad for _, _, c in casts)
    trained = {id(p) for p in module.parameters() if p.requires_grad}
    assert not any(
        id(m._parameters[name]) in trained for m, name, _ in casts
    )  # LoRA A/B, the encoder: autocast's
    if stage == "frozen_decoder":
        frozen = set(map(id, module.frozen_decoder.modules()))
        assert all(id(m) in frozen for m, _, _ in casts)
    _, per_call_losses, per_call_weights = fit(casts=False)
    assert losses == per_call_losses
    assert all(torch.equal(weights[n], per_call_weights[n]) for n in weights)


@pytest.mark.integration
def test_lora_inputs_stay_bf16_in_a_cpu_training_step_with_the_same_bits(cfg_factory, monkeypatch):
    """On a CPU under bf16-mixed, peft's cast of each LoRA input to the adapter's fp32 weight (which autocast casts
    back) is off inside a training step's forward: the adapters read bf16, and the losses and trained weights are
    the same bits as with peft's casts. Left on where a LoRA dropout is torch's `nn.Dropout`, whose bf16 scale
    would move them."""
    import lightning as L

    import bireco.stages.base as base
    from bireco.training.builders import build_backbone, build_datamodule, build_module

    def fit(casts_off: bool, *extra: str) -> tuple:
        if not casts_off:
            monkeypatch.setattr(base, "cpu_bf16_mixed", lambda device, prec: False)
        cfg = cfg_factory("stage=baseline", "trainer.max_steps=3", "data.global_batch_size=4",
                          "data.max_train_records=16", *extra)  # fmt: skip
        torch.manual_seed(0)
        backbone = build_backbone(cfg)
        dm = build_datamodule(cfg, backbone)
        module = build_module(cfg, backbone, dm.batches_per_epoch())
        inputs: set = set()
        for name, m in module.named_modules():  # the dtype each adapter's A matrix reads while training
            if name.endswith("lora_A.default"):
                m.register_forward_pre_hook(
                    lambda m, args: inputs.add(args[0].dtype) if torch.is_grad_enabled() else None
                )
        losses: list = []

        class Watch(L.Callback):
            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                losses.append(outputs["loss"].item())

        trainer = L.Trainer(max_steps=3, precision="bf16-mixed", accelerator="cpu", devices=1, logger=False,
                            callbacks=[Watch()], enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)  # fmt: skip
        trainer.fit(module, datamodule=dm)
        monkeypatch.undo()
        weights = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
        return module, inputs, losses, weights

    module, inputs, losses, weights = fit(True)
    assert (
        module._lora_input_casts_off and torch.bfloat16 in inputs
    )  # (o_proj reads the fp32 attention output)
    module, peft_inputs, peft_losses, peft_weights = fit(False)
    assert not module._lora_input_casts_off and peft_inputs == {torch.float32}
    assert losses == peft_losses and len(losses) == 3
    assert weights.keys() == peft_weights.keys() and all(
        torch.equal(weights[n], peft_weights[n]) for n in weights
    )
    module, torch_dropout_inputs, _, _ = fit(True, "stage.lora.cpu_poisson_dropout=false")
    assert not module._lora_input_casts_off and torch_dropout_inputs == {torch.float32}


def test_training_casts_only_frozen_weights_on_a_cpu_under_bf16_mixed(backbone):
    """A full fine-tune has nothing to cast; with LoRA-like frozen layers only those; other precisions and devices
    nothing; and a swap of weights that take a gradient is refused while autograd records."""
    assert precision.training_casts("cpu", "bf16-mixed", backbone) == []  # every weight trains
    q_proj = backbone.decoder.layers[0].self_attn.q_proj
    q_proj.weight.requires_grad_(False)
    casts = precision.training_casts("cpu", "bf16-mixed", backbone)
    assert [(m, name) for m, name, _ in casts] == [(q_proj, "weight")]
    assert precision.training_casts("cpu", "32-true", backbone) == []
    assert precision.training_casts("cpu", "bf16-true", backbone) == []
    assert precision.training_casts("meta", "bf16-mixed", backbone) == []
    with precision.weights_swapped(casts):  # frozen only: fine while autograd records
        assert q_proj.weight.dtype == torch.bfloat16
    assert q_proj.weight.dtype == torch.float32
    with pytest.raises(RuntimeError, match="take a gradient"):
        with precision.weights_swapped(precision.inference_casts("cpu", True, backbone)):
            pass
