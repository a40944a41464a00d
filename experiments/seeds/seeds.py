"""Evidence over seeds: baseline vs Anchor on the real LLM (SmolLM2-135M-Instruct), plus the compute-matched control.

For each seed this runs the demo (`bireco.run_demo`, experiment=demo_smollm2: untrained / Stage I only / baseline / Anchor,
evaluated on the held-out built-in tasks) and the paper's compute-matched control (docs/method.md §6.2): Stage II alone,
from the base model, given Stage I's steps on top of its own (stage1_steps + stage2_steps). It writes one table
with every seed's numbers, mean ± sd per row, Anchor − baseline and Anchor − control per seed, and the Stage II
dev curves.

    python experiments/seeds/seeds.py                       # seeds 1 2 3 -> outputs/seeds/results.{md,json}
    python experiments/seeds/seeds.py --seeds 1 --stage2-steps 20
    python experiments/seeds/seeds.py --seeds 42 --constant-anchor  # add the constant-anchor Stage I control to a finished seed
    python experiments/seeds/seeds.py --seeds 1 2 42 --full-ft-baseline  # add Stage II alone with full fine-tuning
    python experiments/seeds/seeds.py --seeds 1 2 42 --suite  # every row again on the demo's built-in suite (out of domain)

Takes about 50 minutes a seed on a 2-core CPU (minutes on a GPU). A rerun skips what a seed has and adds the rows asked
for that it lacks (the compute-matched control unless --no-control).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path

from bireco import final_dir, seed_row, seed_table_head

CONTROL = "Stage II alone, compute-matched (steps = Stage I + Stage II)"
CONSTANT_ANCHOR = "Stage I with a constant anchor + Stage II (control)"
FULL_FT = "Stage II alone, full fine-tuning (no LoRA)"
# each row's run: (variant, run name) under the demo's experiment (bireco.core.runs lays out the directories)
ROW_RUNS = {
    "Untrained base (last pooling)": ("default", "untrained"),
    "Only Stage I (reconstruction)": ("default", "stage1"),
    "Only Stage II (baseline)": ("default", "baseline"),
    "Stage I + Stage II (Anchor)": ("default", "stage2"),
    CONTROL: ("control", "baseline"),
    CONSTANT_ANCHOR: ("constant_anchor", "stage2"),
    FULL_FT: ("full_ft", "baseline"),
}


def row_checkpoint(seed_dir: Path, label: str) -> Path:
    """Where a row's final checkpoint lies under one seed's output root (the demo's experiment_name=demo)."""
    variant, run_name = ROW_RUNS[label]
    return final_dir(seed_dir / "demo" / variant / run_name)


def run_control(out: Path, res: dict) -> None:
    """The compute-matched control (docs/method.md §6.2): Stage II alone from the base, for Stage I + Stage II steps."""
    from bireco import compose_train
    from bireco import train_stage as run

    steps = res["stage1_steps"] + res["stage2_steps"]
    t = time.perf_counter()
    # dev checks every 20 steps (not 10): the control's curve is context, and its 120 steps would otherwise check 13 times
    stage2 = [
        o
        for o in stage2_overrides(res)
        if not o.startswith(("trainer.max_steps=", "trainer.dev_check_every_n_steps="))
    ]
    cfg = compose_train([*res["overrides"], "variant=control", "stage=baseline", *stage2, f"trainer.max_steps={steps}",
                         "trainer.dev_check_every_n_steps=20"])  # fmt: skip
    run(cfg)
    res["train_seconds"]["control"] = time.perf_counter() - t
    add_row(res, CONTROL, "Control", final_dir(cfg.run_dir))  # output_root may be relative: where it ran


def add_row(res: dict, label: str, curve: str, ckpt: Path) -> None:
    """Evaluate one extra run on the demo's test subsample and record its dev curve."""
    from bireco import eval_dir, evaluate_checkpoint, logged_curve, run_of

    res["summaries"][label] = evaluate_checkpoint(
        str(ckpt), tasks=res.get("eval_tasks", ["WordNetDefinitionsRetrieval", "WordNetExamplesRetrieval"]),
        output_dir=str(eval_dir(run_of(ckpt))),
        max_queries=res["eval_queries"], max_docs=res["eval_docs"], progress=False,
    )  # fmt: skip
    res["dev_curves"][curve] = logged_curve(ckpt.parent)


def run_constant_anchor(out: Path, res: dict) -> None:
    """Stage I with `stage.anchor=constant` (one fixed vector for every pair; same steps, text and schedule, no reconstruction signal), then the same
    Stage II: if this row matches Anchor, the gain comes from LM training on the pairs' text, not from the anchor."""
    from omegaconf import OmegaConf

    from bireco import compose_train
    from bireco import train_stage as run

    common = [*res["overrides"], "variant=constant_anchor"]
    stage2 = stage2_overrides(res)
    # the schedule the seed's own Stage I ran with (its default changed to joint after seed 42 ran)
    schedule = OmegaConf.load(out / "demo" / "default" / "stage1" / "config.yaml").stage.schedule
    t = time.perf_counter()
    run(compose_train([*common, "stage=reconstruction", *res["stage1_overrides"], f"stage.schedule={schedule}",
                       "stage.anchor=constant"]))  # fmt: skip
    cfg = compose_train([*common, "stage=contrastive", *stage2])
    run(cfg)
    res["train_seconds"]["constant_anchor"] = time.perf_counter() - t
    add_row(res, CONSTANT_ANCHOR, "Constant-anchor Stage I + Stage II", final_dir(cfg.run_dir))


def stage2_overrides(res: dict) -> list[str]:
    """The seed's recorded Stage II overrides, with the dev-check key under its current name (renamed after seed 42 ran)."""
    return [
        o.replace("trainer.val_check_interval=", "trainer.dev_check_every_n_steps=")
        for o in res["stage2_overrides"]
    ]


def run_full_ft_baseline(out: Path, res: dict) -> None:
    """Stage II alone from the base with every weight trained (`stage.lora.enabled=false`), the same steps and data.

    The capacity control: Anchor's Stage I updates every weight, the LoRA baseline never does. Its learning rate is
    the one bireco's demo already uses for full-parameter training of this model (Stage I's), not Stage II's LoRA
    rate, which is far too large for every weight; nothing was tuned for it."""
    from bireco import compose_train
    from bireco import train_stage as run

    full_ft_lr = next(o for o in res["stage1_overrides"] if o.startswith("stage.optim.lr="))
    t = time.perf_counter()
    cfg = compose_train([*res["overrides"], "variant=full_ft", "stage=baseline", *stage2_overrides(res),
                         "stage.lora.enabled=false", full_ft_lr])  # fmt: skip
    run(cfg)
    res["train_seconds"]["full_ft"] = time.perf_counter() - t
    add_row(res, FULL_FT, "Stage II alone, full fine-tuning", final_dir(cfg.run_dir))


def evaluate_suite(out: Path, results: dict[int, dict]) -> dict[int, dict]:
    """Every row of every finished seed on the demo's current evaluation (the built-in suite: WordNet test and the
    out-of-domain tasks, the demo's subsample). The seeds ran when their table held WordNet alone; this adds the
    out-of-domain half for all of them. Written to suite.json (reused on rerun) and suite.md."""
    from bireco import EVAL_SUBSAMPLE, EVAL_TASKS, evaluate_checkpoint

    queries, docs = EVAL_SUBSAMPLE["smollm2"]
    path = out / "suite.json"
    suite = {int(k): v for k, v in json.loads(path.read_text()).items()} if path.is_file() else {}
    for seed in sorted(results):
        rows = suite.setdefault(seed, {})
        for label in ROW_RUNS:
            ckpt = row_checkpoint(out / f"seed-{seed}", label)
            if label in rows or not (ckpt / "bireco.json").is_file():
                continue
            rows[label] = evaluate_checkpoint(str(ckpt), tasks=EVAL_TASKS, output_dir=str(ckpt.parent / "eval-suite"),
                                              max_queries=queries, max_docs=docs,
                                              progress=False)  # fmt: skip
            path.write_text(json.dumps({str(k): v for k, v in suite.items()}, indent=1))
    (out / "suite.md").write_text(suite_report(suite, queries, docs))
    return suite


def suite_report(suite: dict[int, dict], queries: int, docs: int) -> str:
    """One table per score (average, WordNet, out of domain): rows = runs, columns = seeds and mean ± sd."""
    seeds = sorted(suite)
    labels = [label for label in ROW_RUNS if any(label in suite[s] for s in seeds)]
    parts = [
        f"nDCG@10 × 100 on the built-in suite ({queries} queries, {docs} documents per task; the demo's subsample).\n"
    ]
    for title, score in (("Average of the four tasks", lambda r: r["categories"]["Average"]),
                         ("WordNet avg (test split)", lambda r: r["groups"]["WordNet avg"]),
                         ("Out-of-domain avg (Debian packages, Python API)", lambda r: r["groups"]["Out-of-domain avg"])):  # fmt: skip
        lines = [f"\n{title}:\n", *seed_table_head(seeds)]
        for label in labels:
            lines.append(
                seed_row(label, {s: score(suite[s][label]) for s in seeds if label in suite[s]}, seeds)
            )
        parts.append("\n".join(lines) + "\n")
    return "".join(parts)


def dev_corpus_size(overrides: list[str]) -> int:
    """The dev check's corpus size of a run (the demo preset changed it from the default 2000 to 1000)."""
    from bireco import DataConfig

    sizes = [int(o.split("=", 1)[1]) for o in overrides if o.startswith("data.dev_corpus_size=")]
    return sizes[-1] if sizes else DataConfig.dev_corpus_size


def report(results: dict[int, dict]) -> str:
    seeds = sorted(results)
    # a control may miss seeds
    rows = list(dict.fromkeys(row for s in seeds for row in results[s]["summaries"]))

    def score(seed: int, row: str) -> float:
        return results[seed]["summaries"][row]["categories"]["Average"]

    lines = seed_table_head(seeds)
    for row in rows:
        lines.append(
            seed_row(row, {s: score(s, row) for s in seeds if row in results[s]["summaries"]}, seeds)
        )
    for label, other in (("baseline", "Only Stage II (baseline)"), ("compute-matched", CONTROL)):
        delta = {s: score(s, "Stage I + Stage II (Anchor)") - score(s, other)
                 for s in seeds if other in results[s]["summaries"]}  # fmt: skip
        if delta:
            lines.append(seed_row(f"**Anchor − {label}**", delta, seeds, "{:+.2f}"))
    curves = ["", "Stage II dev nDCG@10 × 100 (200 WordNet dev queries) by step:", ""]
    for s in seeds:
        docs = dev_corpus_size(results[s]["overrides"])
        for name, pts in results[s]["dev_curves"].items():
            curves.append(
                f"- seed {s}, {name} ({docs} dev documents): "
                + ", ".join(f"{st}: {100 * v:.1f}" for st, v in pts)
            )
    first = results[seeds[0]]
    minutes = sum(r["seed_seconds"] for r in results.values()) / 60
    tasks = sorted(
        {t for r in results.values() for summary in r["summaries"].values() for t in summary["tasks"]}
    )
    head = (
        f"Average nDCG@10 × 100 of {', '.join(tasks)} (held-out test splits; {first['eval_queries']} queries, {first['eval_docs']} documents per task). Stage I {first['stage1_steps']} steps, "
        f"Stage II {first['stage2_steps']} steps; settings: conf/experiment/demo_smollm2.yaml. Machine: "
        f"{first['machine']}, {first['cpu_count']} CPUs; {minutes:.0f} minutes in all.\n\n"
    )
    return head + "\n".join(lines) + "\n" + "\n".join(curves) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="*", default=[1, 2, 3])
    ap.add_argument("--out", type=Path, default=Path("outputs/seeds"))
    ap.add_argument("--stage1-steps", type=int, default=None)
    ap.add_argument("--stage2-steps", type=int, default=None)
    ap.add_argument(
        "--no-control", action="store_true", help="skip the compute-matched control (about 20 min a seed)"
    )
    ap.add_argument(
        "--constant-anchor",
        action="store_true",
        help="also run the constant-anchor Stage I control (stage.anchor=constant), for finished seeds too",
    )
    ap.add_argument(
        "--full-ft-baseline",
        action="store_true",
        help="also run Stage II alone with full fine-tuning (the capacity control), for finished seeds too",
    )
    ap.add_argument(
        "--suite",
        action="store_true",
        help="then evaluate every row of the finished seeds on the demo's built-in suite (writes suite.md)",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="[bireco] %(message)s")
    os.environ.setdefault("WANDB_MODE", "offline")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.json"
    results = {int(k): v for k, v in json.loads(path.read_text()).items()} if path.is_file() else {}
    for seed in args.seeds:
        out = args.out / f"seed-{seed}"
        t = time.perf_counter()
        new = seed not in results
        if new:
            from bireco import run_demo

            results[seed] = run_demo(out, base="smollm2", stage1_steps=args.stage1_steps, stage2_steps=args.stage2_steps,
                                     wandb=False, progress=False, seed=seed)  # fmt: skip
            results[seed]["seed_seconds"] = 0.0
        extras = [(run_control, CONTROL, not args.no_control),
                  (run_constant_anchor, CONSTANT_ANCHOR, args.constant_anchor),
                  (run_full_ft_baseline, FULL_FT, args.full_ft_baseline)]  # fmt: skip
        todo = [fn for fn, row, wanted in extras if wanted and row not in results[seed]["summaries"]]
        if not (new or todo):
            continue
        for fn in todo:
            fn(out, results[seed])
        results[seed]["seed_seconds"] += time.perf_counter() - t
        path.write_text(json.dumps({str(k): v for k, v in results.items()}, indent=1))
        (args.out / "results.md").write_text(report(results))
        print(report(results), flush=True)
    print(f"wrote {args.out / 'results.md'} ({platform.node()})")
    if args.suite:
        evaluate_suite(args.out, {s: results[s] for s in args.seeds if s in results})
        print((args.out / "suite.md").read_text())


if __name__ == "__main__":
    main()
