"""The one place objects are built from config: backbone, data, stage module, loggers, trainer."""

from __future__ import annotations

import logging
import math
import uuid
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from bireco.core.errors import ConfigError
from bireco.core.files import atomic_write_text
from bireco.core.precision import resolve_precision, weights_dtype
from bireco.core.runs import init_checkpoint, metrics_csv, wandb_id_file, wandb_mode
from bireco.data.collate import PairCollator
from bireco.data.datamodule import PairDataModule
from bireco.model.backbone import Backbone, checkpoint_weights

log = logging.getLogger(__name__)


def start_model_cfg(cfg: DictConfig) -> dict:
    """The `conf/model` node of the stage's starting weights (`stage.init_from`'s checkpoint, else the model's own);
    `model.dtype=auto` loads the weights in the dtype trainer.precision trains (bf16-true: bf16; bf16-mixed /
    32-true: fp32 masters), not the hardware's favourite."""
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    if model_cfg.get("dtype", "auto") == "auto":
        model_cfg["dtype"] = weights_dtype(resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator))
    start = init_checkpoint(cfg)
    if start is not None:
        model_cfg.update(tokenizer=start, architecture=None, **checkpoint_weights(start))
    return model_cfg


def build_backbone(cfg: DictConfig) -> Backbone:
    """The stage's starting model (start_model_cfg) with the stage's LoRA, if any."""
    model_cfg = start_model_cfg(cfg)
    if cfg.stage.init_from not in (None, "base"):
        log.info("initialising from %s", model_cfg["name_or_path"])
    return Backbone.from_config(model_cfg, cfg.stage.lora)


def build_datamodule(cfg: DictConfig, backbone: Backbone) -> PairDataModule:
    collator = PairCollator(
        backbone.tokenizer,
        backbone.text_format,
        cfg.data.max_query_length,
        cfg.data.max_doc_length,
        padding_side=backbone.padding_side,
        num_hard_negatives=cfg.data.num_hard_negatives,
        pad_id=backbone.pad_id,
    )
    # pairs held out of training for the dev check and the anchor probe (WordNet has its own dev split)
    dev_pairs = probe_pairs = 0
    if cfg.data.format != "wordnet":
        dev_pairs = cfg.data.dev_queries if cfg.trainer.dev_check_every_n_steps else 0
        if cfg.stage.name == "reconstruction" and cfg.stage.probe.every_n_steps:
            probe_pairs = cfg.stage.probe.pairs
    return PairDataModule(cfg.data, collator, seed=cfg.seed, dev_pairs=dev_pairs, probe_pairs=probe_pairs)


def lr_horizon(cfg: DictConfig, batches_per_epoch: int | None = None) -> int:
    """Optimizer steps the LR decay is sized for: stage.optim.schedule_steps; else stage.optim.schedule_epochs
    epochs of the training data, counted as HF Trainer does (optimizer steps per epoch = global batches //
    accumulation, times the epochs, rounded up); else trainer.max_steps (decay to 0 at the last step)."""
    o = cfg.stage.optim
    if o.schedule_steps:
        return int(o.schedule_steps)
    if o.schedule_epochs:
        if batches_per_epoch is None:
            raise ValueError("stage.optim.schedule_epochs needs the number of batches per epoch")
        return max(
            1, math.ceil(o.schedule_epochs * (batches_per_epoch // cfg.trainer.accumulate_grad_batches))
        )
    return int(cfg.trainer.max_steps)


def build_frozen_decoder(cfg: DictConfig) -> Backbone:
    """`stage.decoder=frozen`: Stage I's start loaded again (the same weights the backbone starts from), under its own
    random streams so the run's are where they would be without it."""
    import torch

    from bireco.model.anchor_controls import frozen_decoder_model

    with torch.random.fork_rng(devices=[]):
        return Backbone.from_config(frozen_decoder_model(start_model_cfg(cfg)))


def build_module(
    cfg: DictConfig, backbone: Backbone, batches_per_epoch: int | None = None
) -> L.LightningModule:
    """The stage's LightningModule from its typed `stage` node; `batches_per_epoch` sizes an epoch-based LR horizon
    (lr_horizon). Stage I beyond the paper (a control, a frozen decoder) is its own module class."""
    stage = OmegaConf.to_object(cfg.stage)
    horizon, on_nonfinite = lr_horizon(cfg, batches_per_epoch), cfg.trainer.on_nonfinite
    if stage.name == "reconstruction":
        from bireco.stages.reconstruction import ReconstructionModule
        from bireco.stages.reconstruction_controls import ControlledReconstructionModule, is_paper

        if is_paper(stage):
            return ReconstructionModule(backbone, stage, horizon, on_nonfinite)
        decoder = build_frozen_decoder(cfg) if stage.decoder == "frozen" else None
        return ControlledReconstructionModule(backbone, stage, horizon, on_nonfinite, decoder)
    if stage.name == "contrastive":
        from bireco.stages.contrastive import ContrastiveModule

        return ContrastiveModule(backbone, stage, horizon, on_nonfinite)
    raise ConfigError(f"stage.name={stage.name!r}; valid: reconstruction, contrastive")


def build_loggers(cfg: DictConfig, run_dir: Path, resuming: bool = False) -> list:
    """CSV always (appends across resumes); wandb when enabled, continuing the same wandb run on resume."""
    from bireco.training.loggers import MetricsCSVLogger

    # flushed at every log interval and before every checkpoint: a crash loses no row the resumed run will not redo
    loggers = [MetricsCSVLogger(metrics_csv(run_dir), flush_every=cfg.trainer.log_every_n_steps)]
    if cfg.logger.wandb:
        from lightning.pytorch.loggers import WandbLogger

        id_file = wandb_id_file(run_dir)
        resumed = resuming and id_file.is_file()
        run_id = id_file.read_text().strip() if resumed else uuid.uuid4().hex[:12]
        mode = wandb_mode(cfg.logger.mode)
        loggers.append(
            WandbLogger(
                project=cfg.logger.project,
                group=cfg.experiment_name,
                job_type=cfg.stage.run_name,
                name=f"{cfg.experiment_name}/{cfg.variant}/{cfg.stage.run_name}",
                save_dir=str(run_dir),
                mode=mode,
                config=OmegaConf.to_container(cfg, resolve=True),
                id=run_id,
                resume="allow" if resumed else None,
            )
        )
        if not resumed and rank_zero_only.rank == 0:
            atomic_write_text(id_file, run_id)
    return loggers


def build_trainer(
    cfg: DictConfig, run_dir: Path, callbacks: list, resuming: bool = False, backbone: Backbone | None = None
) -> L.Trainer:
    from bireco.training.strategies import build_strategy

    t = cfg.trainer
    every = t.dev_check_every_n_steps
    # the dev check (bireco.evaluation.dev_check) is the validation loop: every N optimizer steps (Lightning counts
    # micro-batches), and over the whole dev set before the first step (the sanity check); trainer.lightning overrides
    validation = (
        {"val_check_interval": every * t.accumulate_grad_batches, "check_val_every_n_epoch": None,
         "num_sanity_val_steps": -1}
        if every
        else {"num_sanity_val_steps": 0, "limit_val_batches": 0}
    )  # fmt: skip
    from bireco.training.checkpoint_io import RunDirCheckpointIO
    from bireco.training.progress import progress_callbacks

    progress, bar = progress_callbacks(cfg.stage.run_name, t.log_every_n_steps, t.enable_progress_bar)

    strategy = build_strategy(cfg, backbone) if backbone is not None else t.strategy
    # sharded strategies (FSDP, DeepSpeed objects) write their own checkpoint directories
    plugins = [RunDirCheckpointIO()] if isinstance(strategy, str) else []
    return L.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=strategy,
        plugins=plugins or None,
        precision=resolve_precision(t.precision, t.accelerator),
        max_steps=t.max_steps,
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val,
        log_every_n_steps=max(1, min(t.log_every_n_steps, t.max_steps)),  # a short run still logs its rows
        deterministic=t.deterministic,
        enable_progress_bar=bar,
        enable_model_summary=False,
        enable_checkpointing=bool(t.checkpoint_every_n_steps),
        use_distributed_sampler=False,  # PairBatchSampler is rank-aware
        logger=build_loggers(cfg, run_dir, resuming),
        callbacks=[*callbacks, *progress],
        default_root_dir=str(run_dir),
        **{**validation, **lightning_passthrough(t)},
    )


def lightning_passthrough(trainer_cfg: DictConfig) -> dict:
    """trainer.lightning as Trainer keyword arguments (names checked in bireco.config.schema.validate)."""
    extra = trainer_cfg.get("lightning")
    return OmegaConf.to_container(extra, resolve=True) if extra else {}
