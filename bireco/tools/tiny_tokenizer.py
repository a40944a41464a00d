"""Offline tiny assets: a BPE tokenizer trained locally on the built-in WordNet text.

The tokenizer defines the special tokens of every supported family (Llama-3 headers and <|eot_id|>, Qwen's
<|im_start|>/<|im_end|>, Mistral's [INST]/</s>, Gemma's turn markers), so each `conf/model/tiny_*` family
config exercises its real template and [EOS] with no download. Rebuild the shipped copy with
`python -m bireco.tools.tiny_tokenizer` (deterministic for a given `tokenizers` version).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bireco.core.paths import asset_path
from bireco.data.wordnet import corpus_lines

TOKENIZER_ASSET = "tiny_tokenizer"
SPECIAL_TOKENS = [
    "<pad>",
    "<unk>",
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<s>",
    "</s>",
    "[INST]",
    "[/INST]",
    "<bos>",
    "<eos>",
    "<start_of_turn>",
    "<end_of_turn>",
]


def tiny_tokenizer_path() -> str:
    """Filesystem path of the shipped tiny tokenizer (usable as `model.tokenizer`)."""
    return asset_path(TOKENIZER_ASSET)


def train_tokenizer(lines: list[str], vocab_size: int = 4096):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        pad_token="<pad>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "assets" / TOKENIZER_ASSET)
    ap.add_argument("--vocab-size", type=int, default=4096)
    args = ap.parse_args()
    tok = train_tokenizer(corpus_lines("train"), args.vocab_size)
    tok.save_pretrained(args.out)
    print(f"wrote tokenizer ({len(tok)} tokens) to {args.out}")


if __name__ == "__main__":
    main()
