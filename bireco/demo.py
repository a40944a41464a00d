"""The main job (`make demo`): the paper's experiment at toy scale, offline, on a CPU (bireco.training.demo.run_demo).

    python -m bireco.demo                  # SmolLM2-135M-Instruct (make demo), ~25 minutes on 2 CPU cores
    python -m bireco.demo --base tiny      # a tiny LM pretrained for a minute (make demo-tiny)
    python -m bireco.demo --control        # also the constant-anchor control row

Trains the baseline (Stage II alone) and Anchor (Stage I -> Stage II) with `experiment=demo_<base>` (conf/experiment,
conf/experiment_stage), evaluates them with the untrained base, Stage I alone and reference rows on the built-in
suite, and writes results.md / .csv / .json and convergence.png to --out. Every number comes from the run.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from bireco.config.cli import quiet_console
from bireco.model.pooling import Pooling


def main() -> None:
    from bireco.training.demo import BASES, run_demo

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--base", choices=BASES, default="smollm2", help="smollm2 (make demo) or tiny (make demo-tiny)"
    )
    ap.add_argument(
        "--out", type=Path, default=None, help="default outputs/demo-run (smollm2) or outputs/demo-tiny"
    )
    ap.add_argument(
        "--lm-steps", type=int, default=400, help="pretraining steps of the tiny base LM (--base tiny)"
    )
    ap.add_argument(
        "--stage1-steps", type=int, default=None, help="default: the preset's (experiment=demo_<base>)"
    )
    ap.add_argument("--stage2-steps", type=int, default=None)
    ap.add_argument("--eval-every", type=int, default=None, help="Stage II steps between dev nDCG@10 checks")
    ap.add_argument("--pooling", default="last", choices=Pooling.values())
    ap.add_argument("--eval-queries", type=int, default=None, help="test queries per task (seeded subsample)")
    ap.add_argument(
        "--eval-docs", type=int, default=None, help="test documents per task (relevant ones always kept)"
    )
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--control", action="store_true",
                    help="also the constant-anchor control row (Stage I with stage.anchor=constant + Stage II)")  # fmt: skip
    ap.add_argument("--no-wandb", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument(
        "overrides", nargs="*", help="extra Hydra overrides for every run, e.g. data.global_batch_size=32"
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="[bireco] %(message)s")
    quiet_console()
    os.environ.setdefault("WANDB_MODE", "offline")
    out = args.out or Path("outputs/demo-run" if args.base == "smollm2" else "outputs/demo-tiny")
    run_demo(out, base=args.base, stage1_steps=args.stage1_steps, stage2_steps=args.stage2_steps,
             eval_every=args.eval_every, pooling=args.pooling, eval_queries=args.eval_queries, eval_docs=args.eval_docs,
             wandb=not args.no_wandb, progress=not args.quiet, lm_steps=args.lm_steps, seed=args.seed,
             overrides=args.overrides, control=args.control)  # fmt: skip


if __name__ == "__main__":
    main()
