"""The main job (`make demo`): the paper's experiment at toy scale, offline, on a CPU in minutes.

1. builds (or reuses from cache) a tiny pretrained base LM (bireco.pretrain);
2. trains the baseline (Stage II only) and Anchor (Stage I -> Stage II) on the WordNet train split,
   logging dev nDCG@10 during Stage II (the paper's convergence figure, Fig. 3 / paper-spec 7.5);
3. evaluates the untrained base, Stage I only, baseline and Anchor through mteb on the held-out test split
   (paper-spec 7.7 rows);
4. writes results.md, results.csv and convergence.png under the output directory and prints the table.

    python -m bireco.demo                       # defaults below; --help for the knobs
Every number comes from this run; nothing is hard-coded.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import time
from pathlib import Path

log = logging.getLogger("bireco")


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from bireco.cli import CONF_DIR
    from bireco.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=overrides)


def run_demo(out: Path, lm_steps: int, stage1_steps: int, stage2_steps: int, eval_every: int, pooling: str,
             eval_queries: int | None, eval_docs: int | None, wandb: bool, progress: bool) -> dict:  # fmt: skip
    from bireco.evaluate import evaluate_checkpoint, markdown_table
    from bireco.pretrain import pretrain_tiny_lm
    from bireco.train import run

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    base = pretrain_tiny_lm(steps=lm_steps, progress=progress)
    common = [
        f"output_root={out}", "experiment_name=demo", f"model.name_or_path={base}", f"model.pooling={pooling}",
        "logger=wandb" if wandb else "logger=csv", f"trainer.enable_progress_bar={str(progress).lower()}",
        "trainer.log_every_n_steps=10",
    ]  # fmt: skip
    stage2 = [f"trainer.max_steps={stage2_steps}", f"trainer.val_check_interval={eval_every}", "stage.lora.enabled=false",
              "stage.optim.lr=5e-4", "stage.optim.warmup_steps=10", "data.dev_queries=200"]  # fmt: skip
    stage1 = [f"trainer.max_steps={stage1_steps}", "stage.optim.lr=1e-3", "stage.optim.warmup_steps=10"]
    timings = {}
    for name, overrides in (
        ("baseline", ["stage=baseline", *stage2]),
        ("stage1", ["stage=reconstruction", *stage1]),
        ("anchor", ["stage=contrastive", *stage2]),
    ):
        t = time.perf_counter()
        run(_compose(common + overrides))
        timings[name] = time.perf_counter() - t
    runs = out / "demo" / "default"
    # the untrained base as a bireco checkpoint (same text format + pooling), for the first table row
    from bireco.backbone import Backbone
    from bireco.builders import build_backbone

    untrained_dir = runs / "untrained" / "final"
    if not (untrained_dir / "bireco.json").is_file():
        Backbone.save(build_backbone(_compose(common + ["stage=baseline", "stage.lora.enabled=false"])), untrained_dir)
    checkpoints = {
        f"Untrained base ({pooling} pooling)": untrained_dir,
        "Only Stage I (reconstruction)": runs / "stage1" / "final",
        "Only Stage II (baseline)": runs / "baseline" / "final",
        "Stage I + Stage II (Anchor)": runs / "stage2" / "final",
    }
    summaries = {}
    for label, ckpt in checkpoints.items():
        summaries[label] = evaluate_checkpoint(str(ckpt), ["WordNetDefinitionsRetrieval", "WordNetExamplesRetrieval"],
                                               output_dir=str(ckpt.parent / "eval"), max_queries=eval_queries,
                                               max_docs=eval_docs, progress=progress)  # fmt: skip
    table = markdown_table(summaries)
    curves = {name: _dev_curve(runs / run_name) for name, run_name in (("Baseline", "baseline"), ("Anchor", "stage2"))}
    _plot(curves, out / "convergence.png")
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        tasks = sorted(next(iter(summaries.values()))["tasks"])
        w.writerow(["run", *tasks, "Average"])
        for label, s in summaries.items():
            w.writerow([label, *(f"{s['tasks'][t]['main_score']:.2f}" for t in tasks), f"{s['categories']['Average']:.2f}"])
    meta = {"seconds": time.perf_counter() - t0, "train_seconds": timings, "lm_steps": lm_steps, "stage1_steps": stage1_steps,
            "stage2_steps": stage2_steps, "pooling": pooling, "eval_queries": eval_queries, "eval_docs": eval_docs,
            "cpu_count": os.cpu_count(), "dev_curves": curves}  # fmt: skip
    (out / "results.json").write_text(json.dumps({"summaries": summaries, **meta}, indent=2))
    (out / "results.md").write_text(
        "# bireco demo (toy scale, CPU)\n\nnDCG@10 x 100 on the held-out WordNet test split (mteb).\n\n" + table
        + "\nStage II dev nDCG@10 by step: see convergence.png.\n"
    )
    print(table)
    print(f"wrote {out / 'results.md'}, {out / 'results.csv'}, {out / 'convergence.png'} in {meta['seconds']:.0f} s")
    return {"summaries": summaries, **meta}


def _dev_curve(run_dir: Path) -> list[tuple[int, float]]:
    import pandas as pd

    df = pd.read_csv(run_dir / "logs" / "metrics.csv")
    dev = df[["step", "val/ndcg@10"]].dropna()
    return [(int(s), float(v)) for s, v in zip(dev["step"], dev["val/ndcg@10"])]


def _plot(curves: dict[str, list[tuple[int, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for name, pts in curves.items():
        ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", label=name)
    ax.set_xlabel("Stage II step")
    ax.set_ylabel("dev nDCG@10 (x100)")
    ax.set_title("Stage II convergence (WordNet dev)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("outputs/demo-run"))
    ap.add_argument("--lm-steps", type=int, default=400)
    ap.add_argument("--stage1-steps", type=int, default=150)
    ap.add_argument("--stage2-steps", type=int, default=150)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--pooling", default="last", choices=["last", "mean", "weighted_mean"])
    ap.add_argument("--eval-queries", type=int, default=1000)
    ap.add_argument("--eval-docs", type=int, default=4000)
    ap.add_argument("--no-wandb", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    from bireco.train import quiet_console

    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="[bireco] %(message)s")
    quiet_console()
    os.environ.setdefault("WANDB_MODE", "offline")
    run_demo(args.out, args.lm_steps, args.stage1_steps, args.stage2_steps, args.eval_every, args.pooling,
             args.eval_queries, args.eval_docs, not args.no_wandb, not args.quiet)  # fmt: skip


if __name__ == "__main__":
    main()
