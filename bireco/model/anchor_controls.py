"""Beyond the paper, opt-in: Stage I's controls and its frozen decoder, as AnchorReaders (bireco.model.anchor).

- `stage.anchor=constant`: one fixed vector for every pair (the mean input-token embedding), no encoder pass: Stage I
  becomes LM fine-tuning on the same text, steps and schedule without any reconstruction signal.
- `stage.anchor=shuffled`: each target decoded from another pair's anchor (the Stage I module rolls the batch's
  anchors by one; a probe reads the model's own): gradients still reach the encoder, but no pair's own content can
  lower the loss.
- `stage.decoder=frozen`: a frozen copy of the start weights decodes, so only the encoder side learns and the loss
  falls only as far as the embedding informs it (with shared weights the decoder can learn the targets' language
  prior and to discount a varying anchor: docs/results.md).

A Stage I that used any of them records it in `final/stage1_anchor.json` (`save_record`), so `bireco.inspect` and
the diagnostics read a checkpoint as its Stage I did (`reader_for_checkpoint`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from bireco.core.choices import Choice
from bireco.core.errors import ConfigError
from bireco.core.files import atomic_write_text
from bireco.model.anchor import AnchorReader, Labels
from bireco.model.backbone import Backbone

RECORD_FILE = "stage1_anchor.json"  # in final/: what a Stage I beyond the paper decoded with
# the commit where the anchor conditioning options (anchor_scale, anchor_lead_token, the affine map) last lived
CONDITIONING_REMOVED_AFTER = "439e8c2"


class AnchorSource(Choice):
    """`stage.anchor`: embedding (the paper) | constant | shuffled (the controls)."""

    embedding = "embedding"
    constant = "constant"
    shuffled = "shuffled"


class Decoder(Choice):
    """`stage.decoder`: shared (the paper: the trained weights decode) | frozen (a frozen copy of the start)."""

    shared = "shared"
    frozen = "frozen"


def constant_anchor(backbone: Backbone) -> torch.Tensor:
    """(H,) the `stage.anchor=constant` control's vector: the mean input-token embedding. Not an all-zero vector: on
    SmolLM2 an exact zero prefix stays zero through every layer and its backward pass gives NaN gradients."""
    return backbone.causal_lm.get_input_embeddings().weight.detach().mean(0)


@dataclass
class ControlReader(AnchorReader):
    """An AnchorReader with the controls: `decoder_backbone` decodes instead of the backbone (a frozen decoder), and
    under `constant` every anchor is the decoder's constant vector (no encoder pass)."""

    decoder_backbone: Backbone | None = None
    constant: bool = False

    @property
    def decoder(self) -> Backbone:
        return self.backbone if self.decoder_backbone is None else self.decoder_backbone

    def anchor(self, side: dict) -> torch.Tensor:
        if self.constant:  # the decoder's own token scale
            return constant_anchor(self.decoder).expand(side["input_ids"].shape[0], -1)
        return super().anchor(side)


class FrozenDecoder(torch.nn.Module):
    """`stage.decoder=frozen`: the start weights, frozen and always in eval mode; gradients still pass through it to the
    anchor. A submodule of the Stage I module, so it moves with it and resumes exactly; costs one copy of the
    weights."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.backbone = backbone
        self.backbone.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> FrozenDecoder:
        return super().train(False)


def frozen_decoder_model(start_model: dict) -> dict:
    """The `conf/model` node a frozen decoder is built from: Stage I's start (loaded by name: validation ensures it),
    without activation checkpointing or compilation (it only runs forward passes, and inspection rebuilds it)."""
    if not start_model.get("name_or_path"):
        raise ValueError(
            "stage.decoder=frozen: the start model has no name_or_path to build the decoder from"
        )
    return dict(start_model, gradient_checkpointing=False, compile=False)


def save_record(checkpoint: str | os.PathLike, anchor: str, decoder_model: dict | None) -> None:
    """final/stage1_anchor.json: the anchor source and, under `stage.decoder=frozen`, the `conf/model` node of the
    weights the run decoded with (the ones it started from), so inspection rebuilds them."""
    record: dict = {"anchor": str(anchor), "decoder": str(Decoder.shared)}
    if decoder_model is not None:
        record.update(decoder=str(Decoder.frozen), decoder_model=decoder_model)
    atomic_write_text(Path(checkpoint) / RECORD_FILE, json.dumps(record, indent=2))


def read_record(checkpoint: str | os.PathLike) -> dict:
    """What a checkpoint's Stage I recorded ({} = nothing: the paper's reading). A record of an anchor conditioning
    option (removed) is refused with the commit that can still read it."""
    path = Path(checkpoint) / RECORD_FILE
    record = json.loads(path.read_text()) if path.is_file() else {}
    if record.get("scale", "raw") != "raw" or record.get("lead_token_id") is not None:
        raise ConfigError(
            f"{path}: this Stage I conditioned its anchor (scale {record.get('scale')!r}, lead token "
            f"{record.get('lead_token_id')}), an option bireco no longer has; inspect it with bireco at commit "
            f"{CONDITIONING_REMOVED_AFTER}"
        )
    return record


def load_decoder(checkpoint: str | os.PathLike) -> Backbone | None:
    """The frozen decoder a `stage.decoder=frozen` Stage I decoded with (rebuilt from its recorded model node), None
    when the checkpoint decoded with its own weights (the paper)."""
    record = read_record(checkpoint)
    if record.get("decoder", Decoder.shared) != Decoder.frozen:
        return None
    return Backbone.from_config(record["decoder_model"]).eval()


def reader_for_checkpoint(
    backbone: Backbone, checkpoint: str | os.PathLike, constant: bool = False
) -> AnchorReader:
    """How a loaded checkpoint's Stage I read and decoded its anchors: the paper's AnchorReader, or a ControlReader
    with its frozen decoder. `constant`: read the constant-anchor control's vector (what such a model trained with;
    the probe of a constant-anchor Stage I gives 0 by construction)."""
    decoder = load_decoder(checkpoint)
    if decoder is None and not constant:
        return AnchorReader(backbone, Labels.paper)
    return ControlReader(backbone, decoder_backbone=decoder, constant=constant)
