"""Is a Stage I reading its anchor? The diagnostics of the anchor, for a training run and for a checkpoint.

- `anchor_use`: on held-out pairs, Stage I's token CE per direction is measured twice, with each pair's own anchor
  and with the anchor of another pair of the same pair set (a batch holds one set; its anchors rolled by one). `anchor_gain_<dir>` = CE(other) - CE(own), in
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

from bireco.core.precision import autocast, bf16_for
from bireco.model.anchor import DIRECTIONS, AnchorReader
from bireco.model.backbone import Backbone, position_ids_from_mask
from bireco.model.encode import encode_sides
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


def probe_pairs(reader: AnchorReader, sides: dict[str, dict]) -> dict[str, dict[str, torch.Tensor]]:
    """One probe batch: per direction, each pair's summed CE with its own anchor and with the batch's next pair's
    (rolled by one; one pair set per batch, so within the set), its target tokens and correct predictions."""
    anchors = {src: reader.anchor(sides[src]) for src in ("query", "positive")}  # each side's anchor once
    out = {}
    for direction, (src, tgt) in DIRECTIONS.items():
        own = reader.decode(anchors[src], sides[tgt], per_row=True)
        other = reader.decode(anchors[src].roll(1, 0), sides[tgt], per_row=True)
        out[direction] = {"own": own.row_loss, "other": other.row_loss, "tokens": own.row_tokens,
                          "correct": own.row_correct}  # fmt: skip
    return out


@torch.no_grad()
def anchor_use(reader: AnchorReader, batches: list[dict], bf16: bool | None = None, seed: int = 0,
               run=None) -> dict[str, float]:  # fmt: skip
    """Token CE, accuracy and anchor gain per direction of a Stage I (its AnchorReader) over collated `batches`
    (probe_batches: one pair set each), overall and per pair set (`<set>/...`), each gain with its 95% bootstrap
    interval over pairs (`..._lo`, `..._hi`; `seed` seeds the resampling); `pairs` counts the pairs. The backbone's
    train/eval mode is restored afterwards. `run(fn, *args)`: how each batch's passes are called (the CPU fast path
    runs them with its bf16 weight copies; default: as they are)."""
    backbone = reader.backbone  # a frozen decoder is always in eval mode
    device = next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()  # dropout off
    rows: dict[str, dict[str, list]] = {
        d: {"own": [], "other": [], "tokens": [], "correct": []} for d in DIRECTIONS
    }
    sets: list[str] = []
    mixed = bf16_for(device, bf16)
    try:
        for batch in batches:
            sides = {k: {kk: vv.to(device) for kk, vv in batch[k].items()} for k in ("query", "positive")}
            sets += list(batch["dataset"])
            with autocast(device, mixed):
                stats = run(probe_pairs, reader, sides) if run else probe_pairs(reader, sides)
            for direction, per_pair in stats.items():
                for k, v in per_pair.items():
                    rows[direction][k].append(v.float().cpu())
    finally:
        backbone.train(was_training)
    out: dict[str, float] = {"pairs": float(len(sets))}
    groups = {"": torch.ones(len(sets), dtype=torch.bool)}
    if len(set(sets)) > 1:
        groups.update({f"{name}/": torch.tensor([s == name for s in sets]) for name in sorted(set(sets))})
    for direction in DIRECTIONS:
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
            if prefix and direction == "q2d":
                out[f"{prefix}pairs"] = float(keep.sum())
    return out


def gain_text(use: dict[str, float], direction: str, prefix: str = "") -> str:
    """`+0.012 [-0.020, +0.041]`: a direction's anchor gain (of pair set `prefix`, e.g. `wordnet_examples/`) and its
    95% interval, from anchor_use's output."""
    g = f"{prefix}anchor_gain_{direction}"
    return f"{use[g]:+.3f} [{use[g + '_lo']:+.3f}, {use[g + '_hi']:+.3f}]"


def checkpoint_anchor_use(reader: AnchorReader, records: list[dict], *, batch_size: int = 32,
                          max_query_length: int = 32, max_doc_length: int = 48, bf16: bool | None = None,
                          seed: int = 0) -> dict[str, float]:  # fmt: skip
    """`anchor_use` of a loaded checkpoint on `records`, read as its Stage I read it
    (bireco.model.anchor_controls.reader_for_checkpoint; AnchorReader(backbone) for the paper's)."""
    batches = pair_batches(reader.backbone, records, batch_size=batch_size, max_query_length=max_query_length,
                           max_doc_length=max_doc_length)  # fmt: skip
    return anchor_use(reader, batches, bf16, seed=seed)


def wordnet_dev_pairs(n: int, seed: int = 42, data_cfg=None) -> list[dict]:
    """`n` seeded pairs of the WordNet dev split (as `data=wordnet` loads them, instructions included)."""
    from omegaconf import OmegaConf

    from bireco.data.records import load_pairs

    data_cfg = data_cfg or OmegaConf.create({"format": "wordnet", "instructions": None, "datasets": None})
    pool = load_pairs(data_cfg, "dev")
    return [pool[i] for i in sorted(random.Random(seed).sample(range(len(pool)), min(n, len(pool))))]


# ---------------------------------------------------------------- reconstruction from one embedding
def text_side(backbone: Backbone, text: str, instruction: str | None = None, max_length: int = 512) -> dict:
    """One text as a one-row side on the backbone's device, tokenised as encoding tokenises it."""
    side = pad_sides(encode_sides(backbone, [text], instruction, max_length), backbone.pad_id, "left")
    return {k: v.to(next(backbone.parameters()).device) for k, v in side.items()}


@torch.no_grad()
def anchor_of(
    backbone: Backbone, text: str, instruction: str | None = None, max_length: int = 512
) -> torch.Tensor:
    """(1, H) last-token final-norm state: exactly the vector Stage I decodes from."""
    return AnchorReader(backbone).anchor(text_side(backbone, text, instruction, max_length))


def target_prompt(backbone: Backbone, instruction: str | None = None) -> list[int]:
    """The non-target head of the side being reconstructed ([BOS] chat prefix [instruction sep]), which Stage I
    feeds after the anchor with teacher forcing; generation starts where the text starts."""
    fmt, tok = backbone.text_format.for_instruction(instruction), backbone.tokenizer
    head = [tok.bos_token_id] if fmt.add_bos and tok.bos_token_id is not None else []
    # trailing spaces belong to the first text token under joint tokenisation (" able"), so leave them out
    text = (fmt.prefix + (instruction + fmt.instruction_separator if instruction else "")).rstrip(" ")
    return head + (tok(text, add_special_tokens=False)["input_ids"] if text else [])


@torch.no_grad()
def reconstruct(backbone: Backbone, anchor: torch.Tensor, max_new_tokens: int = 48,
                prompt: list[int] | None = None) -> tuple[list[int], str]:  # fmt: skip
    """Greedy decoding by `backbone` from `[anchor; prompt]` until the family [EOS] (prompt default: the chat
    head)."""
    backbone.eval()
    eos = backbone.text_format.eos_id(backbone.tokenizer)
    embed = backbone.causal_lm.get_input_embeddings()
    prompt = target_prompt(backbone) if prompt is None else prompt
    head = embed(torch.tensor([prompt], dtype=torch.long, device=anchor.device))  # (1, P, H)
    inputs = torch.cat([anchor.to(head.dtype).unsqueeze(1), head], dim=1)  # (1, 1 + P, H)
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


@torch.no_grad()
def query_overlap(reader: AnchorReader, records: list[dict], max_new_tokens: int = 24) -> dict:
    """Reconstruct each record's query from its document's anchor (EBD2Q, greedy, by the reader's decoder) and count
    how often the reconstruction shares a content word with the true query. Returns the rate and every (true,
    reconstructed). A constant-anchor reader decodes from that control's vector (what it trained with): its rate is
    what the language prior alone scores."""
    examples = []
    for r in records:
        prompt = target_prompt(reader.backbone, r.get("instruction") or None)
        anchor = reader.anchor(text_side(reader.backbone, r["positive"]))
        _, text = reconstruct(reader.decoder, anchor, max_new_tokens, prompt)
        examples.append({"query": r["query"], "document": r["positive"], "reconstructed": text,
                         "shares_word": bool(content_words(text) & content_words(r["query"]))})  # fmt: skip
    rate = sum(e["shares_word"] for e in examples) / max(len(examples), 1)
    return {"rate": rate, "examples": examples}
