"""Typed config schemas, registered in Hydra's ConfigStore, and the resolvers the YAML files use.

YAML files under `conf/` extend these dataclasses, so a misspelt key, a wrong type or a value outside a closed set
(an Enum field) fails at composition, with the valid keys or values. A node's own ranges are checked by its
dataclass (`__post_init__`, when bireco.config.validate builds it); the code that runs a stage, the backbone or the
data takes its node whole, so a new setting is one field here and one place that reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from bireco.core.choices import Choice, choice
from bireco.core.errors import ConfigError
from bireco.core.paths import asset_path
from bireco.data.records import DataFormat, OnBadRecord
from bireco.data.samplers import Batching
from bireco.model.anchor import Labels
from bireco.model.anchor_controls import AnchorSource, Decoder
from bireco.model.backbone import Attention
from bireco.model.checkpoint import SaveMode
from bireco.model.loading import Dtype
from bireco.model.pooling import Pooling
from bireco.model.text_format import PaddingSide


class Schedule(Choice):
    """`stage.schedule` of Stage I: joint (both directions every batch, Algorithm 1) | alternate (one per batch)."""

    joint = "joint"
    alternate = "alternate"


class LrSchedule(Choice):
    """`stage.optim.schedule` after the warmup."""

    linear = "linear"
    cosine = "cosine"
    constant = "constant"


OnNonFinite = choice("OnNonFinite", "raise", "skip", module=__name__)  # `trainer.on_nonfinite`


class WandbMode(Choice):
    """`logger.mode`: auto (offline without an API key) | online | offline | disabled."""

    auto = "auto"
    online = "online"
    offline = "offline"
    disabled = "disabled"


class ShardingStrategy(Choice):
    """`trainer.fsdp.sharding_strategy`: FULL_SHARD (ZeRO-3) | SHARD_GRAD_OP (ZeRO-2) | HYBRID_SHARD | NO_SHARD."""

    FULL_SHARD = "FULL_SHARD"
    SHARD_GRAD_OP = "SHARD_GRAD_OP"
    HYBRID_SHARD = "HYBRID_SHARD"
    NO_SHARD = "NO_SHARD"


class StateDictType(Choice):
    """`trainer.fsdp.state_dict_type` of checkpoints: sharded (every rank its shard) | full (one file, rank 0)."""

    sharded = "sharded"
    full = "full"


def require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


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
    dtype: Dtype = Dtype.auto  # auto = bf16 on a bf16 GPU, fp32 on CPU
    attn_implementation: str = "sdpa"
    gradient_checkpointing: bool = False
    compile: bool = False  # torch.compile the transformer body (pays on GPU, most of all under LoRA)
    trust_remote_code: bool = False
    pooling: Pooling = Pooling.last
    attention: Attention = Attention.causal  # attention of embedding passes; decoding is always causal
    padding_side: PaddingSide = PaddingSide.left
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
    schedule: LrSchedule = LrSchedule.linear  # after warmup
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

    def __post_init__(self):
        require(self.every_n_steps >= 0 and (not self.every_n_steps or (self.pairs >= 2 and self.batch_size >= 2)),
                "stage.probe: every_n_steps >= 0 (0 = off), pairs >= 2 and batch_size >= 2")  # fmt: skip


@dataclass
class ReconstructionStageConfig:
    """Stage I (bireco.stages.reconstruction): the paper's options, then the controls beyond it."""

    name: str = "reconstruction"
    run_name: str = "stage1"
    alpha: float = 0.2  # weight of EBQ2D (query embedding -> document); 1 - alpha on EBD2Q
    # joint (Algorithm 1: both directions every batch) | alternate (one per micro-batch, faster)
    schedule: Schedule = Schedule.joint
    labels: Labels = (
        Labels.paper
    )  # paper | released_code (targets incl. BOS/template/instruction, final EOS masked)
    reconstruct_instruction: bool = False
    # beyond the paper, its controls (bireco.model.anchor_controls): embedding (the method) | constant (one fixed vector
    # for every pair: LM fine-tuning on the same text without any reconstruction signal) | shuffled (each target
    # decoded from another pair's anchor: gradients reach the encoder, but no pair's own content helps)
    anchor: AnchorSource = AnchorSource.embedding
    # beyond the paper: shared (the paper: the trained weights decode) | frozen (a frozen copy of the start weights
    # decodes; only the encoder side trains, so the loss falls only as the embedding informs)
    decoder: Decoder = Decoder.shared
    probe: AnchorProbeConfig = field(default_factory=lambda: AnchorProbeConfig())
    init_from: str = "base"
    lora: LoraConfig = field(default_factory=LoraConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def __post_init__(self):
        require(
            0.0 <= self.alpha <= 1.0,
            f"stage.alpha={self.alpha} must be in [0, 1] (weight of EBQ2D; paper: 0.2)",
        )
        require(
            not (self.decoder == Decoder.frozen and self.anchor == AnchorSource.constant),
            "stage.decoder=frozen with stage.anchor=constant: nothing would train (the frozen decoder gets no update "
            "and a constant anchor sends no gradient to the encoder)",
        )


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

    def __post_init__(self):
        require(self.scale > 0, f"stage.scale={self.scale} must be > 0 (1/temperature; paper: 50)")
        require(self.grad_cache_chunk_size is None or self.grad_cache_chunk_size >= 1,
                "stage.grad_cache_chunk_size must be >= 1 or null")  # fmt: skip


@dataclass
class DataConfig:
    name: str = MISSING
    format: DataFormat = DataFormat.wordnet
    path: str | None = None
    datasets: list[str] | None = None  # subset of files / source datasets
    fields: dict[str, str] = field(default_factory=dict)  # generic formats: our name -> column name
    instructions: str | None = None  # table name in bireco/data/tables or a path
    instruction: str | None = None  # one instruction for every record of a generic dataset
    max_query_length: int = 64
    max_doc_length: int = 128
    num_hard_negatives: int = 1
    global_batch_size: int = 32
    batching: Batching = Batching.homogeneous  # one source dataset per global batch | mixed
    bucket_by_length: bool = False
    on_bad_record: OnBadRecord = OnBadRecord.error
    max_train_records: int | None = None
    # in-training retrieval check size: queries (non-WordNet data: pairs held out of training) ...
    dev_queries: int = 200
    dev_corpus_size: int = 2000  # ... and documents (their positives and hard negatives, then random glosses)
    num_workers: int = 0

    def __post_init__(self):
        require(self.num_hard_negatives >= 0, "data.num_hard_negatives must be >= 0")


@dataclass
class FSDPConfig:
    sharding_strategy: ShardingStrategy = ShardingStrategy.FULL_SHARD
    activation_checkpointing: bool = True  # per decoder layer (replaces model.gradient_checkpointing)
    state_dict_type: StateDictType = StateDictType.sharded
    cpu_offload: bool = False


@dataclass
class DeepSpeedConfig:
    stage: int = 2  # ZeRO stage: 2 (optimizer + gradients sharded) | 3 (parameters too)
    offload_optimizer: bool = False
    offload_parameters: bool = False

    def __post_init__(self):
        require(self.stage in (2, 3), f"trainer.deepspeed.stage={self.stage}; valid: 2, 3")


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
    on_nonfinite: OnNonFinite = OnNonFinite["raise"]
    # the CPU fast path (bireco.cpu): every CPU-only speed trick, for training runs on a CPU; true in trainer=cpu only
    cpu_fast_path: bool = False
    fsdp: FSDPConfig = field(default_factory=FSDPConfig)  # read when strategy=fsdp
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)  # read when strategy=deepspeed
    # any other lightning.Trainer argument (fast_dev_run, limit_train_batches, profiler, ...), checked by name:
    #   +trainer.lightning.profiler=simple
    lightning: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        require(self.max_steps >= 1, "trainer.max_steps must be >= 1")


@dataclass
class LoggerConfig:
    wandb: bool = False
    project: str = "bireco"
    mode: WandbMode = WandbMode.auto  # auto: offline without an API key


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
    save_mode: SaveMode = SaveMode.full
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
