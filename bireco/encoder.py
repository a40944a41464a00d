"""bireco models as mteb encoders, and `bireco.encode(texts)` for users.

Instructions follow the E5 / llm2vec convention: retrieval and reranking put the task instruction on queries
only; every other task type puts it on every input. mteb caches results by model name, so each checkpoint
gets a unique ModelMeta name and revision (a hash of its path and weight files).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bireco.backbone import Backbone
from bireco.data.instructions import load_table
from bireco.precision import autocast, bf16_for
from bireco.text_format import encode_side, pad_sides

log = logging.getLogger(__name__)
QUERY_ONLY_TYPES = {"Retrieval", "Reranking", "InstructionRetrieval", "InstructionReranking"}


def encode_sides(
    backbone: Backbone, texts: list[str], instruction: str | list[str | None] | None, max_length: int
) -> list:
    """Each text tokenised in the backbone's format (with its instruction: one for every text or one per text)."""
    instructions = instruction if isinstance(instruction, list) else [instruction] * len(texts)
    fmt = backbone.text_format
    return [
        encode_side(backbone.tokenizer, fmt.for_instruction(i), t, max_length, i)
        for t, i in zip(texts, instructions)
    ]


@torch.no_grad()
def encode_texts(
    backbone: Backbone,
    texts: list[str],
    instruction: str | list[str | None] | None = None,
    max_length: int = 512,
    batch_size: int | None = None,
    normalize: bool = True,
    progress: bool = False,
    bf16: bool | None = None,
) -> torch.Tensor:
    """(N, H) fp32 embeddings; length-sorted batches (less padding), input order restored. `instruction`: one for
    every text or one per text. `bf16`: run under bf16 autocast (None = the hardware default, bireco.precision).
    `batch_size`: None = default_batch_size(device)."""
    from tqdm.auto import tqdm

    was_training = backbone.training
    backbone.eval()
    device = next(backbone.parameters()).device
    batch_size = batch_size or default_batch_size(device)
    sides = encode_sides(backbone, texts, instruction, max_length)
    order = sorted(range(len(texts)), key=lambda i: -sides[i].length)
    out = torch.empty(len(texts), backbone.hidden_size)
    for start in tqdm(range(0, len(order), batch_size), desc="encoding", disable=not progress, leave=False):
        idx = order[start : start + batch_size]
        batch = {
            k: v.to(device)
            for k, v in pad_sides([sides[i] for i in idx], backbone.pad_id, backbone.padding_side).items()
        }
        with autocast(device, bf16_for(device, bf16)):
            emb = backbone.embed(batch).float()
        out[idx] = (torch.nn.functional.normalize(emb, dim=-1) if normalize else emb).cpu()
    backbone.train(was_training)
    return out


def default_batch_size(device: torch.device | str) -> int:
    """Sequences per forward when encoding: 64 on an accelerator; 16 on a CPU, where batches of 64 took 1.5x as long
    (cache-bound; experiments/bench/encode_batch.py)."""
    return 16 if torch.device(device).type == "cpu" else 64


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

    from bireco.mteb_tasks import BEIR_INSTRUCTIONS, TASK_DATASET

    if task_type in QUERY_ONLY_TYPES and prompt_type != PromptType.query:
        return None
    if task_name in BEIR_INSTRUCTIONS:
        return BEIR_INSTRUCTIONS[task_name]
    if task_name in TASK_DATASET:
        return load_table("wordnet").get(TASK_DATASET[task_name])
    return load_table("builtin_tasks").get(task_name) or load_table("mteb").get(task_name)


def make_mteb_encoder(backbone: Backbone, checkpoint: str | Path, max_length: int = 512, batch_size: int | None = None,
                      progress: bool = True):  # fmt: skip
    """An mteb 2.x encoder around a loaded backbone, with a ModelMeta unique to `checkpoint`."""
    from mteb.models.abs_encoder import AbsEncoder
    from mteb.models.model_meta import ModelMeta

    revision = checkpoint_revision(checkpoint)
    name = f"bireco/{Path(checkpoint).resolve().parent.name}-{Path(checkpoint).name}-{revision[:8]}"
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


def encode(texts: list[str], checkpoint: str | Path, instruction: str | None = None, batch_size: int | None = None,
           max_length: int = 512, device: str | None = None) -> np.ndarray:  # fmt: skip
    """Embed `texts` with a bireco checkpoint (L2-normalised). Queries take an `instruction`, documents none."""
    backbone = Backbone.load(checkpoint)
    if device:
        backbone.to(device)
    elif torch.cuda.is_available():
        backbone.to("cuda")
    return encode_texts(backbone, list(texts), instruction, max_length, batch_size).numpy()
