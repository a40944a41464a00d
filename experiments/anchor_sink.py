"""Is the Stage I anchor read, or only disruptive? Anchor use with the anchor where Stage I puts it and after a sink.

Stage I (paper and bireco) feeds the [EOS] embedding as the decoder's first input vector, the position a chat LLM
normally fills with `<|im_start|>` and uses as its attention sink. A vector there changes the loss even when the
decoder reads nothing from it, by disturbing the sink. This script measures `bireco.inspect.anchor_use` (CE with
another pair's anchor minus CE with the pair's own, nats per token, WordNet-definitions dev pairs) twice per model:
as trained (anchor at position 0) and with one real `<|im_start|>` token placed before the anchor, so the sink is
a real token and any remaining gain is information the decoder takes from the embedding.

    python experiments/anchor_sink.py                          # the untrained SmolLM2
    python experiments/anchor_sink.py outputs/.../stage1/final # and any Stage I checkpoints
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


@contextmanager
def sink_before_anchor(token: str = "<|im_start|>"):
    """Backbone.reconstruction_loss with `[sink token, anchor, target...]` as the decoder input (analysis only)."""
    from bireco.backbone import Backbone, ReconstructionOutput, position_ids_from_mask, to_right_padding
    from bireco.losses.chunked_ce import chunked_cross_entropy

    def loss(self, anchor, input_ids, attention_mask, labels):
        ids, labels, mask = to_right_padding(input_ids, labels, attention_mask=attention_mask)  # (B, T)
        b, t = ids.shape
        table = self.causal_lm.get_input_embeddings()
        sink = table(torch.full((b, 1), self.tokenizer.convert_tokens_to_ids(token), device=ids.device))
        inputs = torch.cat([sink, anchor.to(sink.dtype).unsqueeze(1), table(ids)], dim=1)  # (B, 2 + T, H)
        full_mask = torch.cat([mask.new_ones(b, 2), mask], dim=1)
        out = self.decoder(inputs_embeds=inputs, attention_mask=full_mask,
                           position_ids=position_ids_from_mask(full_mask), use_cache=False)  # fmt: skip
        hidden = out.last_hidden_state[:, 1 : t + 1]  # the anchor slot predicts target token 0, as in Stage I
        keep = labels != -100
        n = int(keep.sum())
        loss_sum, correct = chunked_cross_entropy(
            hidden[keep], labels[keep], self.lm_head, self.ce_chunk_size
        )
        return ReconstructionOutput(loss=loss_sum / n, n_tokens=n, n_correct=correct)

    original = Backbone.reconstruction_loss
    Backbone.reconstruction_loss = loss
    try:
        yield
    finally:
        Backbone.reconstruction_loss = original


def main() -> None:
    from dev_sweep import anchor_use_of

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "checkpoints", nargs="*", type=Path, help="Stage I checkpoints (the untrained model always runs)"
    )
    ap.add_argument("--pairs", type=int, default=256)
    args = ap.parse_args()
    rows = {}
    for ckpt in [None, *args.checkpoints]:
        name = "untrained" if ckpt is None else str(ckpt)
        rows[name] = {"anchor at position 0": anchor_use_of(ckpt, args.pairs)}
        with sink_before_anchor():
            rows[name]["after a <|im_start|> sink"] = anchor_use_of(ckpt, args.pairs)
        for where, u in rows[name].items():
            print(f"{name} | {where} | CE q2d {u['ce_q2d']:.3f} gain {u['gain_q2d']:+.3f} | "
                  f"CE d2q {u['ce_d2q']:.3f} gain {u['gain_d2q']:+.3f}", flush=True)  # fmt: skip
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
