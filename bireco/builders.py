"""The one place objects are built from config: backbone, data, stage module, loggers, trainer."""

from __future__ import annotations

import logging
import math
import os
import uuid
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from bireco.backbone import Backbone, checkpoint_weights
from bireco.config import ConfigError
from bireco.data.collate import PairCollator
from bireco.data.datamodule import PairDataModule
from bireco.precision import resolve_precision, weights_dtype

log = logging.getLogger(__name__)


def run_dir_of(cfg: DictConfig, run_name: str, variant: str | None = None) -> Path:
    return Path(cfg.output_root) / cfg.experiment_name / (variant or cfg.variant) / run_name


STAGE1_IDENTITY = (
    "ablation",
    "seed",
    "model.family",
    "model.name_or_path",
)  # what a Stage II must share with its Stage I


def model_identity(cfg: DictConfig) -> tuple:
    """What makes two runs runs of different models (their weights cannot continue or feed each other)."""
    return cfg.model.family, cfg.model.name_or_path


def stage1_of(cfg: DictConfig) -> Path:
    """The Stage I output a Stage II run starts from (`stage.init_from=stage1`): `stage1_variant` if given; else the
    Stage I of the same variant; else (a sweep, whose Stage II jobs are named by other overrides than its Stage I
    jobs) the one Stage I of this experiment whose recorded config has the same STAGE1_IDENTITY values."""
    root = Path(cfg.output_root) / cfg.experiment_name
    done = {
        p.parent.parent.parent.name: p.parent.parent for p in sorted(root.glob("*/stage1/final/bireco.json"))
    }
    if cfg.stage1_variant:
        if cfg.stage1_variant not in done:
            raise ConfigError(f"stage1_variant={cfg.stage1_variant}: no finished Stage I there (this experiment has: "
                              f"{', '.join(done) or 'none'})")  # fmt: skip
        return done[cfg.stage1_variant] / "final"
    if cfg.variant in done:
        recorded = OmegaConf.load(done[cfg.variant] / "config.yaml")
        if model_identity(recorded) != model_identity(cfg):
            stage1 = recorded.model
            raise ConfigError(
                f"the Stage I at {done[cfg.variant]} trained model {stage1.family} "
                f"({stage1.name_or_path or 'built from config'}), this Stage II is {cfg.model.family} "
                f"({cfg.model.name_or_path or 'built from config'}): run its own Stage I (another variant= or "
                "experiment_name=), or pass stage.init_from=PATH to start from that checkpoint on purpose"
            )
        return done[cfg.variant] / "final"

    def identity(c) -> list:
        return [OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
                for v in (OmegaConf.select(c, k) for k in STAGE1_IDENTITY)]  # fmt: skip

    mine = identity(cfg)
    matches = [v for v, run in done.items() if identity(OmegaConf.load(run / "config.yaml")) == mine]
    if len(matches) == 1:
        return done[matches[0]] / "final"
    hint = f"this experiment has: {', '.join(done) or 'none'}"
    if matches:
        hint = f"several match its {', '.join(STAGE1_IDENTITY)}: {', '.join(matches)}"
    raise ConfigError(
        f"stage.init_from=stage1 but no Stage I output at {run_dir_of(cfg, 'stage1')}/final ({hint}). Run Stage I of "
        f"this experiment first (make train-stage1 / stage=reconstruction with experiment_name={cfg.experiment_name}), "
        "use stage=baseline to start from the base model, give stage.init_from=/path/to/checkpoint, or pick a Stage I "
        "with stage1_variant=NAME"
    )


def init_checkpoint(cfg: DictConfig) -> str | None:
    """Where the stage's weights start: None = the model config (base), else a bireco checkpoint directory."""
    init = cfg.stage.init_from
    if init in (None, "base"):
        return None
    if init == "stage1":
        return str(stage1_of(cfg))
    if not Path(init).is_dir():
        raise ConfigError(
            f"stage.init_from={init!r}: no such checkpoint directory (valid: stage1, base, a path)"
        )
    return init


def build_backbone(cfg: DictConfig) -> Backbone:
    """The stage's starting model; `model.dtype=auto` loads the weights in the dtype trainer.precision trains
    (bf16-true: bf16; bf16-mixed / 32-true: fp32 masters), not the hardware's favourite."""
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    if model_cfg.get("dtype", "auto") == "auto":
        model_cfg["dtype"] = weights_dtype(resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator))
    start = init_checkpoint(cfg)
    if start is not None:
        model_cfg.update(tokenizer=start, architecture=None, **checkpoint_weights(start))
        log.info("initialising from %s", start)
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


def build_module(
    cfg: DictConfig, backbone: Backbone, batches_per_epoch: int | None = None
) -> L.LightningModule:
    """The stage's LightningModule; `batches_per_epoch` sizes an epoch-based LR horizon (lr_horizon)."""
    s = cfg.stage
    horizon = lr_horizon(cfg, batches_per_epoch)
    if s.name == "reconstruction":
        from bireco.modules.reconstruction import ReconstructionModule

        return ReconstructionModule(
            backbone, s.optim, horizon, alpha=s.alpha, schedule=s.schedule,
            labels=s.labels, reconstruct_instruction=s.reconstruct_instruction, on_nonfinite=cfg.trainer.on_nonfinite,
            anchor=s.anchor, anchor_scale=s.anchor_scale, anchor_lead_token=s.anchor_lead_token,
        )  # fmt: skip
    if s.name == "contrastive":
        from bireco.modules.contrastive import ContrastiveModule

        return ContrastiveModule(
            backbone, s.optim, horizon, scale=s.scale, symmetric=s.symmetric,
            gather_across_devices=s.gather_across_devices, grad_cache_chunk_size=s.grad_cache_chunk_size,
            on_nonfinite=cfg.trainer.on_nonfinite,
        )  # fmt: skip
    raise ConfigError(f"stage.name={s.name!r}; valid: reconstruction, contrastive")


def build_loggers(cfg: DictConfig, run_dir: Path, resuming: bool = False) -> list:
    """CSV always (appends across resumes); wandb when enabled, continuing the same wandb run on resume."""
    from bireco.loggers import AppendingCSVLogger

    # flushed at every log interval and before every checkpoint: a crash loses no row the resumed run will not redo
    loggers = [
        AppendingCSVLogger(
            save_dir=str(run_dir),
            name="",
            version="logs",
            flush_logs_every_n_steps=cfg.trainer.log_every_n_steps,
        )
    ]
    if cfg.logger.wandb:
        from lightning.pytorch.loggers import WandbLogger

        id_file = run_dir / "wandb_run_id"
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
            id_file.write_text(run_id)
    return loggers


def wandb_mode(mode: str) -> str:
    """logger.mode=auto: WANDB_MODE if set, else online with an API key, offline without."""
    if mode == "auto":
        return os.environ.get("WANDB_MODE") or ("online" if _wandb_key_available() else "offline")
    return mode


def _wandb_key_available() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path.home() / ".netrc"
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def build_trainer(
    cfg: DictConfig, run_dir: Path, callbacks: list, resuming: bool = False, backbone: Backbone | None = None
) -> L.Trainer:
    from bireco.strategies import build_strategy

    t = cfg.trainer
    every = t.dev_check_every_n_steps
    # the dev check (bireco.dev_check) is the validation loop: every N optimizer steps (Lightning counts
    # micro-batches), and over the whole dev set before the first step (the sanity check); trainer.lightning overrides
    validation = (
        {"val_check_interval": every * t.accumulate_grad_batches, "check_val_every_n_epoch": None,
         "num_sanity_val_steps": -1}
        if every
        else {"num_sanity_val_steps": 0, "limit_val_batches": 0}
    )  # fmt: skip
    from bireco.checkpoint_io import RunDirCheckpointIO
    from bireco.progress import progress_callbacks

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
    """trainer.lightning as Trainer keyword arguments (names checked in bireco.config.validate)."""
    extra = trainer_cfg.get("lightning")
    return OmegaConf.to_container(extra, resolve=True) if extra else {}
