import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bireco.data.instructions import load_table
from bireco.evaluation.runner import TaskUnavailable, evaluate_checkpoint, markdown_table, resolve_tasks
from bireco.model.backbone import Backbone
from bireco.model.encode import encode_texts
from bireco.model.loading import apply_lora


@pytest.fixture
def checkpoint(backbone, tmp_path):
    backbone.model = apply_lora(backbone.model, {"r": 4, "alpha": 8, "dropout": 0.0}, ["q_proj", "v_proj"])
    with torch.no_grad():
        for n, p in backbone.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    return backbone.save(tmp_path / "run" / "final")


def test_builtin_task_through_mteb_matches_numpy_ndcg(checkpoint, tmp_path):
    summary = evaluate_checkpoint(str(checkpoint), tasks=["WordNetExamplesRetrieval"], output_dir=str(tmp_path / "eval"),
                                  max_queries=40, max_docs=200, progress=False)  # fmt: skip
    got = summary["tasks"]["WordNetExamplesRetrieval"]["main_score"] / 100
    # the same task data, embedded directly, scored with numpy
    task = resolve_tasks(["WordNetExamplesRetrieval"], None, 40, 200)[0]
    split = task.dataset["default"]["test"]
    bb = Backbone.load(checkpoint, dtype="float32")
    instruction = load_table("wordnet")["wordnet_examples"]
    q = encode_texts(bb, list(split["queries"]["text"]), instruction).numpy()
    doc_ids = list(split["corpus"]["id"])
    d = encode_texts(bb, list(split["corpus"]["text"]), None).numpy()
    scores = q @ d.T
    ndcg = []
    for i, qid in enumerate(split["queries"]["id"]):
        rel = doc_ids.index(next(iter(split["relevant_docs"][qid])))
        rank = int((scores[i] > scores[i, rel]).sum()) + 1
        ndcg.append(1 / math.log2(rank + 1) if rank <= 10 else 0.0)
    assert abs(got - float(np.mean(ndcg))) < 1e-3, (got, np.mean(ndcg))
    assert (tmp_path / "eval" / "mteb" / "WordNetExamplesRetrieval.json").is_file()
    table = (tmp_path / "eval" / "results.md").read_text()
    assert "| Retrieval |" in table.splitlines()[0].replace("| run ", "")


def test_evaluation_in_bf16_weights_is_its_own_result_and_a_dtype_typo_fails_fast(checkpoint, tmp_path):
    """`dtype=bfloat16` (every op in bf16, as a bf16 export) is cached under its own model name, so an fp32 result in
    the same folder is not reused for it; its score stays near fp32's; a typo names the valid dtypes before any work."""
    import json

    from bireco.core.errors import ConfigError

    kw = dict(tasks=["WordNetExamplesRetrieval"], output_dir=str(tmp_path / "eval"), max_queries=40, max_docs=200,
              progress=False, wandb=False)  # fmt: skip
    fp32 = evaluate_checkpoint(str(checkpoint), **kw)
    bf16 = evaluate_checkpoint(str(checkpoint), dtype="bfloat16", **kw)
    saved = json.loads((tmp_path / "eval" / "mteb" / "WordNetExamplesRetrieval.json").read_text())
    assert saved["bireco_key"]["model"].endswith("-bfloat16")
    score = lambda s: s["tasks"]["WordNetExamplesRetrieval"]["main_score"]  # noqa: E731
    assert abs(score(bf16) - score(fp32)) < 5, (score(bf16), score(fp32))
    with pytest.raises(ConfigError, match="dtype='bf16'; valid: auto, float32, bfloat16"):
        evaluate_checkpoint(str(checkpoint), dtype="bf16", **kw)


def test_named_task_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TaskUnavailable, match="SciFact.*HF_HUB_OFFLINE=1"):
        resolve_tasks(["SciFact"], None)


def test_markdown_table_has_paper_categories():
    s = {
        "a": {
            "tasks": {"X": {"type": "STS", "main_score": 80.0}},
            "categories": {"STS": 80.0, "Average": 80.0},
        }
    }
    text = markdown_table(s)
    assert text.splitlines()[0] == "| run | STS | Average |" and "| a | 80.00 | 80.00 |" in text


def test_export_round_trip_through_sentence_transformers(checkpoint, tmp_path):
    from sentence_transformers import SentenceTransformer

    from bireco.model.export import export_sentence_transformers

    out = export_sentence_transformers(
        checkpoint, tmp_path / "st", instruction="Find the sense", dtype="float32"
    )
    st = SentenceTransformer(str(out), device="cpu")
    texts = [
        "a domesticated carnivorous mammal",
        "dog",
        "the act of running quickly over a long distance in the rain",
    ]
    bb = Backbone.load(checkpoint, dtype="float32")
    docs_st, docs_bireco = torch.tensor(st.encode(texts)), encode_texts(bb, texts)
    assert (docs_st * docs_bireco).sum(-1).min() >= 0.9999
    q_st, q_bireco = (
        torch.tensor(st.encode(texts, prompt_name="query")),
        encode_texts(bb, texts, "Find the sense"),
    )
    assert (q_st * q_bireco).sum(-1).min() >= 0.9999
    assert not torch.allclose(q_st, docs_st)  # the query prompt matters


def test_export_encodes_as_bireco_with_a_colon_instruction_and_over_long_text(checkpoint, tmp_path):
    """mteb-style instructions end in ":" (bireco then separates with a space, not "; "), and texts longer than the
    max length are cut before the [EOS]: the export must do both as bireco.evaluate's encoder does."""
    from sentence_transformers import SentenceTransformer

    from bireco.model.export import export_sentence_transformers

    instruction = "Given a word, retrieve its sense:"
    out = export_sentence_transformers(
        checkpoint, tmp_path / "st", instruction=instruction, max_seq_length=24, dtype="float32"
    )
    st = SentenceTransformer(str(out), device="cpu")
    texts = ["dog", " ".join(["a domesticated carnivorous mammal that barks"] * 10)]
    bb = Backbone.load(checkpoint, dtype="float32")
    for prompt, instr in (("query", instruction), ("document", None)):
        want = encode_texts(bb, texts, instr, max_length=24, bf16=False)
        got = torch.tensor(st.encode(texts, prompt_name=prompt))
        assert (got * want).sum(-1).min() >= 0.9999, prompt


def test_encode_helper(checkpoint):
    from bireco.model.encode import encode

    e = encode(["dog", "a canid"], checkpoint, instruction="Find")
    assert e.shape == (2, 64) and np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    bf16 = encode(["dog", "a canid"], checkpoint, instruction="Find", dtype="bfloat16")
    assert (
        not np.array_equal(bf16, e) and (bf16 * e).sum(-1).min() > 0.99
    )  # bf16 weights: the same vectors, rounded


def test_export_defaults_to_bf16_writes_a_model_card_and_does_not_replace_silently(checkpoint, tmp_path):
    import pytest
    from safetensors import safe_open
    from sentence_transformers import SentenceTransformer

    from bireco.model.export import export_sentence_transformers

    out = export_sentence_transformers(checkpoint, tmp_path / "st", instruction="Find the sense")
    (weights,) = out.rglob("model.safetensors")
    with safe_open(str(weights), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    card = (out / "README.md").read_text()
    assert (
        "## Usage" in card
        and "prompt_name='query'" in card
        and "Find the sense" in card
        and "@inproceedings" in card
    )
    texts = ["a domesticated carnivorous mammal", "dog"]
    bf16 = torch.tensor(SentenceTransformer(str(out), device="cpu").encode(texts)).float()
    fp32 = encode_texts(Backbone.load(checkpoint, dtype="float32"), texts, bf16=False)
    assert (bf16 * fp32).sum(-1).min() >= 0.99  # bf16 weights: close, not bit-equal
    with pytest.raises(FileExistsError, match="overwrite=true"):
        export_sentence_transformers(checkpoint, out)
    assert export_sentence_transformers(checkpoint, out, overwrite=True, dtype="float32") == out


def write_beir(root, corpus, queries, qrels, header="query-id\tcorpus-id\tscore"):
    import json as _json

    (root / "qrels").mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text("".join(_json.dumps(r) + "\n" for r in corpus))
    (root / "queries.jsonl").write_text("".join(_json.dumps(r) + "\n" for r in queries))
    (root / "qrels" / "test.tsv").write_text(header + "\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in qrels))
    return root


def test_beir_directory_through_bireco_evaluate_matches_numpy_ndcg(checkpoint, tmp_path):
    """`tasks=[beir:DIR]`: a local BEIR-layout set runs through mteb like the built-in tasks, under its directory's
    name, with graded relevance; nDCG@10 equals an independent numpy computation on the same embeddings."""
    from bireco.data import wordnet

    records = [r for r in wordnet.pair_records("dev") if r["dataset"] == wordnet.DEFINITIONS][:30]
    corpus = [{"_id": f"d{i}", "title": "", "text": r["positive"]} for i, r in enumerate(records)]
    corpus += [{"_id": f"n{i}", "title": "note", "text": r["negatives"][0]} for i, r in enumerate(records)]
    queries = [{"_id": f"q{i}", "text": r["query"]} for i, r in enumerate(records)]
    qrels = [(f"q{i}", f"d{i}", 2) for i in range(len(records))] + [
        (f"q{i}", f"n{i}", 1) for i in range(0, 30, 3)
    ]
    root = write_beir(tmp_path / "my-set", corpus, queries, qrels)
    (root / "instruction.txt").write_text("Given words, retrieve their definition\n")
    summary = evaluate_checkpoint(
        str(checkpoint), tasks=[f"beir:{root}"], output_dir=str(tmp_path / "eval"), progress=False
    )
    got = summary["tasks"]["my-set"]["main_score"] / 100
    bb = Backbone.load(checkpoint, dtype="float32")
    q = encode_texts(bb, [r["text"] for r in queries], "Given words, retrieve their definition").numpy()
    d = encode_texts(bb, [" ".join(t for t in (r["title"], r["text"]) if t) for r in corpus], None).numpy()
    ids = [r["_id"] for r in corpus]
    rel = {}
    for qid, did, s in qrels:
        rel.setdefault(qid, {})[did] = s
    ndcg = []
    for i, qid in enumerate(r["_id"] for r in queries):
        order = np.argsort(-(q[i] @ d.T), kind="stable")[:10]
        dcg = sum(
            rel[qid].get(ids[j], 0) / math.log2(k + 2) for k, j in enumerate(order)
        )  # trec_eval: linear gain
        ideal = sorted(rel[qid].values(), reverse=True)[:10]
        ndcg.append(dcg / sum(g / math.log2(k + 2) for k, g in enumerate(ideal)))
    assert abs(got - float(np.mean(ndcg))) < 1e-3, (got, np.mean(ndcg))
    assert (tmp_path / "eval" / "mteb" / "my-set.json").is_file() and "my-set" in (
        tmp_path / "eval" / "summary.json"
    ).read_text()


@pytest.mark.parametrize("break_it,where", [
    (lambda c, q, r: (c + [dict(c[0])], q, r, None), "corpus.jsonl:3: field '_id': duplicate id 'd0'"),
    (lambda c, q, r: (c, q, r + [("q0", "zz", 1)], None), "test.tsv:4: field 'corpus-id': unknown corpus id 'zz'"),
    (lambda c, q, r: (c, q + [{"_id": "q9", "text": "  "}], r, None), "queries.jsonl:3: field 'text': empty"),
    (lambda c, q, r: (c, q, r[:1] + [("q1", "d1", "high")], None), "test.tsv:3: field 'score': expected an integer"),
    (lambda c, q, r: (c, q, r, "qid\tdid\tscore"), "test.tsv:1: field 'header'"),
])  # fmt: skip
def test_beir_directory_errors_name_file_line_field_before_any_model_loads(tmp_path, break_it, where):
    from bireco.core.errors import DataError

    corpus = [{"_id": "d0", "text": "a dog"}, {"_id": "d1", "text": "a cat"}]
    queries = [{"_id": "q0", "text": "dog"}, {"_id": "q1", "text": "cat"}]
    c, q, r, header = break_it(corpus, queries, [("q0", "d0", 1), ("q1", "d1", 1)])
    root = write_beir(tmp_path / "bad", c, q, r, *([header] if header else []))
    with pytest.raises(DataError) as err:
        evaluate_checkpoint(str(tmp_path / "no-such-checkpoint"), tasks=[f"beir:{root}"], progress=False)
    assert str(err.value).endswith(where) or where in str(err.value), str(err.value)
    root = write_beir(tmp_path / "good", corpus, queries, [("q0", "d0", 1), ("q1", "d1", 1)])
    (root / "queries.jsonl").unlink()
    with pytest.raises(DataError, match="queries.jsonl:0: field '-': file missing"):
        evaluate_checkpoint(str(tmp_path / "no-such-checkpoint"), tasks=[f"beir:{root}"], progress=False)


def test_evaluation_reaches_the_training_runs_wandb(cfg_factory, tmp_path, monkeypatch):
    """A run trained with logger=wandb gets its evaluation scores as eval/<task> and eval/<category> in the same
    wandb run (offline here: a second offline run directory, beside the evaluation's results, with the same run id)."""
    from bireco.training.run import run

    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = cfg_factory(
        "stage=baseline",
        "trainer.max_steps=1",
        "logger=wandb",
        "data.global_batch_size=4",
        "data.max_train_records=16",
    )
    run(cfg)
    run_dir = Path(cfg.run_dir)
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    evaluate_checkpoint(
        str(run_dir / "final"),
        tasks=["WordNetExamplesRetrieval"],
        max_queries=10,
        max_docs=50,
        progress=False,
    )
    import wandb

    # run.finish() returns before wandb's service process has necessarily written the record log; teardown waits
    # for that process to exit (as the atexit hook does when `bireco-evaluate` ends). CI once read an 8-byte file.
    wandb.teardown()
    (trained,) = (run_dir / "wandb").glob(f"offline-run-*-{run_id}")
    (evaluated,) = (run_dir / "eval" / "wandb").glob(f"offline-run-*-{run_id}")  # the same id, resumed
    records = (evaluated / f"run-{run_id}.wandb").read_bytes()  # offline: the run's protobuf record log
    assert b"eval/WordNetExamplesRetrieval" in records and b"eval/Average" in records
    assert b"eval/Average" not in (trained / f"run-{run_id}.wandb").read_bytes()
