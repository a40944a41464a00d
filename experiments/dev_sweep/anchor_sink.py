"""Is the Stage I anchor read, or only disruptive? Anchor use with the anchor where Stage I puts it and after a sink.

Stage I (paper and bireco) feeds the [EOS] embedding as the decoder's first input vector, the position a chat LLM
normally fills with `<|im_start|>` and uses as its attention sink. A vector there changes the loss even when the
decoder reads nothing from it, by disturbing the sink. This script measures the anchor gain (CE with
another pair's anchor minus CE with the pair's own, nats per token, WordNet-definitions dev pairs) twice per model:
as trained (anchor at position 0) and with one real `<|im_start|>` token placed before the anchor (the
`stage.anchor_lead_token` conditioning), so the sink is a real token and any remaining gain is information the decoder takes from the embedding.

    python experiments/dev_sweep/anchor_sink.py                          # the untrained SmolLM2
    python experiments/dev_sweep/anchor_sink.py outputs/.../stage1/final # and any Stage I checkpoints
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dev_sweep import anchor_use_of


def main() -> None:
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
        rows[name]["after a <|im_start|> sink"] = anchor_use_of(ckpt, args.pairs, lead_token="<|im_start|>")
        for where, u in rows[name].items():
            print(f"{name} | {where} | CE q2d {u['ce_q2d']:.3f} gain {u['anchor_gain_q2d']:+.3f} | "
                  f"CE d2q {u['ce_d2q']:.3f} gain {u['anchor_gain_d2q']:+.3f}", flush=True)  # fmt: skip
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
