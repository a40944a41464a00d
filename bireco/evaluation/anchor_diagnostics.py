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
BOOTSTRAP_SAMPLES = 1000  # resamples of the probe's pairs behind each gain's 95% interval


def probe_batches(records: list[dict], collate, batch_size: int) -> list[dict]:
    """Records -> collated batches, each from one pair set (the records' `dataset`) and of at least two pairs: the
    other anchor a pair is decoded from is another pair's of the same set (a within-set derangement), so the gain
    never credits "which kind of text" (definition or usage example) to reading "which pair". A set with a single
    pair has nothing to swap with and is left out."""
    by_set: dict[str, list[dict]] = {}
    for r in records:
        by_set.setdefault(r.get("dataset") or "", []).append(r)
    batches = []
    for group in by_set.values():
        chunks = [group[i : i + batch_size] for i in range(0, len(group), batch_size)]
        if len(chunks) > 1 and len(chunks[-1]) < 2:  # a lone last pair joins the batch before it
            lone = chunks.pop()
            chunks[-1] = chunks[-1] + lone
        batches += [collate(c) for c in chunks if len(c) >= 2]
    if not batches:
        raise ValueError(f"the anchor probe needs two pairs of one pair set, got {len(records)} pairs")
    return batches


def pair_batches(backbone: Backbone, records: list[dict], *, batch_size: int = 32, max_query_length: int = 32,
                 max_doc_length: int = 48) -> list[dict]:  # fmt: skip
    """Records (query, positive, instruction, as the data loaders give them) collated as Stage I collates them."""
    from bireco.data.collate import PairCollator

    collate = PairCollator(backbone.tokenizer, backbone.text_format, max_query_length, max_doc_length,
                           backbone.padding_side, num_hard_negatives=0, pad_id=backbone.pad_id)  # fmt: skip
    return probe_batches(records, collate, batch_size)


def gain_interval(own: torch.Tensor, other: torch.Tensor, tokens: torch.Tensor, seed: int = 0,
                  samples: int = BOOTSTRAP_SAMPLES) -> tuple[float, float, float]:  # fmt: skip
    """(gain, 2.5%, 97.5%): the token-weighted anchor gain sum(other - own) / sum(tokens) of these pairs ((P,)
    summed CEs and target tokens per pair) and its 95% bootstrap interval over pairs (a generator of its own:
    no draw from the global streams)."""
    diff, tokens = (other - own).double(), tokens.double()
    gain = float(diff.sum() / tokens.sum())
    if len(diff) < 2:
        return gain, gain, gain
    idx = torch.randint(len(diff), (samples, len(diff)), generator=torch.Generator().manual_seed(seed))
    boot = diff[idx].sum(1) / tokens[idx].sum(1)  # (samples,)
    lo, hi = torch.quantile(boot, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return gain, lo, hi


@torch.no_grad()
def anchor_use(reader: AnchorReader, batches: list[dict], bf16: bool | None = None,
               directions: tuple[str, ...] = PAIR_DIRECTIONS, seed: int = 0) -> dict[str, float]:  # fmt: skip
    """Token CE, accuracy and anchor gain per direction of a Stage I (its AnchorReader) over collated `batches`
    (probe_batches: one pair set each), overall and per pair set (`<set>/...`), each gain with its 95% bootstrap
    interval over pairs (`..._lo`, `..._hi`; `seed` seeds the resampling); `pairs` counts the pairs. The backbone's
    and the conditioning's train/eval modes are restored afterwards. `directions`: the paper's two, plus `q2q` /
    `d2d` for a Stage I that regenerates each side itself (`stage.target=self`)."""
    modules = (reader.backbone, reader.conditioning)  # a frozen decoder is always in eval mode
    device = next(reader.backbone.parameters()).device
    was_training = [m.training for m in modules]
    for m in modules:
        m.eval()  # dropout off; the conditioning's running mean is read, not updated
    rows: dict[str, dict[str, list]] = {
        d: {"own": [], "other": [], "tokens": [], "correct": []} for d in directions
    }
    sets: list[str] = []
    mixed = bf16_for(device, bf16)
    casts = inference_casts(device, mixed, reader.backbone, reader.decoder)  # once per probe, not per forward
    try:
        for batch in batches:
            sides = {k: {kk: vv.to(device) for kk, vv in batch[k].items()} for k in ("query", "positive")}
            sets += list(batch["dataset"])
            with weights_swapped(casts), autocast(device, mixed):
                # each side's anchor once, however many directions read it (q2d and q2q share the query's)
                anchors = {
                    src: reader.anchor(sides[src])
                    for src in dict.fromkeys(DIRECTIONS[d][0] for d in directions)
                }
                for direction in directions:
                    src, tgt = DIRECTIONS[direction]
                    anchor = anchors[src]
                    # another pair's anchor: the batch's, rolled by one (one pair set per batch: within the set)
                    own = reader.decode(anchor, sides[tgt], per_row=True)
                    other = reader.decode(anchor.roll(1, 0), sides[tgt], per_row=True)
                    r = rows[direction]
                    r["own"].append(own.row_loss.float().cpu())
                    r["other"].append(other.row_loss.float().cpu())
                    r["tokens"].append(own.row_tokens.cpu())
                    r["correct"].append(own.row_correct.float().cpu())
    finally:
        for m, mode in zip(modules, was_training):
            m.train(mode)
    out: dict[str, float] = {"pairs": float(len(sets))}
    groups = {"": torch.ones(len(sets), dtype=torch.bool)}
    if len(set(sets)) > 1:
        groups.update({f"{name}/": torch.tensor([s == name for s in sets]) for name in sorted(set(sets))})
    for direction in directions:
        own, other, tokens, correct = (
            torch.cat(rows[direction][k]) for k in ("own", "other", "tokens", "correct")
        )
        for prefix, keep in groups.items():
            n = tokens[keep].sum().double()
            gain, lo, hi = gain_interval(own[keep], other[keep], tokens[keep], seed)
            out[f"{prefix}ce_{direction}"] = float(own[keep].double().sum() / n)
            out[f"{prefix}acc_{direction}"] = float(correct[keep].double().sum() / n)
            out[f"{prefix}anchor_gain_{direction}"] = gain
            out[f"{prefix}anchor_gain_{direction}_lo"] = lo
            out[f"{prefix}anchor_gain_{direction}_hi"] = hi
            if prefix and direction == directions[0]:
                out[f"{prefix}pairs"] = float(keep.sum())
    return out


def gain_text(use: dict[str, float], direction: str, prefix: str = "") -> str:
    """`+0.012 [-0.020, +0.041]`: a direction's anchor gain (of pair set `prefix`, e.g. `wordnet_examples/`) and its
    95% interval, from anchor_use's output."""
    g = f"{prefix}anchor_gain_{direction}"
    return f"{use[g]:+.3f} [{use[g + '_lo']:+.3f}, {use[g + '_hi']:+.3f}]"


def checkpoint_anchor_use(backbone: Backbone, records: list[dict], *, batch_size: int = 32,
                          max_query_length: int = 32, max_doc_length: int = 48, bf16: bool | None = None,
                          conditioning: AnchorConditioning | None = None,
                          decoder: Backbone | None = None, seed: int = 0) -> dict[str, float]:  # fmt: skip
    """`anchor_use` for a loaded checkpoint on `records`. `conditioning`: how its Stage I fed the anchor
    (bireco.model.anchor.load_conditioning), default the paper's raw anchor; `decoder`: the frozen decoder of a
    `stage.decoder=frozen` Stage I (bireco.model.anchor.load_decoder), default the checkpoint itself."""
    conditioning = (conditioning or AnchorConditioning()).to(next(backbone.parameters()).device)
    batches = pair_batches(backbone, records, batch_size=batch_size, max_query_length=max_query_length,
                           max_doc_length=max_doc_length)  # fmt: skip
    reader = AnchorReader(backbone, conditioning, decoder=None if decoder is None else decoder.eval())
    return anchor_use(reader, batches, bf16, seed=seed)


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
