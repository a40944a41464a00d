"""Can the decoder learn to read the Stage I anchor at all? Stage I on eight pairs, repeated, real vs constant anchor.

On WordNet at toy budgets the Stage I decoder ignores the anchor (docs/results.md §4). This separates "cannot" from
"has not yet": eight query-document pairs are trained over and over (joint schedule, alpha 0.5, full fine-tuning,
plain AdamW), once with the real anchors and once with `stage.anchor=constant`. With a constant anchor the decoder
can learn each side's text but not which of the eight to write; with the real anchor it can, if it reads the
embedding. Prints the anchor probe (bireco.checkpoint_anchor_use) on the eight pairs before and after.

    python experiments/anchor_memorise/anchor_memorise.py                   # SmolLM2-135M-Instruct, 60 steps at lr 1e-4 (~5 min on 2 cores)
    python experiments/anchor_memorise/anchor_memorise.py --model tiny --steps 200 --lr 1e-3
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

WORDS = ["dog", "river", "music", "winter", "stone", "bread", "light", "anger"]
GLOSSES = ["a domestic animal that barks", "a large natural stream of water", "sounds arranged in time",
           "the coldest season of the year", "hard mineral matter of rock", "food baked from flour dough",
           "electromagnetic radiation we see", "a strong feeling of displeasure"]  # fmt: skip
RECORDS = [
    {"query": w, "positive": g, "instruction": "Find the sense", "dataset": "toy"}
    for w, g in zip(WORDS, GLOSSES)
]


def train_pairs(backbone, anchor: str, steps: int, lr: float) -> None:
    """Stage I's joint loss on RECORDS, `steps` AdamW steps (the module's loss, no Lightning)."""
    from bireco import PairCollator, build_module, compose_train

    cfg = compose_train(["stage=reconstruction", "stage.alpha=0.5", "stage.schedule=joint", f"stage.anchor={anchor}",
                         f"stage.optim.lr={lr}", f"trainer.max_steps={steps}"])  # fmt: skip
    module = build_module(cfg, backbone)
    collate = PairCollator(backbone.tokenizer, backbone.text_format, 16, 16, pad_id=backbone.pad_id)
    opt = torch.optim.AdamW([p for p in backbone.parameters() if p.requires_grad], lr=lr)
    backbone.train()
    for _ in range(steps):
        loss, _ = module.step_loss(collate(RECORDS))
        opt.zero_grad()
        loss.backward()
        opt.step()


def main() -> None:
    from bireco import AnchorReader, build_backbone, checkpoint_anchor_use, compose_train

    def anchor_use(backbone, records, **kw):  # with real anchors, whatever the model trained with
        return checkpoint_anchor_use(AnchorReader(backbone), records, **kw)

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    model = ["model=smollm2"] if args.model == "smollm2" else []
    base = build_backbone(compose_train([*model, "stage=reconstruction", "trainer.precision=32-true"]))
    rows = {"untrained": anchor_use(base, RECORDS, batch_size=8, bf16=False)}
    for anchor in ("embedding", "constant"):
        backbone = copy.deepcopy(base)
        t = time.perf_counter()
        train_pairs(backbone, anchor, args.steps, args.lr)
        rows[f"anchor={anchor}"] = dict(anchor_use(backbone, RECORDS, batch_size=8, bf16=False),
                                        seconds=round(time.perf_counter() - t, 1))  # fmt: skip
    for name, u in rows.items():
        print(f"{name:18s} CE q2d {u['ce_q2d']:.3f} acc {u['acc_q2d']:.2f} gain {u['anchor_gain_q2d']:+.3f} | "
              f"CE d2q {u['ce_d2q']:.3f} acc {u['acc_d2q']:.2f} gain {u['anchor_gain_d2q']:+.3f}")  # fmt: skip
    print(json.dumps({"args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
