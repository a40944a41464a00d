"""Evaluate a checkpoint with mteb: `python -m bireco.evaluate checkpoint=outputs/default/default/stage2/final`.

    python -m bireco.evaluate checkpoint=PATH                                  # the built-in offline suite (builtin)
    python -m bireco.evaluate checkpoint=PATH 'tasks=[STS12,SciFact]'           # named MTEB tasks (needs the hub)
    python -m bireco.evaluate checkpoint=PATH benchmark='MTEB(eng, v1)'         # a whole benchmark
    python -m bireco.evaluate checkpoint=PATH 'tasks=[beir:/data/my-set]'      # your own set (bireco/data/beir.py)
    python -m bireco.evaluate reference=bm25                                    # reference rows on the same tasks:
    python -m bireco.evaluate reference=minilm                                  #   BM25, all-MiniLM-L6-v2 (offline
    python -m bireco.evaluate reference=st:PATH                                 #   wheel), any sentence-transformers model

Writes <output_dir>/mteb/<task>.json (raw mteb results) as each task finishes, then summary.json and results.md (the
paper's categories and the average). A rerun with the same model and subsample skips the tasks already written.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from bireco.config.cli import check_overrides, exit_on_user_error
from bireco.core.errors import ConfigError
from bireco.core.paths import CONF_DIR
from bireco.core.runs import run_of


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
@exit_on_user_error
def _hydra_main(cfg: DictConfig) -> float:
    from bireco.evaluation.runner import evaluate_checkpoint, evaluate_reference, markdown_table

    if (cfg.checkpoint is None) == (cfg.reference is None):
        raise ConfigError(
            "set exactly one of checkpoint=PATH (a bireco model) or reference=bm25|minilm|st:PATH"
        )
    tasks = list(cfg.tasks or [])
    progress = cfg.progress and sys.stderr.isatty()  # bars in a log file are hundreds of lines
    common = dict(tasks=tasks, benchmark=cfg.benchmark, output_dir=cfg.output_dir, batch_size=cfg.batch_size,
                  max_queries=cfg.max_queries, max_docs=cfg.max_docs, progress=progress)  # fmt: skip
    if cfg.reference is not None:
        summary, label = evaluate_reference(cfg.reference, **common), cfg.reference
    else:
        summary = evaluate_checkpoint(cfg.checkpoint, max_length=cfg.max_length, wandb=cfg.wandb, dtype=cfg.dtype,
                                      **common)  # fmt: skip
        label = run_of(cfg.checkpoint).name
    print(markdown_table({label: summary}))
    return summary["categories"]["Average"]


def main() -> None:
    # bireco's own progress (task i/n, where the results went); mteb's and transformers' INFO chatter stays out
    logging.basicConfig(level=logging.WARNING, format="[bireco] %(message)s")
    logging.getLogger("bireco").setLevel(logging.INFO)
    check_overrides("eval", sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    main()
