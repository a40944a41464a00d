"""The one model module both stages share: a Hugging Face causal LM used as encoder *and* decoder.

- `embed(...)`: hidden states -> pooled vector, padding-side agnostic (position ids from the mask).
- `reconstruction_loss(anchor, ...)`: the anchor vector is prepended as one input position
  (`inputs_embeds`) and the other side is decoded with teacher forcing; CE only at label positions.
- `save(...)` / `Backbone.load(...)`: Hugging Face format (full, adapter or merged), plus a small
  `bireco.json` that records the text format and pooling so a checkpoint is self-describing.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bireco.losses.chunked_ce import chunked_cross_entropy
from bireco.pooling import POOLING_MODES, pool
from bireco.text_format import TextFormat

METADATA_FILE = "bireco.json"
SAVE_MODES = ("full", "adapter", "merged")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class CheckpointNotFound(FileNotFoundError):
    """A path given as a checkpoint that holds no bireco checkpoint: a user's input, reported in one line."""


@dataclass
class ReconstructionOutput:
    loss: torch.Tensor  # token-mean CE over label positions
    n_tokens: int
    n_correct: torch.Tensor  # on the device: reading it would cost a host sync per step

    @property
    def accuracy(self) -> torch.Tensor:
        return self.n_correct.float() / max(self.n_tokens, 1)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """0, 1, 2, ... over real tokens whatever the padding side (pads get 0; they are masked anyway)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)


def right_padding_order(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) column order that moves every row's real tokens to the front, keeping their order."""
    return torch.sort((attention_mask == 0).to(torch.int8), dim=1, stable=True).indices


def to_right_padding(*tensors: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
    """Move real tokens of every row to the front (stable), so 'next position' means 'next real token'."""
    order = right_padding_order(attention_mask)  # (B, T)
    return [t.gather(1, order) for t in (*tensors, attention_mask)]


def resolve_dtype(name: str) -> torch.dtype:
    if name == "auto":
        return (
            torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
        )
    if name not in DTYPES:
        raise ValueError(f"model.dtype={name!r}; valid: auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def resolve_attn_implementation(name: str) -> str:
    if name == "flash_attention_2":
        try:
            import flash_attn  # noqa: F401
        except ImportError as err:
            raise ValueError(
                "model.attn_implementation=flash_attention_2 needs `pip install flash-attn`"
            ) from err
    return name


class Backbone(nn.Module):
    """A causal LM + tokenizer + text format + pooling. Stage modules call only this interface."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        text_format: TextFormat,
        pooling: str = "last",
        attention: str = "causal",
        padding_side: str = "left",
        ce_chunk_size: int = 4096,
    ):
        super().__init__()
        if pooling not in POOLING_MODES:
            raise ValueError(f"model.pooling={pooling!r}; valid: {', '.join(POOLING_MODES)}")
        if attention not in ("causal", "bidirectional"):
            raise ValueError(f"model.attention={attention!r}; valid: causal, bidirectional")
        self.model = model
        self.tokenizer = tokenizer
        self.text_format = text_format
        self.pooling = pooling
        self.attention = attention
        self.padding_side = padding_side
        self.ce_chunk_size = ce_chunk_size
        text_format.eos_id(tokenizer)  # fail early if the family's EOS is not a token

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, model_cfg: Any, lora_cfg: Any | None = None) -> Backbone:
        """Build from a `bireco/conf/model` node: load by hub id / local path, or random-init from an inline config."""
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        cfg = _as_dict(model_cfg)
        trust = bool(cfg.get("trust_remote_code", False))
        dtype = resolve_dtype(cfg.get("dtype", "auto"))
        attn = resolve_attn_implementation(cfg.get("attn_implementation", "sdpa"))
        name = cfg.get("name_or_path")
        tok_name = cfg.get("tokenizer") or name
        if tok_name is None:
            raise ValueError("model.tokenizer (or model.name_or_path) must be set")
        tokenizer = AutoTokenizer.from_pretrained(tok_name, trust_remote_code=trust)
        meta = _read_metadata(name) if name else None
        if name:
            _check_checkpoint_dir(name, cfg)
            model = AutoModelForCausalLM.from_pretrained(
                name,
                dtype=dtype,
                attn_implementation=attn,
                trust_remote_code=trust,
                use_safetensors=_local_safetensors(name),
            )
        else:
            arch = dict(cfg.get("architecture") or {})
            if not arch:
                raise ValueError("model.name_or_path is empty and model.architecture gives no inline config")
            arch.setdefault("vocab_size", len(tokenizer))
            model_type = arch.pop("model_type")
            hf_config = AutoConfig.for_model(model_type, **arch)
            model = AutoModelForCausalLM.from_config(hf_config, attn_implementation=attn, dtype=dtype)
        adapter = cfg.get("adapter") or (
            os.path.join(name, "adapter") if meta and meta.get("adapter") else None
        )
        if adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter, is_trainable=False)
            model = (
                model.merge_and_unload()
            )  # a saved Stage II adapter becomes part of the base for the next stage
        if cfg.get("gradient_checkpointing", False):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        if lora_cfg is not None and _as_dict(lora_cfg).get("enabled", False):
            model = apply_lora(model, _as_dict(lora_cfg), cfg.get("lora_target_modules"))
        fmt = TextFormat(**_as_dict(cfg["text_format"]))
        backbone = cls(
            model,
            tokenizer,
            fmt,
            pooling=cfg.get("pooling", "last"),
            attention=cfg.get("attention", "causal"),
            padding_side=cfg.get("padding_side", "left"),
            ce_chunk_size=int(cfg.get("ce_chunk_size", 4096)),
        )
        if cfg.get("compile", False):  # in place: parameter names, saving and LoRA are unchanged
            backbone.decoder.compile(dynamic=None)
        return backbone

    @classmethod
    def load(cls, path: str | os.PathLike, dtype: str = "auto", lora_cfg: Any | None = None) -> Backbone:
        """Load a directory written by `save` (any mode); text format and pooling come from bireco.json."""
        meta = _read_metadata(str(path))
        if meta is None:
            p = Path(path)
            if not p.exists():
                partial = p.with_name(p.name + ".tmp")
                hint = (
                    f" ({partial} exists: that run's save did not finish; train it again)"
                    if partial.exists()
                    else ""
                )
                raise CheckpointNotFound(f"{path}: no such checkpoint directory{hint}")
            raise CheckpointNotFound(
                f"{path}: no {METADATA_FILE}; not a bireco checkpoint (use model.name_or_path instead)"
            )
        model_cfg = dict(
            meta["model"], tokenizer=str(path), dtype=dtype, architecture=None, **checkpoint_weights(path)
        )
        return cls.from_config(model_cfg, lora_cfg)

    # ------------------------------------------------------------------ accessors
    @property
    def causal_lm(self) -> nn.Module:
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    @property
    def decoder(self) -> nn.Module:
        """The transformer body (final norm included, no LM head); LoRA layers are injected in place."""
        return self.causal_lm.get_decoder()

    @property
    def lm_head(self) -> nn.Module:
        return self.causal_lm.get_output_embeddings()

    @property
    def hidden_size(self) -> int:
        return self.causal_lm.config.hidden_size

    @property
    def is_lora(self) -> bool:
        return hasattr(self.model, "peft_config")

    @property
    def pad_id(self) -> int:
        pid = self.tokenizer.pad_token_id
        return pid if pid is not None else self.text_format.eos_id(self.tokenizer)

    # ------------------------------------------------------------------ forward passes
    @contextlib.contextmanager
    def _attention_mode(self, mode: str):
        """Bidirectional attention for embedding passes: transformers reads `config.is_causal` when it builds
        the mask, and attention modules read `is_causal` when the mask is skipped."""
        if mode == "causal":
            yield
            return
        cfg = self.causal_lm.config
        modules = [
            m for m in self.decoder.modules() if hasattr(m, "is_causal") and isinstance(m.is_causal, bool)
        ]
        old = getattr(cfg, "is_causal", None), [m.is_causal for m in modules]
        cfg.is_causal = False
        for m in modules:
            m.is_causal = False
        try:
            yield
        finally:
            if old[0] is None:
                del cfg.is_causal
            else:
                cfg.is_causal = old[0]
            for m, v in zip(modules, old[1]):
                m.is_causal = v

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (B, T, H) final-norm hidden states, in the input's layout (any padding side).

        Rows run right-padded whatever the input: under causal attention a left pad attends to no position at all,
        and such fully masked rows give NaN gradients in some fused SDPA kernels (seen in bf16 on an H100).
        Positions come from the mask, so the values do not depend on the padding side."""
        order = right_padding_order(attention_mask)  # (B, T) real first
        ids, mask = input_ids.gather(1, order), attention_mask.gather(1, order)
        with self._attention_mode(self.attention):
            out = self.decoder(
                input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=False
            )
        hidden = out.last_hidden_state  # (B, T, H) right-padded
        back = order.argsort(dim=1).unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
        return hidden.gather(1, back)

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """One side's batch -> (B, H) raw (unnormalised) embeddings."""
        hidden = self.hidden_states(batch["input_ids"], batch["attention_mask"])  # (B, T, H)
        return pool(self.pooling, hidden, batch["attention_mask"], batch.get("embed_mask"))

    def reconstruction_loss(
        self,
        anchor: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        lead_token_id: int | None = None,
    ) -> ReconstructionOutput:
        """Decode `input_ids` from `[anchor; tokens]` (causal), CE on positions whose label is not -100.

        Args:
            anchor: (B, H) embeddings of the other side; gradients flow through it.
            input_ids / attention_mask / labels: (B, T) target side, any padding side; labels -100 = ignore.
            lead_token_id: one real token placed before the anchor, `[token; anchor; tokens]`, so the anchor no
                longer fills the attention-sink position (`stage.anchor_lead_token`, beyond the paper, off by
                default: the paper's decoder input starts with the anchor).
        Position j of the decoder input predicts target token j: the anchor slot predicts the first token of
        the target side, token t predicts token t+1 (template / instruction tokens are context, not targets,
        under the paper labels; so with a chat template the first *text* token sees the anchor through them).
        """
        ids, labels, mask = to_right_padding(input_ids, labels, attention_mask=attention_mask)  # (B, T) each
        B, T = ids.shape
        table = self.causal_lm.get_input_embeddings()
        tok = table(ids)  # (B, T, H)
        prefix = [anchor.to(tok.dtype).unsqueeze(1)]
        if lead_token_id is not None:
            prefix.insert(0, table(ids.new_full((B, 1), lead_token_id)))
        lead = len(prefix) - 1  # positions before the anchor
        inputs = torch.cat([*prefix, tok], dim=1)  # (B, lead + 1 + T, H)
        full_mask = torch.cat([mask.new_ones(B, lead + 1), mask], dim=1)
        out = self.decoder(
            inputs_embeds=inputs,
            attention_mask=full_mask,
            position_ids=position_ids_from_mask(full_mask),
            use_cache=False,
        )
        # (B, T, H): the anchor slot predicts target token 0, token t predicts token t + 1
        hidden = out.last_hidden_state[:, lead : lead + T]
        keep = labels != -100  # (B, T)
        n = int(keep.sum())
        if n == 0:
            raise ValueError("reconstruction batch has no target tokens (all labels are -100)")
        softcap = getattr(
            self.causal_lm.config, "final_logit_softcapping", None
        )  # Gemma-2: the model's own logits
        loss_sum, correct = chunked_cross_entropy(
            hidden[keep], labels[keep], self.lm_head, self.ce_chunk_size, softcap
        )
        return ReconstructionOutput(loss=loss_sum / n, n_tokens=n, n_correct=correct)

    # ------------------------------------------------------------------ persistence
    def metadata(self) -> dict:
        return {
            "model": {
                "text_format": asdict(self.text_format),
                "pooling": self.pooling,
                "attention": self.attention,
                "padding_side": self.padding_side,
                "ce_chunk_size": self.ce_chunk_size,
            },
        }

    def save(self, path: str | os.PathLike, mode: str = "full") -> Path:
        """Write a Hugging Face directory that `AutoModel.from_pretrained` loads as the trained model. full: the
        weights (LoRA merged in) + the LoRA adapter in adapter/ for reference; merged: the weights alone; adapter:
        the adapter alone + the base model's path (bireco loads it; plain transformers cannot). Written to a temp
        dir and renamed, so it is complete or absent."""
        if mode not in SAVE_MODES:
            raise ValueError(f"save mode {mode!r}; valid: {', '.join(SAVE_MODES)}")
        if mode == "adapter" and not self.is_lora:
            raise ValueError("save mode 'adapter' needs a LoRA backbone")
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        meta = self.metadata()
        meta["adapter"] = False
        if mode == "merged" and self.is_lora:
            copy.deepcopy(self.model).merge_and_unload().save_pretrained(tmp)
        elif mode == "adapter":
            self.model.save_pretrained(tmp / "adapter")
            meta["adapter"] = True
            base = self.causal_lm.config._name_or_path
            if not base:
                raise ValueError("save mode 'adapter' needs a base model loadable by name or path; this one was built "
                                 "from model.architecture (random weights): use save mode 'full'")  # fmt: skip
            meta["base_model"] = (
                str(Path(base).resolve()) if Path(base).is_dir() else base
            )  # loadable from any cwd
        elif (
            self.is_lora
        ):  # full: merged weights (plain transformers loads the trained model) + the adapter beside
            copy.deepcopy(self.model).merge_and_unload().save_pretrained(tmp)
            self.model.save_pretrained(tmp / "adapter")
            meta["adapter_beside"] = (
                "adapter"  # already merged into the weights: reference only, never re-applied
            )
        else:
            self.model.save_pretrained(tmp)
        self.tokenizer.save_pretrained(tmp)
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2))
        if path.exists():
            import shutil

            old = path.with_name(path.name + ".old")
            if old.exists():
                shutil.rmtree(old)
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old)
        else:
            tmp.rename(path)
        return path


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


def _as_dict(node: Any) -> dict:
    if node is None:
        return {}
    if isinstance(node, dict):
        return node
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(node):
            return OmegaConf.to_container(node, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    if hasattr(node, "__dataclass_fields__"):
        return asdict(node)
    return dict(node)


def checkpoint_weights(path: str | os.PathLike) -> dict:
    """`model.name_or_path` (+ `adapter`) that load the weights of a checkpoint directory, whatever its save mode:
    an adapter-only directory (save_mode=adapter: no weights, no config.json) loads its recorded base model, then
    its adapter; every other directory loads itself (its adapter/, if any, is found from its bireco.json)."""
    meta = _read_metadata(str(path)) or {}
    if meta.get("adapter") and not (Path(path) / "config.json").is_file():
        base = meta.get("base_model")
        if not base:
            raise FileNotFoundError(f"{path}: an adapter-only checkpoint that does not record its base model")
        return {"name_or_path": base, "adapter": str(Path(path) / "adapter")}
    return {"name_or_path": str(path)}


def _read_metadata(path: str) -> dict | None:
    f = Path(path) / METADATA_FILE
    return json.loads(f.read_text()) if f.is_file() else None


def _local_safetensors(name: str) -> bool | None:
    """Local directories must hold safetensors (never unpickle a stranger's .bin); hub ids use the hub default."""
    return True if Path(name).is_dir() else None


def _check_checkpoint_dir(name: str, cfg: dict) -> None:
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
    expected = cfg.get("expected_model_type")
    if expected:
        found = json.loads((p / "config.json").read_text()).get("model_type")
        if found != expected:
            raise ValueError(
                f"{p}: checkpoint is a {found!r} model but the model config expects {expected!r}; "
                "pick the matching model= family"
            )


def _looks_like_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith(("/", "."))
