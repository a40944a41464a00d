"""Reconstruction inspector: what does one embedding hold? Embed a text, then greedily decode from that single
vector (the Stage I anchor) what the model reconstructs: a query from a document, or a document from a query.

    python -m bireco.inspect checkpoint=outputs/default/default/stage1/final text="a member of the genus Canis"
    python -m bireco.inspect checkpoint=... text="dog" side=query instruction="Given a word ..."
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from bireco.backbone import Backbone, position_ids_from_mask
from bireco.cli import CONF_DIR, check_overrides, exit_on_user_error, quote_free_text
from bireco.modules.reconstruction import CONDITIONING_FILE, AnchorConditioning
from bireco.pooling import last_token
from bireco.text_format import encode_side, pad_sides


@torch.no_grad()
def anchor_of(
    backbone: Backbone, text: str, instruction: str | None = None, max_length: int = 512
) -> torch.Tensor:
    """(1, H) last-token final-norm state: exactly the vector Stage I decodes from."""
    side = pad_sides(
        [encode_side(backbone.tokenizer, backbone.text_format, text, max_length, instruction)],
        backbone.pad_id,
        "left",
    )
    side = {k: v.to(next(backbone.parameters()).device) for k, v in side.items()}
    hidden = backbone.hidden_states(side["input_ids"], side["attention_mask"])
    return last_token(hidden, side["attention_mask"])


def target_prompt(backbone: Backbone, instruction: str | None = None) -> list[int]:
    """The non-target head of the side being reconstructed ([BOS] chat prefix [instruction sep]), which Stage I
    feeds after the anchor with teacher forcing; generation starts where the text starts."""
    fmt, tok = backbone.text_format, backbone.tokenizer
    head = [tok.bos_token_id] if fmt.add_bos and tok.bos_token_id is not None else []
    # trailing spaces belong to the first text token under joint tokenisation (" able"), so leave them out
    text = (fmt.prefix + (instruction + fmt.instruction_separator if instruction else "")).rstrip(" ")
    return head + (tok(text, add_special_tokens=False)["input_ids"] if text else [])


def load_conditioning(checkpoint) -> AnchorConditioning | None:
    """The Stage I decoder-input options a checkpoint recorded (final/stage1_anchor.json), None = the paper's."""
    path = Path(checkpoint) / CONDITIONING_FILE
    return AnchorConditioning.from_record(json.loads(path.read_text())) if path.is_file() else None


@torch.no_grad()
def reconstruct(backbone: Backbone, anchor: torch.Tensor, max_new_tokens: int = 48,
                prompt: list[int] | None = None,
                conditioning: AnchorConditioning | None = None) -> tuple[list[int], str]:  # fmt: skip
    """Greedy decoding from `[anchor; prompt]` (`[lead; anchor; prompt]` under a lead token) until the family [EOS]
    (prompt default: the chat head); `conditioning`: how Stage I fed the anchor (default the paper's raw vector)."""
    backbone.eval()
    eos = backbone.text_format.eos_id(backbone.tokenizer)
    embed = backbone.causal_lm.get_input_embeddings()
    prompt = target_prompt(backbone) if prompt is None else prompt
    if conditioning is not None:
        anchor = conditioning.to(anchor.device).eval()(anchor)
        if conditioning.lead_token_id is not None:
            prompt = [conditioning.lead_token_id, *prompt]  # placed before the anchor below
    head = embed(torch.tensor([prompt], dtype=torch.long, device=anchor.device))  # (1, P, H)
    slot = anchor.to(embed.weight.dtype).unsqueeze(1)
    lead = int(conditioning is not None and conditioning.lead_token_id is not None)
    inputs = torch.cat([head[:, :lead], slot, head[:, lead:]], dim=1)  # (1, 1 + P, H)
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


def anchor_use(backbone: Backbone, records: list[dict], batch_size: int = 32, max_query_length: int = 32,
               max_doc_length: int = 48, bf16: bool | None = None,
               conditioning: AnchorConditioning | None = None) -> dict[str, float]:  # fmt: skip
    """The anchor probe (bireco.anchor_probe.anchor_use) for a backbone: Stage I's token CE, accuracy and anchor gain
    per direction on `records` (query, positive, instruction, as the data loaders give them). `conditioning`: how the
    checkpoint's Stage I fed the anchor (load_conditioning), default the paper's raw anchor."""
    from bireco.anchor_probe import anchor_use as probe
    from bireco.anchor_probe import probe_batches
    from bireco.config import OptimConfig
    from bireco.data.collate import PairCollator
    from bireco.modules.reconstruction import ReconstructionModule

    collate = PairCollator(backbone.tokenizer, backbone.text_format, max_query_length, max_doc_length,
                           backbone.padding_side, num_hard_negatives=0, pad_id=backbone.pad_id)  # fmt: skip
    stage1 = ReconstructionModule(
        backbone, OptimConfig(), lr_horizon=1
    )  # its anchor() and decode() are Stage I's
    if conditioning is not None:
        stage1.conditioning = conditioning
    stage1.conditioning.to(next(backbone.parameters()).device)
    return probe(stage1, probe_batches(records, collate, batch_size), bf16)


STOPWORDS = frozenset(
    "the and for with that this from into its are was were has have had not but any all one "
    "which who whom whose what when where how than then them they their there been being".split()
)


def content_words(text: str) -> set[str]:
    """Lower-cased words of three letters or more, stopwords out: what "shares a content word" compares."""
    return {w for w in re.findall(r"[a-z]{3,}", text.lower()) if w not in STOPWORDS}


def query_overlap(backbone: Backbone, records: list[dict], max_new_tokens: int = 24,
                  conditioning: AnchorConditioning | None = None, constant_anchor: bool = False) -> dict:  # fmt: skip
    """Reconstruct each record's query from its document's embedding (EBD2Q, greedy) and count how often the
    reconstruction shares a content word with the true query. Returns the rate and every (true, reconstructed).
    `constant_anchor`: decode from the `stage.anchor=constant` control's vector instead (what that model trained
    with): its rate is what the language prior alone scores."""
    examples = []
    for r in records:
        prompt = target_prompt(backbone, r.get("instruction") or None)
        if constant_anchor:
            anchor = backbone.causal_lm.get_input_embeddings().weight.detach().mean(0, keepdim=True)
        else:
            anchor = anchor_of(backbone, r["positive"])
        _, text = reconstruct(backbone, anchor, max_new_tokens, prompt, conditioning)
        examples.append({"query": r["query"], "document": r["positive"], "reconstructed": text,
                         "shares_word": bool(content_words(text) & content_words(r["query"]))})  # fmt: skip
    rate = sum(e["shares_word"] for e in examples) / max(len(examples), 1)
    return {"rate": rate, "examples": examples}


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="inspect")
@exit_on_user_error
def _hydra_main(cfg: DictConfig) -> None:
    backbone = Backbone.load(cfg.checkpoint)
    conditioning = load_conditioning(cfg.checkpoint)
    if cfg.text is None:
        if not cfg.probe:
            sys.exit(
                'Error: give text="..." to reconstruct one text, or probe=N to probe N WordNet dev pairs'
            )
        from omegaconf import OmegaConf

        from bireco.anchor_probe import wordnet_dev_pairs

        records = wordnet_dev_pairs(cfg.probe)
        # the lengths the checkpoint trained with (its run's config.yaml), else the data defaults
        run_cfg = Path(cfg.checkpoint).parent / "config.yaml"
        data = OmegaConf.load(run_cfg).data if run_cfg.is_file() else {}
        use = anchor_use(backbone, records, max_query_length=data.get("max_query_length", 128),
                         max_doc_length=data.get("max_doc_length", 256),
                         conditioning=conditioning)  # fmt: skip
        print(f"anchor probe on {len(records)} WordNet dev pairs (nats per token; gain = CE with another pair's "
              "anchor - CE with its own; 0 = the anchor is not read)")  # fmt: skip
        for d in ("q2d", "d2q"):
            print(
                f"  {d}: CE {use[f'ce_{d}']:.3f}  accuracy {use[f'acc_{d}']:.3f}  anchor gain {use[f'anchor_gain_{d}']:+.3f}"
            )
        if cfg.examples:
            ov = query_overlap(backbone, records[: cfg.examples], conditioning=conditioning)
            print(f"reconstructed query shares a content word with the true one: {ov['rate']:.2f} "
                  f"({len(ov['examples'])} dev documents)")  # fmt: skip
            for e in ov["examples"][:5]:
                print(
                    f"  document {e['document'][:60]!r}\n    true query {e['query']!r} -> {e['reconstructed']!r}"
                )
        return
    instruction = cfg.instruction if cfg.side == "query" else None
    # decoding a query: its head carries the instruction too, unless Stage I reconstructed it as text
    prompt = target_prompt(backbone, cfg.instruction if cfg.side == "document" else None)
    anchor = anchor_of(backbone, cfg.text, instruction)
    _, text = reconstruct(backbone, anchor, cfg.max_new_tokens, prompt, conditioning)
    other = "document" if cfg.side == "query" else "query"
    print(f"{cfg.side}: {cfg.text!r}\nreconstructed {other} from its embedding: {text!r}")


def main() -> None:
    sys.argv[1:] = quote_free_text(sys.argv[1:], ("text", "instruction"))  # free text, commas and all
    check_overrides("inspect", sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    main()
