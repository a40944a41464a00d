"""bireco's encoding against sentence-transformers on the exported model: same texts, batch size, dtype, machine.

    python experiments/bench/encode_vs_st.py                  # SmolLM2-135M-Instruct (offline), Debian documents
    python experiments/bench/encode_vs_st.py --docs 100 --repeats 1

The untrained SmolLM2 is saved as a bireco checkpoint and exported twice (fp32 and bf16 weights). Then, in turn
(A B C D E, best of `--repeats`): bireco's `encode_texts` in fp32, under bf16 autocast (its CPU default: fp32
residual stream and norms) and with bf16 weights (`dtype=bfloat16`, every op in bf16 as in the bf16 export), and
`SentenceTransformer.encode` on the fp32 export and on the bf16 export, all at one batch size on length-sorted texts
(both sort). Ratios are sentence-transformers time / bireco time (> 1: bireco faster), and every pair's embeddings
are compared (cosine), so a fast path that embeds different text would show. Writes markdown + JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
BF16_WEIGHTS = "bireco, bf16 weights (dtype=bfloat16, as the bf16 export)"


def debian_documents(n: int) -> list[str]:
    """The first `n` documents of the DebianPackagesRetrieval corpus (50-350 tokens: the long side of the suite)."""
    from bireco import resolve_tasks

    task = resolve_tasks(["DebianPackagesRetrieval"], None)[0]
    return list(task.dataset["default"]["test"]["corpus"]["text"])[:n]


def tokens_in(tokenizer, texts: list[str], max_length: int) -> int:
    """Tokens encoding feeds the model: each text truncated to `max_length`."""
    return sum(min(len(ids), max_length) for ids in tokenizer(texts)["input_ids"])


def timed(fn, repeats: int) -> tuple[float, torch.Tensor]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, torch.as_tensor(out).float()


def main(argv=None) -> dict:
    from sentence_transformers import SentenceTransformer

    from bireco import (
        Backbone,
        build_backbone,
        compose_train,
        encode_texts,
        export_sentence_transformers,
        offline_lm_path,
    )

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=16, help="bireco's CPU default")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench" / "encode_vs_st")
    args = ap.parse_args(argv)

    docs = debian_documents(args.docs)
    path = str(offline_lm_path("smollm2-135m-instruct"))
    cfg = compose_train(
        ["model=smollm2", f"model.name_or_path={path}", "stage=baseline", "stage.lora.enabled=false"]
    )
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = build_backbone(cfg).save(Path(tmp) / "ckpt")
        exports = {dt: export_sentence_transformers(ckpt, Path(tmp) / f"st-{dt}", max_seq_length=args.max_length,
                                                    dtype=dt) for dt in ("float32", "bfloat16")}  # fmt: skip
        backbone = Backbone.load(ckpt, dtype="float32")
        backbone_bf16 = Backbone.load(ckpt, dtype="bfloat16")
        st = {dt: SentenceTransformer(str(p), device="cpu") for dt, p in exports.items()}
        tokens = tokens_in(backbone.tokenizer, docs, args.max_length)
        bs = args.batch_size
        runs = {
            "bireco, fp32": lambda: encode_texts(backbone, docs, None, args.max_length, bs, bf16=False),
            "bireco, bf16 autocast (CPU default)": lambda: encode_texts(
                backbone, docs, None, args.max_length, bs, bf16=True
            ),  # fmt: skip
            BF16_WEIGHTS: lambda: encode_texts(backbone_bf16, docs, None, args.max_length, bs),
            "sentence-transformers, fp32 export": lambda: st["float32"].encode(
                docs, batch_size=bs, normalize_embeddings=True
            ),  # fmt: skip
            "sentence-transformers, bf16 export": lambda: st["bfloat16"].encode(
                docs, batch_size=bs, normalize_embeddings=True
            ),  # fmt: skip
        }
        # warm-up: kernel selection, first allocations
        encode_texts(backbone, docs[:32], None, args.max_length, bs)
        st["bfloat16"].encode(docs[:32], batch_size=bs)
        best: dict[str, float] = {}
        emb: dict[str, torch.Tensor] = {}
        for _ in range(args.repeats):  # A B C D A B C D: drift hits all alike
            for name, fn in runs.items():
                s, e = timed(fn, 1)
                best[name] = min(best.get(name, float("inf")), s)
                emb[name] = torch.nn.functional.normalize(e, dim=-1)
    pairs = [("fp32", "bireco, fp32", "sentence-transformers, fp32 export"),
             ("bf16 autocast", "bireco, bf16 autocast (CPU default)", "sentence-transformers, bf16 export"),
             ("bf16 weights", BF16_WEIGHTS, "sentence-transformers, bf16 export")]  # fmt: skip
    lines = ["| encoder | seconds | tokens/s |", "|---|---|---|"]
    lines += [f"| {n} | {s:.1f} | {tokens / s:.0f} |" for n, s in best.items()]
    ratios, cosine_min = {}, {}
    for tag, ours, theirs in pairs:
        ratios[tag] = best[theirs] / best[ours]
        cos = (emb[ours] * emb[theirs]).sum(-1)
        cosine_min[tag] = float(cos.min())
        ok = "✔" if ratios[tag] >= 1.0 else "✘"
        lines.append("")
        lines.append(f"- {tag}: bireco is **{ratios[tag]:.2f}×** sentence-transformers' speed {ok} (target ≥ 1.0); "
                     f"cosine of the two embeddings: min {cos.min():.4f}, mean {cos.mean():.4f}")  # fmt: skip
    where = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    text = (f"Encoding {len(docs)} DebianPackagesRetrieval documents ({tokens} tokens, ≤ {args.max_length} each), "
            f"batch {bs}, SmolLM2-135M-Instruct; machine: {where}; best of {args.repeats}.\n\n" + "\n".join(lines) + "\n")  # fmt: skip
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text)
    result = {"seconds": best, "ratios": ratios, "cosine_min": cosine_min, "tokens": tokens, "docs": len(docs),
              "machine": where}  # fmt: skip
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
