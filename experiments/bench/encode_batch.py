"""Encoding throughput by batch size: why bireco encodes 16 sequences per forward on a CPU (encoder.default_batch_size).

    python experiments/bench/encode_batch.py                 # SmolLM2-135M-Instruct (offline), 300 Debian documents

Encodes the same documents (the DebianPackagesRetrieval corpus: 50-350 tokens, length-sorted batches as in every
bireco evaluation) with bireco's encode_texts at several batch sizes, after one warm-up pass, each timed `--repeats`
times (median). Prints tokens/s and the time ratio against batch 64, and writes JSON + markdown to --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def debian_documents(n: int) -> list[str]:
    """The first `n` documents of the DebianPackagesRetrieval corpus (50-350 tokens: the long side of the suite)."""
    from bireco.evaluation.runner import resolve_tasks

    task = resolve_tasks(["DebianPackagesRetrieval"], None)[0]
    return list(task.dataset["default"]["test"]["corpus"]["text"])[:n]


def tokens_in(tokenizer, texts: list[str], max_length: int) -> int:
    """Tokens encoding feeds the model: each text truncated to `max_length`."""
    return sum(min(len(ids), max_length) for ids in tokenizer(texts)["input_ids"])


def main(argv=None) -> dict:
    from bireco.model.backbone import Backbone
    from bireco.model.encode import encode_texts
    from bireco.tools.offline_lm import offline_lm_path

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model", default=None, help="a bireco checkpoint or HF model dir (default: offline SmolLM2)"
    )
    ap.add_argument("--docs", type=int, default=300)
    ap.add_argument("--batch-sizes", default="64,32,16,8")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench" / "encode_batch")
    args = ap.parse_args(argv)

    docs = debian_documents(args.docs)
    model = args.model or str(offline_lm_path("smollm2-135m-instruct"))
    if Path(model, "bireco.json").is_file():
        backbone = Backbone.load(model)
    else:
        from bireco.config.compose import compose_train
        from bireco.training.builders import build_backbone

        backbone = build_backbone(
            compose_train(["model=smollm2", f"model.name_or_path={model}", "stage=baseline"])
        )
    tokens = tokens_in(backbone.tokenizer, docs, 512)
    encode_texts(backbone, docs[:64], None, batch_size=16)  # warm-up (kernel selection)
    rows = {}
    for bs in (int(b) for b in args.batch_sizes.split(",")):
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            encode_texts(backbone, docs, None, batch_size=bs)
            times.append(time.perf_counter() - t)
        rows[bs] = statistics.median(times)
    ref = rows.get(64, max(rows.values()))
    lines = ["| batch | seconds | tokens/s | time / batch 64 |", "|---|---|---|---|"]
    lines += [f"| {bs} | {s:.1f} | {tokens / s:.0f} | {s / ref:.2f} |" for bs, s in rows.items()]
    where = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    text = (
        f"Encoding {len(docs)} documents ({tokens} tokens) with {Path(model).name}; machine: {where}; "
        f"median of {args.repeats}.\n\n" + "\n".join(lines) + "\n"
    )
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text)
    result = {"seconds": rows, "tokens": tokens, "docs": len(docs), "model": model, "machine": where}
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
