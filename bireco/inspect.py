"""Reconstruction inspector: what does one embedding hold? Embed a text, then greedily decode from that single
vector (the Stage I anchor) what the model reconstructs: a query from a document, or a document from a query.
`probe=N` measures whether the checkpoint's Stage I reads its anchor at all (bireco.evaluation.anchor_diagnostics).

    python -m bireco.inspect checkpoint=outputs/default/default/stage1/final text="a member of the genus Canis"
    python -m bireco.inspect checkpoint=... text="dog" side=query instruction="Given a word ..."
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from bireco.config.cli import check_overrides, exit_on_user_error, quote_free_text
from bireco.core.paths import CONF_DIR


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="inspect")
@exit_on_user_error
def _hydra_main(cfg: DictConfig) -> None:
    import torch

    from bireco.core.runs import run_config, run_of
    from bireco.evaluation.anchor_diagnostics import (
        checkpoint_anchor_use,
        gain_text,
        query_overlap,
        reconstruct,
        target_prompt,
        text_side,
        wordnet_dev_pairs,
    )
    from bireco.model.anchor_controls import reader_for_checkpoint
    from bireco.model.backbone import Backbone

    if cfg.text is None and not cfg.probe:
        sys.exit('Error: give text="..." to reconstruct one text, or probe=N to probe N WordNet dev pairs')
    # as its Stage I read and decoded (a frozen decoder, if it had one: bireco.model.anchor_controls)
    reader = reader_for_checkpoint(Backbone.load(cfg.checkpoint), cfg.checkpoint)
    if cfg.text is None:
        records = wordnet_dev_pairs(cfg.probe, cfg.probe_seed)
        # the lengths the checkpoint trained with (its run's config.yaml), else the data defaults
        trained = run_config(run_of(cfg.checkpoint))
        data = trained.data if trained is not None else {}
        use = checkpoint_anchor_use(reader, records, max_query_length=data.get("max_query_length", 128),
                                    max_doc_length=data.get("max_doc_length", 256), seed=cfg.probe_seed)  # fmt: skip
        used = f"{int(use['pairs'])} of {len(records)}" if use["pairs"] < len(records) else f"{len(records)}"
        print(f"anchor probe on {used} WordNet dev pairs (a pair set with one pair drawn is left out; nats per token; "
              "gain = CE with another pair's anchor of the same pair set - CE with its own, [95% bootstrap interval "
              "over pairs]; 0 = the anchor is not read)")  # fmt: skip
        sets = sorted({k.split("/")[0] for k in use if "/" in k})
        for d in ("q2d", "d2q"):
            print(
                f"  {d}: CE {use[f'ce_{d}']:.3f}  accuracy {use[f'acc_{d}']:.3f}  anchor gain {gain_text(use, d)}"
            )
            for name in sets:
                print(
                    f"    {name} ({int(use[f'{name}/pairs'])} pairs): anchor gain {gain_text(use, d, f'{name}/')}"
                )
        if cfg.examples:
            ov = query_overlap(reader, records[: cfg.examples])
            print(f"reconstructed query shares a content word with the true one: {ov['rate']:.2f} "
                  f"({len(ov['examples'])} dev documents)")  # fmt: skip
            for e in ov["examples"][:5]:
                print(
                    f"  document {e['document'][:60]!r}\n    true query {e['query']!r} -> {e['reconstructed']!r}"
                )
        return
    instruction = cfg.instruction if cfg.side == "query" else None
    # decoding a query: its head carries the instruction too, unless Stage I reconstructed it as text
    prompt = target_prompt(reader.backbone, cfg.instruction if cfg.side == "document" else None)
    with torch.no_grad():
        anchor = reader.anchor(text_side(reader.backbone, cfg.text, instruction))
    _, text = reconstruct(reader.decoder, anchor, cfg.max_new_tokens, prompt)
    other = "document" if cfg.side == "query" else "query"
    print(f"{cfg.side}: {cfg.text!r}\nreconstructed {other} from its embedding: {text!r}")


def main() -> None:
    sys.argv[1:] = quote_free_text(sys.argv[1:], ("text", "instruction"))  # free text, commas and all
    check_overrides("inspect", sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    main()
