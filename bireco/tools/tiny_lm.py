"""A tiny pretrained base LM for the offline demo and tests: like the paper, training starts from a model that
already knows some language, here a small Llama-shaped LM trained for a few minutes on the built-in WordNet
text (train split only) with the shipped tiny tokenizer.

    python -m bireco.tools.tiny_lm --steps 600        # prints the cached directory

Cached under $BIRECO_CACHE (default ~/.cache/bireco) by a hash of every setting; written atomically.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import torch

from bireco.core.files import atomic_dir
from bireco.core.paths import CONF_DIR, cache_root
from bireco.data.wordnet import corpus_lines
from bireco.model.text_format import TextFormat, encode_side
from bireco.tools.tiny_tokenizer import tiny_tokenizer_path


def family_format(family: str = "tiny_llama") -> TextFormat:
    """The text format of a `conf/model/<family>.yaml` (the demo trains that family from this LM)."""
    import yaml

    return TextFormat(
        **yaml.safe_load((Path(CONF_DIR) / "model" / f"{family}.yaml").read_text())["text_format"]
    )


SMALL_ARCH = {
    "model_type": "llama",
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 512,
    "tie_word_embeddings": True,
}
CORPUS_VERSION = 2


def packed_corpus(tokenizer, seq_len: int, text_format: TextFormat) -> torch.Tensor:
    """(N, seq_len) token ids: every line in the family's chat format (so the model has seen the [EOS] it will
    be pooled at, as an Instruct model has), concatenated and cut into blocks."""
    lines = corpus_lines("train")
    ids: list[int] = []
    for line in lines:
        ids.extend(encode_side(tokenizer, text_format, line, 10_000).input_ids)
    n = len(ids) // seq_len
    return torch.tensor(ids[: n * seq_len]).view(n, seq_len)


def pretrain_tiny_lm(
    steps: int = 600,
    arch: dict | None = None,
    seq_len: int = 64,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    out: Path | None = None,
    progress: bool = True,
    text_format: TextFormat | None = None,
) -> Path:
    """Train (or reuse from cache) the tiny base LM; returns its Hugging Face directory."""
    from tqdm.auto import tqdm
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    arch = dict(arch or SMALL_ARCH)
    text_format = text_format or family_format()
    settings = {"arch": arch, "steps": steps, "seq_len": seq_len, "batch_size": batch_size, "lr": lr, "seed": seed,
                "corpus": CORPUS_VERSION, "format": text_format.__dict__}  # fmt: skip
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    out = Path(out) if out else cache_root() / f"tiny-base-lm-{key}"
    if (out / "pretrain.json").is_file():
        return out
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_path())
    data = packed_corpus(tokenizer, seq_len, text_format)  # (N, T)
    hf_kwargs = {k: v for k, v in arch.items() if k != "model_type"}
    config = AutoConfig.for_model(arch["model_type"], vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **hf_kwargs)  # fmt: skip
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95))
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup)))
    )
    g = torch.Generator().manual_seed(seed)
    losses = []
    t0 = time.perf_counter()
    bar = tqdm(range(steps), desc="pretraining tiny base LM", disable=not progress)
    for _ in bar:
        batch = data[torch.randint(0, data.shape[0], (batch_size,), generator=g)]  # (B, T)
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}")
    summary = {**settings, "first_loss": losses[0], "final_loss": sum(losses[-20:]) / min(20, len(losses)),
               "seconds": time.perf_counter() - t0, "sequences": int(data.shape[0])}  # fmt: skip
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "pretrain.json").write_text(json.dumps(summary, indent=2))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    path = pretrain_tiny_lm(steps=args.steps, out=args.out)
    print(path)


if __name__ == "__main__":
    main()
