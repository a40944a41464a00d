"""Stage I beyond the paper, opt-in and off in every preset: its controls (`stage.anchor=constant|shuffled`) and the
frozen decoder (`stage.decoder=frozen`), as a subclass of the paper's module that changes only where the anchor comes
from and which weights decode it (bireco.model.anchor_controls says what each is for).
"""

from __future__ import annotations

import torch

from bireco.config.schema import ReconstructionStageConfig
from bireco.model.anchor_controls import AnchorSource, ControlReader, FrozenDecoder
from bireco.model.backbone import Backbone
from bireco.stages.base import restore_buffers
from bireco.stages.reconstruction import ReconstructionModule


def is_paper(stage: ReconstructionStageConfig) -> bool:
    """The paper's Stage I: the pair's own anchor, decoded by the weights it trains."""
    return stage.anchor == AnchorSource.embedding and stage.decoder == "shared"


class ControlledReconstructionModule(ReconstructionModule):
    """`decoder_backbone`: the frozen decoder's weights under `stage.decoder=frozen` (the builder loads Stage I's start
    again), else None."""

    def __init__(self, backbone: Backbone, stage: ReconstructionStageConfig, lr_horizon: int,
                 on_nonfinite: str = "raise", decoder_backbone: Backbone | None = None):  # fmt: skip
        super().__init__(backbone, stage, lr_horizon, on_nonfinite)
        # a submodule: moved with the module and restored exactly on resume
        self.frozen_decoder = FrozenDecoder(decoder_backbone) if decoder_backbone is not None else None
        self.shuffled = stage.anchor == AnchorSource.shuffled
        self.reader = ControlReader(backbone, stage.labels, stage.reconstruct_instruction, decoder_backbone,
                                    constant=stage.anchor == AnchorSource.constant)  # fmt: skip

    @property
    def decoder_backbone(self) -> Backbone | None:
        return None if self.frozen_decoder is None else self.frozen_decoder.backbone

    def on_fit_start(self):
        super().on_fit_start()
        if self.frozen_decoder is not None:  # the copy's rotary frequencies too (the same names)
            restore_buffers(self.frozen_decoder.backbone, self._rotary_fp32)

    def anchor(self, side: dict) -> torch.Tensor:
        """`stage.anchor=shuffled`: pair i gets pair i-1's anchor (the same steps and gradients into the encoder and
        decoder, but what an anchor says about its own pair cannot lower the loss); the reader (the probe's) still
        reads each pair's own."""
        anchor = super().anchor(side)
        return anchor.roll(1, 0) if self.shuffled else anchor
