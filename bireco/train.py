"""Train one stage: `python -m bireco.train [overrides]` (Hydra; see bireco/conf/train.yaml).

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
import time
import warnings
from pathlib import Path

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from bireco.cli import CONF_DIR, check_overrides, exit_on_user_error
from bireco.config import ConfigError, register_configs, validate

log = logging.getLogger("bireco")


def resume_path(cfg: DictConfig, run_dir: Path) -> str | None:
    if cfg.resume == "never":
        return None
    if cfg.resume == "auto":
        last = run_dir / "checkpoints" / "last.ckpt"  # a directory under fsdp (sharded)
        return str(last) if last.exists() else None
    if not Path(cfg.resume).exists():
        raise ConfigError(
            f"resume={cfg.resume!r}: no such checkpoint file (valid: never, auto, a .ckpt path)"
        )
    return cfg.resume


def check_inputs(cfg: DictConfig, backbone, datamodule, run_dir: Path) -> None:
    """The bad inputs that would otherwise surface after the run directory is written: too few records for one
    global batch, max lengths that leave no room for text after the family's template and instruction, a run
    directory that holds another model's run."""
    from bireco.builders import model_identity
    from bireco.text_format import encode_side

    if datamodule.batches_per_epoch() == 0:
        where = f" in {cfg.data.path}" if cfg.data.get("path") else ""
        raise ConfigError(
            f"{len(datamodule.train)} training records{where} make no complete global batch of "
            f"data.global_batch_size={cfg.data.global_batch_size} (batching={cfg.data.batching} drops each source "
            "dataset's remainder): lower data.global_batch_size or give more records"
        )
    instructions = sorted(set(datamodule.train["instruction"]), key=len, reverse=True)[:20]
    for kind, max_length, instruction in [("query", cfg.data.max_query_length, i or None) for i in instructions] + [
        ("doc", cfg.data.max_doc_length, None)
    ]:  # fmt: skip
        try:
            encode_side(backbone.tokenizer, backbone.text_format, "x", max_length, instruction)
        except ValueError as err:
            raise ConfigError(
                f"data.max_{kind}_length={max_length} is too short for model={cfg.model.family}: {err}"
            ) from err
    previous = run_dir / "config.yaml"
    if previous.is_file():
        prev = OmegaConf.load(previous)
        if model_identity(prev) != model_identity(cfg):
            raise ConfigError(
                f"{run_dir} holds a run of model {prev.model.family} ({prev.model.name_or_path or 'built from config'}); "
                f"this run is {cfg.model.family} ({cfg.model.name_or_path or 'built from config'}). Give it its own "
                f"directory (variant=NAME or experiment_name=NAME) or remove {run_dir}"
            )


def checkpoint_step(path: str) -> int:
    """The optimizer step a Lightning checkpoint was taken at (memory-mapped, tensors only). A sharded (FSDP)
    checkpoint is a directory whose meta.pt holds the same fields."""
    import torch

    try:
        file = Path(path) / "meta.pt" if Path(path).is_dir() else Path(path)
        return int(torch.load(file, map_location="cpu", weights_only=True, mmap=True)["global_step"])
    except Exception as e:  # truncated file, foreign pickle, not a Lightning checkpoint
        raise RuntimeError(
            f"{path}: not a loadable Lightning checkpoint ({type(e).__name__}: {e}). bireco writes checkpoints "
            "atomically, so this file was written by something else or damaged later; pass resume=<another .ckpt> "
            "or resume=never"
        ) from e


def trim_metrics(csv_path: Path, step: int) -> None:
    """Drop logged rows at or after `step` (work the crash threw away and the resumed run redoes), atomically."""
    if not csv_path.is_file():
        return
    import csv

    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = (
            reader.fieldnames or [],
            [r for r in reader if r.get("step", "") == "" or int(r["step"]) < step],
        )
    tmp = csv_path.with_name(csv_path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(csv_path)


def keep_previous_metrics(csv_path: Path) -> None:
    """A fresh (not resumed) run in a used run_dir starts a new metrics.csv; the old one is renamed, not lost."""
    if csv_path.is_file():
        n = 1
        while csv_path.with_name(f"metrics.previous-{n}.csv").exists():
            n += 1
        csv_path.rename(csv_path.with_name(f"metrics.previous-{n}.csv"))


def export_backbone(cfg: DictConfig, module, backbone):
    """The backbone to save as final/: itself, or under a sharded strategy a fresh CPU copy on rank 0 holding the
    full weights gathered at the end of training (one Hugging Face directory, whatever the strategy)."""
    from bireco.builders import build_backbone
    from bireco.strategies import backbone_state

    full = module.gathered_state
    if full is None:
        return backbone
    copy = build_backbone(cfg)  # same architecture, LoRA and dtype, on CPU
    missing, unexpected = copy.load_state_dict(backbone_state(full), strict=False)
    if copy.causal_lm.config.tie_word_embeddings:  # the gathered dict may hold the tied output weight once
        missing = [k for k in missing if not k.endswith("lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(
            f"gathered weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return copy


def anchor_probe(cfg: DictConfig, datamodule):
    """Stage I's anchor probe callback (bireco.anchor_probe), or None: off, another stage, no held-out pairs."""
    if cfg.stage.name != "reconstruction" or not cfg.stage.probe.every_n_steps:
        return None
    import copy

    from bireco.anchor_probe import AnchorProbe, heldout_records, probe_batches

    records = heldout_records(cfg, datamodule, cfg.stage.probe.pairs)
    if len(records) < 2:
        log.info(
            "anchor probe off: no pairs held out of training (the data has < 20 x stage.probe.pairs records)"
        )
        return None
    collate = copy.copy(datamodule.collator)
    collate.num_hard_negatives, collate.truncated = 0, type(collate.truncated)()
    return AnchorProbe(
        probe_batches(records, collate, cfg.stage.probe.batch_size), cfg.stage.probe.every_n_steps
    )


def run(cfg: DictConfig) -> dict:
    """Validate, build, fit, save. Returns the final logged metrics."""
    from bireco.builders import build_backbone, build_datamodule, build_module, build_trainer, init_checkpoint
    from bireco.callbacks import build_callbacks

    validate(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    backbone = build_backbone(cfg)
    datamodule = build_datamodule(cfg, backbone)
    datamodule.load()  # every input error surfaces here, before anything is written
    run_dir = Path(cfg.run_dir)
    check_inputs(cfg, backbone, datamodule, run_dir)
    module = build_module(cfg, backbone, datamodule.batches_per_epoch())
    ckpt = resume_path(cfg, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    if ckpt is not None:
        step = checkpoint_step(ckpt)
        log.info("resuming from %s (step %d)", ckpt, step)
        trim_metrics(run_dir / "logs" / "metrics.csv", step)
        # wrong here: the datamodule restores the sampler position (PairDataModule.state_dict)
        warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")
    else:
        keep_previous_metrics(run_dir / "logs" / "metrics.csv")
    from bireco.checkpoint_io import remove_partial_checkpoints

    for partial in remove_partial_checkpoints(run_dir / "checkpoints"):
        log.info("removed %s, a checkpoint write that an earlier run did not finish", partial)
    if cfg.trainer.dev_check_every_n_steps:
        from bireco.dev_check import DevCheckData, dev_retrieval_set

        datamodule.dev_check = DevCheckData(
            dev_retrieval_set(cfg, datamodule), backbone, cfg.data.max_query_length, cfg.data.max_doc_length
        )
    callbacks = build_callbacks(cfg, run_dir)
    probe = anchor_probe(cfg, datamodule)
    trainer = build_trainer(
        cfg, run_dir, callbacks + ([probe] if probe else []), resuming=ckpt is not None, backbone=backbone
    )
    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    for logger in trainer.loggers:  # close wandb runs: a later run in this process must not reuse this one
        if type(logger).__name__ == "WandbLogger" and trainer.is_global_zero:
            logger.experiment.finish()
    export = export_backbone(cfg, module, backbone)
    if trainer.is_global_zero:
        export.save(run_dir / "final", cfg.save_mode)
        summary = {
            "steps": trainer.global_step,
            "init_from": init_checkpoint(cfg) or cfg.model.name_or_path,
            **metrics,
            **(probe.last if probe else {}),
        }
        (run_dir / "final" / "train_summary.json").write_text(json.dumps(summary, indent=2))
        if (
            cfg.stage.name == "reconstruction"
        ):  # how the decoder received the anchor (bireco.inspect reads it)
            from bireco.modules.reconstruction import CONDITIONING_FILE

            record = json.dumps(module.conditioning.record(), indent=2)
            (run_dir / "final" / CONDITIONING_FILE).write_text(record)
        from bireco.model_card import write_final_card

        base = cfg.model.name_or_path or f"a random-init {cfg.model.family} ({cfg.size.name})"
        write_final_card(run_dir / "final", str(base), cfg.stage.run_name)
        from bireco.progress import summary_lines

        for line in summary_lines(run_dir, time.perf_counter() - started, trainer.global_step, summary):
            log.info(line)
    return metrics


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    from bireco.sweep import assign_job_variant

    assign_job_variant(cfg)  # multirun: one run directory per job
    return exit_on_user_error(run)(cfg).get("train/loss")  # a bad input: the one line that names the fix


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
