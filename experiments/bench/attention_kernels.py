"""One attention call on a CPU: torch's bf16 SDPA against fp32 SDPA on bf16 inputs (cast up, output cast back), forward
+ backward and forward only, at SmolLM2's head shape. Why bireco.model.attention runs attention in fp32 while
training on a CPU (and only then).

    python experiments/bench/attention_kernels.py                   # batch 16, 9 heads, head dim 64, 2 threads
    python experiments/bench/attention_kernels.py --lengths 16,48 --repeats 5

Each cell is the best of `--repeats` timings of `--calls` calls, after two warm-up calls; causal boolean mask as
transformers builds for padded batches. Prints markdown and writes it (and JSON) to --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]


def best_ms(fn, calls: int, repeats: int) -> float:
    for _ in range(2):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t) / calls * 1e3)
    return best


def attention(q, k, v, mask, *, fp32: bool, train: bool) -> None:
    """One call: torch's kernel in the inputs' bf16, or in fp32 on inputs cast up with the output cast back."""
    if fp32:
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask).bfloat16()
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if train:
        out.float().sum().backward()


def time_one_length(n: int, args) -> dict:
    shape = (args.batch, args.heads, n, args.head_dim)
    q, k, v = (torch.randn(shape, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    mask = torch.ones(n, n, dtype=torch.bool).tril()[None, None].expand(args.batch, 1, n, n)
    row = {"tokens": n}
    for name, fp32 in (("bf16", False), ("fp32", True)):
        row[f"train_{name}_ms"] = best_ms(
            lambda f=fp32: attention(q, k, v, mask, fp32=f, train=True), args.calls, args.repeats
        )
        with torch.no_grad():
            row[f"infer_{name}_ms"] = best_ms(
                lambda f=fp32: attention(q, k, v, mask, fp32=f, train=False), args.calls, args.repeats
            )
    return row


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="16,48,96,128,192,256,384")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--heads", type=int, default=9)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench" / "attention_kernels")
    args = ap.parse_args(argv)
    rows = []
    for n in (int(x) for x in args.lengths.split(",")):
        rows.append(time_one_length(n, args))
        print(rows[-1], flush=True)
    where = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    lines = [
        f"One SDPA call, batch {args.batch}, {args.heads} heads, head dim {args.head_dim}, causal mask; {where}; "
        f"best of {args.repeats} x {args.calls} calls.",
        "",
        "| tokens | train bf16 | train fp32 | fp32 / bf16 | inference bf16 | inference fp32 |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['tokens']} | {r['train_bf16_ms']:.1f} ms | {r['train_fp32_ms']:.1f} ms | "
        f"{r['train_fp32_ms'] / r['train_bf16_ms']:.2f} | {r['infer_bf16_ms']:.2f} ms | {r['infer_fp32_ms']:.2f} ms |"
        for r in rows
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps({"rows": rows, "machine": where}, indent=2))
    return {"rows": rows}


if __name__ == "__main__":
    main()
