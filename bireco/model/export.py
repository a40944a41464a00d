"""A checkpoint as a self-contained sentence-transformers model directory (`bireco-export`, bireco.export).

The directory holds merged weights (LoRA folded in; bf16 unless dtype=float32), a model card (README.md), the tokenizer with a post-processor that adds the family's
BOS / [EOS] exactly as bireco does, and a Transformer -> last-token Pooling -> Normalize pipeline whose prompts
are `query` (chat prefix + instruction + separator) and `document` (chat prefix, the default). Padding is on
the right so the model's default position ids match bireco's mask-based ones.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from bireco.core.files import atomic_dir, temp_name
from bireco.core.runs import run_of
from bireco.model.backbone import Backbone
from bireco.model.model_card import render, run_facts


def _add_special_tokens_processor(tokenizer_dir: Path, backbone: Backbone) -> None:
    """Make plain tokenisation produce `[BOS] ... EOS` (what bireco's encode_side builds)."""
    from tokenizers import Tokenizer, processors

    fmt, tok = backbone.text_format, backbone.tokenizer
    eos = fmt.eos_token
    specials = [(eos, fmt.eos_id(tok))]
    single = f"$A:0 {eos}:0"
    if fmt.add_bos and tok.bos_token is not None:
        specials.append((tok.bos_token, tok.bos_token_id))
        single = f"{tok.bos_token}:0 " + single
    path = tokenizer_dir / "tokenizer.json"
    t = Tokenizer.from_file(str(path))
    t.post_processor = processors.TemplateProcessing(
        single=single, pair=single.replace("$A:0", "$A:0 $B:1"), special_tokens=specials
    )
    t.save(str(path))


def _plain_text_kwargs(dtype: str) -> dict:
    """Transformer(...) arguments that load the weights in `dtype` and pin the input to plain text, saved in the
    module's config: the prompt is prepended to the text and tokenised as bireco tokenises it, never chat-rendered
    (the `message` modality sentence-transformers >= 6 infers for a tokenizer with a chat template)."""
    import inspect

    import torch
    from sentence_transformers.sentence_transformer.modules import Transformer

    params = inspect.signature(Transformer.__init__).parameters
    kwargs: dict = {
        "model_kwargs" if "model_kwargs" in params else "model_args": {"dtype": getattr(torch, dtype)}
    }
    if "modality_config" in params:
        kwargs["modality_config"] = {"text": {"method": "forward", "method_output_name": "last_hidden_state"}}
        kwargs["module_output_name"] = "token_embeddings"
    return kwargs


def export_sentence_transformers(checkpoint: str | Path, output: str | Path, *, instruction: str | None = None,
                                 max_seq_length: int = 512, dtype: str = "bfloat16", overwrite: bool = False,
                                 push_to_hub: str | None = None) -> Path:  # fmt: skip
    """`dtype`: of the saved weights (bf16 halves the files: 16 GB for 8B; the paper trains and evaluates in bf16).
    An existing `output` is replaced only with `overwrite`. `push_to_hub`: a hub repo id to upload to (needs network
    and a token; not exercised by the offline tests)."""
    from sentence_transformers import SentenceTransformer

    output = Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} exists; pass overwrite=true to replace it")
    if dtype not in ("bfloat16", "float16", "float32"):
        raise ValueError(f"dtype={dtype!r}; valid: bfloat16, float16, float32")
    backbone = Backbone.load(checkpoint, dtype="float32")  # merged in fp32, then cast once
    if backbone.pooling != "last":
        raise ValueError(
            f"export supports pooling=last (the paper's [EOS] pooling), this checkpoint uses {backbone.pooling!r}"
        )
    if backbone.attention != "causal":
        raise ValueError(
            "export supports causal attention only (sentence-transformers loads the stock model)"
        )
    hf_dir = temp_name(output)  # the plain HF model sentence-transformers loads and copies; removed below
    try:
        _write_export(backbone, checkpoint, output, hf_dir, instruction, max_seq_length, dtype)
    finally:
        shutil.rmtree(hf_dir, ignore_errors=True)
    if push_to_hub:
        SentenceTransformer(str(output), device="cpu").push_to_hub(push_to_hub)
    return output


def _write_export(backbone: Backbone, checkpoint, output: Path, hf_dir: Path, instruction: str | None,
                  max_seq_length: int, dtype: str) -> None:  # fmt: skip
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    model = backbone.model.merge_and_unload() if backbone.is_lora else backbone.model
    model.to(getattr(torch, dtype)).save_pretrained(hf_dir)
    backbone.tokenizer.padding_side = "right"
    # An embedder has no chat: with a chat template in the tokenizer, sentence-transformers >= 6 renders every
    # input as a chat message (system prompt, a second header) and pools another token than bireco does.
    backbone.tokenizer.chat_template = None
    backbone.tokenizer.save_pretrained(hf_dir)
    _add_special_tokens_processor(hf_dir, backbone)
    fmt = backbone.text_format.for_instruction(instruction)  # same separator rule as bireco's encoder
    prompts = {
        "document": fmt.prefix,
        "query": fmt.prefix + (instruction + fmt.instruction_separator if instruction else ""),
    }
    transformer = Transformer(str(hf_dir), max_seq_length=max_seq_length, **_plain_text_kwargs(dtype))
    st = SentenceTransformer(
        modules=[transformer, Pooling(backbone.hidden_size, pooling_mode="lasttoken"), Normalize()],
        prompts=prompts,
        default_prompt_name="document",
        similarity_fn_name="cosine",
    )
    run_dir = run_of(checkpoint)
    facts = run_facts(run_dir)
    base = (facts.get("config") or {}).get("model", {}).get("name_or_path") or str(checkpoint)
    usage = ["from sentence_transformers import SentenceTransformer", "", f"model = SentenceTransformer('{output}')",
             "queries = model.encode(['a dog, with a long snout'], prompt_name='query')",
             "documents = model.encode(['a domesticated carnivorous mammal'])  # the default `document` prompt",
             "scores = model.similarity(queries, documents)", "",
             "# mteb: mteb.evaluate(model, mteb.get_tasks(tasks=['SciFact'])) with the same prompts"]  # fmt: skip
    stage = run_dir.name if run_dir.name in ("stage1", "stage2", "baseline") else None
    with atomic_dir(output) as tmp:
        st.save(str(tmp))
        export_record = {"checkpoint": str(checkpoint), "instruction": instruction, "dtype": dtype}
        (tmp / "bireco_export.json").write_text(json.dumps(export_record, indent=2))
        (tmp / "README.md").write_text(
            render(f"{output.name} (bireco export)", str(base), stage, facts, usage, prompts)
        )
