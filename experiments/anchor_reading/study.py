"""Can a Stage I read its anchor at small scale? SmolLM2-135M-Instruct, WordNet **dev** only (docs: README.md here).

Each design is one Stage I run (no Stage II) with the in-training anchor probe (64 WordNet dev pairs, every 20
steps), at the demo's budget unless it says otherwise: batch 16, 32/48 tokens, lr 3e-4 with 8 warmup steps, 80
steps. After training the script adds the probe on the run's first 64 *training* pairs (memorised vs read), and
with `--overlap K` the share of K dev documents whose greedily reconstructed query shares a content word with
the true query (bireco.inspect.query_overlap). Results accumulate in <out>/results.json and results.md here; a
rerun skips what is done.

    python experiments/anchor_reading/study.py --designs d2q_raw d2q_token_norm      # --list prints DESIGNS
    python experiments/anchor_reading/study.py --overlap 100 --designs d2q_raw d2q_constant

`--stage2` then runs the demo's Stage II (LoRA, lr 1e-3, 40 steps, its dev check every 10 steps) from each design's
Stage I, and `--stage2-embedder` from --embedder itself (no Stage I between), with `--stage2-embedder-matched` for
Stage I's steps too (the compute-matched control) and `--stage2-embedder-full-ft` with every weight trained (the
capacity control): does a Stage I that reads make a better embedder after Stage II? The answer is read on the dev check (WordNet dev, 200 queries, 500 documents), in
stage2.json / stage2.md here. `--suite` then evaluates those Stage II models of one --embedder-label (and the start
itself) on the demo's built-in suite (WordNet test, out of domain; the demo's subsample), seeds side by side, in
suite.json / suite.md here: the decisive comparison, run once the recipe was chosen on dev. From the base
(`--embedder base --embedder-label base`) the controls start from the untrained model and the recipe is
d2q_frozen_x8 against d2q_frozen_shuffled_x8 (RECIPES).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bireco import final_dir, metrics_csv, quiet_console, seed_row, seed_table_head

HERE = Path(__file__).resolve().parent
STAGE1_STEPS = 80  # the demo's
DEMO_BUDGET = ["data.global_batch_size=16", "data.max_query_length=32", "data.max_doc_length=48",
               "stage.optim.lr=3e-4", "stage.optim.warmup_steps=8", f"trainer.max_steps={STAGE1_STEPS}"]  # fmt: skip
COMMON = ["model=smollm2", "stage=reconstruction", "experiment_name=anchor_reading", "trainer.log_every_n_steps=5",
          "stage.probe.every_n_steps=20", "stage.probe.pairs=64", "trainer.enable_progress_bar=false"]  # fmt: skip
D2Q, JOINT = ["stage.alpha=0.0"], ["stage.alpha=0.2", "stage.schedule=joint"]
EMBEDDER = "stage.init_from={embedder}"  # filled from --embedder
# Stage II with every weight trained, at the rate the demo trains every weight with (Stage I's), as
# experiments/seeds/seeds.py's capacity control: the frozen-decoder Stage I trains the whole encoder, LoRA never does
FULL_FT = ("stage.lora.enabled=false", next(o for o in DEMO_BUDGET if o.startswith("stage.optim.lr=")))
OPTIONS = {
    "raw": [],
    "constant": ["stage.anchor=constant"],
    # beyond the paper's shared weights: a frozen copy of the start model decodes (stage.decoder=frozen), so only the
    # encoder learns and the decoder can neither fit the language prior nor learn to discount the anchor
    "frozen": ["stage.decoder=frozen"],
    # its control: the same frozen decoder and steps, each query decoded from another pair's document anchor, so the
    # encoder is trained through the anchor as much, but a pair's own content cannot lower the loss
    "frozen_shuffled": ["stage.decoder=frozen", "stage.anchor=shuffled"],
}
# The conditioning options (anchor scales, a lead token, a learned affine map, self-targets, a detached anchor) and
# their designs were removed once they had been run: each left the anchor unread (README here); the code last lived
# at commit 439e8c2, whose study.py still runs them.
DESIGNS: dict[str, list[str]] = {
    **{f"d2q_{k}": [*DEMO_BUDGET, *D2Q, *v] for k, v in OPTIONS.items()},
    **{f"joint_{k}": [*DEMO_BUDGET, *JOINT, *v] for k, v in OPTIONS.items()},
    # four times the demo's Stage I steps (320, 5,120 pairs; warmup 32), the CPU's budget for one ~25-minute run
    **{
        f"d2q_{k}_x4": [*DEMO_BUDGET, *D2Q, *v, "trainer.max_steps=320", "stage.optim.warmup_steps=32"]
        for k, v in OPTIONS.items()
    },  # fmt: skip
    # eight times (640 steps, 10,240 pairs; warmup 64): the ~40-minute CPU Stage I of #24's target, for the options
    # whose held-out gain still grew at 4x (frozen: +0.015 at 80 steps, +0.057 at 320)
    **{
        f"d2q_{k}_x8": [*DEMO_BUDGET, *D2Q, *v, "trainer.max_steps=640", "stage.optim.warmup_steps=64"]
        for k, v in OPTIONS.items()
    },  # fmt: skip
    # pool size: P distinct training pairs at the same 80 x 16 budget (P = 1,280 is d2q_raw: every pair new)
    **{f"d2q_raw_pool{p}": [*DEMO_BUDGET, *D2Q, f"data.max_train_records={p}"] for p in (64, 512)},
    # Stage I starting from a trained embedder (--embedder PATH, e.g. the demo's Anchor Stage II): its anchors already
    # tell the dev documents apart, so these ask whether the *decoder* learns to read within the budget when the
    # encoder has something to give (the chicken-and-egg of an untrained encoder removed)
    **{
        f"d2q_{k}_from_embedder": [*DEMO_BUDGET, *D2Q, *OPTIONS[k], EMBEDDER]
        for k in ("raw", "constant", "frozen", "frozen_shuffled")
    },
    **{
        f"joint_{k}_from_embedder": [*DEMO_BUDGET, *JOINT, *OPTIONS[k], EMBEDDER] for k in ("raw", "constant")
    },
}


def wordnet_data():
    """The study's data config (data=wordnet as its runs compose it): the probe's pairs carry the same instructions."""
    from bireco import compose_train

    return compose_train(COMMON).data


def relative(path: Path) -> str:
    """`path` relative to the working directory where it lies below it (results.json holds no machine's paths).
    Symlinks are not followed: an outputs/ that links to another disk still gives outputs/... paths."""
    path = Path(os.path.abspath(path))
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def train_records(cfg, n: int) -> list[dict]:
    """The run's first `n` training records (what data.max_train_records keeps)."""
    from bireco import load_pairs

    ds = load_pairs(cfg.data, "train")
    return [ds[i] for i in range(min(n, len(ds)))]


def design_overrides(name: str, embedder: Path | None) -> list[str]:
    """DESIGNS[name] with --embedder filled in (a design that needs it fails fast without it)."""
    overrides = DESIGNS[name]
    if EMBEDDER in overrides:
        if embedder is None or not (Path(embedder) / "config.json").is_file():
            raise SystemExit(
                f"{name}: needs --embedder PATH, a checkpoint directory with config.json (got {embedder})"
            )
        overrides = [o.format(embedder=Path(embedder).resolve()) if o == EMBEDDER else o for o in overrides]
    return overrides


def run_key(name: str, seed: int, embedder_label: str | None = None) -> str:
    """results.json key and run variant: `d2q_raw-seed42`, `d2q_raw_from_embedder[demo_anchor]-seed42`."""
    return f"{name}[{embedder_label}]-seed{seed}" if EMBEDDER in DESIGNS[name] else f"{name}-seed{seed}"


def run_design(
    name: str, out: Path, seed: int, embedder: Path | None = None, embedder_label: str | None = None
) -> dict:
    import pandas as pd

    from bireco import Backbone, checkpoint_anchor_use, compose_train, reader_for_checkpoint
    from bireco import train_stage as run

    overrides = design_overrides(name, embedder)
    cfg = compose_train(
        [
            *COMMON,
            f"output_root={out}",
            f"variant={run_key(name, seed, embedder_label).replace('[', '-').replace(']', '')}",
            f"seed={seed}",
            *overrides,
        ]
    )
    t0 = time.perf_counter()
    run(cfg)
    seconds = round(time.perf_counter() - t0)
    run_dir = Path(cfg.run_dir)
    log = pd.read_csv(metrics_csv(run_dir))
    probe = log.dropna(subset=["probe/anchor_gain_d2q"])
    curve = {c.split("/")[1]: [(int(s), round(float(v), 4)) for s, v in zip(probe["step"], probe[c])]
             for c in probe.columns if c.startswith("probe/")}  # fmt: skip
    reader = reader_for_checkpoint(Backbone.load(final_dir(run_dir)), final_dir(run_dir))
    trained_on = checkpoint_anchor_use(reader, train_records(cfg, 64), batch_size=16)
    init = {"init_from": relative(embedder), "embedder": embedder_label} if EMBEDDER in DESIGNS[name] else {}
    return {"design": name, "seed": seed, "overrides": DESIGNS[name], **init, "seconds": seconds, "probe": curve,
            "train_pairs_probe": trained_on, "run_dir": relative(run_dir)}  # fmt: skip


def add_overlap(row: dict, k: int) -> None:
    from bireco import Backbone, query_overlap, reader_for_checkpoint, wordnet_dev_pairs

    final = final_dir(row["run_dir"])
    constant = "stage.anchor=constant" in row["overrides"]  # decoded from the vector it trained with
    ov = query_overlap(reader_for_checkpoint(Backbone.load(final), final, constant), wordnet_dev_pairs(k))
    row["overlap"] = {"k": k, "rate": ov["rate"], "examples": ov["examples"][:5]}


def checkpoint_stats(final: Path, data_cfg, seed: int = 42) -> dict:
    """What a Stage I left of the embedding, on WordNet dev: the probe with *real* anchors (for a constant-anchor
    run too: does its decoder read an anchor it never saw in training?), how alike the 64 probe documents' anchors
    are (mean pairwise cosine; 1 = collapsed), and dev retrieval nDCG@10 (200 queries, 500 documents, 32 / 48
    tokens: the demo's in-training dev check)."""
    import torch.nn.functional as F

    from bireco import (
        Backbone,
        anchor_of,
        checkpoint_anchor_use,
        reader_for_checkpoint,
        retrieval_scores,
        wordnet_dev_pairs,
        wordnet_retrieval_set,
    )

    backbone = Backbone.load(final).eval()
    pairs = wordnet_dev_pairs(64, seed, data_cfg)
    probe = checkpoint_anchor_use(reader_for_checkpoint(backbone, final), pairs, batch_size=16)
    with torch.no_grad():
        docs = F.normalize(
            torch.cat([anchor_of(backbone, r["positive"], max_length=48) for r in pairs]).float(), dim=-1
        )
    n = len(pairs)
    cos = float(((docs @ docs.T).sum() - n) / (n * (n - 1)))
    dev = retrieval_scores(
        backbone, wordnet_retrieval_set("dev", corpus_size=500), max_query_length=32, max_doc_length=48
    )
    return {
        "real_anchor_probe": probe,
        "doc_anchor_mean_cos": round(cos, 4),
        "dev_ndcg10": round(dev["ndcg@10"], 4),
    }


def run_stage2(
    start: Path, key: str, out: Path, seed: int, steps: int | None = None, extra: tuple[str, ...] = ()
) -> dict:
    """The demo's Stage II (`experiment=demo_smollm2 stage=contrastive`: LoRA, its lr, 40 steps or `steps`, the dev
    check every 10 steps; `extra` overrides last) from checkpoint `start` (or BASE); its dev nDCG@10 curve (WordNet dev)
    and the run's place."""
    from bireco import compose_train, logged_curve
    from bireco import train_stage as run

    base = str(start) == BASE  # the untrained model: Stage II from it is the demo's baseline
    init = BASE if base else Path(start).resolve()
    cfg = compose_train(["experiment=demo_smollm2", "stage=contrastive", f"stage.init_from={init}",
                         "experiment_name=anchor_reading_stage2", f"output_root={out}", f"variant={key}",
                         f"seed={seed}", "trainer.enable_progress_bar=false",
                         *([f"trainer.max_steps={steps}"] if steps else []), *extra])  # fmt: skip
    t0 = time.perf_counter()
    run(cfg)
    seconds = round(time.perf_counter() - t0)
    curve = [(s, round(100 * v, 2)) for s, v in logged_curve(cfg.run_dir)]
    return {
        "start": BASE if base else relative(start),
        **({"overrides": list(extra)} if extra else {}),
        "seconds": seconds,
        "dev_ndcg10": curve,
        "run_dir": relative(cfg.run_dir),
    }


def write_stage2_table(rows: dict, path: Path) -> None:
    lines = ["| Stage II from | s | dev nDCG@10 by step (WordNet dev, 200 queries / 500 documents) | last |",
             "|---|---|---|---|"]  # fmt: skip
    for key, r in rows.items():
        curve = " / ".join(f"{v:.1f}" for _, v in r["dev_ndcg10"])
        lines.append(f"| {key} | {r['seconds']} | {curve} | **{r['dev_ndcg10'][-1][1]:.1f}** |")
    path.write_text("\n".join(lines) + "\n")


BASE = "base"  # --embedder base --embedder-label base: the controls start from the untrained model (stage.init_from=base)


@dataclass(frozen=True)
class Recipe:
    """A start's own-anchor Stage I design, its shuffled-anchor control, and Stage I's steps (the compute-matched
    control's extra Stage II steps)."""

    own: str
    shuffled: str
    stage1_steps: int


# the recipe each start (--embedder-label) is compared for: from a trained embedder, the frozen-decoder Stage I at the
# demo's budget; from the base, at 8x the steps (d2q_frozen_x8 is the design that reads from the base)
RECIPES = {BASE: Recipe("d2q_frozen_x8", "d2q_frozen_shuffled_x8", 640)}
EMBEDDER_RECIPE = Recipe("d2q_frozen_from_embedder", "d2q_frozen_shuffled_from_embedder", STAGE1_STEPS)


def recipe(label: str) -> Recipe:
    return RECIPES.get(label, EMBEDDER_RECIPE)


SUITE_ROWS = {  # role -> the suite table's row ("own" / "shuffled": the start's recipe)
    "start": "the start (no further training)",
    "embedder": "Stage II from the start, no Stage I (from the base: the baseline)",
    "embedder_matched": "Stage II from the start, compute-matched (Stage I's steps + 40, no Stage I)",
    "embedder_full_ft": "Stage II from the start, full fine-tuning (40 steps, no Stage I)",
    "own": "Stage I, frozen decoder + Stage II",
    "shuffled": "shuffled-anchor control + Stage II",
}
SUITE_SCORES = {"Average": ("categories", "Average"), "WordNet avg": ("groups", "WordNet avg"),
                "Out-of-domain avg": ("groups", "Out-of-domain avg")}  # fmt: skip
SUITE_DELTAS = {  # the own-anchor recipe against each control that has run, per seed
    "shuffled": "own anchor − shuffled control",
    "embedder": "own anchor − Stage II without Stage I",
    "embedder_matched": "own anchor − compute-matched",
    "embedder_full_ft": "own anchor − full fine-tuning",
}


def suite_key(stage2_key: str, label: str) -> str | None:
    """The suite.json key of a stage2.json row when it belongs to start `label`, else None: rows from an embedder
    carry the label (`d2q_frozen_from_embedder[demo_baseline]-seed1`); the base recipe's designs do not
    (`d2q_frozen_x8-seed1` -> `d2q_frozen_x8[base]-seed1`)."""
    if f"[{label}]-seed" in stage2_key:
        return stage2_key
    m = re.fullmatch(r"(\w+)-seed(\d+)", stage2_key)
    r = RECIPES.get(label)
    if m and r and m.group(1) in (r.own, r.shuffled):
        return f"{m.group(1)}[{label}]-seed{m.group(2)}"
    return None


def run_suite(stage2: dict, label: str, store: Path) -> dict:
    """Every Stage II model of stage2.json started from `label` (suite_key), and the start itself where it is a
    checkpoint, on the demo's built-in suite and subsample (bireco.EVAL_TASKS, bireco.EVAL_SUBSAMPLE); kept in
    `store` (a rerun skips what is there). Paths in stage2.json are relative to the working directory."""
    from bireco import EVAL_SUBSAMPLE, EVAL_TASKS, evaluate_checkpoint

    queries, docs = EVAL_SUBSAMPLE["smollm2"]
    suite = json.loads(store.read_text()) if store.is_file() else {}
    todo = {k: final_dir(r["run_dir"]) for key, r in stage2.items() if (k := suite_key(key, label))}
    # the untrained base is no bireco checkpoint: the demo's `untrained` row is its score
    starts = {
        r["start"] for key, r in stage2.items() if key.startswith(f"embedder[{label}]") and r["start"] != BASE
    }
    todo.update({f"start[{label}]": Path(s) for s in starts})
    for key, ckpt in todo.items():
        if key in suite:
            continue
        summary = evaluate_checkpoint(str(ckpt), tasks=EVAL_TASKS, output_dir=str(Path(ckpt).parent / "eval-suite"),
                                      max_queries=queries, max_docs=docs, progress=False,
                                      wandb=False)  # fmt: skip
        suite[key] = {"checkpoint": relative(ckpt), "scores": {name: summary[a][b] for name, (a, b) in SUITE_SCORES.items()},
                      "tasks": {t: v["main_score"] for t, v in summary["tasks"].items()}}  # fmt: skip
        store.write_text(json.dumps(suite, indent=1))
        print(key, json.dumps(suite[key]["scores"]), flush=True)
    return suite


def write_suite_table(suite: dict, path: Path) -> None:
    """A section per start in suite.json; per score one row per run, a column per seed, mean ± sd; then the
    start's own-anchor recipe − each control by seed."""
    from bireco import EVAL_SUBSAMPLE

    queries, docs = EVAL_SUBSAMPLE["smollm2"]
    parts = [f"nDCG@10 × 100 on the built-in suite (bireco.EVAL_TASKS: the two WordNet test tasks, "
             f"DebianPackagesRetrieval, PythonAPIRetrieval; {queries} queries, {docs} documents "
             f"per task, the demo's subsample). The same start for every seed of a section; the seed drives Stage I "
             f"and Stage II.\n"]  # fmt: skip
    labels = list(dict.fromkeys(m.group(1) for key in suite if (m := re.search(r"\[(\w+)\]", key))))
    for label in labels:
        r = recipe(label)
        roles = {r.own: "own", r.shuffled: "shuffled"}
        cells: dict[str, dict[int, dict]] = {}
        for key, row in suite.items():
            m = re.fullmatch(rf"(\w+)\[{re.escape(label)}\](?:-seed(\d+))?", key)
            if m:
                cells.setdefault(roles.get(m.group(1), m.group(1)), {})[int(m.group(2) or 0)] = row["scores"]
        seeds = sorted({s for per_seed in cells.values() for s in per_seed if s})
        parts.append(f"\n## Start: {label} (recipe {r.own}, control {r.shuffled})\n")
        for score in SUITE_SCORES:
            lines = [f"\n{score}:\n", *seed_table_head(seeds)]
            for role, name in SUITE_ROWS.items():
                per_seed = cells.get(role, {})
                if 0 in per_seed:  # the start: one model, the same for every seed
                    lines.append(seed_row(name, {s: per_seed[0][score] for s in seeds}, seeds, spread=False))
                elif per_seed:
                    lines.append(seed_row(name, {s: v[score] for s, v in per_seed.items()}, seeds))
            own = cells.get("own", {})
            for control, name in SUITE_DELTAS.items():
                other = cells.get(control, {})
                delta = {s: own[s][score] - other[s][score] for s in seeds if s in own and s in other}
                if delta:
                    lines.append(seed_row(f"**{name}**", delta, seeds, fmt="{:+.2f}"))
            parts.append("\n".join(lines) + "\n")
    path.write_text("".join(parts))


CURVES = (
    HERE / "results_curves.csv"
)  # every row's probe curves (run, metric, step, value); the rest in results.json


def load_results(store: Path) -> dict:
    """results.json with each row's probe curves put back from results_curves.csv."""
    import csv

    results = json.loads(store.read_text()) if store.is_file() else {}
    if CURVES.is_file():
        with CURVES.open(newline="") as f:
            for r in csv.DictReader(f):
                curve = results[r["run"]].setdefault("probe", {}).setdefault(r["metric"], [])
                curve.append([int(r["step"]), float(r["value"])])
    return results


def save_results(results: dict, store: Path) -> None:
    """The rows to results.json, their probe curves to results_curves.csv (a row per point: compact and diffable)."""
    import csv

    store.write_text(json.dumps({k: {kk: v for kk, v in r.items() if kk != "probe"} for k, r in results.items()},
                                indent=1) + "\n")  # fmt: skip
    with CURVES.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "metric", "step", "value"])
        for key, r in results.items():
            for metric, points in sorted(r.get("probe", {}).items()):
                w.writerows([key, metric, step, value] for step, value in points)


def write_table(results: dict, path: Path) -> None:
    lines = ["| design | s | held-out gain d2q / q2d (first -> last probe) | held-out CE d2q / acc | "
             "gain d2q on 64 training pairs | query shares a content word | after training, real anchors: held-out "
             "gain d2q / q2d, doc-anchor cosine, dev nDCG@10 |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in results.values():
        p = r["probe"]

        def first_last(key, p=p):
            return f"{p[key][0][1]:+.3f} -> {p[key][-1][1]:+.3f}" if p.get(key) else "—"

        ov = r.get("overlap")
        shares = f"{ov['rate']:.2f} of {ov['k']}" if ov else "—"
        # a constant-anchor model from the base never saw a real anchor: swapping real anchors measures nothing it
        # learned (from a trained embedder it measures what it kept)
        constant = "stage.anchor=constant" in r["overrides"] and not r.get("embedder")
        gain_train = "— (constant)" if constant else f"{r['train_pairs_probe']['anchor_gain_d2q']:+.3f}"
        st = r.get("stats")
        after = "—"
        if st:
            g = st["real_anchor_probe"]
            after = (f"{g['anchor_gain_d2q']:+.3f} / {g['anchor_gain_q2d']:+.3f}, {st['doc_anchor_mean_cos']:.3f}, "
                     f"{100 * st['dev_ndcg10']:.1f}")  # fmt: skip
        lines.append(
            f"| {r['design']}{' [' + r['embedder'] + ']' if r.get('embedder') else ''} | {r['seconds']} | {first_last('anchor_gain_d2q')} / {first_last('anchor_gain_q2d')} | "
            f"{p['ce_d2q'][-1][1]:.3f} / {p['acc_d2q'][-1][1]:.3f} | {gain_train} | {shares} | {after} |"
        )
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--designs", nargs="*", default=["d2q_raw"])
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", type=Path, default=Path("outputs/anchor_reading"))
    ap.add_argument(
        "--overlap", type=int, default=0, help="K dev documents: reconstructed-query word overlap"
    )
    ap.add_argument(
        "--embedder",
        type=Path,
        help="checkpoint the *_from_embedder designs start Stage I from; `base` (with --embedder-label base): the "
        "--stage2-embedder* controls start from the untrained model, for the base recipe (RECIPES)",
    )
    ap.add_argument("--embedder-label", help="a short name for --embedder, e.g. demo_anchor (keys the rows)")
    ap.add_argument("--stats", action="store_true", help="add checkpoint_stats to each --designs row")
    ap.add_argument(
        "--checkpoint-stats",
        nargs="*",
        default=[],
        metavar="LABEL=PATH",
        help="checkpoint_stats of other checkpoints (the embedder, the base) -> checkpoint_stats.json",
    )
    ap.add_argument(
        "--stage2", action="store_true", help="the demo's Stage II after each --designs row's Stage I"
    )
    ap.add_argument(
        "--stage2-embedder", action="store_true", help="the demo's Stage II from --embedder (no Stage I)"
    )
    ap.add_argument(
        "--suite",
        action="store_true",
        help="the built-in suite for every Stage II model from --embedder-label and for the start (suite.md)",
    )
    ap.add_argument(
        "--stage2-embedder-matched",
        action="store_true",
        help="the compute-matched control: Stage II from --embedder for Stage I's steps too (80 + 40)",
    )
    ap.add_argument(
        "--stage2-embedder-full-ft",
        action="store_true",
        help="the capacity control: Stage II from --embedder with every weight trained (Stage I's lr, 40 steps)",
    )
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()
    quiet_console()  # as `bireco-train`: the frozen decoder's eval-mode copy and library tips are not news
    if args.list:
        for k, v in DESIGNS.items():
            print(k, " ".join(v))
        return
    if (str(args.embedder) == BASE) != (args.embedder_label == BASE) and args.embedder:
        raise SystemExit(f"--embedder {BASE} goes with --embedder-label {BASE} (and only with it)")
    store = HERE / "results.json"
    results = load_results(store)
    other = HERE / "checkpoint_stats.json"
    for item in args.checkpoint_stats:
        label, path = item.split("=", 1)
        stats = json.loads(other.read_text()) if other.is_file() else {}
        stats[label] = {
            "path": relative(Path(path)),
            **checkpoint_stats(Path(path), wordnet_data(), args.seed),
        }
        other.write_text(json.dumps(stats, indent=1))
        print(label, json.dumps(stats[label]), flush=True)
    stage2_store = HERE / "stage2.json"
    stage2 = json.loads(stage2_store.read_text()) if stage2_store.is_file() else {}

    def add_stage2(key: str, start: Path, steps: int | None = None, extra: tuple[str, ...] = ()) -> None:
        if key not in stage2:
            variant = key.replace("[", "-").replace("]", "")
            stage2[key] = run_stage2(start, variant, args.out, args.seed, steps, extra)
            stage2_store.write_text(json.dumps(stage2, indent=1))
            write_stage2_table(stage2, HERE / "stage2.md")
        print(key, json.dumps(stage2[key]), flush=True)

    from bireco import compose_train

    from_embedder = {  # Stage II from --embedder itself (no Stage I between): the controls, by stage2.json prefix
        "embedder": (args.stage2_embedder, {}),
        "embedder_matched": (
            args.stage2_embedder_matched,
            {
                "steps": compose_train(["experiment=demo_smollm2", "stage=contrastive"]).trainer.max_steps
                + recipe(args.embedder_label or "").stage1_steps
            },
        ),
        "embedder_full_ft": (args.stage2_embedder_full_ft, {"extra": FULL_FT}),
    }
    for prefix, (wanted, how) in from_embedder.items():
        if not wanted:
            continue
        if not (args.embedder and args.embedder_label):
            flag = "--stage2-" + prefix.replace("_", "-")
            raise SystemExit(f"{flag}: give --embedder PATH and --embedder-label NAME")
        add_stage2(f"{prefix}[{args.embedder_label}]-seed{args.seed}", args.embedder, **how)
    for name in args.designs:
        if EMBEDDER in DESIGNS[name] and not args.embedder_label:
            raise SystemExit(
                f"{name}: give --embedder-label NAME (what --embedder is; it keys the results row)"
            )
        key = run_key(name, args.seed, args.embedder_label)
        if key not in results:
            results[key] = {
                **run_design(name, args.out, args.seed, args.embedder, args.embedder_label),
                "machine": f"{platform.processor() or platform.machine()}",
            }
        if args.overlap and results[key].get("overlap", {}).get("k") != args.overlap:
            add_overlap(results[key], args.overlap)
        if args.stats and "stats" not in results[key]:
            results[key]["stats"] = checkpoint_stats(
                final_dir(results[key]["run_dir"]), wordnet_data(), args.seed
            )
        save_results(results, store)
        write_table(results, HERE / "results.md")
        print(
            json.dumps({k: v for k, v in results[key].items() if k != "probe"}, indent=1)[:2000], flush=True
        )
        if args.stage2:
            add_stage2(key, final_dir(results[key]["run_dir"]))
    if args.suite:
        if not args.embedder_label:
            raise SystemExit("--suite: give --embedder-label NAME (whose Stage II models to evaluate)")
        suite = run_suite(stage2, args.embedder_label, HERE / "suite.json")
        write_suite_table(suite, HERE / "suite.md")


if __name__ == "__main__":
    main()
