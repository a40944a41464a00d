"""From a `conf/model` node or a bireco checkpoint to the parts a Backbone is made of: the causal LM (loaded by hub
id / local path with `from_pretrained`, or random-init from an inline config), its tokenizer and text format, a
saved adapter merged in, LoRA applied, gradient checkpointing. Local directories must hold safetensors."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bireco.core.choices import Choice
from bireco.core.errors import CheckpointNotFound, ConfigError
from bireco.core.files import partial_writes
from bireco.model.checkpoint import METADATA_FILE, checkpoint_weights, read_metadata
from bireco.model.text_format import TextFormat

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class Dtype(Choice):
    """`model.dtype`: the weights' dtype; auto = bf16 on a bf16 GPU, fp32 elsewhere."""

    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


def resolve_dtype(name: str, key: str = "model.dtype") -> torch.dtype:
    """`auto`: bf16 weights on a bf16 GPU, fp32 elsewhere (a CPU encodes them under bf16 autocast where it pays)."""
    if name == "auto":
        return (
            torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
        )
    if name not in DTYPES:
        raise ConfigError(f"{key}={name!r}; valid: auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def as_dict(node: Any) -> dict:
    """A config node (OmegaConf, dataclass, mapping or None) as a plain dict."""
    if node is None:
        return {}
    if isinstance(node, dict):
        return node
    from omegaconf import OmegaConf

    if OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    if hasattr(node, "__dataclass_fields__"):
        return asdict(node)
    return dict(node)


def backbone_parts(model_cfg: Any, lora_cfg: Any | None = None) -> dict:
    """Keyword arguments of `Backbone(...)` for a `conf/model` node (+ `stage.lora`)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    cfg = as_dict(model_cfg)
    trust = bool(cfg.get("trust_remote_code", False))
    dtype = resolve_dtype(cfg.get("dtype", "auto"))
    attn = cfg.get("attn_implementation", "sdpa")
    if attn == "flash_attention_2":  # fail here, before any weights load
        try:
            import flash_attn  # noqa: F401
        except ImportError as err:
            raise ValueError(
                "model.attn_implementation=flash_attention_2 needs `pip install flash-attn`"
            ) from err
    name = cfg.get("name_or_path")
    tok_name = cfg.get("tokenizer") or name
    if tok_name is None:
        raise ValueError("model.tokenizer (or model.name_or_path) must be set")
    tokenizer = AutoTokenizer.from_pretrained(tok_name, trust_remote_code=trust)
    meta = read_metadata(name) if name else None
    if name:
        check_model_dir(name, cfg.get("expected_model_type"))
        model = AutoModelForCausalLM.from_pretrained(
            name,
            dtype=dtype,
            attn_implementation=attn,
            trust_remote_code=trust,
            use_safetensors=True if Path(name).is_dir() else None,  # never unpickle a local .bin
        )
    else:
        arch = dict(cfg.get("architecture") or {})
        if not arch:
            raise ValueError("model.name_or_path is empty and model.architecture gives no inline config")
        arch.setdefault("vocab_size", len(tokenizer))
        model_type = arch.pop("model_type")
        hf_config = AutoConfig.for_model(model_type, **arch)
        model = AutoModelForCausalLM.from_config(hf_config, attn_implementation=attn, dtype=dtype)
    adapter = cfg.get("adapter") or (os.path.join(name, "adapter") if meta and meta.get("adapter") else None)
    if adapter:
        from peft import PeftModel

        # a saved Stage II adapter becomes part of the base for the next stage
        model = PeftModel.from_pretrained(model, adapter, is_trainable=False).merge_and_unload()
    if cfg.get("gradient_checkpointing", False):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if lora_cfg is not None and as_dict(lora_cfg).get("enabled", False):
        model = apply_lora(model, as_dict(lora_cfg), cfg.get("lora_target_modules"))
    return {
        "model": model,
        "tokenizer": tokenizer,
        "text_format": TextFormat(**as_dict(cfg["text_format"])),
        "pooling": cfg.get("pooling", "last"),
        "attention": cfg.get("attention", "causal"),
        "padding_side": cfg.get("padding_side", "left"),
        "ce_chunk_size": int(cfg.get("ce_chunk_size", 4096)),
        "attn_implementation": str(attn),
    }


def checkpoint_model_cfg(path: str | os.PathLike, dtype: str = "auto") -> dict:
    """The `conf/model` node that loads a directory written by `Backbone.save` (any mode): its bireco.json's text
    format and pooling, its weights and tokenizer."""
    meta = read_metadata(path)
    if meta is None:
        p = Path(path)
        if not p.exists():
            partial = partial_writes(p)
            hint = (
                f" ({partial[0]} exists: that run's save did not finish; train it again)" if partial else ""
            )
            raise CheckpointNotFound(f"{path}: no such checkpoint directory{hint}")
        raise CheckpointNotFound(
            f"{path}: no {METADATA_FILE}; not a bireco checkpoint (use model.name_or_path instead)"
        )
    return dict(
        meta["model"], tokenizer=str(path), dtype=dtype, architecture=None, **checkpoint_weights(path)
    )


def apply_lora(model: nn.Module, lora: dict, family_targets: list[str] | None) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    targets = lora.get("target_modules") or family_targets
    if not targets:
        raise ValueError(
            "LoRA is enabled but neither stage.lora.target_modules nor model.lora_target_modules is set"
        )
    targets = list(targets)
    if "lm_head" in targets:
        raise ValueError("LoRA on lm_head is not supported (the chunked CE reads lm_head.weight directly)")
    config = LoraConfig(
        r=int(lora.get("r", 16)),
        lora_alpha=int(lora.get("alpha", 32)),
        lora_dropout=float(lora.get("dropout", 0.05)),
        target_modules=targets,
        bias="none",
    )
    return get_peft_model(model, config)


def check_model_dir(name: str, expected_model_type: str | None = None) -> None:
    """A local `model.name_or_path` must be a Hugging Face directory with safetensors weights of the expected
    family; a hub id is left to `from_pretrained`."""
    p = Path(name)
    if not p.exists():
        if name.startswith((".", "/", "~")) or os.sep in name and not _looks_like_hub_id(name):
            raise FileNotFoundError(f"model.name_or_path={name!r}: directory does not exist")
        return
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"{p}: missing config.json; not a Hugging Face model directory")
    if not any(p.glob("*.safetensors")):
        raise FileNotFoundError(
            f"{p}: no *.safetensors weights (pickled .bin weights are refused for safety)"
        )
    if expected_model_type:
        found = json.loads((p / "config.json").read_text()).get("model_type")
        if found != expected_model_type:
            raise ValueError(
                f"{p}: checkpoint is a {found!r} model but the model config expects {expected_model_type!r}; "
                "pick the matching model= family"
            )


def _looks_like_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith(("/", "."))
