"""A bireco checkpoint directory: Hugging Face weights + tokenizer + `bireco.json` (text format, pooling, adapter).

Written atomically (bireco.core.files.atomic_dir): complete under its final name or absent. Read back by
bireco.model.loading; `checkpoint_weights` says which weights a directory loads, whatever its save mode.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

from bireco.core.choices import Choice
from bireco.core.files import atomic_dir

METADATA_FILE = "bireco.json"


class SaveMode(Choice):
    """`save_mode`: full (weights, LoRA merged in, + the adapter beside) | adapter (the adapter alone) | merged."""

    full = "full"
    adapter = "adapter"
    merged = "merged"


def read_metadata(path: str | os.PathLike) -> dict | None:
    f = Path(path) / METADATA_FILE
    return json.loads(f.read_text()) if f.is_file() else None


def checkpoint_weights(path: str | os.PathLike) -> dict:
    """`model.name_or_path` (+ `adapter`) that load the weights of a checkpoint directory, whatever its save mode:
    an adapter-only directory (save_mode=adapter: no weights, no config.json) loads its recorded base model, then
    its adapter; every other directory loads itself (its adapter/, if any, is found from its bireco.json)."""
    meta = read_metadata(path) or {}
    if meta.get("adapter") and not (Path(path) / "config.json").is_file():
        base = meta.get("base_model")
        if not base:
            raise FileNotFoundError(f"{path}: an adapter-only checkpoint that does not record its base model")
        return {"name_or_path": base, "adapter": str(Path(path) / "adapter")}
    return {"name_or_path": str(path)}


def save(backbone, path: str | os.PathLike, mode: str = "full") -> Path:
    """Write a Hugging Face directory that `AutoModel.from_pretrained` loads as the trained model. full: the weights
    (LoRA merged in) + the LoRA adapter in adapter/ for reference; merged: the weights alone; adapter: the adapter
    alone + the base model's path (bireco loads it; plain transformers cannot). `backbone`: a Backbone (its
    `model`, `tokenizer`, `is_lora`, `causal_lm` and `metadata()`; the Backbone calls this, so no import back)."""
    if mode not in SaveMode.values():
        raise ValueError(f"save mode {mode!r}; valid: {', '.join(SaveMode.values())}")
    if mode == "adapter" and not backbone.is_lora:
        raise ValueError("save mode 'adapter' needs a LoRA backbone")
    path = Path(path)
    meta = backbone.metadata()
    meta["adapter"] = False
    if mode == "adapter":
        base = backbone.causal_lm.config.name_or_path
        if not base:
            raise ValueError("save mode 'adapter' needs a base model loadable by name or path; this one was built "
                             "from model.architecture (random weights): use save mode 'full'")  # fmt: skip
    with atomic_dir(path) as tmp:
        if mode == "merged" and backbone.is_lora:
            copy.deepcopy(backbone.model).merge_and_unload().save_pretrained(tmp)
        elif mode == "adapter":
            backbone.model.save_pretrained(tmp / "adapter")
            meta["adapter"] = True
            # loadable from any working directory
            meta["base_model"] = str(Path(base).resolve()) if Path(base).is_dir() else base
        elif backbone.is_lora:
            # full: merged weights (plain transformers loads the trained model) + the adapter beside, for reference
            copy.deepcopy(backbone.model).merge_and_unload().save_pretrained(tmp)
            backbone.model.save_pretrained(tmp / "adapter")
            meta["adapter_beside"] = "adapter"  # already merged into the weights: never re-applied
        else:
            backbone.model.save_pretrained(tmp)
        backbone.tokenizer.save_pretrained(tmp)
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2))
    return path
