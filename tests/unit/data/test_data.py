import gzip
import json
from pathlib import Path

import datasets
import pytest
import torch
from omegaconf import OmegaConf

from bireco.config.schema import DataConfig
from bireco.core.errors import DataError
from bireco.data import wordnet
from bireco.data.collate import PairCollator
from bireco.data.instructions import load_table, mteb_instruction
from bireco.data.records import E5_DATASETS, load_pairs
from bireco.data.samplers import PairBatchSampler


def data_cfg(**kw):
    return OmegaConf.structured(DataConfig(name="t", **kw))


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


ROW = {"query": "what is a dog", "positive": "a domesticated canid", "negative": "a feline"}


# ---------------------------------------------------------------- loaders
def test_e5_loader_applies_instruction_rules(tmp_path):
    d = tmp_path / "echo"
    d.mkdir()
    write_jsonl(d / "allnli.jsonl", [dict(ROW, query=f"premise {i}") for i in range(4)])
    write_jsonl(d / "quora_duplicates.jsonl", [dict(ROW, query=f"q {i}") for i in range(2)])
    write_jsonl(d / "msmarco_document.jsonl", [ROW])
    with gzip.open(d / "fever.jsonl.gz", "wt") as f:
        f.write(json.dumps(ROW) + "\n")
    ds = load_pairs(data_cfg(format="e5", path=str(d)))
    rows = ds.to_list()
    by = {(r["dataset"], r["query"]): r for r in rows}
    assert (
        by[("allnli", "premise 0")]["instruction"]
        == "Given a premise, retrieve a hypothesis that is entailed by the premise"
    )
    assert by[("allnli", "premise 1")]["instruction"] == "Retrieve semantically similar text"
    assert by[("allnli", "premise 2")]["instruction"] == by[("allnli", "premise 0")]["instruction"]
    assert (
        by[("quora_duplicates", "q 1")]["instruction"]
        == "Find questions that have the same meaning as the input question"
    )
    assert by[("msmarco_document", ROW["query"])]["instruction"].endswith(
        "relevant documents that answer the query"
    )
    assert by[("fever", ROW["query"])]["negatives"] == ["a feline"]
    assert set(load_table("e5")) == set(E5_DATASETS)


def test_generic_jsonl_parquet_and_disk_loaders(tmp_path):
    rows = [{"q": "dog", "doc": "a canid", "negs": ["a cat", "a bird"], "src": "animals"}] * 3
    write_jsonl(tmp_path / "a.jsonl", rows)
    cfg = data_cfg(format="jsonl", path=str(tmp_path / "a.jsonl"), instruction="Find it",
                   fields={"query": "q", "positive": "doc", "negatives": "negs", "dataset": "src"})  # fmt: skip
    ds = load_pairs(cfg)
    assert len(ds) == 3 and ds[0] == {"query": "dog", "positive": "a canid", "negatives": ["a cat", "a bird"],
                                      "instruction": "Find it", "dataset": "animals"}  # fmt: skip
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "b.parquet"))
    cfg.format, cfg.path = "parquet", str(tmp_path / "b.parquet")
    assert load_pairs(cfg).to_list() == ds.to_list()
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "disk"))
    cfg.format, cfg.path = "disk", str(tmp_path / "disk")
    assert load_pairs(cfg)[0]["positive"] == "a canid"


def test_mteb_instruction_table_has_67_entries():
    assert len(load_table("mteb")) == 67
    assert (
        mteb_instruction("MSMARCO")
        == "Given a web search query, retrieve relevant passages that answer the query:"
    )


# ---------------------------------------------------------------- validation (table-driven)
BAD = [
    ("malformed_json", ['{"query": "a", "positive": '], 1, "<json>", "malformed JSON"),
    ("missing_query", [{"positive": "b"}], 1, "query", "missing"),
    ("missing_positive", [ROW, {"query": "a"}], 2, "positive", "missing"),
    ("query_not_string", [{"query": 3, "positive": "b"}], 1, "query", "expected a string, got int"),
    (
        "negative_wrong_type",
        [{"query": "a", "positive": "b", "negative": 5}],
        1,
        "negative",
        "expected a string or a list",
    ),
    (
        "negative_list_item",
        [{"query": "a", "positive": "b", "negative": ["x", 4]}],
        1,
        "negative[1]",
        "expected a string",
    ),
    ("empty_query", [ROW, ROW, {"query": "", "positive": "b"}], 3, "query", "empty or whitespace-only"),
    ("whitespace_positive", [{"query": "a", "positive": "  \t "}], 1, "positive", "empty or whitespace-only"),
    (
        "empty_negative",
        [{"query": "a", "positive": "b", "negative": " "}],
        1,
        "negative",
        "empty or whitespace-only",
    ),
    ("not_an_object", ['["a", "b"]'], 1, "<record>", "expected a JSON object"),
    ("empty_file", [], 1, "<file>", "file is empty"),
    ("non_utf8", None, 2, "<bytes>", "not valid UTF-8"),
]


@pytest.mark.parametrize("name,rows,line,field,reason", BAD, ids=[b[0] for b in BAD])
def test_bad_input_names_file_line_field(tmp_path, name, rows, line, field, reason, cfg_factory):
    d = tmp_path / "echo"
    d.mkdir()
    f = d / "nq.jsonl"
    if rows is None:
        f.write_bytes(json.dumps(ROW).encode() + b'\n{"query": "caf\xe9", "positive": "b"}\n')
    else:
        write_jsonl(f, rows)
    with pytest.raises(DataError) as err:
        load_pairs(data_cfg(format="e5", path=str(d)))
    e = err.value
    assert (e.file, e.line, e.field) == (str(f), line, field)
    assert reason in str(e) and f"{f}:{line}: field {field!r}" in str(e)
    # through the training entry point: the run stops before any output directory exists
    from bireco.training.run import run

    cfg = cfg_factory("data=e5", f"data.path={d}", "trainer.max_steps=1")
    with pytest.raises(DataError):
        run(cfg)
    assert not (tmp_path / "out").exists()


def test_directory_without_data_files_and_unknown_dataset(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no data files"):
        load_pairs(data_cfg(format="e5", path=str(tmp_path / "empty")))
    d = tmp_path / "e5"
    d.mkdir()
    write_jsonl(d / "my_new_set.jsonl", [ROW])
    with pytest.raises(DataError, match="unknown E5 dataset 'my_new_set'") as err:
        load_pairs(data_cfg(format="e5", path=str(d)))
    assert err.value.field == "dataset"
    # a generic file whose dataset is missing from a required instruction table
    write_jsonl(tmp_path / "x.jsonl", [dict(ROW, dataset="nq"), dict(ROW, dataset="unknown_set")])
    with pytest.raises(DataError, match="no instruction for dataset 'unknown_set'") as err:
        load_pairs(data_cfg(format="jsonl", path=str(tmp_path / "x.jsonl"), instructions="e5"))
    assert (err.value.line, err.value.field) == (2, "dataset")


def test_skip_mode_counts_bad_records_per_file(tmp_path, caplog):
    d = tmp_path / "echo"
    d.mkdir()
    write_jsonl(d / "nq.jsonl", [ROW, "{bad json", {"query": " ", "positive": "b"}, ROW])
    (d / "squad.jsonl").write_bytes(json.dumps(ROW).encode() + b"\n\xff\xfe\n")
    with caplog.at_level("WARNING"):
        ds = load_pairs(data_cfg(format="e5", path=str(d), on_bad_record="skip"))
    assert len(ds) == 3
    assert "skipped 2 bad records" in caplog.text and "nq.jsonl" in caplog.text
    assert "skipped 1 bad records" in caplog.text and "not valid UTF-8" in caplog.text


def test_truncation_is_counted(backbone):
    coll = PairCollator(backbone.tokenizer, backbone.text_format, 20, 20, num_hard_negatives=1)
    rec = {
        "query": "dog " * 40,
        "positive": "short",
        "negatives": ["cat " * 40],
        "instruction": "Find",
        "dataset": "x",
    }
    coll([rec, dict(rec, query="dog")])
    assert coll.truncated == {"query": 1, "document": 2}  # the long negative of both records


# ---------------------------------------------------------------- collator and samplers
def test_collator_masks_from_spans(backbone):
    coll = PairCollator(
        backbone.tokenizer, backbone.text_format, 32, 32, padding_side="left", num_hard_negatives=2
    )
    recs = [
        {"query": "dog", "positive": "a canid", "negatives": ["a cat", "a bird", "a fish"], "instruction": "Find the sense", "dataset": "a"},
        {"query": "the red fox", "positive": "a small wild canid", "negatives": [], "instruction": "Find the sense", "dataset": "a"},
    ]  # fmt: skip
    b = coll(recs)
    q = b["query"]
    eos = backbone.text_format.eos_id(backbone.tokenizer)
    assert (q["input_ids"][:, -1] == eos).all()  # left padding: EOS last
    assert q["instruction_mask"].any(1).all() and not b["positive"]["instruction_mask"].any()
    assert not (q["instruction_mask"] & q["embed_mask"]).any()
    assert b["negatives"]["input_ids"].shape[0] == 2 and b["negative_owner"].tolist() == [0, 0]
    assert (q["attention_mask"].bool() | ~q["embed_mask"]).all()


def test_batch_sampler_homogeneous_reproducible_rank_aware():
    names = ["a"] * 40 + ["b"] * 24 + ["c"] * 5
    full = PairBatchSampler(names, 8, seed=1)
    batches = list(full)
    assert len(batches) == len(full) == 8  # 5 + 3 complete blocks; "c" too small
    for b in batches:
        assert len({names[i] for i in b}) == 1
    assert batches == list(PairBatchSampler(names, 8, seed=1))
    assert batches != list(PairBatchSampler(names, 8, seed=2))
    full.set_epoch(1)
    assert list(full) != batches
    r0, r1 = (
        PairBatchSampler(names, 8, rank=0, world_size=2, seed=1),
        PairBatchSampler(names, 8, rank=1, world_size=2, seed=1),
    )
    for g, a, b in zip(batches, r0, r1):
        assert a + b == g and len(a) == 4
    mixed = list(PairBatchSampler(names, 8, seed=1, homogeneous=False))
    assert len(mixed) == 69 // 8 and any(len({names[i] for i in b}) > 1 for b in mixed)


def test_length_bucketing_reduces_padding():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 200, (4096,), generator=g).tolist()
    names = ["a"] * 4096

    def padding(sampler):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in sampler)

    plain, bucketed = (
        PairBatchSampler(names, 32, seed=0),
        PairBatchSampler(names, 32, seed=0, lengths=lengths),
    )
    assert padding(bucketed) < 0.2 * padding(plain)
    assert sorted(i for b in bucketed for i in b) == list(range(4096))


# ---------------------------------------------------------------- built-in dataset
def test_wordnet_splits_are_disjoint_by_synset():
    wordnet.load_synsets.cache_clear()
    train = wordnet.pair_records("train")
    dev, test = wordnet.pair_records("dev"), wordnet.pair_records("test")
    ids = {s: {r["id"] for r in recs} for s, recs in (("train", train), ("dev", dev), ("test", test))}
    assert not ids["train"] & ids["dev"] and not ids["train"] & ids["test"] and not ids["dev"] & ids["test"]
    assert len(ids["train"]) > 90_000 and len(ids["test"]) > 11_000
    test_texts = {
        f(s) for s in wordnet.load_synsets() if s.split == "test" for f in (wordnet.gloss, wordnet.entry)
    }
    test_negs = {n for r in test for n in r["negatives"]}
    assert test_negs <= test_texts  # negatives come from the same split
    assert {r["dataset"] for r in train} == set(wordnet.WORDNET_DATASETS)
    assert all(
        r["query"].strip() and r["positive"].strip() and r["positive"] not in r["negatives"] for r in test
    )


def test_wordnet_parser_on_a_debian_line():
    line = '02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 000 | a member of the genus Canis; "the dog barked all night"\n'
    sid, lemmas, definition, examples = wordnet.parse_data_line(line, "n")
    assert sid == "n02084071" and lemmas == ("dog", "domestic dog", "Canis familiaris")
    assert definition == "a member of the genus Canis" and examples == ("the dog barked all night",)


@pytest.mark.integration
def test_cli_reports_a_bad_record_in_one_line_and_writes_nothing(tmp_path):
    """`python -m bireco.train` on a bad JSONL line: exit code 1, `file:line: field` on stderr, no traceback, and no
    directory (neither the run's nor Hydra's) left behind."""
    import subprocess
    import sys

    from conftest import subprocess_env

    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"query": "a dog", "positive": "an animal", "instruction": "Find"}) + "\n"
                    + json.dumps({"query": "a cat", "positive": "", "instruction": "Find"}) + "\n")  # fmt: skip
    work = tmp_path / "work"
    work.mkdir()
    cmd = [sys.executable, "-m", "bireco.train", "data=jsonl", f"data.path={data}", "trainer.max_steps=1",
           "data.global_batch_size=1", "output_root=outputs"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=work, env=subprocess_env(), timeout=300)
    assert r.returncode == 1
    assert f"Error: {data}:2: field 'positive'" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert list(work.iterdir()) == []


@pytest.mark.integration
def test_truncation_counts_survive_dataloader_workers(cfg_factory):
    """Counted per batch in the worker that collates it and summed by the training module: the totals logged with
    data.num_workers=1 equal those of the in-process loader (> 0 at these max lengths)."""
    import pandas as pd

    from bireco.training.run import run

    totals = {}
    for workers in (0, 1):
        cfg = cfg_factory("stage=baseline", "trainer.max_steps=3", "trainer.log_every_n_steps=1", "data.global_batch_size=4",
                          "data.max_query_length=64", "data.max_doc_length=16", f"data.num_workers={workers}",
                          f"variant=w{workers}", "data.max_train_records=64")  # fmt: skip
        run(cfg)
        df = pd.read_csv(Path(cfg.run_dir) / "logs" / "metrics.csv")
        totals[workers] = [float(df[f"data/truncated_{k}"].dropna().iloc[-1]) for k in ("query", "document")]
    assert totals[1] == totals[0] and totals[0][1] > 0, totals  # documents cut at 16 tokens
