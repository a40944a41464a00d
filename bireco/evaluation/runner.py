"""Run mteb on a bireco checkpoint or a reference model: the tasks resolved and loaded first (fail fast), one task
at a time with each result written as it finishes (a rerun reuses what it wrote), then summary.json and results.md
with the paper's categories, and the scores added to the wandb run that trained the checkpoint."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from bireco.core.files import atomic_write_text
from bireco.core.runs import eval_dir, run_config, run_of, wandb_id_file, wandb_mode

log = logging.getLogger("bireco")
CATEGORIES = (
    "Retrieval",
    "Reranking",
    "Clustering",
    "PairClassification",
    "Classification",
    "STS",
    "Summarization",
)


class TaskUnavailable(RuntimeError):
    """A named MTEB task whose data cannot be loaded (e.g. offline)."""


def expand_suite(names: list[str] | None) -> list[str]:
    """`builtin` stands for every built-in task (WordNet test and the out-of-domain sets), in a fixed order."""
    from bireco.evaluation.tasks import BUILTIN_SUITE, BUILTIN_TASKS

    out: list[str] = []
    for name in names or []:
        for n in BUILTIN_TASKS if name == BUILTIN_SUITE else [name]:
            if n not in out:
                out.append(n)
    return out


def resolve_tasks(names: list[str] | None, benchmark: str | None, max_queries: int | None = None,
                  max_docs: int | None = None) -> list:  # fmt: skip
    """mteb task objects with their data loaded (fails fast, naming the task). Built-in tasks use the fixed
    subsample BUILTIN_QUERIES / BUILTIN_DOCS unless max_queries / max_docs say otherwise; BEIR directories are
    read in full unless they say so."""
    import mteb

    from bireco.evaluation.tasks import BUILTIN_DOCS, BUILTIN_QUERIES, BUILTIN_TASKS, beir_dir_task

    tasks = []
    for name in expand_suite(names):
        if name.startswith("beir:"):
            tasks.append(beir_dir_task(name[len("beir:") :], max_queries, max_docs))
        elif name in BUILTIN_TASKS:
            task = BUILTIN_TASKS[name]()
            task.max_queries = max_queries or BUILTIN_QUERIES
            task.max_docs = max_docs or BUILTIN_DOCS
            tasks.append(task)
        else:
            tasks.extend(mteb.get_tasks(tasks=[name]))
    if benchmark:
        tasks.extend(mteb.get_benchmark(benchmark).tasks)
    if not tasks:
        raise ValueError("nothing to evaluate: set tasks=[...] or benchmark=...")
    for task in tasks:
        try:
            task.load_data()
        except Exception as err:  # offline hub, missing dataset: fail fast and say which task
            offline = os.environ.get("HF_HUB_OFFLINE") == "1"
            raise TaskUnavailable(
                f"task {task.metadata.name}: its data could not be loaded"
                + (" (HF_HUB_OFFLINE=1: only the built-in tasks run offline)" if offline else "")
                + f": {type(err).__name__}: {str(err)[:300]}"
            ) from None
    return tasks


def summarise(results, task_types: dict[str, str]) -> dict[str, Any]:
    """Main score per task (x100, as the paper reports) and the paper's category averages."""
    per_task = {
        r.task_name: {"type": task_types[r.task_name], "main_score": 100 * r.get_score()} for r in results
    }
    cats = {}
    for cat in CATEGORIES:
        scores = [v["main_score"] for v in per_task.values() if v["type"] == cat]
        if scores:
            cats[cat] = sum(scores) / len(scores)
    allscores = [v["main_score"] for v in per_task.values()]
    cats["Average"] = sum(allscores) / len(allscores)
    from bireco.evaluation.tasks import TASK_GROUPS

    groups = {
        g: sum(per_task[t]["main_score"] for t in members) / len(members)
        for g, members in TASK_GROUPS.items()
        if all(t in per_task for t in members)
    }
    return {"tasks": per_task, "categories": cats, "groups": groups}


def markdown_table(summaries: dict[str, dict]) -> str:
    """Rows = runs, columns = the paper's categories present in any run, Average, the built-in suite's halves
    (WordNet / out-of-domain averages), then each task."""
    present = [c for c in (*CATEGORIES, "Average") if any(c in s["categories"] for s in summaries.values())]
    groups = list(dict.fromkeys(g for s in summaries.values() for g in s.get("groups", {})))
    tasks = sorted({t for s in summaries.values() for t in s["tasks"]})
    cols = present + groups + [t for t in tasks if len(tasks) > 1]
    lines = ["| run | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for run, s in summaries.items():
        scores = {
            **{t: v["main_score"] for t, v in s["tasks"].items()},
            **s.get("groups", {}),
            **s["categories"],
        }
        vals = [scores.get(c) for c in cols]
        lines.append(f"| {run} | " + " | ".join("—" if v is None else f"{v:.2f}" for v in vals) + " |")
    return "\n".join(lines) + "\n"


def evaluate_checkpoint(checkpoint: str, *, tasks: list[str] | None = None, benchmark: str | None = None,
                        output_dir: str | None = None, batch_size: int | None = None, max_length: int = 512,
                        max_queries: int | None = None, progress: bool = True, max_docs: int | None = None,
                        wandb: bool = True, dtype: str = "auto") -> dict:  # fmt: skip
    """`dtype`: the weights' dtype while encoding (bireco.model.loading.resolve_dtype); `bfloat16` runs every op in
    bf16, as a bf16 sentence-transformers export does (what a published bf16 model computes); scores move by bf16
    rounding. Not faster than the CPU default (experiments/bench/encode_vs_st.py)."""
    import torch

    from bireco.evaluation.mteb_encoder import make_mteb_encoder
    from bireco.model.backbone import Backbone
    from bireco.model.loading import resolve_dtype

    resolve_dtype(dtype, "dtype")  # a typo fails before the tasks load
    task_objs = resolve_tasks(tasks, benchmark, max_queries, max_docs)  # before loading any weights
    backbone = Backbone.load(checkpoint, dtype=dtype)
    if torch.cuda.is_available():
        backbone.to("cuda")
    encoder = make_mteb_encoder(
        backbone, checkpoint, max_length=max_length, batch_size=batch_size, progress=progress, dtype=dtype
    )
    out = Path(output_dir or eval_dir(run_of(checkpoint)))
    summary = evaluate_model(encoder, encoder.mteb_model_meta.name, task_objs, out, batch_size=batch_size,
                             progress=progress)  # fmt: skip
    summary["checkpoint"] = str(checkpoint)
    write_summary(out, run_of(checkpoint).name, summary)
    if wandb:
        log_to_training_run(Path(checkpoint), summary, out)
    return summary


def evaluate_reference(reference: str, *, tasks: list[str] | None = None, benchmark: str | None = None,
                       output_dir: str | None = None, batch_size: int | None = None, max_queries: int | None = None,
                       progress: bool = True, max_docs: int | None = None) -> dict:  # fmt: skip
    """A reference row (bireco.evaluation.references: bm25, minilm, st:PATH) on the same tasks and subsample as a checkpoint."""
    from bireco.evaluation.references import load_reference

    task_objs = resolve_tasks(tasks, benchmark, max_queries, max_docs)
    model, key, label = load_reference(reference)
    out = Path(output_dir or Path("outputs") / "references" / label / "eval")
    summary = evaluate_model(model, key, task_objs, out, batch_size=batch_size, progress=progress)
    summary["reference"] = reference
    write_summary(out, label, summary)
    return summary


def evaluate_model(model, model_key: str, task_objs: list, out: Path, *, batch_size: int | None = None,
                   progress: bool = True) -> dict:  # fmt: skip
    """Run mteb task by task, writing <out>/mteb/<task>.json as each finishes; a task whose file was written for
    the same model, the same queries and documents and the same scoring libraries (score_versions) is read back
    instead of run again."""
    import mteb
    from mteb.results import TaskResult

    (out / "mteb").mkdir(parents=True, exist_ok=True)
    if not progress:
        import datasets

        datasets.disable_progress_bars()
    results = []
    for i, task in enumerate(task_objs, 1):
        log.info("task %d/%d: %s", i, len(task_objs), task.metadata.name)
        path = out / "mteb" / f"{task.metadata.name}.json"
        key = {"model": model_key, "data": task_fingerprint(task), "versions": score_versions()}
        if path.is_file():
            try:
                saved = json.loads(path.read_text())
            except ValueError:  # cut off or not ours: evaluate again and overwrite it
                saved = {}
            if saved.get("bireco_key") == key:
                log.info("%s: reusing %s", task.metadata.name, path)
                results.append(TaskResult.from_dict({k: v for k, v in saved.items() if k != "bireco_key"}))
                continue
        (result,) = mteb.evaluate(
            model,
            [task],
            cache=None,
            show_progress_bar=False,  # one task per call: mteb's task bar would print "0/1" per task
            encode_kwargs={"batch_size": batch_size or 64, "show_progress_bar": progress},
        )
        atomic_write_text(path, json.dumps({**result.to_dict(), "bireco_key": key}, indent=2, default=str))
        results.append(result)
    return summarise(results, {t.metadata.name: t.metadata.type for t in task_objs})


def score_versions() -> dict[str, str]:
    """The installed versions of the libraries that compute a score (mteb's metrics, the models' numerics, BM25): a
    saved result from other versions is evaluated again, not reused."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("mteb", "torch", "transformers", "sentence-transformers", "bm25s"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            continue
    return versions


def task_fingerprint(task) -> str:
    """What was evaluated: the task's revision and, for local tasks, a hash of the queries / documents kept."""
    import hashlib

    h = hashlib.sha256(json.dumps(task.metadata.dataset, sort_keys=True, default=str).encode())
    for split in (getattr(task, "dataset", None) or {}).get("default", {}).values():
        for part in ("queries", "corpus"):
            h.update(" ".join(map(str, split[part]["id"])).encode())
    return h.hexdigest()[:16]


def write_summary(out: Path, label: str, summary: dict) -> None:
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    atomic_write_text(out / "results.md", markdown_table({label: summary}))
    log.info(
        "results: %s (table), %s (scores), %s (per task)",
        out / "results.md",
        out / "summary.json",
        out / "mteb",
    )


def log_to_training_run(checkpoint: Path, summary: dict, local_dir: Path | None = None) -> bool:
    """Add the scores to the wandb run that trained `checkpoint` (same run id, resumed), as eval/<task> and
    eval/<category> summary metrics, so a sweep's wandb table shows them next to the losses. Only for runs that
    logged to wandb (their run directory holds wandb_run_id); returns whether it logged. wandb's local files go to
    `local_dir` (the evaluation's output directory): beside the training run's own, two offline runs started in
    the same second would share one directory name."""
    run_dir = run_of(checkpoint)
    id_file, cfg = wandb_id_file(run_dir), run_config(run_dir)
    if not id_file.is_file() or cfg is None:
        return False
    import wandb

    run = wandb.init(project=cfg.logger.project, id=id_file.read_text().strip(), resume="allow", dir=str(local_dir or run_dir),
                     mode=wandb_mode(cfg.logger.mode), group=cfg.experiment_name, job_type=cfg.stage.run_name,
                     name=f"{cfg.experiment_name}/{cfg.variant}/{cfg.stage.run_name}")  # fmt: skip
    scores = {f"eval/{t}": v["main_score"] for t, v in summary["tasks"].items()}
    scores.update({f"eval/{c}": v for c, v in summary["categories"].items()})
    for key in scores:
        run.define_metric(key, summary="last")
    run.log(scores)
    run.summary.update(scores)
    run.finish()
    return True
