import math

import numpy as np
import pytest
import torch

from bireco.backbone import Backbone, apply_lora
from bireco.data.instructions import load_table
from bireco.encoder import encode_texts
from bireco.evaluate import TaskUnavailable, evaluate_checkpoint, markdown_table, resolve_tasks


@pytest.fixture
def checkpoint(backbone, tmp_path):
    backbone.model = apply_lora(backbone.model, {"r": 4, "alpha": 8, "dropout": 0.0}, ["q_proj", "v_proj"])
    with torch.no_grad():
        for n, p in backbone.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    return backbone.save(tmp_path / "run" / "final")


def test_builtin_task_through_mteb_matches_numpy_ndcg(checkpoint, tmp_path):
    summary = evaluate_checkpoint(str(checkpoint), ["WordNetExamplesRetrieval"], output_dir=str(tmp_path / "eval"),
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


def test_named_task_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TaskUnavailable, match="SciFact.*HF_HUB_OFFLINE=1"):
        resolve_tasks(["SciFact"], None)


def test_markdown_table_has_paper_categories():
    s = {"a": {"tasks": {"X": {"type": "STS", "main_score": 80.0}}, "categories": {"STS": 80.0, "Average": 80.0}}}
    text = markdown_table(s)
    assert text.splitlines()[0] == "| run | STS | Average |" and "| a | 80.00 | 80.00 |" in text


def test_export_round_trip_through_sentence_transformers(checkpoint, tmp_path):
    from sentence_transformers import SentenceTransformer

    from bireco.export import export_sentence_transformers

    out = export_sentence_transformers(checkpoint, tmp_path / "st", instruction="Find the sense")
    st = SentenceTransformer(str(out), device="cpu")
    texts = ["a domesticated carnivorous mammal", "dog", "the act of running quickly over a long distance in the rain"]
    bb = Backbone.load(checkpoint, dtype="float32")
    docs_st, docs_bireco = torch.tensor(st.encode(texts)), encode_texts(bb, texts)
    assert (docs_st * docs_bireco).sum(-1).min() >= 0.9999
    q_st, q_bireco = torch.tensor(st.encode(texts, prompt_name="query")), encode_texts(bb, texts, "Find the sense")
    assert (q_st * q_bireco).sum(-1).min() >= 0.9999
    assert not torch.allclose(q_st, docs_st)  # the query prompt matters


def test_encode_helper(checkpoint):
    from bireco.encoder import encode

    e = encode(["dog", "a canid"], checkpoint, instruction="Find")
    assert e.shape == (2, 64) and np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
