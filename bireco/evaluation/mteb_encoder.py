"""bireco models as mteb encoders.

Instructions follow the E5 / llm2vec convention: retrieval and reranking put the task instruction on queries
only; every other task type puts it on every input. mteb caches results by model name, so each checkpoint
gets a unique ModelMeta name and revision (a hash of its path and weight files).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from bireco.data.instructions import load_table
from bireco.evaluation.tasks import BEIR_INSTRUCTIONS, TASK_DATASET
from bireco.model.backbone import Backbone
from bireco.model.encode import encode_texts
from bireco.model.loading import resolve_dtype

QUERY_ONLY_TYPES = {"Retrieval", "Reranking", "InstructionRetrieval", "InstructionReranking"}


def checkpoint_revision(path: str | Path) -> str:
    p = Path(path).resolve()
    h = hashlib.sha256(str(p).encode())
    for f in sorted(p.rglob("*.safetensors")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def instruction_for_task(task_name: str, task_type: str, prompt_type: Any) -> str | None:
    """Instruction of an mteb task for this input side (None for retrieval/reranking documents): the MTEB table,
    or for bireco's built-in tasks the instruction their training data uses (WordNet) or builtin_tasks.yaml."""
    from mteb.types import PromptType

    if task_type in QUERY_ONLY_TYPES and prompt_type != PromptType.query:
        return None
    if task_name in BEIR_INSTRUCTIONS:
        return BEIR_INSTRUCTIONS[task_name]
    if task_name in TASK_DATASET:
        return load_table("wordnet").get(TASK_DATASET[task_name])
    return load_table("builtin_tasks").get(task_name) or load_table("mteb").get(task_name)


def make_mteb_encoder(backbone: Backbone, checkpoint: str | Path, max_length: int = 512, batch_size: int | None = None,
                      progress: bool = True, dtype: str = "auto"):  # fmt: skip
    """An mteb 2.x encoder around a loaded backbone, with a ModelMeta unique to `checkpoint` and to the `dtype` its
    weights were loaded in, `auto` named by what it resolves to here (bf16 on a bf16 GPU, fp32 on a CPU): a result
    saved under one is not reused for another (runner.evaluate_model keys reuse by this name)."""
    from mteb.models.abs_encoder import AbsEncoder
    from mteb.models.model_meta import ModelMeta

    revision = checkpoint_revision(checkpoint)
    name = f"bireco/{Path(checkpoint).resolve().parent.name}-{Path(checkpoint).name}-{revision[:8]}"
    name += f"-{dtype}" if dtype != "auto" else f"-auto-{str(resolve_dtype('auto')).removeprefix('torch.')}"
    meta = ModelMeta(
        loader=None, name=name, revision=revision, release_date=None, languages=None,
        n_parameters=sum(p.numel() for p in backbone.parameters()), memory_usage_mb=None, max_tokens=max_length,
        embed_dim=backbone.hidden_size, license=None, open_weights=True, public_training_code=None,
        public_training_data=None, framework=["PyTorch"], similarity_fn_name="cosine", use_instructions=True,
        training_datasets=None,
    )  # fmt: skip

    class BirecoEncoder(AbsEncoder):
        def __init__(self):
            self.model = backbone
            self.mteb_model_meta = meta

        def encode(
            self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs
        ) -> np.ndarray:
            texts = [t for batch in inputs for t in batch["text"]]
            instruction = instruction_for_task(task_metadata.name, task_metadata.type, prompt_type)
            emb = encode_texts(backbone, texts, instruction, max_length, batch_size, progress=progress)
            return emb.numpy()

    return BirecoEncoder()
