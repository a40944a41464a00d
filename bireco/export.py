"""Export a checkpoint as a self-contained sentence-transformers model directory.

    python -m bireco.export checkpoint=outputs/default/default/stage2/final output=exported/my-embedder \
        instruction="Given a web search query, retrieve relevant passages that answer the query"

The directory holds merged weights (LoRA folded in), the tokenizer with a post-processor that adds the family's
BOS / [EOS] exactly as bireco does, and a Transformer -> last-token Pooling -> Normalize pipeline whose prompts
are `query` (chat prefix + instruction + separator) and `document` (chat prefix, the default). Padding is on
the right so the model's default position ids match bireco's mask-based ones.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from bireco.backbone import Backbone
from bireco.cli import CONF_DIR, check_overrides


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
    t.post_processor = processors.TemplateProcessing(single=single, pair=single.replace("$A:0", "$A:0 $B:1"), special_tokens=specials)
    t.save(str(path))


def export_sentence_transformers(checkpoint: str | Path, output: str | Path, instruction: str | None = None,
                                 max_seq_length: int = 512) -> Path:  # fmt: skip
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    backbone = Backbone.load(checkpoint, dtype="float32")  # a Stage II adapter is merged on load
    if backbone.pooling != "last":
        raise ValueError(f"export supports pooling=last (the paper's [EOS] pooling), this checkpoint uses {backbone.pooling!r}")
    if backbone.attention != "causal":
        raise ValueError("export supports causal attention only (sentence-transformers loads the stock model)")
    output = Path(output)
    hf_dir = output.with_name(output.name + ".hf-tmp")
    shutil.rmtree(hf_dir, ignore_errors=True)
    model = backbone.model.merge_and_unload() if backbone.is_lora else backbone.model
    model.save_pretrained(hf_dir)
    backbone.tokenizer.padding_side = "right"
    backbone.tokenizer.save_pretrained(hf_dir)
    _add_special_tokens_processor(hf_dir, backbone)
    fmt = backbone.text_format
    prompts = {"document": fmt.prefix, "query": fmt.prefix + (instruction + fmt.instruction_separator if instruction else "")}
    transformer = Transformer(str(hf_dir), max_seq_length=max_seq_length)
    st = SentenceTransformer(
        modules=[transformer, Pooling(backbone.hidden_size, pooling_mode="lasttoken"), Normalize()],
        prompts=prompts,
        default_prompt_name="document",
        similarity_fn_name="cosine",
    )
    tmp = output.with_name(output.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    st.save(str(tmp))
    (tmp / "bireco_export.json").write_text(json.dumps({"checkpoint": str(checkpoint), "instruction": instruction}, indent=2))
    shutil.rmtree(output, ignore_errors=True)
    tmp.rename(output)
    shutil.rmtree(hf_dir, ignore_errors=True)
    return output


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="export")
def _hydra_main(cfg: DictConfig) -> None:
    path = export_sentence_transformers(cfg.checkpoint, cfg.output, cfg.instruction, cfg.max_seq_length)
    print(f"exported to {path}; load with SentenceTransformer({str(path)!r})")


def main() -> None:
    check_overrides("export", sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    main()
