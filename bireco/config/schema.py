"""Typed config schemas, registered in Hydra's ConfigStore, and the resolvers the YAML files use.

YAML files under `conf/` extend these dataclasses, so a misspelt key or a wrong type fails at composition.
`bireco.config.validate` then checks ranges and combinations that types cannot express, before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from bireco.core.paths import asset_path


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
    # sdpa on a CPU: attention in fp32 while training (bf16's CPU flash backward is slow at short lengths;
    # bireco.model.attention); false = transformers' sdpa as is
    cpu_training_attention_fp32: bool = True
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
    # on a CPU, draw the dropout mask's dropped positions (Poisson) instead of one Bernoulli per element: the same
    # mask distribution, another random stream, Stage II's step 0.63x (bireco.model.dropout); false = nn.Dropout
    # (GPUs always use nn.Dropout)
    cpu_poisson_dropout: bool = True


@dataclass
class OptimConfig:
    lr: float = 4e-5
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 300
    schedule: str = "linear"  # linear | cosine | constant (after warmup)
    # length the decay is sized for; None = schedule_epochs, else trainer.max_steps
    schedule_steps: int | None = None
    # size the decay for this many epochs of the training data (HF Trainer's num_train_epochs): the released runs
    # sized it for 3 epochs and stopped at 2000 / 1000 steps, so their LR ended near 0.8x peak, not 0
    schedule_epochs: float | None = None
    fused: bool | None = None  # None = fused AdamW where torch has the kernel (CUDA, CPU); false = foreach


@dataclass
class AnchorProbeConfig:
    """ "Is my Stage I reading its anchor?" (bireco.training.anchor_probe): every N optimizer steps, on `pairs` held-out pairs
    (WordNet: the dev split; other data: pairs held out of training), no gradient."""

    every_n_steps: int = 50  # 0 = off; also probed before the first step and after the last
    pairs: int = 64
    batch_size: int = 16
    seed: int = 42  # draws the pairs (and the bootstrap's resamples), whatever the training seed


@dataclass
class ReconstructionStageConfig:
    name: str = "reconstruction"
    run_name: str = "stage1"
    alpha: float = 0.2  # weight of EBQ2D (query embedding -> document); 1 - alpha on EBD2Q
    # joint (Algorithm 1: both directions every batch) | alternate (one per micro-batch, faster)
    schedule: str = "joint"
    labels: str = "paper"  # paper | released_code (targets incl. BOS/template/instruction, final EOS masked)
    reconstruct_instruction: bool = False
    # embedding: the method. constant: a control, the decoder gets one fixed vector (the mean input-token embedding)
    # instead of the other side's [EOS] state, so Stage I is LM fine-tuning on the same text, steps and schedule
    # without any reconstruction signal. shuffled: a control, each target is decoded from another pair's embedding
    # (the micro-batch's anchors rolled by one): gradients still reach the encoder, but no pair's own content helps
    anchor: str = "embedding"
    # beyond the paper, off by default and in every preset (docs/method.md §2.4): how the decoder
    # receives the anchor. raw (paper) | token_norm | centered_token_norm | batch_centered_token_norm (in training
    # the batch's own mean anchor subtracted) | affine (token_norm, then a learned
    # H x H map initialised to the identity, at anchor_affine_lr; null = optim.lr); a real token before the anchor
    # (null = the paper, bos, or a token string of the tokenizer)
    anchor_scale: str = "raw"
    anchor_affine_lr: float | None = None
    # a diagnostic, beyond the paper (which back-propagates through the anchor): no gradient from the
    # reconstruction loss into the embedding through the anchor; the shared weights still train as the decoder
    anchor_detach: bool = False
    anchor_lead_token: str | None = None
    # beyond the paper (which decodes with the weights it trains): shared (paper) | frozen (decode with a frozen
    # copy of the start weights; only the encoder side trains, so the loss falls only as the embedding informs)
    decoder: str = "shared"
    # beyond the paper: what the decoder regenerates. other (paper: the pair's other side) | self (the side the
    # anchor came from: Q2Q / D2D, an autoencoding warm-up; α weights the query side as it weights Q2D)
    target: str = "other"
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
    # in-training retrieval check size: queries (non-WordNet data: pairs held out of training) ...
    dev_queries: int = 200
    dev_corpus_size: int = 2000  # ... and documents (their positives and hard negatives, then random glosses)
    num_workers: int = 0


@dataclass
class FSDPConfig:
    # FULL_SHARD (ZeRO-3) | SHARD_GRAD_OP (ZeRO-2) | HYBRID_SHARD (multi-node) | NO_SHARD
    sharding_strategy: str = "FULL_SHARD"
    activation_checkpointing: bool = True  # per decoder layer (replaces model.gradient_checkpointing)
    # checkpoints: sharded (every rank writes its shard) | full (one file, rank 0)
    state_dict_type: str = "sharded"
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
    # optimizer steps between dev retrieval checks (val/ndcg@10); None = off
    dev_check_every_n_steps: int | None = None
    checkpoint_every_n_steps: int | None = None
    deterministic: bool = False
    enable_progress_bar: bool = True
    # raise (stop, name step + dataset) | skip (skip the optimizer step, count it)
    on_nonfinite: str = "raise"
    # on a CPU, malloc keeps large freed buffers for the next step instead of mapping them afresh (the same
    # computation; Stage I's step 0.85x on SmolLM2, experiments/bench/malloc_reuse.py); false: the C library's default
    cpu_keep_freed_memory: bool = True
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
    """Stage I settings that a sweep varies across both stages: Stage I reads them (conf/stage/reconstruction.yaml),
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
    # the variant whose Stage I a Stage II run starts from (None: its own variant)
    stage1_variant: str | None = None
    ablation: AblationConfig = field(default_factory=AblationConfig)
    # extra Lightning callbacks (conf/callbacks), by name
    callbacks: dict[str, Any] = field(default_factory=dict)
    output_root: str = "outputs"
    run_dir: str = MISSING
    seed: int = 42
    resume: str = "never"  # never | auto | <checkpoint path>
    save_mode: str = "full"  # full | merged | adapter
    # per-stage batch / steps of a paper preset (conf/experiment)
    paper: dict[str, Any] = field(default_factory=dict)


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


if not OmegaConf.has_resolver("bireco_asset"):
    OmegaConf.register_new_resolver("bireco_asset", asset_path)


def _offline_lm(name: str) -> str:
    from bireco.tools.offline_lm import offline_lm_path  # converts on first use: only when a config names it

    return offline_lm_path(name)


if not OmegaConf.has_resolver("bireco_lm"):
    OmegaConf.register_new_resolver("bireco_lm", _offline_lm)
