"""The Lightning strategy named by `trainer.strategy`, with the model-aware settings a string cannot carry.

Plain names (auto, ddp, ddp_spawn, ...) go to Lightning unchanged. `fsdp` wraps each decoder layer (the classes
the model lists in `_no_split_modules`) as its own FSDP unit and checkpoints activations per layer; `deepspeed`
selects ZeRO stage 2 or 3. Nothing here launches processes or talks to other ranks itself: Lightning does.
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig

from bireco.backbone import Backbone
from bireco.config import ConfigError

log = logging.getLogger(__name__)

SHARDED = ("fsdp", "deepspeed")


def strategy_name(cfg: DictConfig) -> str:
    return str(cfg.trainer.strategy)


def decoder_layer_classes(backbone: Backbone) -> set[type]:
    names = set(getattr(backbone.causal_lm, "_no_split_modules", None) or [])
    classes = {type(m) for m in backbone.causal_lm.modules() if type(m).__name__ in names}
    if not classes:
        raise ConfigError(
            f"trainer.strategy=fsdp: the model ({type(backbone.causal_lm).__name__}) names no decoder layer class in "
            "_no_split_modules, so there is nothing to auto-wrap; use trainer=ddp or trainer=deepspeed"
        )
    return classes


def build_strategy(cfg: DictConfig, backbone: Backbone) -> Any:
    name = strategy_name(cfg)
    if name == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        o = cfg.trainer.fsdp
        layers = decoder_layer_classes(backbone)
        if o.activation_checkpointing and cfg.model.gradient_checkpointing:
            backbone.causal_lm.gradient_checkpointing_disable()  # FSDP checkpoints each layer; never both
            log.info(
                "fsdp: activation checkpointing per decoder layer (model.gradient_checkpointing handed over)"
            )
        return FSDPStrategy(
            auto_wrap_policy=layers,
            activation_checkpointing_policy=layers if o.activation_checkpointing else None,
            sharding_strategy=o.sharding_strategy,
            state_dict_type=o.state_dict_type,
            cpu_offload=o.cpu_offload,
            use_orig_params=True,  # LoRA: frozen and trainable parameters share flat buffers
            limit_all_gathers=True,
        )
    if name == "deepspeed":
        from lightning.pytorch.strategies import DeepSpeedStrategy

        o = cfg.trainer.deepspeed
        return DeepSpeedStrategy(
            stage=o.stage, offload_optimizer=o.offload_optimizer, offload_parameters=o.offload_parameters
        )
    return cfg.trainer.strategy


def is_fsdp(strategy) -> bool:
    from lightning.pytorch.strategies import FSDPStrategy

    return isinstance(strategy, FSDPStrategy)


def is_sharded(strategy) -> bool:
    """Parameters or gradients live in shards across ranks (FSDP, DeepSpeed)."""
    from lightning.pytorch.strategies import DeepSpeedStrategy

    return is_fsdp(strategy) or isinstance(strategy, DeepSpeedStrategy)


def full_state_dict(trainer) -> dict | None:
    """The LightningModule's full (unsharded) state dict on rank 0 (None elsewhere); every rank must call it.
    Under DDP / one device this is the module's own state dict; under FSDP the shards are gathered to rank 0's
    CPU memory; under DeepSpeed ZeRO-3 the partitioned parameters are gathered."""
    from lightning.pytorch.strategies import DeepSpeedStrategy

    strategy = trainer.strategy
    if is_fsdp(strategy):
        from torch.distributed.fsdp import FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        with FSDP.state_dict_type(
            strategy.model,
            StateDictType.FULL_STATE_DICT,
            FullStateDictConfig(offload_to_cpu=True, rank0_only=True),
        ):
            state = strategy.model.state_dict()
        return state if trainer.is_global_zero else None
    if isinstance(strategy, DeepSpeedStrategy) and strategy.zero_stage_3:
        import deepspeed

        module = trainer.lightning_module
        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            state = (
                {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
                if trainer.is_global_zero
                else None
            )
        return state
    return None  # parameters are whole on rank 0: save the module as it is


def backbone_state(full: dict, prefix: str = "backbone.") -> dict:
    """Keys of the LightningModule's state dict -> keys of its Backbone (wrapper prefixes dropped)."""
    out = {}
    for k, v in full.items():
        i = k.find(prefix)
        if i >= 0:
            out[k[i + len(prefix) :]] = v
    return out
