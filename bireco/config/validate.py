"""Start-up validation: ranges, choices and combinations that types cannot express, checked before any model
or data loads. Each choice list is the one the code that acts on it owns (imported here, never retyped)."""

from __future__ import annotations

import difflib

from omegaconf import DictConfig, OmegaConf

from bireco.core.errors import ConfigError
from bireco.core.precision import resolve_precision, weights_dtype
from bireco.model.anchor import ANCHOR_SCALES, ANCHOR_SOURCES, DECODERS, LABEL_MODES, TARGETS
from bireco.model.backbone import ATTENTIONS, DTYPES, SAVE_MODES
from bireco.model.pooling import POOLING_MODES
from bireco.model.text_format import PADDING_SIDES
from bireco.stages.base import ON_NONFINITE
from bireco.stages.optim import LR_SCHEDULES
from bireco.stages.reconstruction import SCHEDULES


def _choice(value: str, valid: tuple[str, ...], key: str) -> None:
    if value not in valid:
        raise ConfigError(f"{key}={value!r} is not valid; choose one of: {', '.join(valid)}")


# Trainer arguments bireco sets from its own keys: passing them through trainer.lightning would fight those
SET_BY_BIRECO = ("accelerator", "devices", "num_nodes", "strategy", "precision", "max_steps", "accumulate_grad_batches",
                 "gradient_clip_val", "log_every_n_steps", "deterministic", "enable_progress_bar", "logger", "callbacks",
                 "default_root_dir", "use_distributed_sampler", "enable_checkpointing")  # fmt: skip


def _check_lightning_passthrough(cfg: DictConfig) -> None:
    """trainer.lightning names real lightning.Trainer arguments (a typo fails here with the closest names)."""
    import inspect

    import lightning as L

    valid = [p for p in inspect.signature(L.Trainer.__init__).parameters if p != "self"]
    for key in cfg.trainer.get("lightning") or {}:
        if key in SET_BY_BIRECO:
            raise ConfigError(
                f"trainer.lightning.{key}: bireco sets this Trainer argument itself; use trainer.{key}"
            )
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"trainer.lightning.{key} is not a lightning.Trainer argument.{hint} Valid: "
                              f"{', '.join(v for v in valid if v not in SET_BY_BIRECO)}")  # fmt: skip


def _check_dtype_matches_precision(cfg: DictConfig) -> None:
    """Mixed / fp32 precision promises fp32 master weights: refuse half-precision weights that would be trained."""
    precision = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    dtype = cfg.model.dtype
    if dtype == "auto" or weights_dtype(precision) != "float32" or dtype == "float32":
        return
    if cfg.stage.get("lora", {}).get("enabled", False):
        return  # the trained LoRA weights are fp32 (peft); a frozen half-precision base is the usual memory saving
    raise ConfigError(
        f"model.dtype={dtype} with trainer.precision={precision}: {precision} keeps fp32 master weights, but full "
        f"fine-tuning would update {dtype} weights. Use model.dtype=auto (fp32 here), or trainer.precision="
        f"{'bf16' if dtype == 'bfloat16' else '16'}-true to train in {dtype} (the paper's setting)"
    )


def validate(cfg: DictConfig) -> None:
    """Ranges and combinations, checked before any model or data loads."""
    s = cfg.stage
    world = _world_size(cfg)
    _choice(cfg.model.pooling, POOLING_MODES, "model.pooling")
    _choice(cfg.model.attention, ATTENTIONS, "model.attention")
    _choice(cfg.model.padding_side, PADDING_SIDES, "model.padding_side")
    _choice(cfg.model.dtype, ("auto", *DTYPES), "model.dtype")
    _choice(cfg.data.format, ("wordnet", "e5", "jsonl", "parquet", "disk"), "data.format")
    _choice(cfg.data.batching, ("homogeneous", "mixed"), "data.batching")
    _choice(cfg.data.on_bad_record, ("error", "skip"), "data.on_bad_record")
    _choice(cfg.save_mode, SAVE_MODES, "save_mode")
    _choice(cfg.trainer.on_nonfinite, ON_NONFINITE, "trainer.on_nonfinite")
    _choice(s.optim.schedule, LR_SCHEDULES, "stage.optim.schedule")
    if s.name == "reconstruction":
        if not 0.0 <= s.alpha <= 1.0:
            raise ConfigError(f"stage.alpha={s.alpha} must be in [0, 1] (weight of EBQ2D; paper: 0.2)")
        _choice(s.schedule, SCHEDULES, "stage.schedule")
        _choice(s.labels, LABEL_MODES, "stage.labels")
        _choice(s.anchor, ANCHOR_SOURCES, "stage.anchor")
        _choice(s.anchor_scale, ANCHOR_SCALES, "stage.anchor_scale")
        if s.anchor_affine_lr is not None and (s.anchor_scale != "affine" or s.anchor_affine_lr <= 0):
            raise ConfigError(
                f"stage.anchor_affine_lr={s.anchor_affine_lr}: a positive learning rate, and only with "
                f"stage.anchor_scale=affine (got {s.anchor_scale})"
            )
        _choice(s.decoder, DECODERS, "stage.decoder")
        _choice(s.target, tuple(TARGETS), "stage.target")
        one_pair_per_device = cfg.data.global_batch_size // _world_size(cfg) < 2
        if one_pair_per_device and s.anchor_scale == "batch_centered_token_norm":
            raise ConfigError(
                f"stage.anchor_scale=batch_centered_token_norm subtracts each device batch's mean anchor, and "
                f"data.global_batch_size={cfg.data.global_batch_size} / {_world_size(cfg)} device(s) is one pair: "
                "its anchor would be zero; use a global batch of at least 2 per device"
            )
        if one_pair_per_device and s.anchor == "shuffled":
            raise ConfigError(
                f"stage.anchor=shuffled rolls the anchors within each device's batch, which is "
                f"data.global_batch_size={cfg.data.global_batch_size} / {_world_size(cfg)} device(s) here: one pair "
                "would get its own anchor back (no control at all); use a global batch of at least 2 per device"
            )
        if s.decoder == "frozen":
            if s.anchor_scale != "affine" and (s.anchor == "constant" or s.anchor_detach):
                raise ConfigError(
                    f"stage.decoder=frozen with stage.anchor={s.anchor} / stage.anchor_detach={s.anchor_detach}: "
                    "nothing would train (the frozen decoder gets no update and no gradient reaches the "
                    "embedding); use stage.anchor_scale=affine to train the map alone"
                )
            if not cfg.model.name_or_path and s.init_from in (None, "base"):
                raise ConfigError(
                    "stage.decoder=frozen needs a start model loadable by name (model.name_or_path or "
                    "stage.init_from=PATH): the frozen decoder is that model, and inspection loads it again"
                )
        if s.probe.every_n_steps < 0 or (
            s.probe.every_n_steps and (s.probe.pairs < 2 or s.probe.batch_size < 2)
        ):
            raise ConfigError("stage.probe: every_n_steps >= 0 (0 = off), pairs >= 2 and batch_size >= 2")
    elif s.name == "contrastive":
        if s.scale <= 0:
            raise ConfigError(f"stage.scale={s.scale} must be > 0 (1/temperature; paper: 50)")
        if s.grad_cache_chunk_size is not None and s.grad_cache_chunk_size < 1:
            raise ConfigError("stage.grad_cache_chunk_size must be >= 1 or null")
    _check_dtype_matches_precision(cfg)
    _check_lightning_passthrough(cfg)
    if cfg.save_mode == "adapter":
        if not s.get("lora", {}).get("enabled", False):
            raise ConfigError(
                "save_mode=adapter saves the LoRA adapter alone, but stage.lora.enabled=false: use save_mode=full"
            )
        if not cfg.model.name_or_path and s.init_from in (None, "base"):
            raise ConfigError(
                "save_mode=adapter records the base model the adapter loads onto, but this base is built from "
                "model.architecture (random weights, no path to record): use save_mode=full"
            )
    strategy = str(cfg.trainer.strategy)
    if strategy == "fsdp":
        _choice(
            cfg.trainer.fsdp.sharding_strategy,
            ("FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "NO_SHARD"),
            "trainer.fsdp.sharding_strategy",
        )
        _choice(cfg.trainer.fsdp.state_dict_type, ("sharded", "full"), "trainer.fsdp.state_dict_type")
    if strategy in ("fsdp", "deepspeed") and cfg.trainer.accelerator not in ("gpu", "cuda", "auto"):
        raise ConfigError(
            f"trainer.strategy={strategy} runs on GPUs only (trainer.accelerator={cfg.trainer.accelerator}); on CPU use trainer=ddp_cpu"
        )
    if strategy == "fsdp" and cfg.stage.get("lora", {}).get("enabled", False):
        raise ConfigError(
            "trainer.strategy=fsdp with LoRA (stage.lora.enabled=true) is not supported: peft adapters under FSDP "
            "(use_orig_params) failed in FSDP's reshard on torch 2.11 (H100 check, docs/benchmarks.md). LoRA "
            "training keeps the frozen base in bf16 (2 bytes/parameter, 16 GB for 8B), so use trainer=ddp; or set "
            "stage.lora.enabled=false for a sharded full fine-tune"
        )
    if strategy == "deepspeed":
        if cfg.trainer.deepspeed.stage not in (2, 3):
            raise ConfigError(f"trainer.deepspeed.stage={cfg.trainer.deepspeed.stage}; valid: 2, 3")
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise ConfigError("trainer.strategy=deepspeed needs the deepspeed package: pip install deepspeed")
    if (
        cfg.stage.name == "contrastive"
        and cfg.stage.grad_cache_chunk_size
        and strategy in ("fsdp", "deepspeed")
    ):
        raise ConfigError(
            f"stage.grad_cache_chunk_size is supported on one device and under ddp, not with strategy {strategy!r}: "
            "its second pass back-propagates chunk by chunk, which FSDP's and DeepSpeed's gradient sharding hooks do "
            "not allow; use trainer=ddp or set stage.grad_cache_chunk_size=null (FSDP already frees activation memory)"
        )
    if cfg.data.format != "wordnet" and (OmegaConf.is_missing(cfg.data, "path") or not cfg.data.path):
        raise ConfigError(
            f"data={cfg.data.name} reads files: set data.path (a {'directory' if cfg.data.format == 'e5' else 'file or directory'}), "
            f"e.g. data.path=/data/{'echo-data' if cfg.data.format == 'e5' else 'pairs.jsonl'}"
        )
    if cfg.data.num_hard_negatives < 0:
        raise ConfigError("data.num_hard_negatives must be >= 0")
    if cfg.data.global_batch_size % world:
        raise ConfigError(
            f"data.global_batch_size={cfg.data.global_batch_size} is not divisible by the world size {world} "
            "(trainer.devices x trainer.num_nodes)"
        )
    if cfg.trainer.max_steps < 1:
        raise ConfigError("trainer.max_steps must be >= 1")


def _world_size(cfg: DictConfig) -> int:
    """Processes the run will have: devices x nodes, with devices -1 / "auto" on GPUs read from the machine."""
    devices = cfg.trainer.devices
    if OmegaConf.is_list(devices):
        n = len(devices)
    elif isinstance(devices, int) and devices > 0:
        n = devices
    elif str(cfg.trainer.accelerator) in ("gpu", "cuda", "auto"):
        import torch

        n = max(torch.cuda.device_count(), 1)
    else:
        n = 1
    return int(n) * int(cfg.trainer.num_nodes)
