"""Choose the demo's toy-scale settings on the WordNet **dev** split (never the test split).

Each named design trains Stage II from the base model (baseline) and from a Stage I run (Anchor) with the same
Stage II settings, logs dev nDCG@10 every `--eval-every` Stage II steps (200 dev queries, 2,000 dev documents,
`bireco.evaluation.retrieval`), and records the Stage I reconstruction accuracy. Results accumulate in
`<out>/dev_sweep.json` and `<out>/dev_sweep.md`, one row per design, so a rerun skips finished designs.

    python experiments/dev_sweep/dev_sweep.py --designs d1 d2          # see DESIGNS; --list prints them
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import time
from pathlib import Path

COMMON = ["model=smollm2", "experiment_name=dev_sweep", "trainer.log_every_n_steps=5", "data.dev_queries=200"]

# name -> (Stage I overrides, Stage II overrides); the data.* keys apply to both stages.
DESIGNS: dict[str, dict[str, list[str]]] = {
    # the starting point: Stage I lr 3e-4 x 80 (alternate), Stage II LoRA lr 1e-3 x 40, batch 16, 32/48 tokens
    "lora_lr1e-3": {
        "data": ["data.global_batch_size=16", "data.max_query_length=32", "data.max_doc_length=48"],
        "stage1": [
            "stage.schedule=alternate",
            "trainer.max_steps=80",
            "stage.optim.lr=3e-4",
            "stage.optim.warmup_steps=8",
        ],
        "stage2": ["trainer.max_steps=40", "stage.optim.lr=1e-3", "stage.optim.warmup_steps=4"],
    },
    # same Stage II, Stage I at a third of the learning rate (does a gentler Stage I keep the base's geometry?)
    "s1lr1e-4": {
        "data": ["data.global_batch_size=16", "data.max_query_length=32", "data.max_doc_length=48"],
        "stage1": [
            "stage.schedule=alternate",
            "trainer.max_steps=80",
            "stage.optim.lr=1e-4",
            "stage.optim.warmup_steps=8",
        ],
        "stage2": ["trainer.max_steps=40", "stage.optim.lr=1e-3", "stage.optim.warmup_steps=4"],
    },
    # Stage I as Algorithm 1 (both directions every batch), Stage II unchanged
    "s1joint": {
        "data": ["data.global_batch_size=16", "data.max_query_length=32", "data.max_doc_length=48"],
        "stage1": [
            "trainer.max_steps=60",
            "stage.optim.lr=1e-4",
            "stage.optim.warmup_steps=6",
            "stage.schedule=joint",
        ],
        "stage2": ["trainer.max_steps=40", "stage.optim.lr=1e-3", "stage.optim.warmup_steps=4"],
    },
    # Stage I with LoRA (r 16) at the Stage II learning rate: less drift from the base than full fine-tuning
    "s1lora": {
        "data": ["data.global_batch_size=16", "data.max_query_length=32", "data.max_doc_length=48"],
        "stage1": [
            "stage.schedule=alternate",
            "trainer.max_steps=80",
            "stage.optim.lr=1e-3",
            "stage.optim.warmup_steps=8",
            "stage.lora.enabled=true",
        ],
        "stage2": ["trainer.max_steps=40", "stage.optim.lr=1e-3", "stage.optim.warmup_steps=4"],
    },
    # the demo's design with four times the Stage I steps: does the decoder start reading the anchor with budget?
    "s1x4": {
        "data": ["data.global_batch_size=16", "data.max_query_length=32", "data.max_doc_length=48"],
        "stage1": [
            "stage.schedule=alternate",
            "trainer.max_steps=320",
            "stage.optim.lr=3e-4",
            "stage.optim.warmup_steps=32",
        ],
        "stage2": ["trainer.max_steps=40", "stage.optim.lr=1e-3", "stage.optim.warmup_steps=4"],
    },
}


def run_design(name: str, out: Path, eval_every: int, seed: int, stage1_only: bool = False) -> dict:
    """Baseline (shared between designs with the same data + Stage II), Stage I, Anchor; `stage1_only`: Stage I and
    its anchor use alone (the cheap question: does the decoder read the embedding at all?)."""
    from bireco import compose_train, logged_curve
    from bireco import train_stage as run

    d = DESIGNS[name]
    common = [
        *COMMON,
        f"output_root={out}",
        f"variant={name}-seed{seed}",
        f"seed={seed}",
        "trainer.enable_progress_bar=false",
        *d["data"],
    ]
    stage2 = [f"trainer.dev_check_every_n_steps={eval_every}", *d["stage2"]]
    # designs that share data + Stage II settings share one baseline run
    base_variant = (
        "baseline-" + hashlib.sha1(json.dumps([d["data"], d["stage2"], seed]).encode()).hexdigest()[:8]
    )
    base_dir = out / "dev_sweep" / base_variant / "baseline"
    t = {}
    for label, overrides in (("baseline", ["stage=baseline", f"variant={base_variant}", *stage2]),
                             ("stage1", ["stage=reconstruction", *d["stage1"]]), ("anchor", ["stage=contrastive", *stage2])):  # fmt: skip
        if label == "baseline" and (base_dir / "final" / "bireco.json").is_file():
            continue
        if stage1_only and label != "stage1":
            continue
        t0 = time.perf_counter()
        run(compose_train(common + overrides))
        t[label] = round(time.perf_counter() - t0)
    runs = out / "dev_sweep" / f"{name}-seed{seed}"
    acc = {k: logged_curve(runs / "stage1", f"train/acc_{k}") for k in ("d2q", "q2d")}
    use = {"untrained": anchor_use_of(None), "stage1": anchor_use_of(runs / "stage1" / "final")}
    return {
        "design": name, "seed": seed, **d, "seconds": t,
        "baseline_dev": [] if stage1_only else logged_curve(base_dir, "val/ndcg@10"),
        "anchor_dev": [] if stage1_only else logged_curve(runs / "stage2", "val/ndcg@10"),
        "stage1_acc_last": {k: (v[-1][1] if v else None) for k, v in acc.items()}, "anchor_use": use,
    }  # fmt: skip


def load_backbone(checkpoint: Path | str | None):
    """A bireco checkpoint, or the untrained SmolLM2 (bireco's smollm2 family format) for None."""
    from bireco import Backbone, compose_train

    if checkpoint is None:
        return Backbone.from_config(compose_train(["model=smollm2"]).model)
    return Backbone.load(checkpoint)


def gain_of(use: dict, direction: str) -> float:
    """Anchor gain from a stored row (results written before the probe named it anchor_gain_*)."""
    return use.get(f"anchor_gain_{direction}", use.get(f"gain_{direction}"))


def anchor_use_of(checkpoint: Path | None, n: int = 256) -> dict:
    """The anchor probe (bireco.checkpoint_anchor_use) on `n` WordNet dev pairs (the probe's own draw)."""
    from bireco import AnchorReader, checkpoint_anchor_use, wordnet_dev_pairs

    return checkpoint_anchor_use(AnchorReader(load_backbone(checkpoint)), wordnet_dev_pairs(n))


def write_table(results: dict, out: Path) -> None:
    lines = ["| design | seed | Stage I acc d2q / q2d (last log) | anchor gain d2q / q2d, nats/token: untrained -> Stage I | "
             "dev nDCG@10 x100 by Stage II step: baseline | Anchor | s |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in results.values():
        fmt = lambda c: ", ".join(f"{s}: {100 * v:.1f}" for s, v in c) or "— (Stage I only)"  # noqa: E731
        a = r["stage1_acc_last"]
        acc = " / ".join("—" if a[k] is None else f"{a[k]:.2f}" for k in ("d2q", "q2d"))
        u = r.get("anchor_use") or {}
        gain = (
            " -> ".join(
                f"{gain_of(u[k], 'd2q'):.2f} / {gain_of(u[k], 'q2d'):.2f}"
                for k in ("untrained", "stage1")
                if k in u
            )
            or "—"
        )
        lines.append(
            f"| {r['design']} | {r['seed']} | {acc} | {gain} | {fmt(r['baseline_dev'])} | {fmt(r['anchor_dev'])} | {sum(r['seconds'].values())} |"
        )
    host = f"{platform.node()} ({os.cpu_count()} CPUs)"
    (out / "dev_sweep.md").write_text(
        f"# Demo design sweep on WordNet dev ({host})\n\n" + "\n".join(lines) + "\n"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--designs", nargs="*", default=list(DESIGNS))
    ap.add_argument("--out", type=Path, default=Path("outputs/dev-sweep"))
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--list", action="store_true")
    ap.add_argument(
        "--stage1-only", action="store_true", help="train Stage I and measure its anchor use, no Stage II"
    )
    args = ap.parse_args()
    if args.list:
        print(json.dumps(DESIGNS, indent=2))
        return
    logging.basicConfig(level=logging.WARNING, format="[bireco] %(message)s")
    os.environ.setdefault("WANDB_MODE", "offline")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "dev_sweep.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    for name in args.designs:
        key = f"{name}-seed{args.seed}" + ("-stage1" if args.stage1_only else "")
        if key in results:
            continue
        results[key] = run_design(name, args.out, args.eval_every, args.seed, args.stage1_only)
        path.write_text(json.dumps(results, indent=2))
        write_table(results, args.out)
        print(
            f"{key}: baseline {results[key]['baseline_dev']} anchor {results[key]['anchor_dev']}", flush=True
        )


if __name__ == "__main__":
    main()
