"""The in-training dev retrieval check (`trainer.dev_check_every_n_steps=N`), run by Lightning's validation loop.

The data module serves two validation loaders, the dev queries and the dev documents, each rank its equal share
(padded with the last text, so sharded strategies see the same forward calls on every rank), tokenised once and
length-sorted. The stage module embeds them in `validation_step`, gathers every rank's embeddings at the end of the
validation epoch and logs nDCG@10 / MRR@10 with `self.log`, so ModelCheckpoint and EarlyStopping monitor them
like any Lightning metric. The check before the first step is Lightning's sanity check over the whole dev set
(Lightning keeps no `self.log` from it, so its scores go to the loggers directly, at the step it ran).

The loaders draw their seeds from their own generator: running the check never moves the global RNG streams,
so a run trains the same with or without it.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from bireco.evaluation.retrieval import RetrievalSet, records_retrieval_set, scores_of, wordnet_retrieval_set
from bireco.model.encode import encode_sides
from bireco.model.text_format import pad_sides


def dev_retrieval_set(cfg, datamodule=None) -> RetrievalSet:
    """WordNet keeps its dev split; any other data is checked on pairs held out of the run's own training records
    (PairDataModule.dev_records), against their documents and training documents as distractors."""
    if cfg.data.format == "wordnet":
        return wordnet_retrieval_set(
            "dev", n_queries=cfg.data.dev_queries, corpus_size=cfg.data.dev_corpus_size, seed=cfg.seed
        )
    if datamodule is None or not datamodule.dev_records:
        raise ValueError("the dev check on non-WordNet data needs the data module's held-out records")
    return records_retrieval_set(
        datamodule.dev_records, list(datamodule.train["positive"]), cfg.data.dev_corpus_size, cfg.seed
    )


def rank_share(n: int, rank: int, world: int) -> list[int]:
    """This rank's indices of n items: equal shares of ceil(n / world), the last padded with item n - 1."""
    per = -(-n // world)
    return [min(i, n - 1) for i in range(rank * per, (rank + 1) * per)]


class _Side(Dataset):
    """One side's texts for one rank: (index into the full list, tokenised side), longest first."""

    def __init__(self, sides: list, indices: list[int]):
        self.items = sorted(((i, sides[i]) for i in indices), key=lambda item: -item[1].length)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int):
        return self.items[k]


class DevCheckData:
    """The dev set tokenised the way encoding tokenises it (bireco.model.encode.encode_texts)."""

    def __init__(self, rs: RetrievalSet, backbone, max_query_length: int, max_doc_length: int):
        self.rs = rs
        self.pad_id, self.padding_side = backbone.pad_id, backbone.padding_side
        self.queries = encode_sides(backbone, rs.queries, rs.instruction, max_query_length)
        self.corpus = encode_sides(backbone, rs.corpus, None, max_doc_length)

    def _collate(self, items: list) -> dict:
        batch = pad_sides([side for _, side in items], self.pad_id, self.padding_side)
        batch["index"] = torch.tensor([i for i, _ in items], dtype=torch.long)
        return batch

    def loaders(self, rank: int, world: int, batch_size: int) -> list[DataLoader]:
        """[queries, documents] for this rank."""
        return [
            DataLoader(
                _Side(sides, rank_share(len(sides), rank, world)),
                batch_size=batch_size,
                shuffle=False,
                collate_fn=self._collate,
                generator=torch.Generator(),
            )  # fmt: skip
            for sides in (self.queries, self.corpus)
        ]


def gather_embeddings(module, parts: list[tuple[torch.Tensor, torch.Tensor]], n: int) -> torch.Tensor:
    """(n, H) embeddings in dev-set order from this rank's (indices, embeddings) batches and every other rank's."""
    idx = torch.cat([i for i, _ in parts]).to(module.device)
    emb = torch.cat([e for _, e in parts])
    if module.trainer.world_size > 1:
        idx = module.all_gather(idx).reshape(-1)
        emb = module.all_gather(emb).reshape(-1, emb.shape[-1])
    out = torch.zeros(n, emb.shape[-1])
    out[idx.cpu()] = emb.cpu()  # a padded share repeats the last item with the same embedding
    return out


def score(module, query_parts: list, doc_parts: list, rs: RetrievalSet) -> dict[str, float]:
    q = gather_embeddings(module, query_parts, len(rs.queries))
    d = gather_embeddings(module, doc_parts, len(rs.corpus))
    scores = scores_of(q, d, rs.relevant)
    return {"val/ndcg@10": scores["ndcg@10"], "val/mrr@10": scores["mrr@10"]}
