"""The Lightning strategy named by `trainer.strategy`, with the model-aware settings a string cannot carry.

Plain names (auto, ddp, ddp_spawn, ...) go to Lightning unchanged. `fsdp` wraps each decoder layer (the classes
the model lists in `_no_split_modules`) as its own FSDP unit and checkpoints activations per layer; `deepspeed`
selects ZeRO stage 2 or 3. Nothing here launches processes or talks to other ranks itself: Lightning does.
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig

from bireco.core.errors import ConfigError
from bireco.model.backbone import Backbone

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
