from pathlib import Path

import pytest
import yaml
from transformers import AutoTokenizer

from bireco.core.paths import CONF_DIR
from bireco.model.text_format import TextFormat, encode_side
from bireco.tools.tiny_tokenizer import tiny_tokenizer_path

FAMILIES = sorted(p.stem for p in (Path(CONF_DIR) / "model").glob("*.yaml"))


@pytest.mark.parametrize("family", FAMILIES)
def test_final_token_is_the_family_eos(family):
    """Each family's [EOS] marker is one token, and it is the tokenizer's eos when the family's tokenizer says so."""
    spec = yaml.safe_load((Path(CONF_DIR) / "model" / f"{family}.yaml").read_text())["text_format"]
    fmt = TextFormat(**spec)
    tok = AutoTokenizer.from_pretrained(
        tiny_tokenizer_path(), eos_token=fmt.eos_token
    )  # tokenizer of that family
    side = encode_side(tok, fmt, "a small dog", 32, instruction="Retrieve a definition")
    assert side.input_ids[-1] == tok.eos_token_id == fmt.eos_id(tok)
    assert side.is_text[-1] and not side.is_instruction[-1]
    if fmt.add_bos:
        assert side.input_ids[0] == tok.bos_token_id
    start = int(fmt.add_bos)
    body = side.input_ids[start:-1]
    assert (
        tok.decode(body) == fmt.prefix + "Retrieve a definition" + fmt.instruction_separator + "a small dog"
    )
    instr_ids = [i for i, m in zip(side.input_ids, side.is_instruction) if m]
    text_ids = [i for i, m in zip(side.input_ids, side.is_text) if m][:-1]
    assert tok.decode(instr_ids).strip().startswith("Retrieve a definition")
    assert tok.decode(text_ids).strip() == "a small dog"


def test_truncation_keeps_eos_and_is_reported():
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_path())
    fmt = TextFormat(
        eos_token="<|eot_id|>", prefix="<|start_header_id|>user<|end_header_id|>\n\n", add_bos=True
    )
    long = " ".join(["dog"] * 100)
    side = encode_side(tok, fmt, long, 16, instruction="Find it")
    assert side.truncated and len(side.input_ids) == 16 and side.input_ids[-1] == fmt.eos_id(tok)
    assert not encode_side(tok, fmt, "dog", 16).truncated
    with pytest.raises(ValueError, match="leaves no room"):
        encode_side(tok, fmt, "dog", 3, instruction="a long instruction here")


def test_unknown_eos_token_fails():
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_path())
    with pytest.raises(ValueError, match="not a single token"):
        TextFormat(eos_token="<|not_a_token|>").eos_id(tok)


def test_mistral_family_format_against_mistral_commons_own_tokenizer(tmp_path):
    """The `mistral` family (Mistral-7B-Instruct-v0.2) against Mistral's own tokenizer and chat encoder, as PyPI
    mistral-common ships them (sentencepiece v1, the v0.2 tokenizer): bireco's side is the BOS and user turn
    mistral-common writes, up to the end of the user's text, then the tokenizer's eos; truncation keeps it last."""
    import json
    import os
    import shutil

    mistral_common = pytest.importorskip("mistral_common")
    from conftest import compose_cfg
    from mistral_common.protocol.instruct.messages import UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    model_file = os.path.join(os.path.dirname(mistral_common.__file__), "data", "tokenizer.model.v1")
    shutil.copy(
        model_file, tmp_path / "tokenizer.model"
    )  # an HF directory around the same sentencepiece model
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "add_eos_token": False, "legacy": False}))  # fmt: skip
    tok = AutoTokenizer.from_pretrained(tmp_path)
    real = MistralTokenizer.from_file(model_file)
    fmt = TextFormat(**compose_cfg(["model=mistral", "size=7b"]).model.text_format)
    instruction, text = "Given a word, retrieve its sense", "a dog, with a long snout"
    own = real.encode_chat_completion(
        ChatCompletionRequest(messages=[UserMessage(content=f"{instruction}; {text}")])
    ).tokens
    side = encode_side(tok, fmt, text, 64, instruction=instruction)
    n = len(side.input_ids) - 1  # all but bireco's pooled eos
    assert side.input_ids[:-1] == own[:n]
    assert (
        real.instruct_tokenizer.tokenizer.decode(own[n:]).strip() == "[/INST]"
    )  # what Mistral writes after the turn
    assert side.input_ids[-1] == real.instruct_tokenizer.tokenizer.eos_id == fmt.eos_id(tok)
    long = encode_side(tok, fmt, " ".join(["snout"] * 200), 16, instruction=instruction)
    assert (
        long.truncated
        and len(long.input_ids) == 16
        and long.input_ids[-1] == real.instruct_tokenizer.tokenizer.eos_id
    )


@pytest.mark.parametrize("instruction", ["Given a web search query, retrieve passages:", "Find the sense"])
def test_training_collator_formats_an_instruction_as_evaluation_and_export_do(instruction):
    """An instruction ending in ":" takes the text after a space ("...passages: text"), not after the family's
    separator ("...passages:; text"): the Stage I/II collator, the encoder (evaluation, the dev check) and the export
    all read TextFormat.for_instruction, so training sees the same query string as evaluation."""
    import torch

    from bireco.data.collate import PairCollator

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_path())
    fmt = TextFormat(
        eos_token="<|eot_id|>", prefix="<|start_header_id|>user<|end_header_id|>\n\n", add_bos=True
    )
    collate = PairCollator(tok, fmt, 48, 48, num_hard_negatives=0)
    batch = collate([{"query": "a small dog", "positive": "a domestic animal", "instruction": instruction,
                      "dataset": "toy"}])  # fmt: skip
    ids = batch["query"]["input_ids"][0][batch["query"]["attention_mask"][0].bool()]
    want = encode_side(tok, fmt.for_instruction(instruction), "a small dog", 48, instruction)
    assert ids.tolist() == want.input_ids
    sep = " " if instruction.endswith(":") else "; "
    assert tok.decode(want.input_ids[1:-1]) == fmt.prefix + instruction + sep + "a small dog"
    assert torch.equal(batch["query"]["input_ids"], collate([{"query": "a small dog", "positive": "x",
                       "instruction": instruction, "dataset": "toy"}])["query"]["input_ids"])  # fmt: skip
