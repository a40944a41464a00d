"""The CPU's matmul limit at a model's own GEMM shapes: the ceiling a training step's model FLOP/s is measured against.

A transformer step is mostly GEMMs of a few shapes: per layer the q/k/v/o projections (tokens x d x d, tokens x d x
kv), the MLP (tokens x d x ffn three times) and, where logits are formed, the LM head (tokens x d x vocab). This
times that mix, forward shapes only (a backward pass runs the same shapes transposed), in bf16 and in fp32 with the
threads torch uses, and reports GFLOP/s = 2*m*k*n summed over the mix / its median wall time.

    python experiments/bench/matmul_limit.py                     # SmolLM2-135M's shapes, 1,024 tokens
    python experiments/bench/matmul_limit.py --tokens 512 --repeats 20

bench.py imports `matmul_limit` and divides each CPU variant's model FLOP/s by it (the CPU's MFU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

SMOLLM2 = {"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9, "num_key_value_heads": 3,
           "head_dim": 64, "vocab_size": 49152, "num_hidden_layers": 30}  # fmt: skip


def gemm_mix(arch: dict, tokens: int, lm_head_tokens: int | None = None) -> list[tuple[int, int, int, int]]:
    """(m, k, n, count) of one forward pass: every decoder layer's projections and MLP, and the LM head over
    `lm_head_tokens` rows (bireco's label-only CE forms logits at target positions only; default: half the tokens)."""
    d, ffn, layers = arch["hidden_size"], arch["intermediate_size"], arch["num_hidden_layers"]
    hd = arch.get("head_dim") or d // arch["num_attention_heads"]
    q, kv = arch["num_attention_heads"] * hd, arch["num_key_value_heads"] * hd
    mix = [(tokens, d, q, layers), (tokens, d, kv, 2 * layers), (tokens, q, d, layers),
           (tokens, d, ffn, 2 * layers), (tokens, ffn, d, layers)]  # fmt: skip
    mix.append((lm_head_tokens or tokens // 2, d, arch["vocab_size"], 1))
    return mix


def matmul_limit(arch: dict, dtype: torch.dtype, tokens: int = 1024, repeats: int = 10) -> dict:
    """GFLOP/s of the forward GEMM mix of `arch` in `dtype` (median of `repeats` timings after one warm-up)."""
    g = torch.Generator().manual_seed(0)
    mix = gemm_mix(arch, tokens)
    mats = [(torch.randn(m, k, generator=g).to(dtype), torch.randn(k, n, generator=g).to(dtype), c)
            for m, k, n, c in mix]  # fmt: skip
    flops = sum(2 * a.shape[0] * a.shape[1] * b.shape[1] * c for a, b, c in mats)

    def once() -> float:
        t = time.perf_counter()
        for a, b, c in mats:
            for _ in range(c):
                torch.matmul(a, b)
        return time.perf_counter() - t

    once()
    seconds = statistics.median(once() for _ in range(repeats))
    return {"dtype": str(dtype).removeprefix("torch."), "gflops": flops / seconds / 1e9, "tokens": tokens,
            "threads": torch.get_num_threads(), "seconds": seconds, "mix": mix}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    rows = [matmul_limit(SMOLLM2, dt, args.tokens, args.repeats) for dt in (torch.bfloat16, torch.float32)]
    for r in rows:
        print(f"{r['dtype']}: {r['gflops']:.0f} GFLOP/s ({r['threads']} threads, {r['tokens']} tokens, "
              f"{r['seconds'] * 1e3:.0f} ms per forward mix)")  # fmt: skip
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
