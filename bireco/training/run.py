"""Train one stage: validate the config, build backbone / data / stage module / trainer, fit, save final/.

`run(cfg)` is the whole job (bireco.train's entry point, the demo and the studies call it); what a run directory
holds and how a run resumes is bireco.core.runs, how each object is built is bireco.training.builders.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import lightning as L
from omegaconf import DictConfig, OmegaConf

from bireco.config.validate import validate
from bireco.core.errors import ConfigError
from bireco.core.files import atomic_write_text, remove_partial
from bireco.core.runs import (
    TRAIN_SUMMARY,
    check_same_model,
    checkpoint_step,
    checkpoints_dir,
    config_file,
    final_dir,
    init_checkpoint,
    keep_previous_metrics,
    metrics_csv,
    resume_path,
    trim_metrics,
)

log = logging.getLogger("bireco")


def check_inputs(cfg: DictConfig, backbone, datamodule, run_dir: Path) -> None:
    """The bad inputs that would otherwise surface after the run directory is written: too few records for one
    global batch, max lengths that leave no room for text after the family's template and instruction, a run
    directory that holds another model's run."""
    from bireco.model.text_format import encode_side

    if datamodule.batches_per_epoch() == 0:
        where = f" in {cfg.data.path}" if cfg.data.get("path") else ""
        raise ConfigError(
            f"{len(datamodule.train)} training records{where} make no complete global batch of "
            f"data.global_batch_size={cfg.data.global_batch_size} (batching={cfg.data.batching} drops each source "
            "dataset's remainder): lower data.global_batch_size or give more records"
        )
    instructions = sorted(set(datamodule.train["instruction"]), key=len, reverse=True)[:20]
    checks = [("query", cfg.data.max_query_length, i or None) for i in instructions]
    for kind, max_length, instruction in [*checks, ("doc", cfg.data.max_doc_length, None)]:
        try:
            encode_side(backbone.tokenizer, backbone.text_format, "x", max_length, instruction)
        except ValueError as err:
            raise ConfigError(
                f"data.max_{kind}_length={max_length} is too short for model={cfg.model.family}: {err}"
            ) from err
    check_same_model(cfg, run_dir)


def export_backbone(cfg: DictConfig, module, backbone):
    """The backbone to save as final/: itself, or under a sharded strategy a fresh CPU copy on rank 0 holding the
    full weights gathered at the end of training (one Hugging Face directory, whatever the strategy)."""
    from bireco.stages.sharding import backbone_state
    from bireco.training.builders import build_backbone

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


def build_anchor_probe(cfg: DictConfig, datamodule):
    """Stage I's anchor probe callback (bireco.training.anchor_probe), or None: off, another stage, no held-out
    pairs."""
    if cfg.stage.name != "reconstruction" or not cfg.stage.probe.every_n_steps:
        return None
    import copy

    from bireco.evaluation.anchor_diagnostics import probe_batches
    from bireco.training.anchor_probe import AnchorProbe, heldout_records

    records = heldout_records(cfg, datamodule, cfg.stage.probe.pairs)
    if len(records) < 2:
        log.info(
            "anchor probe off: no pairs held out of training (the data has < 20 x stage.probe.pairs records)"
        )
        return None
    collate = copy.copy(datamodule.collator)
    collate.num_hard_negatives, collate.truncated = 0, type(collate.truncated)()
    probe = cfg.stage.probe
    return AnchorProbe(probe_batches(records, collate, probe.batch_size), probe.every_n_steps, probe.seed)


def prepare_run_dir(cfg: DictConfig, run_dir: Path, ckpt: str | None) -> None:
    """config.yaml, the metrics log trimmed to the resumed step (or the old one kept aside), partial checkpoint
    writes of a killed run removed."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(config_file(run_dir), OmegaConf.to_yaml(cfg, resolve=True))
    if ckpt is not None:
        step = checkpoint_step(ckpt)
        log.info("resuming from %s (step %d)", ckpt, step)
        trim_metrics(metrics_csv(run_dir), step)
    else:
        keep_previous_metrics(metrics_csv(run_dir))
    for partial in remove_partial(checkpoints_dir(run_dir)):
        log.info("removed %s, a checkpoint write that an earlier run did not finish", partial)


def save_final(cfg: DictConfig, run_dir: Path, export, summary: dict) -> None:
    """final/: the model, train_summary.json, what a Stage I decoded with (its anchor source and decoder:
    bireco.inspect reads it), the card."""
    from bireco.model.model_card import write_final_card

    final = final_dir(run_dir)
    export.save(final, cfg.save_mode)
    atomic_write_text(final / TRAIN_SUMMARY, json.dumps(summary, indent=2))
    if cfg.stage.name == "reconstruction":
        from bireco.model.anchor_controls import frozen_decoder_model, save_record
        from bireco.training.builders import start_model_cfg

        frozen = cfg.stage.decoder == "frozen"
        save_record(final, cfg.stage.anchor, frozen_decoder_model(start_model_cfg(cfg)) if frozen else None)
    base = cfg.model.name_or_path or f"a random-init {cfg.model.family} ({cfg.size.name})"
    write_final_card(final, str(base), cfg.stage.run_name)


def run(cfg: DictConfig) -> dict:
    """Validate, build, fit, save. Returns the final logged metrics."""
    from bireco.training.builders import build_backbone, build_datamodule, build_module, build_trainer
    from bireco.training.callbacks import build_callbacks

    validate(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    backbone = build_backbone(cfg)
    datamodule = build_datamodule(cfg, backbone)
    datamodule.load()  # every input error surfaces here, before anything is written
    run_dir = Path(cfg.run_dir)
    check_inputs(cfg, backbone, datamodule, run_dir)
    module = build_module(cfg, backbone, datamodule.batches_per_epoch())
    ckpt = resume_path(cfg, run_dir)
    prepare_run_dir(cfg, run_dir, ckpt)
    if cfg.trainer.dev_check_every_n_steps:
        from bireco.evaluation.dev_check import DevCheckData, dev_retrieval_set

        datamodule.dev_check = DevCheckData(
            dev_retrieval_set(cfg, datamodule), backbone, cfg.data.max_query_length, cfg.data.max_doc_length
        )
    probe = build_anchor_probe(cfg, datamodule)
    callbacks = build_callbacks(cfg, run_dir) + ([probe] if probe else [])
    trainer = build_trainer(cfg, run_dir, callbacks, resuming=ckpt is not None, backbone=backbone)
    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    finish_wandb(trainer)
    export = export_backbone(cfg, module, backbone)
    if trainer.is_global_zero:
        summary = {
            "steps": trainer.global_step,
            "init_from": init_checkpoint(cfg) or cfg.model.name_or_path,
            **metrics,
            **(probe.last if probe else {}),
        }
        save_final(cfg, run_dir, export, summary)
        from bireco.training.progress import summary_lines

        for line in summary_lines(run_dir, time.perf_counter() - started, trainer.global_step, summary):
            log.info(line)
    return metrics


def finish_wandb(trainer: L.Trainer) -> None:
    """Close this run's wandb run: a later run in this process must not reuse it."""
    if not trainer.is_global_zero:
        return
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()
