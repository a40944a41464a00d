"""Small in-process retrieval evaluation (nDCG@10, MRR@10) used during training and in tests.

The full benchmark path goes through mteb (bireco.evaluate); this one is cheap enough to run every N steps.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np

from bireco.data import wordnet
from bireco.data.instructions import instruction_for, load_table


@dataclass
class RetrievalSet:
    queries: list[str]
    instruction: str | list[str] | None  # one for every query, or one per query
    corpus: list[str]
    relevant: list[int]  # corpus index of each query's positive


def _retrieval_set(picked: list[dict], pool: list[str], corpus_size: int, instruction) -> RetrievalSet:
    """Queries of `picked` against their positives and hard negatives, then `pool` (already shuffled) as
    distractors up to corpus_size."""
    corpus: list[str] = []
    index: dict[str, int] = {}

    def add(text: str) -> int:
        if text not in index:
            index[text] = len(corpus)
            corpus.append(text)
        return index[text]

    relevant = [add(r["positive"]) for r in picked]
    for r in picked:
        for n in r.get("negatives") or []:
            add(n)
    for text in pool:
        if len(corpus) >= corpus_size:
            break
        add(text)
    return RetrievalSet([r["query"] for r in picked], instruction, corpus, relevant)


def records_retrieval_set(
    dev: list[dict], others: list[str], corpus_size: int = 2000, seed: int = 0
) -> RetrievalSet:
    """Held-out pairs of a run's own data as a retrieval set: their queries (each with its own instruction) against
    their positives and hard negatives, then `others` (e.g. training documents) drawn at random up to corpus_size."""
    pool = list(others)
    random.Random(seed).shuffle(pool)
    return _retrieval_set(dev, pool, corpus_size, [r.get("instruction") or None for r in dev])


def wordnet_retrieval_set(split: str = "dev", dataset: str = wordnet.DEFINITIONS, n_queries: int = 200,
                          corpus_size: int = 2000, seed: int = 0) -> RetrievalSet:  # fmt: skip
    """Queries of one WordNet dataset; corpus = their positives + hard negatives + random glosses of the split."""
    records = [r for r in wordnet.pair_records(split) if r["dataset"] == dataset]
    rng = random.Random(seed)
    picked = rng.sample(records, min(n_queries, len(records)))
    others = [r["positive"] for r in records]
    rng.shuffle(others)  # the same generator as the sample: the dev sets of earlier runs stay the same
    return _retrieval_set(picked, others, corpus_size, instruction_for(load_table("wordnet"), dataset, 0))


def ndcg_mrr_at_10(scores: np.ndarray, relevant: list[int]) -> tuple[float, float]:
    """One relevant document per query: nDCG@10 = 1/log2(rank+1) if rank <= 10; MRR@10 = 1/rank."""
    ndcg = mrr = 0.0
    for i, rel in enumerate(relevant):
        rank = int((scores[i] >= scores[i, rel]).sum())  # ties count against the query (no free wins)
        if rank <= 10:
            ndcg += 1.0 / math.log2(rank + 1)
            mrr += 1.0 / rank
    return ndcg / len(relevant), mrr / len(relevant)


def retrieval_scores(backbone, rs: RetrievalSet, max_query_length: int = 64, max_doc_length: int = 128,
             bf16: bool | None = None) -> dict[str, float]:  # fmt: skip
    """`bf16`: encode under bf16 autocast (None = the hardware default, bireco.core.precision)."""
    from bireco.model.encode import encode_texts

    q = encode_texts(backbone, rs.queries, rs.instruction, max_query_length, bf16=bf16)
    d = encode_texts(backbone, rs.corpus, None, max_doc_length, bf16=bf16)
    return scores_of(q, d, rs.relevant)


def scores_of(q, d, relevant: list[int]) -> dict[str, float]:
    """nDCG@10 and MRR@10 from (Q, H) query and (D, H) document embeddings (L2-normalised)."""
    ndcg, mrr = ndcg_mrr_at_10((q @ d.T).numpy(), relevant)
    return {"ndcg@10": ndcg, "mrr@10": mrr}
