"""Is a Stage I reading its anchor? The diagnostics of the anchor, for a training run and for a checkpoint.

- `anchor_use`: on held-out pairs, Stage I's token CE per direction is measured twice, with each pair's own anchor
  and with the anchor of another pair of the batch (rolled by one). `anchor_gain_<dir>` = CE(other) - CE(own), in
  nats per token: 0 means the decoder ignores the embedding and regenerates the text from its language prior alone
  (docs/results.md: on SmolLM2 at CPU budgets the gain stays ~0.003 while the CE falls). The in-training probe
  (bireco.training.anchor_probe) and `python -m bireco.inspect probe=N` both report it.
- `reconstruct` / `query_overlap`: greedy decoding from one embedding, and how often a document's reconstructed
  query shares a content word with the true query.

Everything here runs without gradients and in eval mode, decodes exactly as Stage I trained (bireco.model.anchor),
and never touches the global RNG streams.
"""

from __future__ import annotations

import random
import re

import torch

from bireco.core.precision import autocast, bf16_for, inference_casts, weights_swapped
from bireco.model.anchor import DIRECTIONS, AnchorConditioning, AnchorReader, constant_anchor
from bireco.model.backbone import Backbone, position_ids_from_mask
from bireco.model.encode import encode_sides
from bireco.model.pooling import last_token
from bireco.model.text_format import pad_sides

PAIR_DIRECTIONS = ("q2d", "d2q")


def probe_batches(records: list[dict], collate, batch_size: int) -> list[dict]:
    """Records -> collated batches of at least two pairs (the other pair's anchor needs a second pair)."""
    batches = []
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        if len(chunk) >= 2:
            batches.append(collate(chunk))
    if not batches:
        raise ValueError(f"the anchor probe needs at least 2 pairs, got {len(records)}")
    return batches


def pair_batches(backbone: Backbone, records: list[dict], *, batch_size: int = 32, max_query_length: int = 32,
                 max_doc_length: int = 48) -> list[dict]:  # fmt: skip
    """Records (query, positive, instruction, as the data loaders give them) collated as Stage I collates them."""
    from bireco.data.collate import PairCollator

    collate = PairCollator(backbone.tokenizer, backbone.text_format, max_query_length, max_doc_length,
                           backbone.padding_side, num_hard_negatives=0, pad_id=backbone.pad_id)  # fmt: skip
    return probe_batches(records, collate, batch_size)


@torch.no_grad()
def anchor_use(reader: AnchorReader, batches: list[dict], bf16: bool | None = None,
               directions: tuple[str, ...] = PAIR_DIRECTIONS) -> dict[str, float]:  # fmt: skip
    """Token CE, accuracy and anchor gain per direction of a Stage I (its AnchorReader) over collated `batches`;
    the backbone's and the conditioning's train/eval modes are restored afterwards. `directions`: the paper's two,
    plus `q2q` / `d2d` for a Stage I that regenerates each side itself (`stage.target=self`)."""
    modules = (reader.backbone, reader.conditioning)  # a frozen decoder is always in eval mode
    device = next(reader.backbone.parameters()).device
    was_training = [m.training for m in modules]
    for m in modules:
        m.eval()  # dropout off; the conditioning's running mean is read, not updated
    sums = {f"{k}_{d}": 0.0 for k in ("own", "other", "acc") for d in directions}
    tokens = dict.fromkeys(directions, 0)
    mixed = bf16_for(device, bf16)
    casts = inference_casts(device, mixed, reader.backbone, reader.decoder)  # once per probe, not per forward
    try:
        for batch in batches:
            sides = {k: {kk: vv.to(device) for kk, vv in batch[k].items()} for k in ("query", "positive")}
            with weights_swapped(casts), autocast(device, mixed):
                # each side's anchor once, however many directions read it (q2d and q2q share the query's)
                anchors = {
                    src: reader.anchor(sides[src])
                    for src in dict.fromkeys(DIRECTIONS[d][0] for d in directions)
                }
                for direction in directions:
                    src, tgt = DIRECTIONS[direction]
                    anchor = anchors[src]
                    own, other = (
                        reader.decode(anchor, sides[tgt]),
                        reader.decode(anchor.roll(1, 0), sides[tgt]),
                    )
                    sums[f"own_{direction}"] += float(own.loss) * own.n_tokens
                    sums[f"other_{direction}"] += float(other.loss) * other.n_tokens
                    sums[f"acc_{direction}"] += float(own.n_correct)
                    tokens[direction] += own.n_tokens
    finally:
        for m, mode in zip(modules, was_training):
            m.train(mode)
    out = {}
    for d in directions:
        out[f"ce_{d}"] = sums[f"own_{d}"] / tokens[d]
        out[f"acc_{d}"] = sums[f"acc_{d}"] / tokens[d]
        out[f"anchor_gain_{d}"] = (sums[f"other_{d}"] - sums[f"own_{d}"]) / tokens[d]
    return out


def checkpoint_anchor_use(backbone: Backbone, records: list[dict], *, batch_size: int = 32,
                          max_query_length: int = 32, max_doc_length: int = 48, bf16: bool | None = None,
                          conditioning: AnchorConditioning | None = None,
                          decoder: Backbone | None = None) -> dict[str, float]:  # fmt: skip
    """`anchor_use` for a loaded checkpoint on `records`. `conditioning`: how its Stage I fed the anchor
    (bireco.model.anchor.load_conditioning), default the paper's raw anchor; `decoder`: the frozen decoder of a
    `stage.decoder=frozen` Stage I (bireco.model.anchor.load_decoder), default the checkpoint itself."""
    conditioning = (conditioning or AnchorConditioning()).to(next(backbone.parameters()).device)
    batches = pair_batches(backbone, records, batch_size=batch_size, max_query_length=max_query_length,
                           max_doc_length=max_doc_length)  # fmt: skip
    reader = AnchorReader(backbone, conditioning, decoder=None if decoder is None else decoder.eval())
    return anchor_use(reader, batches, bf16)


def wordnet_dev_pairs(n: int, seed: int = 42, data_cfg=None) -> list[dict]:
    """`n` seeded pairs of the WordNet dev split (as `data=wordnet` loads them, instructions included)."""
    from omegaconf import OmegaConf

    from bireco.data.records import load_pairs

    data_cfg = data_cfg or OmegaConf.create({"format": "wordnet", "instructions": None, "datasets": None})
    pool = load_pairs(data_cfg, "dev")
    return [pool[i] for i in sorted(random.Random(seed).sample(range(len(pool)), min(n, len(pool))))]


# ---------------------------------------------------------------- reconstruction from one embedding
@torch.no_grad()
def anchor_of(
    backbone: Backbone, text: str, instruction: str | None = None, max_length: int = 512
) -> torch.Tensor:
    """(1, H) last-token final-norm state: exactly the vector Stage I decodes from."""
    side = pad_sides(encode_sides(backbone, [text], instruction, max_length), backbone.pad_id, "left")
    side = {k: v.to(next(backbone.parameters()).device) for k, v in side.items()}
    hidden = backbone.hidden_states(side["input_ids"], side["attention_mask"])
    return last_token(hidden, side["attention_mask"])


def target_prompt(backbone: Backbone, instruction: str | None = None) -> list[int]:
    """The non-target head of the side being reconstructed ([BOS] chat prefix [instruction sep]), which Stage I
    feeds after the anchor with teacher forcing; generation starts where the text starts."""
    fmt, tok = backbone.text_format.for_instruction(instruction), backbone.tokenizer
    head = [tok.bos_token_id] if fmt.add_bos and tok.bos_token_id is not None else []
    # trailing spaces belong to the first text token under joint tokenisation (" able"), so leave them out
    text = (fmt.prefix + (instruction + fmt.instruction_separator if instruction else "")).rstrip(" ")
    return head + (tok(text, add_special_tokens=False)["input_ids"] if text else [])


@torch.no_grad()
def reconstruct(backbone: Backbone, anchor: torch.Tensor, max_new_tokens: int = 48, prompt: list[int] | None = None,
                conditioning: AnchorConditioning | None = None) -> tuple[list[int], str]:  # fmt: skip
    """Greedy decoding from `[anchor; prompt]` (`[lead; anchor; prompt]` under a lead token) until the family [EOS]
    (prompt default: the chat head); `conditioning`: how Stage I fed the anchor (default the paper's raw vector)."""
    backbone.eval()
    eos = backbone.text_format.eos_id(backbone.tokenizer)
    embed = backbone.causal_lm.get_input_embeddings()
    prompt = target_prompt(backbone) if prompt is None else prompt
    conditioning = (conditioning or AnchorConditioning()).to(anchor.device).eval()
    head = embed(torch.tensor([prompt], dtype=torch.long, device=anchor.device))  # (1, P, H)
    inputs = torch.cat([conditioning.decoder_prefix(anchor, embed), head], dim=1)
    ids: list[int] = []
    for _ in range(max_new_tokens):
        mask = torch.ones(inputs.shape[:2], dtype=torch.long, device=inputs.device)
        h = backbone.decoder(
            inputs_embeds=inputs, attention_mask=mask, position_ids=position_ids_from_mask(mask)
        ).last_hidden_state
        nxt = int(backbone.lm_head(h[:, -1]).argmax(-1))
        if nxt == eos:
            break
        ids.append(nxt)
        inputs = torch.cat([inputs, embed(torch.tensor([[nxt]], device=inputs.device))], dim=1)
    return ids, backbone.tokenizer.decode(ids)


STOPWORDS = frozenset(
    "the and for with that this from into its are was were has have had not but any all one "
    "which who whom whose what when where how than then them they their there been being".split()
)


def content_words(text: str) -> set[str]:
    """Lower-cased words of three letters or more, stopwords out: what "shares a content word" compares."""
    return {w for w in re.findall(r"[a-z]{3,}", text.lower()) if w not in STOPWORDS}


def query_overlap(backbone: Backbone, records: list[dict], max_new_tokens: int = 24,
                  conditioning: AnchorConditioning | None = None, constant: bool = False,
                  decoder: Backbone | None = None) -> dict:  # fmt: skip
    """Reconstruct each record's query from its document's embedding (EBD2Q, greedy) and count how often the
    reconstruction shares a content word with the true query. Returns the rate and every (true, reconstructed).
    `constant`: decode from the `stage.anchor=constant` control's vector instead (what that model trained with):
    its rate is what the language prior alone scores. `decoder`: a `stage.decoder=frozen` Stage I's decoder."""
    decoder = backbone if decoder is None else decoder
    examples = []
    for r in records:
        prompt = target_prompt(backbone, r.get("instruction") or None)
        anchor = constant_anchor(decoder)[None] if constant else anchor_of(backbone, r["positive"])
        _, text = reconstruct(decoder, anchor, max_new_tokens, prompt, conditioning)
        examples.append({"query": r["query"], "document": r["positive"], "reconstructed": text,
                         "shares_word": bool(content_words(text) & content_words(r["query"]))})  # fmt: skip
    rate = sum(e["shares_word"] for e in examples) / max(len(examples), 1)
    return {"rate": rate, "examples": examples}
