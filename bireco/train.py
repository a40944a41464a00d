"""Train one stage: `python -m bireco.train [overrides]` (Hydra; see conf/train.yaml).

    python -m bireco.train stage=reconstruction trainer.max_steps=30      # Stage I, tiny CPU default
    python -m bireco.train stage=contrastive trainer.max_steps=30         # Stage II from that Stage I
    python -m bireco.train stage=baseline trainer.max_steps=30            # Stage II from the base model
    python -m bireco.train model=llama3 size=1b trainer=gpu               # a real model on one GPU

Writes <run_dir>/config.yaml (resolved), logs/metrics.csv, checkpoints/ (if enabled) and final/ (Hugging Face
format, loadable by the next stage, evaluation and export).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from bireco.cli import CONF_DIR, check_overrides
from bireco.config import register_configs, validate

log = logging.getLogger("bireco")


def resume_path(cfg: DictConfig, run_dir: Path) -> str | None:
    if cfg.resume == "never":
        return None
    if cfg.resume == "auto":
        last = run_dir / "checkpoints" / "last.ckpt"
        return str(last) if last.is_file() else None
    if not Path(cfg.resume).is_file():
        raise FileNotFoundError(f"resume={cfg.resume!r}: no such checkpoint file (valid: never, auto, a .ckpt path)")
    return cfg.resume


def run(cfg: DictConfig) -> dict:
    """Validate, build, fit, save. Returns the final logged metrics."""
    from bireco.builders import build_backbone, build_datamodule, build_module, build_trainer
    from bireco.callbacks import build_callbacks

    validate(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    backbone = build_backbone(cfg)
    datamodule = build_datamodule(cfg, backbone)
    datamodule.load()  # every input error surfaces here, before anything is written
    module = build_module(cfg, backbone)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    trainer = build_trainer(cfg, run_dir, build_callbacks(cfg, run_dir))
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_path(cfg, run_dir))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    for logger in trainer.loggers:  # close wandb runs: a later run in this process must not reuse this one
        if type(logger).__name__ == "WandbLogger" and trainer.is_global_zero:
            logger.experiment.finish()
    if trainer.is_global_zero:
        backbone.save(run_dir / "final", cfg.save_mode)
        (run_dir / "final" / "train_summary.json").write_text(json.dumps({"steps": trainer.global_step, **metrics}, indent=2))
        log.info("saved %s", run_dir / "final")
    return metrics


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    metrics = run(cfg)
    return metrics.get("train/loss")


def quiet_console() -> None:
    """A clean console: our own progress and results, not library tips and known deprecation chatter."""
    import warnings

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[bireco] %(message)s")
    quiet_console()
    register_configs()
    check_overrides("train", sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    main()
