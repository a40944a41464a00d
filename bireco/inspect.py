"""Reconstruction inspector: what does one embedding hold? Embed a text, then greedily decode from that single
vector (the Stage I anchor) what the model reconstructs: a query from a document, or a document from a query.

    python -m bireco.inspect checkpoint=outputs/default/default/stage1/final text="a member of the genus Canis"
    python -m bireco.inspect checkpoint=... text="dog" side=query instruction="Given a word ..."
"""

from __future__ import annotations

import sys

import hydra
import torch
from omegaconf import DictConfig

from bireco.backbone import Backbone, position_ids_from_mask
from bireco.cli import CONF_DIR, check_overrides, quote_free_text
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


@torch.no_grad()
def reconstruct(backbone: Backbone, anchor: torch.Tensor, max_new_tokens: int = 48,
                prompt: list[int] | None = None) -> tuple[list[int], str]:  # fmt: skip
    """Greedy decoding from `[anchor; prompt]` until the family [EOS] (prompt default: the chat head)."""
    backbone.eval()
    eos = backbone.text_format.eos_id(backbone.tokenizer)
    embed = backbone.causal_lm.get_input_embeddings()
    prompt = target_prompt(backbone) if prompt is None else prompt
    head = embed(torch.tensor([prompt], dtype=torch.long, device=anchor.device))  # (1, P, H)
    inputs = torch.cat([anchor.to(embed.weight.dtype).unsqueeze(1), head], dim=1)  # (1, 1 + P, H)
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


@torch.no_grad()
def anchor_use(backbone: Backbone, records: list[dict], batch_size: int = 32, max_query_length: int = 32,
               max_doc_length: int = 48, bf16: bool | None = None) -> dict[str, float]:  # fmt: skip
    """How much the anchor carries: Stage I's token CE per direction with each pair's own anchor and with the anchor of
    another pair of the batch (rolled by one); records as the data loaders give them (query, positive, instruction).
    `gain_*` = CE(other anchor) - CE(own anchor) in nats per token: 0 means
    the decoder ignores the embedding and reconstructs from its language prior alone."""
    from bireco.config import OptimConfig
    from bireco.data.collate import PairCollator
    from bireco.modules.reconstruction import ReconstructionModule
    from bireco.precision import autocast, bf16_for

    device = next(backbone.parameters()).device
    collate = PairCollator(backbone.tokenizer, backbone.text_format, max_query_length, max_doc_length,
                           backbone.padding_side, num_hard_negatives=0, pad_id=backbone.pad_id)  # fmt: skip
    stage1 = ReconstructionModule(
        backbone, OptimConfig(), lr_horizon=1
    )  # its anchor() and decode() are Stage I's
    was_training = backbone.training
    backbone.eval()
    sums = {f"{k}_{d}": 0.0 for k in ("own", "other", "acc") for d in ("q2d", "d2q")}
    tokens = {"q2d": 0, "d2q": 0}
    for start in range(0, len(records) - 1, batch_size):
        chunk = records[start : start + batch_size]
        if len(chunk) < 2:
            break
        batch = collate(chunk)
        batch = {
            k: ({kk: vv.to(device) for kk, vv in v.items()} if k in ("query", "positive", "negatives") else v)
            for k, v in batch.items()
        }
        with autocast(device, bf16_for(device, bf16)):
            for direction, (src, tgt) in {"q2d": ("query", "positive"), "d2q": ("positive", "query")}.items():
                anchor = stage1.anchor(batch[src])
                own, other = stage1.decode(anchor, batch[tgt]), stage1.decode(anchor.roll(1, 0), batch[tgt])
                sums[f"own_{direction}"] += float(own.loss) * own.n_tokens
                sums[f"other_{direction}"] += float(other.loss) * other.n_tokens
                sums[f"acc_{direction}"] += float(own.n_correct)
                tokens[direction] += own.n_tokens
    backbone.train(was_training)
    out = {}
    for d in ("q2d", "d2q"):
        out[f"ce_{d}"] = sums[f"own_{d}"] / tokens[d]
        out[f"acc_{d}"] = sums[f"acc_{d}"] / tokens[d]
        out[f"gain_{d}"] = (sums[f"other_{d}"] - sums[f"own_{d}"]) / tokens[d]
    return out


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="inspect")
def _hydra_main(cfg: DictConfig) -> None:
    backbone = Backbone.load(cfg.checkpoint)
    instruction = cfg.instruction if cfg.side == "query" else None
    # decoding a query: its head carries the instruction too, unless Stage I reconstructed it as text
    prompt = target_prompt(backbone, cfg.instruction if cfg.side == "document" else None)
    _, text = reconstruct(backbone, anchor_of(backbone, cfg.text, instruction), cfg.max_new_tokens, prompt)
    other = "document" if cfg.side == "query" else "query"
    print(f"{cfg.side}: {cfg.text!r}\nreconstructed {other} from its embedding: {text!r}")


def main() -> None:
    sys.argv[1:] = quote_free_text(sys.argv[1:], ("text", "instruction"))  # free text, commas and all
    check_overrides("inspect", sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    main()
