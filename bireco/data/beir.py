"""A retrieval set in the BEIR layout on local disk: a user's own evaluation data, checked before any encoding.

    DIR/corpus.jsonl      {"_id": "d1", "title": "...", "text": "..."}      one document per line
    DIR/queries.jsonl     {"_id": "q1", "text": "..."}                      one query per line
    DIR/qrels/test.tsv    query-id <TAB> corpus-id <TAB> score              header line, integer scores
    DIR/instruction.txt   optional: the query instruction (else a generic retrieval one)

Every problem is reported as `file:line: field 'x': reason` (a DataError) before a model is loaded: missing files,
bad JSON, missing or duplicate ids, empty text, a wrong qrels header, non-integer scores, qrels naming unknown ids,
queries without any relevant document.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from bireco.core.errors import DataError

QRELS_HEADER = ["query-id", "corpus-id", "score"]
DEFAULT_INSTRUCTION = "Given a query, retrieve documents that answer it"


@dataclass
class BeirSet:
    name: str
    corpus: dict[str, str]  # id -> "title text" (joined with a space, as mteb's BEIR loader does)
    queries: dict[str, str]  # id -> text
    qrels: dict[str, dict[str, int]]  # query id -> {corpus id: relevance}
    instruction: str


def _jsonl(path: Path, fields: tuple[str, ...]) -> list[tuple[int, dict]]:
    if not path.is_file():
        raise DataError(
            path, 0, "-", "file missing (BEIR layout: corpus.jsonl, queries.jsonl, qrels/test.tsv)"
        )
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(path, line_no, "-", f"not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise DataError(path, line_no, "-", f"expected a JSON object, got {type(row).__name__}")
            for key in fields:
                if key in row and not isinstance(row[key], str):
                    raise DataError(path, line_no, key, f"expected a string, got {type(row[key]).__name__}")
            rows.append((line_no, row))
    return rows


def _ids(path: Path, rows: list[tuple[int, dict]], text_of) -> dict[str, str]:
    out: dict[str, str] = {}
    for line_no, row in rows:
        rid = row.get("_id")
        if not isinstance(rid, str) or not rid:
            raise DataError(path, line_no, "_id", "missing or empty")
        if rid in out:
            raise DataError(path, line_no, "_id", f"duplicate id {rid!r}")
        text = text_of(row)
        if not text.strip():
            raise DataError(path, line_no, "text", "empty")
        out[rid] = text
    if not out:
        raise DataError(path, 0, "-", "no records")
    return out


def load_beir_dir(path: str | Path, split: str = "test") -> BeirSet:
    root = Path(path)
    if not root.is_dir():
        raise DataError(root, 0, "-", "no such directory")
    corpus_file, queries_file, qrels_file = (
        root / "corpus.jsonl",
        root / "queries.jsonl",
        root / "qrels" / f"{split}.tsv",
    )
    corpus = _ids(corpus_file, _jsonl(corpus_file, ("_id", "title", "text")),
                  lambda r: " ".join(t for t in (r.get("title") or "", r.get("text") or "") if t.strip()))  # fmt: skip
    queries = _ids(queries_file, _jsonl(queries_file, ("_id", "text")), lambda r: r.get("text") or "")
    if not qrels_file.is_file():
        raise DataError(qrels_file, 0, "-", "file missing (BEIR layout: qrels/<split>.tsv)")
    qrels: dict[str, dict[str, int]] = {}
    with open(qrels_file, encoding="utf-8") as f:
        lines = f.read().splitlines()
    if not lines or lines[0].split("\t") != QRELS_HEADER:
        raise DataError(qrels_file, 1, "header", f"expected {chr(9).join(QRELS_HEADER)!r} (tab-separated)")
    for line_no, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise DataError(qrels_file, line_no, "-", f"expected 3 tab-separated columns, got {len(parts)}")
        qid, did, score = parts
        if qid not in queries:
            raise DataError(
                qrels_file, line_no, "query-id", f"unknown query id {qid!r} (not in queries.jsonl)"
            )
        if did not in corpus:
            raise DataError(
                qrels_file, line_no, "corpus-id", f"unknown corpus id {did!r} (not in corpus.jsonl)"
            )
        try:
            relevance = int(score)
        except ValueError:
            raise DataError(qrels_file, line_no, "score", f"expected an integer, got {score!r}") from None
        if relevance < 0:
            raise DataError(qrels_file, line_no, "score", f"must be >= 0, got {relevance}")
        qrels.setdefault(qid, {})[did] = relevance
    judged = {q for q, rel in qrels.items() if any(v > 0 for v in rel.values())}
    if not judged:
        raise DataError(qrels_file, 0, "score", "no query has a relevant document (score > 0)")
    queries = {q: t for q, t in queries.items() if q in judged}  # BEIR evaluates the judged queries only
    instruction_file = root / "instruction.txt"
    instruction = (
        instruction_file.read_text(encoding="utf-8").strip()
        if instruction_file.is_file()
        else DEFAULT_INSTRUCTION
    )
    return BeirSet(root.resolve().name, corpus, queries, {q: qrels[q] for q in queries}, instruction)
