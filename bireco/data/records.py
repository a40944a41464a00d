"""Files -> validated pair records -> a memory-mapped Hugging Face `datasets.Dataset`.

Record columns: query, positive, negatives (list), instruction, dataset. Every problem in an input file is
reported as `file:line: field: reason`; with `data.on_bad_record=skip` bad rows are dropped and counted per
file and reason instead. Validation runs while the Arrow cache is written, before any run output exists.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets

from bireco.core.choices import Choice
from bireco.core.errors import DataError
from bireco.data import wordnet
from bireco.data.instructions import instruction_for, load_table

log = logging.getLogger(__name__)

COLUMNS = ("query", "positive", "negatives", "instruction", "dataset")
FEATURES = datasets.Features(
    {
        "query": datasets.Value("string"),
        "positive": datasets.Value("string"),
        "negatives": datasets.Sequence(datasets.Value("string")),
        "instruction": datasets.Value("string"),
        "dataset": datasets.Value("string"),
    }
)
DATA_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".parquet")
E5_DATASETS = (
    "allnli", "dureader", "eli5_question_answer", "fever", "hotpot_qa", "miracl", "mrtydi",
    "msmarco_passage", "msmarco_document", "nq", "quora_duplicates", "squad", "t2ranking", "trivia_qa",
)  # fmt: skip
SKIPPED: dict[str, Counter] = {}  # file -> Counter(reason), filled while generating (per process)


class DataFormat(Choice):
    """`data.format`: the built-in WordNet pairs, the E5 mixture's directory, or the user's files."""

    wordnet = "wordnet"
    e5 = "e5"
    jsonl = "jsonl"
    parquet = "parquet"
    disk = "disk"


class OnBadRecord(Choice):
    """`data.on_bad_record`: error (stop with file:line: field) | skip (drop the record, count it per file)."""

    error = "error"
    skip = "skip"


# ---------------------------------------------------------------- record checks
def _text(value: Any, file, line: int, field: str, required: bool = True) -> str | None:
    if value is None:
        if required:
            raise DataError(file, line, field, "missing")
        return None
    if not isinstance(value, str):
        raise DataError(file, line, field, f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(file, line, field, "empty or whitespace-only text")
    return value


def normalise(
    raw: Any, file, line: int, fields: dict[str, str], dataset: str, instruction: str | None
) -> dict:
    """Map one raw record to the record schema, raising DataError on any problem."""
    if not isinstance(raw, dict):
        raise DataError(file, line, "<record>", f"expected a JSON object, got {type(raw).__name__}")
    f = {"query": "query", "positive": "positive", "negatives": "negative", **fields}
    query = _text(raw.get(f["query"]), file, line, f["query"])
    positive = _text(raw.get(f["positive"]), file, line, f["positive"])
    negs = raw.get(f["negatives"])
    if negs is None and f["negatives"] != "negatives":
        negs = raw.get("negatives")
    if negs is None:
        negatives = []
    elif isinstance(negs, str):
        negatives = [_text(negs, file, line, f["negatives"])]
    elif isinstance(negs, list):
        negatives = [_text(n, file, line, f"{f['negatives']}[{i}]") for i, n in enumerate(negs)]
    else:
        raise DataError(
            file, line, f["negatives"], f"expected a string or a list of strings, got {type(negs).__name__}"
        )
    if "instruction" in f and f["instruction"] in raw:
        instruction = _text(raw[f["instruction"]], file, line, f["instruction"])
    if "dataset" in f and f["dataset"] in raw:
        dataset = _text(raw[f["dataset"]], file, line, f["dataset"])
    return {
        "query": query,
        "positive": positive,
        "negatives": negatives,
        "instruction": instruction or "",
        "dataset": dataset,
    }


# ---------------------------------------------------------------- readers
def _json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed object or the DataError of that line)."""
    opener = gzip.open if path.name.endswith(".gz") else open
    n = 0
    with opener(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield (
                    n,
                    DataError(
                        path,
                        n,
                        "<bytes>",
                        f"not valid UTF-8 (byte {err.start}: {raw[err.start : err.start + 1]!r})",
                    ),
                )
                continue
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as err:
                yield n, DataError(path, n, "<json>", f"malformed JSON: {err.msg} at column {err.colno}")
    if n == 0:
        yield 1, DataError(path, 1, "<file>", "file is empty")


def _parquet_rows(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if table.num_rows == 0:
        yield 1, DataError(path, 1, "<file>", "file has no rows")
    yield from enumerate(table.to_pylist(), start=1)


def _rows(path: Path) -> Iterator[tuple[int, Any]]:
    return _parquet_rows(path) if path.suffix == ".parquet" else _json_lines(path)


def data_files(path: str | os.PathLike, only: list[str] | None = None) -> list[Path]:
    p = Path(path).expanduser()
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise DataError(p, 0, "data.path", "no such file or directory")
    files = sorted(f for f in p.iterdir() if f.is_file() and f.name.endswith(DATA_SUFFIXES))
    if only:
        files = [f for f in files if _stem(f) in set(only)]
    if not files:
        raise DataError(p, 0, "data.path", f"directory holds no data files ({', '.join(DATA_SUFFIXES)})")
    return files


def _stem(path: Path) -> str:
    name = path.name
    for suf in DATA_SUFFIXES:
        if name.endswith(suf):
            return name[: -len(suf)]
    return path.stem


def _generate(
    files: list[str], fields: dict, table_name: str | None, instruction: str | None, on_bad: str, stamp: str
):
    """Validated records of every file; `stamp` (sizes + mtimes) is unused here but keys the Arrow cache, so an
    edited file is re-read and re-validated while an unchanged one is reused (its skip counts are not re-logged)."""
    table = load_table(table_name) if table_name else {}
    for file in map(Path, files):
        dataset = _stem(file)
        skipped = SKIPPED.setdefault(str(file), Counter())
        for line, raw in _rows(file):
            try:
                if isinstance(raw, DataError):
                    raise raw
                name = (
                    raw.get(fields.get("dataset", "dataset"), dataset) if isinstance(raw, dict) else dataset
                )
                instr = instruction or (
                    instruction_for(table, name, line - 1) if isinstance(name, str) else None
                )
                own = isinstance(raw, dict) and raw.get(fields.get("instruction", "instruction"))
                if table_name and instr is None and not own:
                    known = ", ".join(sorted(table))
                    raise DataError(
                        file,
                        line,
                        "dataset",
                        f"no instruction for dataset {name!r} in table {table_name!r} (known: {known})",
                    )
                yield normalise(raw, file, line, fields, dataset, instr)
            except DataError as err:
                if on_bad != "skip":
                    raise
                skipped[f"{err.field}: {err.reason.split(' (')[0]}"] += 1


def load_files(cfg: Any, files: list[Path], table_name: str | None) -> datasets.Dataset:
    """Validated, memory-mapped dataset from files; the Arrow cache is keyed by each file's size and mtime."""
    stamp = ";".join(f"{f}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    for f in files:
        SKIPPED.pop(str(f), None)
    kwargs = {
        "files": [str(f) for f in files],
        "fields": dict(cfg.fields or {}),
        "table_name": table_name,
        "instruction": cfg.instruction,
        "on_bad": cfg.on_bad_record,
        "stamp": stamp,
    }
    try:
        ds = datasets.Dataset.from_generator(_generate, gen_kwargs=kwargs, features=FEATURES)
    except Exception as err:  # datasets wraps generator errors; surface ours unchanged
        cause = err
        while cause is not None and not isinstance(cause, DataError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise cause from None
        raise
    report_skips(files)
    if len(ds) == 0:
        raise DataError(
            files[0], 0, "<file>", "no valid records left" + (" after skipping bad ones" if SKIPPED else "")
        )
    return ds


def report_skips(files: list[Path]) -> dict[str, dict[str, int]]:
    report = {str(f): dict(SKIPPED[str(f)]) for f in files if SKIPPED.get(str(f))}
    for file, reasons in report.items():
        log.warning("skipped %d bad records in %s: %s", sum(reasons.values()), file, reasons)
    return report


# ---------------------------------------------------------------- entry point
def load_pairs(cfg: Any, split: str = "train") -> datasets.Dataset:
    """The records of `split` for a `conf/data` node."""
    fmt = cfg.format
    if fmt == "wordnet":
        table = load_table(cfg.instructions or "wordnet")
        records = [
            dict(r, instruction=instruction_for(table, r["dataset"], 0) or "")
            for r in wordnet.pair_records(split)
        ]
        records = [
            {k: r[k] for k in COLUMNS} for r in records if not cfg.datasets or r["dataset"] in cfg.datasets
        ]
        return datasets.Dataset.from_list(records, features=FEATURES)
    if split != "train":
        raise ValueError(
            f"data.format={fmt!r} provides only a train split; evaluate on MTEB or the built-in tasks"
        )
    if fmt == "e5":
        files = data_files(cfg.path, cfg.datasets)
        for f in files:
            if _stem(f) not in E5_DATASETS and (cfg.instructions or "e5") == "e5":
                raise DataError(
                    f, 0, "dataset", f"unknown E5 dataset {_stem(f)!r}; known: {', '.join(E5_DATASETS)}"
                )
        return load_files(cfg, files, cfg.instructions or "e5")
    if fmt in ("jsonl", "parquet"):
        return load_files(cfg, data_files(cfg.path, cfg.datasets), cfg.instructions)
    if fmt == "disk":
        ds = datasets.load_from_disk(cfg.path)
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[split]
        return _validate_dataset(ds, Path(cfg.path), cfg)
    raise ValueError(f"data.format={fmt!r}; valid: {', '.join(DataFormat.values())}")


def _validate_dataset(ds: datasets.Dataset, path: Path, cfg: Any) -> datasets.Dataset:
    fields = dict(cfg.fields or {})
    table = load_table(cfg.instructions) if cfg.instructions else {}
    name = path.name

    def fix(row, idx):
        instr = cfg.instruction or instruction_for(
            table, row.get(fields.get("dataset", "dataset"), name) or name, idx
        )
        return normalise(dict(row), path, idx + 1, fields, name, instr)

    return ds.map(fix, with_indices=True, remove_columns=ds.column_names, features=FEATURES)
