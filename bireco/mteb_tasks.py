"""The built-in offline evaluation tasks: WordNet test split as mteb retrieval tasks (local load_data)."""

from __future__ import annotations

import random
from typing import Any

from datasets import Dataset
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
from mteb.abstasks.task_metadata import TaskMetadata

from bireco.data import wordnet

_COMMON = {
    "reference": "https://wordnet.princeton.edu/",
    "dataset": {"path": "bireco/wordnet-3.0", "revision": f"synsets-{wordnet.SPLIT_SEED}"},
    "type": "Retrieval",
    "category": "t2t",
    "modalities": ["text"],
    "eval_splits": ["test"],
    "eval_langs": ["eng-Latn"],
    "main_score": "ndcg_at_10",
    "date": ("2006-12-06", "2006-12-06"),
    "domains": ["Written"],
    "task_subtypes": [],
    "license": "https://wordnet.princeton.edu/license-and-commercial-use",
    "annotations_creators": "expert-annotated",
    "dialect": [],
    "sample_creation": "found",
    "bibtex_citation": "@book{fellbaum1998wordnet, title={WordNet: An Electronic Lexical Database}, author={Fellbaum, Christiane}, year={1998}}",
}


class _WordNetRetrieval(AbsTaskRetrieval):
    dataset_name: str = ""
    max_queries: int | None = None  # subsample queries (seeded) for quick checks
    max_docs: int | None = None  # subsample the corpus; the relevant documents of kept queries always stay

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        records = [r for r in wordnet.pair_records("test") if r["dataset"] == self.dataset_name]
        corpus: dict[str, str] = {}
        for r in records:
            corpus.setdefault(r["id"], r["positive"])
        queries = [{"id": f"q{i}", "text": r["query"]} for i, r in enumerate(records)]
        if self.max_queries and len(queries) > self.max_queries:
            keep = sorted(random.Random(0).sample(range(len(queries)), self.max_queries))
            queries = [queries[i] for i in keep]
        qrels = {q["id"]: {records[int(q["id"][1:])]["id"]: 1} for q in queries}
        if self.max_docs and len(corpus) > self.max_docs:
            needed = {d for rel in qrels.values() for d in rel}
            rest = sorted(set(corpus) - needed)
            kept = needed | set(random.Random(1).sample(rest, max(0, self.max_docs - len(needed))))
            corpus = {k: v for k, v in corpus.items() if k in kept}
        split = RetrievalSplitData(
            queries=Dataset.from_list(queries),
            corpus=Dataset.from_list([{"id": k, "text": v, "title": ""} for k, v in corpus.items()]),
            relevant_docs=qrels,
            top_ranked=None,
        )
        self.dataset = {"default": {"test": split}}
        self.data_loaded = True


class WordNetDefinitionsRetrieval(_WordNetRetrieval):
    dataset_name = wordnet.DEFINITIONS
    metadata = TaskMetadata(
        name="WordNetDefinitionsRetrieval",
        description="Given the words of a WordNet synset, retrieve its gloss among all test-split glosses (bireco built-in).",
        **_COMMON,
    )


class WordNetExamplesRetrieval(_WordNetRetrieval):
    dataset_name = wordnet.EXAMPLES
    metadata = TaskMetadata(
        name="WordNetExamplesRetrieval",
        description="Given a usage example, retrieve the dictionary entry of its sense among all test-split entries (bireco built-in).",
        **_COMMON,
    )


BUILTIN_TASKS = {t.metadata.name: t for t in (WordNetDefinitionsRetrieval, WordNetExamplesRetrieval)}
TASK_DATASET = {name: t.dataset_name for name, t in BUILTIN_TASKS.items()}
