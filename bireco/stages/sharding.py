"""What a stage module needs to know about sharded strategies: whether parameters live in shards, and how to get
the full weights back on rank 0 at the end of training. Nothing here launches processes: Lightning does."""

from __future__ import annotations


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
