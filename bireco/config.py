"""Typed config schemas (registered in Hydra's ConfigStore) and start-up validation.

YAML files under `bireco/conf/` extend these dataclasses, so a misspelt key or a wrong type fails at composition.
`validate(cfg)` then checks ranges and combinations that types cannot express -- before any model loads.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


@dataclass
class TextFormatConfig:
    eos_token: str = MISSING  # the [EOS] token read by last pooling; a single token of the tokenizer
    prefix: str = ""  # chat header before the text (family template)
    add_bos: bool = False
    instruction_separator: str = "; "


@dataclass
class ModelConfig:
    family: str = MISSING
    name_or_path: str | None = None  # hub id or local dir; None -> random init from `architecture`
    tokenizer: str | None = None  # defaults to name_or_path
    architecture: dict[str, Any] | None = None  # inline HF config (model_type + kwargs) for random init
    expected_model_type: str | None = None  # a local checkpoint of another family fails clearly
    dtype: str = "auto"  # auto = bf16 on a bf16 GPU, fp32 on CPU
    attn_implementation: str = "sdpa"
    gradient_checkpointing: bool = False
    compile: bool = False  # torch.compile the transformer body (pays on GPU, most of all under LoRA)
    trust_remote_code: bool = False
    pooling: str = "last"
    attention: str = "causal"  # attention of embedding passes; decoding is always causal
    padding_side: str = "left"
    ce_chunk_size: int = 4096
    lora_target_modules: list[str] = field(default_factory=list)
    text_format: TextFormatConfig = field(default_factory=TextFormatConfig)


@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | None = None  # None -> model.lora_target_modules


@dataclass
class OptimConfig:
    lr: float = 4e-5
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 300
    schedule: str = "linear"  # linear | cosine | constant (after warmup)
    schedule_steps: int | None = (
        None  # length the decay is sized for; None = schedule_epochs, else trainer.max_steps
    )
    # size the decay for this many epochs of the training data (HF Trainer's num_train_epochs): the released runs
    # sized it for 3 epochs and stopped at 2000 / 1000 steps, so their LR ended near 0.8x peak, not 0
    schedule_epochs: float | None = None
    fused: bool | None = None  # None = fused AdamW on CUDA


@dataclass
class AnchorProbeConfig:
    """ "Is my Stage I reading its anchor?" (bireco.anchor_probe): every N optimizer steps, on `pairs` held-out pairs
    (WordNet: the dev split; other data: pairs held out of training), no gradient."""

    every_n_steps: int = 50  # 0 = off; also probed before the first step and after the last
    pairs: int = 64
    batch_size: int = 16


@dataclass
class ReconstructionStageConfig:
    name: str = "reconstruction"
    run_name: str = "stage1"
    alpha: float = 0.2  # weight of EBQ2D (query embedding -> document); 1 - alpha on EBD2Q
    schedule: str = (
        "joint"  # joint (Algorithm 1: both directions every batch) | alternate (one per micro-batch, faster)
    )
    labels: str = "paper"  # paper | released_code (targets incl. BOS/template/instruction, final EOS masked)
    reconstruct_instruction: bool = False
    # embedding: the method. constant: a control, the decoder gets one fixed vector (the mean input-token embedding)
    # instead of the other side's [EOS] state, so Stage I is LM fine-tuning on the same text, steps and schedule
    # without any reconstruction signal
    anchor: str = "embedding"
    # beyond the paper, off by default and in every preset (docs/method.md, "Anchor conditioning"): how the decoder
    # receives the anchor. raw (paper) | token_norm | centered_token_norm; a real token before the anchor
    # (null = the paper, bos, or a token string of the tokenizer)
    anchor_scale: str = "raw"
    anchor_lead_token: str | None = None
    probe: AnchorProbeConfig = field(default_factory=lambda: AnchorProbeConfig())
    init_from: str = "base"
    lora: LoraConfig = field(default_factory=LoraConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)


@dataclass
class ContrastiveStageConfig:
    name: str = "contrastive"
    run_name: str = "stage2"
    scale: float = 50.0  # 1 / temperature
    symmetric: bool = False  # add the document -> query InfoNCE term
    gather_across_devices: bool = True
    grad_cache_chunk_size: int | None = None  # GradCache sub-batch size; None = off
    init_from: str = "stage1"  # stage1 (this experiment's Stage I output) | base | a checkpoint path
    lora: LoraConfig = field(default_factory=lambda: LoraConfig(enabled=True))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-4))


@dataclass
class DataConfig:
    name: str = MISSING
    format: str = "wordnet"  # wordnet | e5 | jsonl | parquet | disk
    path: str | None = None
    datasets: list[str] | None = None  # subset of files / source datasets
    fields: dict[str, str] = field(default_factory=dict)  # generic formats: our name -> column name
    instructions: str | None = None  # table name in bireco/data/tables or a path
    instruction: str | None = None  # one instruction for every record of a generic dataset
    max_query_length: int = 64
    max_doc_length: int = 128
    num_hard_negatives: int = 1
    global_batch_size: int = 32
    batching: str = "homogeneous"  # homogeneous (one source dataset per global batch) | mixed
    bucket_by_length: bool = False
    on_bad_record: str = "error"  # error | skip
    max_train_records: int | None = None
    dev_queries: int = (
        200  # in-training retrieval check size: queries (non-WordNet data: pairs held out of training) ...
    )
    dev_corpus_size: int = 2000  # ... and documents (their positives and hard negatives, then random glosses)
    num_workers: int = 0


@dataclass
class FSDPConfig:
    sharding_strategy: str = (
        "FULL_SHARD"  # FULL_SHARD (ZeRO-3) | SHARD_GRAD_OP (ZeRO-2) | HYBRID_SHARD (multi-node) | NO_SHARD
    )
    activation_checkpointing: bool = True  # per decoder layer (replaces model.gradient_checkpointing)
    state_dict_type: str = (
        "sharded"  # checkpoints: sharded (every rank writes its shard) | full (one file, rank 0)
    )
    cpu_offload: bool = False


@dataclass
class DeepSpeedConfig:
    stage: int = 2  # ZeRO stage: 2 (optimizer + gradients sharded) | 3 (parameters too)
    offload_optimizer: bool = False
    offload_parameters: bool = False


@dataclass
class TrainerConfig:
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: Any = "auto"
    precision: Any = "32-true"
    max_steps: int = 100
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = 1.0
    log_every_n_steps: int = 10
    dev_check_every_n_steps: int | None = (
        None  # optimizer steps between dev retrieval checks (val/ndcg@10); None = off
    )
    checkpoint_every_n_steps: int | None = None
    deterministic: bool = False
    enable_progress_bar: bool = True
    on_nonfinite: str = (
        "raise"  # raise (stop, name step + dataset) | skip (skip the optimizer step, count it)
    )
    fsdp: FSDPConfig = field(default_factory=FSDPConfig)  # read when strategy=fsdp
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)  # read when strategy=deepspeed
    # any other lightning.Trainer argument (fast_dev_run, limit_train_batches, profiler, ...), checked by name:
    #   +trainer.lightning.profiler=simple
    lightning: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoggerConfig:
    wandb: bool = False
    project: str = "bireco"
    mode: str = "auto"  # auto (offline without an API key) | online | offline | disabled


@dataclass
class AblationConfig:
    """Stage I settings that a sweep varies across both stages: Stage I reads them (bireco/conf/stage/reconstruction.yaml),
    and a swept Stage II carries them in its variant name, so it starts from the Stage I of the same value."""

    alpha: float = 0.2  # stage.alpha of Stage I unless set there directly


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    size: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    stage: Any = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    experiment_name: str = "default"
    variant: str = "default"
    stage1_variant: str | None = (
        None  # the variant whose Stage I a Stage II run starts from (None: its own variant)
    )
    ablation: AblationConfig = field(default_factory=AblationConfig)
    callbacks: dict[str, Any] = field(
        default_factory=dict
    )  # extra Lightning callbacks (bireco/conf/callbacks), by name
    output_root: str = "outputs"
    run_dir: str = MISSING
    seed: int = 42
    resume: str = "never"  # never | auto | <checkpoint path>
    save_mode: str = "full"  # full | merged | adapter
    paper: dict[str, Any] = field(
        default_factory=dict
    )  # per-stage batch / steps of a paper preset (bireco/conf/experiment)


def register_configs() -> None:
    cs = ConfigStore.instance()
    # outside every config group (a group file takes its schema with `- /<name>@_here_`), so --help, Hydra's
    # "did you mean" and tab completion offer only real choices
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="model_schema", node=ModelConfig)
    cs.store(name="data_schema", node=DataConfig)
    cs.store(name="reconstruction_schema", node=ReconstructionStageConfig)
    cs.store(name="contrastive_schema", node=ContrastiveStageConfig)
    cs.store(name="trainer_schema", node=TrainerConfig)
    cs.store(name="logger_schema", node=LoggerConfig)


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the override to fix."""


def _choice(value: str, valid: tuple[str, ...], key: str) -> None:
    if value not in valid:
        raise ConfigError(f"{key}={value!r} is not valid; choose one of: {', '.join(valid)}")


# Trainer arguments bireco sets from its own keys: passing them through trainer.lightning would fight those
SET_BY_BIRECO = ("accelerator", "devices", "num_nodes", "strategy", "precision", "max_steps", "accumulate_grad_batches",
                 "gradient_clip_val", "log_every_n_steps", "deterministic", "enable_progress_bar", "logger", "callbacks",
                 "default_root_dir", "use_distributed_sampler", "enable_checkpointing")  # fmt: skip


def _check_lightning_passthrough(cfg: DictConfig) -> None:
    """trainer.lightning names real lightning.Trainer arguments (a typo fails here with the closest names)."""
    import difflib
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
    from bireco.precision import resolve_precision, weights_dtype

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
    _choice(cfg.model.pooling, ("last", "mean", "weighted_mean"), "model.pooling")
    _choice(cfg.model.attention, ("causal", "bidirectional"), "model.attention")
    _choice(cfg.model.padding_side, ("left", "right"), "model.padding_side")
    _choice(cfg.model.dtype, ("auto", "float32", "bfloat16", "float16"), "model.dtype")
    _choice(cfg.data.format, ("wordnet", "e5", "jsonl", "parquet", "disk"), "data.format")
    _choice(cfg.data.batching, ("homogeneous", "mixed"), "data.batching")
    _choice(cfg.data.on_bad_record, ("error", "skip"), "data.on_bad_record")
    _choice(cfg.save_mode, ("full", "merged", "adapter"), "save_mode")
    _choice(cfg.trainer.on_nonfinite, ("raise", "skip"), "trainer.on_nonfinite")
    _choice(s.optim.schedule, ("linear", "cosine", "constant"), "stage.optim.schedule")
    if s.name == "reconstruction":
        if not 0.0 <= s.alpha <= 1.0:
            raise ConfigError(f"stage.alpha={s.alpha} must be in [0, 1] (weight of EBQ2D; paper: 0.2)")
        _choice(s.schedule, ("alternate", "joint"), "stage.schedule")
        _choice(s.labels, ("paper", "released_code"), "stage.labels")
        _choice(s.anchor, ("embedding", "constant"), "stage.anchor")
        _choice(s.anchor_scale, ("raw", "token_norm", "centered_token_norm"), "stage.anchor_scale")
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


def suggest_key(cfg: DictConfig, dotted: str) -> str:
    """Message for an unknown key: lists the valid keys at that level and the closest match."""
    parent_path, _, leaf = dotted.rpartition(".")
    node = OmegaConf.select(cfg, parent_path) if parent_path else cfg
    if not OmegaConf.is_dict(node):
        return f"unknown config key {dotted!r}"
    valid = sorted(str(k) for k in node.keys())
    close = difflib.get_close_matches(leaf, valid, n=1)
    hint = f" Did you mean {(parent_path + '.' if parent_path else '') + close[0]!r}?" if close else ""
    return f"unknown config key {dotted!r}.{hint} Valid keys under {parent_path or '<root>'!r}: {', '.join(valid)}"


def asset_path(name: str) -> str:
    from importlib import resources

    return str(resources.files("bireco.assets").joinpath(name))


if not OmegaConf.has_resolver("bireco_asset"):
    OmegaConf.register_new_resolver("bireco_asset", asset_path)


def _offline_lm(name: str) -> str:
    from bireco.offline_lm import offline_lm_path

    return offline_lm_path(name)


if not OmegaConf.has_resolver("bireco_lm"):
    OmegaConf.register_new_resolver("bireco_lm", _offline_lm)
