"""Evaluate a checkpoint with mteb: `python -m bireco.evaluate checkpoint=outputs/default/default/stage2/final`.

    python -m bireco.evaluate checkpoint=PATH                                  # built-in offline WordNet tasks
    python -m bireco.evaluate checkpoint=PATH 'tasks=[STS12,SciFact]'           # named MTEB tasks (needs the hub)
    python -m bireco.evaluate checkpoint=PATH benchmark='MTEB(eng, v1)'         # a whole benchmark
    python -m bireco.evaluate checkpoint=PATH 'tasks=[beir:/data/my-set]'      # your own set (bireco/data/beir.py)

Writes <output_dir>/mteb/<task>.json (raw mteb results), summary.json and results.md (the paper's categories).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from bireco.cli import CONF_DIR, check_overrides, user_error

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


def resolve_tasks(names: list[str] | None, benchmark: str | None, max_queries: int | None = None,
                  max_docs: int | None = None) -> list:  # fmt: skip
    import mteb

    from bireco.mteb_tasks import BUILTIN_TASKS, beir_dir_task

    tasks = []
    for name in names or []:
        if name.startswith("beir:"):
            tasks.append(beir_dir_task(name[len("beir:") :], max_queries, max_docs))
        elif name in BUILTIN_TASKS:
            task = BUILTIN_TASKS[name]()
            task.max_queries, task.max_docs = max_queries, max_docs
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
    return {"tasks": per_task, "categories": cats}


def markdown_table(summaries: dict[str, dict]) -> str:
    """Rows = runs, columns = the paper's categories present in any run, then Average."""
    present = [c for c in (*CATEGORIES, "Average") if any(c in s["categories"] for s in summaries.values())]
    tasks = sorted({t for s in summaries.values() for t in s["tasks"]})
    cols = present + [t for t in tasks if len(tasks) > 1]
    lines = ["| run | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for run, s in summaries.items():
        vals = [s["categories"].get(c, s["tasks"].get(c, {}).get("main_score")) for c in cols]
        lines.append(f"| {run} | " + " | ".join("—" if v is None else f"{v:.2f}" for v in vals) + " |")
    return "\n".join(lines) + "\n"


def evaluate_checkpoint(checkpoint: str, tasks: list[str] | None = None, benchmark: str | None = None,
                        output_dir: str | None = None, batch_size: int = 64, max_length: int = 512,
                        max_queries: int | None = None, progress: bool = True, max_docs: int | None = None,
                        wandb: bool = True) -> dict:  # fmt: skip
    import mteb
    import torch

    from bireco.backbone import Backbone
    from bireco.encoder import make_mteb_encoder

    task_objs = resolve_tasks(tasks, benchmark, max_queries, max_docs)  # before loading any weights
    backbone = Backbone.load(checkpoint)
    if torch.cuda.is_available():
        backbone.to("cuda")
    encoder = make_mteb_encoder(
        backbone, checkpoint, max_length=max_length, batch_size=batch_size, progress=progress
    )
    results = mteb.evaluate(
        encoder, task_objs, cache=None, show_progress_bar=progress, encode_kwargs={"batch_size": batch_size}
    )
    out = Path(output_dir or Path(checkpoint).parent / "eval")
    (out / "mteb").mkdir(parents=True, exist_ok=True)
    for r in results:
        (out / "mteb" / f"{r.task_name}.json").write_text(json.dumps(r.to_dict(), indent=2, default=str))
    summary = summarise(results, {t.metadata.name: t.metadata.type for t in task_objs})
    summary["checkpoint"] = str(checkpoint)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "results.md").write_text(markdown_table({Path(checkpoint).parent.name: summary}))
    if wandb:
        log_to_training_run(Path(checkpoint), summary)
    return summary


def log_to_training_run(checkpoint: Path, summary: dict) -> bool:
    """Add the scores to the wandb run that trained `checkpoint` (same run id, resumed), as eval/<task> and
    eval/<category> summary metrics, so a sweep's wandb table shows them next to the losses. Only for runs that
    logged to wandb (their run directory holds wandb_run_id); returns whether it logged."""
    from omegaconf import OmegaConf

    from bireco.builders import wandb_mode

    run_dir = checkpoint.parent
    id_file, cfg_file = run_dir / "wandb_run_id", run_dir / "config.yaml"
    if not (id_file.is_file() and cfg_file.is_file()):
        return False
    import wandb

    cfg = OmegaConf.load(cfg_file)
    run = wandb.init(project=cfg.logger.project, id=id_file.read_text().strip(), resume="allow", dir=str(run_dir),
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


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
def _hydra_main(cfg: DictConfig) -> float:
    try:
        summary = evaluate_checkpoint(
            cfg.checkpoint, list(cfg.tasks or []), cfg.benchmark, cfg.output_dir, cfg.batch_size, cfg.max_length,
            cfg.max_queries, cfg.progress, cfg.max_docs, cfg.wandb,
        )  # fmt: skip
    except Exception as err:
        if user_error(err) is None:
            raise
        sys.exit(f"Error: {user_error(err)}")
    print(markdown_table({Path(cfg.checkpoint).parent.name: summary}))
    return summary["categories"]["Average"]


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[bireco] %(message)s")
    check_overrides("eval", sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    main()
