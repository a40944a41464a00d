"""How the pooled [EOS] embeddings sit in space, per checkpoint: why do some runs "click" and others crawl?

On SmolLM2 the demo's Stage II runs fall into two groups (docs/results.md §4): those that reach dev nDCG@10 ~0.6 within
10 steps and those that crawl to ~0.2 in 40. This script measures, on the dev check's retrieval set (200
WordNet-definitions dev queries against 500 dev glosses), for every checkpoint given:

- anisotropy: the mean cosine between two different documents (near 1 = every text points the same way);
- the query-positive cosine against the query-document cosine over the whole corpus, and their gap in units of the
  query's own score spread (a z-score: how far the positive stands out);
- dev nDCG@10 (the check Stage II logs, recomputed here).

    python experiments/dev_sweep/embedding_geometry.py base outputs/seeds/seed-42/demo/default/stage1/final ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dev_sweep import load_backbone


def geometry(backbone, n_queries: int = 200, corpus_size: int = 500) -> dict[str, float]:
    """Anisotropy, positive-vs-corpus cosines and dev nDCG@10 of one backbone (the demo's dev set and max lengths)."""
    import torch

    from bireco.evaluation.retrieval import scores_of, wordnet_retrieval_set
    from bireco.model.encode import encode_texts

    rs = wordnet_retrieval_set("dev", n_queries=n_queries, corpus_size=corpus_size)
    q = encode_texts(backbone, rs.queries, rs.instruction, 32)
    d = encode_texts(backbone, rs.corpus, None, 48)
    doc_cos = d @ d.T
    n = len(rs.corpus)
    anisotropy = float((doc_cos.sum() - doc_cos.diagonal().sum()) / (n * (n - 1)))
    scores = q @ d.T
    positive = scores[torch.arange(len(rs.queries)), torch.tensor(rs.relevant)]
    z = (positive - scores.mean(1)) / scores.std(1)
    return {
        "anisotropy": anisotropy,
        "cos_positive": float(positive.mean()),
        "cos_corpus": float(scores.mean()),
        "positive_z": float(z.mean()),
        "ndcg@10": scores_of(q, d, rs.relevant)["ndcg@10"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "checkpoints", nargs="+", help="bireco checkpoint directories; 'base' = the untrained SmolLM2"
    )
    ap.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = ap.parse_args()
    rows = {}
    print("| checkpoint | anisotropy | cos(q, positive) | cos(q, corpus) | positive z | dev nDCG@10 × 100 |")
    print("|---|---|---|---|---|---|")
    for name in args.checkpoints:
        backbone = load_backbone(None if name == "base" else name)
        g = rows[name] = geometry(backbone)
        print(f"| {name} | {g['anisotropy']:.3f} | {g['cos_positive']:.3f} | {g['cos_corpus']:.3f} | "
              f"{g['positive_z']:.2f} | {100 * g['ndcg@10']:.1f} |", flush=True)  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
