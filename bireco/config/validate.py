"""Start-up validation, before any model or data loads: each node's own checks (its schema dataclass's
`__post_init__`, run by building it) and the rules that span nodes, one small function each."""

from __future__ import annotations

import difflib
import importlib.util

from omegaconf import DictConfig, OmegaConf

from bireco.core.errors import ConfigError
from bireco.core.precision import resolve_precision, weights_dtype

NODES = ("model", "data", "stage", "trainer", "logger")
# Trainer arguments bireco sets from its own keys: passing them through trainer.lightning would fight those
SET_BY_BIRECO = ("accelerator", "devices", "num_nodes", "strategy", "precision", "max_steps", "accumulate_grad_batches",
                 "gradient_clip_val", "log_every_n_steps", "deterministic", "enable_progress_bar", "logger", "callbacks",
                 "default_root_dir", "use_distributed_sampler", "enable_checkpointing")  # fmt: skip


def world_size(cfg: DictConfig) -> int:
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


def lora_enabled(cfg: DictConfig) -> bool:
    return bool(cfg.stage.get("lora", {}).get("enabled", False))


def starts_from_random_weights(cfg: DictConfig) -> bool:
    return not cfg.model.name_or_path and cfg.stage.init_from in (None, "base")


def batch_divides_over_devices(cfg: DictConfig) -> None:
    if cfg.data.global_batch_size % world_size(cfg):
        raise ConfigError(
            f"data.global_batch_size={cfg.data.global_batch_size} is not divisible by the world size {world_size(cfg)} "
            "(trainer.devices x trainer.num_nodes)"
        )


def shuffled_anchor_needs_two_pairs_per_device(cfg: DictConfig) -> None:
    if cfg.stage.name == "reconstruction" and cfg.stage.anchor == "shuffled":
        if cfg.data.global_batch_size // world_size(cfg) < 2:
            raise ConfigError(
                f"stage.anchor=shuffled rolls the anchors within each device's batch, which is data.global_batch_size="
                f"{cfg.data.global_batch_size} / {world_size(cfg)} device(s) here: one pair would get its own anchor "
                "back (no control at all); use a global batch of at least 2 per device"
            )


def frozen_decoder_needs_a_named_start(cfg: DictConfig) -> None:
    if (
        cfg.stage.name == "reconstruction"
        and cfg.stage.decoder == "frozen"
        and starts_from_random_weights(cfg)
    ):
        raise ConfigError(
            "stage.decoder=frozen needs a start model loadable by name (model.name_or_path or stage.init_from=PATH): "
            "the frozen decoder is that model, and inspection loads it again"
        )


def data_files_need_a_path(cfg: DictConfig) -> None:
    if cfg.data.format != "wordnet" and (OmegaConf.is_missing(cfg.data, "path") or not cfg.data.path):
        kind, example = (
            ("a directory", "echo-data")
            if cfg.data.format == "e5"
            else ("a file or directory", "pairs.jsonl")
        )
        raise ConfigError(
            f"data={cfg.data.name} reads files: set data.path ({kind}), e.g. data.path=/data/{example}"
        )


def trained_weights_keep_their_precision(cfg: DictConfig) -> None:
    """Mixed / fp32 precision promises fp32 master weights: refuse half-precision weights that would be trained."""
    precision = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    dtype = cfg.model.dtype
    if dtype == "auto" or weights_dtype(precision) != "float32" or dtype == "float32" or lora_enabled(cfg):
        return  # LoRA: the trained adapters are fp32 (peft); a frozen half-precision base is the usual memory saving
    raise ConfigError(
        f"model.dtype={dtype} with trainer.precision={precision}: {precision} keeps fp32 master weights, but full "
        f"fine-tuning would update {dtype} weights. Use model.dtype=auto (fp32 here), or trainer.precision="
        f"{'bf16' if dtype == 'bfloat16' else '16'}-true to train in {dtype} (the paper's setting)"
    )


def lightning_passthrough_names_trainer_arguments(cfg: DictConfig) -> None:
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


def adapter_saves_need_lora_and_a_named_base(cfg: DictConfig) -> None:
    if cfg.save_mode != "adapter":
        return
    if not lora_enabled(cfg):
        raise ConfigError(
            "save_mode=adapter saves the LoRA adapter alone, but stage.lora.enabled=false: use save_mode=full"
        )
    if starts_from_random_weights(cfg):
        raise ConfigError(
            "save_mode=adapter records the base model the adapter loads onto, but this base is built from "
            "model.architecture (random weights, no path to record): use save_mode=full"
        )


def strategies_fit_the_run(cfg: DictConfig) -> None:
    """FSDP and DeepSpeed run on GPUs, FSDP without LoRA, DeepSpeed with its package; GradCache under ddp only."""
    strategy = str(cfg.trainer.strategy)
    if strategy in ("fsdp", "deepspeed") and cfg.trainer.accelerator not in ("gpu", "cuda", "auto"):
        raise ConfigError(
            f"trainer.strategy={strategy} runs on GPUs only (trainer.accelerator={cfg.trainer.accelerator}); "
            "on CPU use trainer=ddp_cpu"
        )
    if strategy == "fsdp" and lora_enabled(cfg):
        raise ConfigError(
            "trainer.strategy=fsdp with LoRA (stage.lora.enabled=true) is not supported: peft adapters under FSDP "
            "(use_orig_params) failed in FSDP's reshard on torch 2.11 (H100 check, docs/benchmarks.md). LoRA "
            "training keeps the frozen base in bf16 (2 bytes/parameter, 16 GB for 8B), so use trainer=ddp; or set "
            "stage.lora.enabled=false for a sharded full fine-tune"
        )
    if strategy == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
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


RULES = (
    batch_divides_over_devices,
    shuffled_anchor_needs_two_pairs_per_device,
    frozen_decoder_needs_a_named_start,
    data_files_need_a_path,
    trained_weights_keep_their_precision,
    lightning_passthrough_names_trainer_arguments,
    adapter_saves_need_lora_and_a_named_base,
    strategies_fit_the_run,
)


def typed(node: DictConfig):
    """A config node as its schema dataclass (which checks its own ranges as it is built)."""
    return OmegaConf.to_object(node)


def validate(cfg: DictConfig) -> None:
    """Every node's own checks, then the rules that span nodes."""
    for name in NODES:
        typed(cfg[name])
    for rule in RULES:
        rule(cfg)
