"""Train one stage: `python -m bireco.train [overrides]` (Hydra; see conf/train.yaml).

    python -m bireco.train stage=reconstruction trainer.max_steps=30      # Stage I, tiny CPU default
    python -m bireco.train stage=contrastive trainer.max_steps=30         # Stage II from that Stage I
    python -m bireco.train stage=baseline trainer.max_steps=30            # Stage II from the base model
    python -m bireco.train model=llama3 size=1b trainer=gpu               # a real model on one GPU

Writes <run_dir>/config.yaml (resolved), logs/metrics.csv, checkpoints/ (if enabled) and final/ (Hugging Face
format, loadable by the next stage, evaluation and export). The job itself is bireco.training.run.run.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from bireco.config.cli import check_overrides, exit_on_user_error, quiet_console
from bireco.config.schema import register_configs
from bireco.core.paths import CONF_DIR


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    from bireco.training.run import run
    from bireco.training.sweep import assign_job_variant

    assign_job_variant(cfg)  # multirun: one run directory per job
    return exit_on_user_error(run)(cfg).get("train/loss")  # a bad input: the one line that names the fix


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[bireco] %(message)s")
    quiet_console()
    register_configs()
    check_overrides("train", sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    main()
