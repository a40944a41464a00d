"""bf16 where the CPU computes it natively, fp32 elsewhere: training (trainer=cpu, precision auto) and encoding."""

import pytest
import torch
from conftest import TEXTS

from bireco import precision
from bireco.encoder import encode_texts


@pytest.mark.parametrize("fast, expected", [(True, "bf16-mixed"), (False, "32-true")])
def test_auto_precision_follows_the_cpu(monkeypatch, fast, expected):
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: fast)
    assert precision.resolve_precision("auto", "cpu") == expected
    assert precision.resolve_precision("32-true", "cpu") == "32-true"  # an explicit choice is never changed
    assert precision.bf16_for("cpu") is fast
    assert precision.bf16_for("cpu", bf16=False) is False


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    for i, (flags, fast) in enumerate((("fpu avx512f avx512_bf16", True), ("fpu avx2 amx_bf16", True), ("fpu avx2 avx512f", False))):
        info = tmp_path / f"cpuinfo{i}"
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        assert precision.cpu_has_fast_bf16(str(info)) is fast
    assert precision.cpu_has_fast_bf16(str(tmp_path / "missing")) is False


def test_trainer_cpu_picks_the_hardware_precision(cfg_factory, tmp_path):
    from bireco.builders import build_trainer

    cfg = cfg_factory("trainer=cpu")
    assert cfg.trainer.precision == "auto"
    trainer = build_trainer(cfg, tmp_path, callbacks=[])
    want = "bf16-mixed" if precision.cpu_has_fast_bf16() else "32-true"
    assert trainer.precision == want


def test_encoding_runs_under_bf16_autocast_when_asked(backbone, monkeypatch):
    """bf16 encoding is the fp32 one up to bf16 rounding; BIRECO_CPU_BF16=0 turns the hardware default off."""
    seen = []
    real = precision.autocast
    monkeypatch.setattr("bireco.encoder.autocast", lambda device, enabled: seen.append(enabled) or real(device, enabled))
    fp32 = encode_texts(backbone, TEXTS, bf16=False)
    bf16 = encode_texts(backbone, TEXTS, bf16=True)
    assert seen == [False, True]
    assert not torch.equal(fp32, bf16)
    assert torch.nn.functional.cosine_similarity(fp32, bf16).min() > 0.99
    monkeypatch.setenv("BIRECO_CPU_BF16", "0")
    assert torch.equal(encode_texts(backbone, TEXTS), fp32)
