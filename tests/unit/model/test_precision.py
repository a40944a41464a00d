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
def test_rotary_frequencies_stay_fp32_under_bf16_true(cfg_factory, tmp_path, decoder):
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
            if getattr(pl_module, "frozen_decoder", None) is not None:
                buffers = pl_module.frozen_decoder.backbone.named_buffers()
                seen.update({f"frozen {n}": b.clone() for n, b in buffers if n.endswith("inv_freq")})
            seen["weight dtype"] = next(pl_module.backbone.parameters()).dtype

    start = []
    if decoder == "frozen":  # a frozen decoder is the start model loaded again: one with a path
        start = [f"model.name_or_path={build_backbone(cfg_factory()).save(tmp_path / 'start')}"]
    cfg = cfg_factory("stage=reconstruction", "trainer.max_steps=1", "data.global_batch_size=2",
                      "data.max_train_records=8", f"stage.decoder={decoder}", *start)  # fmt: skip
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
