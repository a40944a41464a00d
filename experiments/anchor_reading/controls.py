"""Does the paper's shared-weights Stage I read its anchor at the budget where a frozen decoder first read (640
steps), and does Anchor beat its shuffled-anchor control? SmolLM2-135M-Instruct, WordNet, the demo's toy scale.

Each design is a Stage I of 640 steps (10,240 pairs; batch 16, 32 / 48 tokens, lr 3e-4, warmup 64, bf16-mixed) from
the base, the unbiased anchor probe (256 WordNet dev pairs drawn by the probe's own seed, other anchors from the same
pair set, bootstrap 95% intervals) on its final weights, then the demo's Stage II (LoRA, lr 1e-3, 40 steps, the dev
check every 10 steps) and the demo's built-in suite. The controls differ from their recipe in one thing only:
`*_shuffled` decodes each target from another pair's anchor (stage.anchor=shuffled: the same steps, data and seed,
only the pair's own anchor removed); `full_ft_matched` trains every weight contrastively from the base for Anchor's
640 + 40 steps (capacity and steps matched, no reconstruction); `baseline` is the demo's Stage II alone.

    python experiments/anchor_reading/controls.py --designs shared shared_shuffled --seeds 42
    python experiments/anchor_reading/controls.py --designs joint joint_shuffled full_ft_matched --seeds 42
    python experiments/anchor_reading/controls.py --report          # controls.md from controls.json

Rows accumulate in controls.json here (a rerun skips finished ones; the per-step curves in controls_curves.csv);
runs go to outputs/anchor_controls/. `--report` writes controls.md: every row per seed and each recipe minus its
controls as paired differences with 95% t-intervals over the seeds that have both. The test splits are read for
the suite rows only; nothing is chosen on them.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STORE, CURVES, REPORT = HERE / "controls.json", HERE / "controls_curves.csv", HERE / "controls.md"
STAGE1_STEPS = 640
STAGE1 = ["stage=reconstruction", "data.global_batch_size=16", "data.max_query_length=32",
          "data.max_doc_length=48", "stage.optim.lr=3e-4", "stage.optim.warmup_steps=64",
          f"trainer.max_steps={STAGE1_STEPS}", "stage.probe.every_n_steps=80", "stage.probe.pairs=64"]  # fmt: skip
D2Q, JOINT = ["stage.alpha=0.0"], ["stage.alpha=0.2", "stage.schedule=joint"]
# design -> (Stage I overrides or None: Stage II from the base, Stage II overrides, Stage II steps, Stage II at all)
DESIGNS = {
    "shared": ([*STAGE1, *D2Q], [], None, True),
    "shared_shuffled": ([*STAGE1, *D2Q, "stage.anchor=shuffled"], [], None, True),
    "joint": ([*STAGE1, *JOINT], [], None, True),
    "joint_shuffled": ([*STAGE1, *JOINT, "stage.anchor=shuffled"], [], None, True),
    "frozen": ([*STAGE1, *D2Q, "stage.decoder=frozen"], [], None, False),
    "frozen_shuffled": ([*STAGE1, *D2Q, "stage.decoder=frozen", "stage.anchor=shuffled"], [], None, False),
    "baseline": (None, [], None, True),
    "full_ft_matched": (None, ["stage.lora.enabled=false", "stage.optim.lr=3e-4"], STAGE1_STEPS + 40, True),
}
# each recipe against the controls that share its Stage I budget
COMPARISONS = {
    "shared": ("shared_shuffled", "baseline", "full_ft_matched"),
    "joint": ("joint_shuffled", "baseline", "full_ft_matched"),
}
PROBE_PAIRS = 256
MODEL = ["model=smollm2"]
STAGE2_PRESET = [
    "experiment=demo_smollm2"
]  # the demo's Stage II: LoRA, lr 1e-3, 40 steps, the dev check every 10


def commit() -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
    ).stdout.strip()


def machine() -> str:
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?"
    )
    import os

    import torch

    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"


def final_probe(final: Path, data) -> dict:
    """The unbiased probe on PROBE_PAIRS WordNet dev pairs, on the checkpoint as its Stage I decoded (`data`: the
    run's data config: its lengths and instructions)."""
    from bireco import Backbone, checkpoint_anchor_use, reader_for_checkpoint, wordnet_dev_pairs

    pairs = wordnet_dev_pairs(PROBE_PAIRS, 42, data)
    reader = reader_for_checkpoint(Backbone.load(final), final)
    use = checkpoint_anchor_use(reader, pairs, batch_size=16, max_query_length=data.max_query_length,
                                max_doc_length=data.max_doc_length)  # fmt: skip
    return {k: round(v, 4) for k, v in use.items()}


def run_design(name: str, seed: int, out: Path) -> tuple[dict, list[dict]]:
    """One design at one seed: its row and its curves (step, metric, value)."""
    from bireco import EVAL_SUBSAMPLE, EVAL_TASKS, compose_train, evaluate_checkpoint, final_dir, logged_curve
    from bireco import train_stage as run

    stage1, stage2_extra, stage2_steps, with_stage2 = DESIGNS[name]
    common = [*MODEL, f"output_root={out}", "experiment_name=anchor_controls", f"variant={name}-seed{seed}",
              f"seed={seed}", "trainer.log_every_n_steps=10", "trainer.enable_progress_bar=false"]  # fmt: skip
    row: dict = {"design": name, "seed": seed, "commit": commit(), "machine": machine(), "seconds": {}}
    curves: list[dict] = []
    init = "base"
    if stage1 is not None:
        cfg = compose_train([*common, *stage1])
        t0 = time.perf_counter()
        run(cfg)
        row["seconds"]["stage1"] = round(time.perf_counter() - t0)
        for key in ("probe/anchor_gain_d2q", "probe/anchor_gain_q2d", "probe/ce_d2q"):
            curves += [{"stage": "stage1", "metric": key, "step": s, "value": round(v, 4)}
                       for s, v in logged_curve(cfg.run_dir, key)]  # fmt: skip
        row["probe"] = final_probe(final_dir(cfg.run_dir), cfg.data)
        init = str(final_dir(cfg.run_dir).resolve())
    if with_stage2:
        steps = (
            [f"trainer.max_steps={stage2_steps}", "trainer.dev_check_every_n_steps=40"]
            if stage2_steps
            else []
        )
        cfg = compose_train([*STAGE2_PRESET, *common, "stage=contrastive", f"stage.init_from={init}", *steps,
                             *stage2_extra])  # fmt: skip
        t0 = time.perf_counter()
        run(cfg)
        row["seconds"]["stage2"] = round(time.perf_counter() - t0)
        dev = logged_curve(cfg.run_dir)
        curves += [
            {"stage": "stage2", "metric": "val/ndcg@10", "step": s, "value": round(100 * v, 2)}
            for s, v in dev
        ]
        row["dev_ndcg10_last"] = round(100 * dev[-1][1], 2)
        summary = evaluate_checkpoint(str(final_dir(cfg.run_dir)), tasks=EVAL_TASKS,
                                      output_dir=str(Path(cfg.run_dir) / "eval"), max_queries=EVAL_SUBSAMPLE["smollm2"][0],
                                      max_docs=EVAL_SUBSAMPLE["smollm2"][1], progress=False, wandb=False)  # fmt: skip
        row["suite"] = {"Average": round(summary["categories"]["Average"], 2),
                        **{k: round(v, 2) for k, v in summary["groups"].items()},
                        **{t: round(v["main_score"], 2) for t, v in summary["tasks"].items()}}  # fmt: skip
    return row, curves


def load() -> dict:
    return json.loads(STORE.read_text()) if STORE.is_file() else {}


def save(rows: dict, curves: dict[str, list[dict]]) -> None:
    STORE.write_text(json.dumps(rows, indent=1) + "\n")
    have = {}
    if CURVES.is_file():
        with CURVES.open(newline="") as f:
            for r in csv.DictReader(f):
                have.setdefault(r["run"], []).append(r)
    have.update({k: [{"run": k, **c} for c in v] for k, v in curves.items()})
    with CURVES.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["run", "stage", "metric", "step", "value"])
        w.writeheader()
        for k in sorted(have):
            w.writerows(have[k])


def report(rows: dict) -> str:
    """Per seed: the final probe and the suite; then each recipe minus each control as paired differences."""
    from bireco import paired_difference, seed_row, seed_table_head

    seeds = sorted({r["seed"] for r in rows.values()})
    by = {(r["design"], r["seed"]): r for r in rows.values()}
    designs = [d for d in DESIGNS if any((d, s) in by for s in seeds)]
    parts = [f"Rows from `controls.json` (commit and machine per row there). {PROBE_PAIRS} WordNet dev pairs for the "
             "probe (nats per token, [95% bootstrap interval over pairs]); the suite is nDCG@10 × 100 on the demo's "
             "built-in suite and subsample.\n"]  # fmt: skip
    parts.append("\nHeld-out anchor gain after Stage I, D2Q / Q2D:\n")
    parts.append(
        "\n| design | " + " | ".join(f"seed {s}" for s in seeds) + " |\n" + "|---" * (len(seeds) + 1) + "|"
    )
    for d in designs:
        cells = []
        for s in seeds:
            p = by.get((d, s), {}).get("probe")
            cells.append(
                "–" if not p else
                f"{p['anchor_gain_d2q']:+.3f} [{p['anchor_gain_d2q_lo']:+.3f}, {p['anchor_gain_d2q_hi']:+.3f}] / "
                f"{p['anchor_gain_q2d']:+.3f} [{p['anchor_gain_q2d_lo']:+.3f}, {p['anchor_gain_q2d_hi']:+.3f}]"
            )  # fmt: skip
        if any(c != "–" for c in cells):
            parts.append(f"\n| {d} | " + " | ".join(cells) + " |")
    for score in ("Average", "WordNet avg", "Out-of-domain avg"):
        parts.append(f"\n\nSuite, {score}:\n\n" + "\n".join(seed_table_head(seeds)))
        for d in designs:
            vals = {s: by[(d, s)]["suite"][score] for s in seeds if "suite" in by.get((d, s), {})}
            if vals:
                parts.append("\n" + seed_row(d, vals, seeds))
        diffs = []
        for recipe, controls in COMPARISONS.items():
            for control in controls:
                diff = {s: by[(recipe, s)]["suite"][score] - by[(control, s)]["suite"][score] for s in seeds
                        if "suite" in by.get((recipe, s), {}) and "suite" in by.get((control, s), {})}  # fmt: skip
                if diff:
                    cells = [f"{diff[s]:+.2f}" if s in diff else "–" for s in seeds]
                    diffs.append(
                        f"| {recipe} − {control} | "
                        + " | ".join(cells)
                        + f" | {paired_difference(list(diff.values()))} |"
                    )
        if diffs:
            head = (
                "| paired difference | "
                + " | ".join(f"seed {s}" for s in seeds)
                + " | mean [95% t-interval] |"
            )
            parts.append("\n\n" + "\n".join([head, "|---" * (len(seeds) + 2) + "|", *diffs]))
    return "".join(parts) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--designs", nargs="*", default=[], choices=sorted(DESIGNS))
    ap.add_argument("--seeds", nargs="*", type=int, default=[42])
    ap.add_argument("--out", type=Path, default=Path("outputs/anchor_controls"))
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args()
    from bireco import quiet_console

    quiet_console()
    rows = load()
    for seed in args.seeds:
        for name in args.designs:
            key = f"{name}-seed{seed}"
            if key in rows:
                continue
            row, curves = run_design(name, seed, args.out)
            rows = load()  # another process may have added rows meanwhile
            rows[key] = row
            save(rows, {key: curves})
            print(
                key,
                json.dumps({k: v for k, v in row.items() if k in ("probe", "suite", "seconds")}),
                flush=True,
            )
    if args.report or args.designs:
        REPORT.write_text(report(load()))


if __name__ == "__main__":
    main()
