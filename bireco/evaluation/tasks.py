"""The built-in offline evaluation tasks as mteb retrieval tasks (local load_data): the WordNet test split (the same
source as the training data) and the out-of-domain sets shipped in bireco/assets (Debian package descriptions, Python
API documentation), which no training data of bireco comes from. `tasks=builtin` names all of them."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from datasets import Dataset
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
from mteb.abstasks.task_metadata import TaskMetadata

from bireco.data import debian_packages, python_api, wordnet
from bireco.data.shipped_pairs import read_pairs

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


def subsample(queries: list[dict], corpus: dict[str, str], qrels: dict[str, dict[str, int]], max_queries: int | None,
              max_docs: int | None) -> tuple[list[dict], dict[str, str], dict[str, dict[str, int]]]:  # fmt: skip
    """Seeded query / corpus subsample, the same for every model: the relevant documents of kept queries stay."""
    if max_queries and len(queries) > max_queries:
        keep = sorted(random.Random(0).sample(range(len(queries)), max_queries))
        queries = [queries[i] for i in keep]
    qrels = {q["id"]: qrels[q["id"]] for q in queries}
    if max_docs and len(corpus) > max_docs:
        needed = {d for rel in qrels.values() for d in rel}
        rest = sorted(set(corpus) - needed)
        kept = needed | set(random.Random(1).sample(rest, max(0, max_docs - len(needed))))
        corpus = {k: v for k, v in corpus.items() if k in kept}
    return queries, corpus, qrels


def split_data(
    queries: list[dict], corpus: dict[str, str], qrels: dict[str, dict[str, int]]
) -> RetrievalSplitData:
    return RetrievalSplitData(
        queries=Dataset.from_list(queries),
        corpus=Dataset.from_list([{"id": k, "text": v, "title": ""} for k, v in corpus.items()]),
        relevant_docs=qrels,
        top_ranked=None,
    )


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
        qrels = {q["id"]: {records[i]["id"]: 1} for i, q in enumerate(queries)}
        queries, corpus, qrels = subsample(queries, corpus, qrels, self.max_queries, self.max_docs)
        self.dataset = {"default": {"test": split_data(queries, corpus, qrels)}}
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


class _ShippedPairsRetrieval(AbsTaskRetrieval):
    """A shipped out-of-domain pair set (bireco.data.shipped_pairs): each query has its one document relevant."""

    asset: str = ""
    max_queries: int | None = None
    max_docs: int | None = None

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        _, pairs = read_pairs(self.asset)
        corpus = {p["id"]: p["document"] for p in pairs}
        queries = [{"id": f"q-{p['id']}", "text": p["query"]} for p in pairs]
        qrels = {f"q-{p['id']}": {p["id"]: 1} for p in pairs}
        queries, corpus, qrels = subsample(queries, corpus, qrels, self.max_queries, self.max_docs)
        self.dataset = {"default": {"test": split_data(queries, corpus, qrels)}}
        self.data_loaded = True


_SHIPPED = {**_COMMON, "annotations_creators": "derived", "sample_creation": "found", "task_subtypes": []}


class DebianPackagesRetrieval(_ShippedPairsRetrieval):
    asset = debian_packages.NAME
    metadata = TaskMetadata(
        **{**_SHIPPED, "name": "DebianPackagesRetrieval",
           "description": "Given the one-line synopsis of a Debian package, retrieve its long description among "
                          "2,000 Debian 12 main packages (bireco built-in, out of domain: bireco/data/debian_packages.py).",
           "reference": "https://www.debian.org/distrib/packages",
           "dataset": {"path": "bireco/debian-bookworm-descriptions", "revision": f"pairs-{debian_packages.SEED}"},
           "date": ("2023-06-10", "2026-11-29"), "domains": ["Programming", "Written"],
           "license": "https://www.debian.org/social_contract#guidelines",
           "bibtex_citation": ""},
    )  # fmt: skip


class PythonAPIRetrieval(_ShippedPairsRetrieval):
    asset = python_api.NAME
    metadata = TaskMetadata(
        **{**_SHIPPED, "name": "PythonAPIRetrieval",
           "description": "Given the qualified name of a Python standard-library function, class or method, retrieve "
                          "its docstring among 2,000 (bireco built-in, out of domain: bireco/data/python_api.py).",
           "reference": "https://docs.python.org/3.11/library/",
           "dataset": {"path": "bireco/cpython-3.11-docstrings", "revision": f"pairs-{python_api.SEED}"},
           "date": ("2023-12-04", "2023-12-04"), "domains": ["Programming"],
           "license": "https://docs.python.org/3/license.html", "bibtex_citation": ""},
    )  # fmt: skip


BUILTIN_TASKS = {
    t.metadata.name: t
    for t in (
        WordNetDefinitionsRetrieval,
        WordNetExamplesRetrieval,
        DebianPackagesRetrieval,
        PythonAPIRetrieval,
    )
}
# the fixed subsample every model in a table is evaluated on (seeded; the relevant documents of kept queries stay)
BUILTIN_QUERIES, BUILTIN_DOCS = 300, 1000
# `tasks=builtin` (or a list holding it): every built-in task, reported with their average
BUILTIN_SUITE = "builtin"
# the suite's two halves, averaged separately in results tables
TASK_GROUPS = {
    "WordNet avg": ("WordNetDefinitionsRetrieval", "WordNetExamplesRetrieval"),
    "Out-of-domain avg": ("DebianPackagesRetrieval", "PythonAPIRetrieval"),
}
TASK_DATASET = {name: t.dataset_name for name, t in BUILTIN_TASKS.items() if hasattr(t, "dataset_name")}


# instructions of the BEIR-directory tasks made in this process (read by bireco.model.encode.instruction_for_task)
BEIR_INSTRUCTIONS: dict[str, str] = {}


def beir_dir_task(path: str, max_queries: int | None = None, max_docs: int | None = None) -> AbsTaskRetrieval:
    """`beir:<dir>`: a user's retrieval set in the BEIR layout (bireco.data.beir) as an mteb task named after the
    directory, main score nDCG@10. The files are read and checked here, before any model loads."""
    from bireco.data.beir import load_beir_dir

    data = load_beir_dir(path)
    queries = [{"id": q, "text": t} for q, t in data.queries.items()]
    queries, corpus, qrels = subsample(queries, data.corpus, data.qrels, max_queries, max_docs)
    BEIR_INSTRUCTIONS[data.name] = data.instruction

    class BeirDirRetrieval(AbsTaskRetrieval):
        metadata = TaskMetadata(
            **{**_COMMON, "name": data.name, "description": f"Local BEIR-layout retrieval set {path}",
               "reference": None, "dataset": {"path": str(Path(path).resolve()), "revision": "local"},
               "license": "not specified", "annotations_creators": "derived", "bibtex_citation": "",
               "date": None, "domains": None},
        )  # fmt: skip

        def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
            self.dataset = {"default": {"test": split_data(queries, corpus, qrels)}}
            self.data_loaded = True

    return BeirDirRetrieval()
