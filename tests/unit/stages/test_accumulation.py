"""Gradient accumulation: what `trainer.accumulate_grad_batches=k` computes, in both stages.

The normalisation (documented in the README, "Scaling out"): each micro-batch's loss is its own mean (Stage I: the
token mean of its targets; Stage II: InfoNCE over the micro-batch's own candidate pool) and Lightning averages the k
micro-batch losses. So Stage I with k micro-batches is one step on the k-times batch when the micro-batches hold
equally many target tokens, and Stage II keeps the micro-batch as its pool (as the released code: accumulation does
not enlarge the pool), so it is the mean of the micro-batch gradients, not the k-times batch.
"""

import copy

import lightning as L
import pytest
import torch
from conftest import stage1_module, stage2_module
from torch.utils.data import DataLoader

from bireco.config.schema import OptimConfig
from bireco.data.collate import PairCollator

A = {
    "query": "dog",
    "positive": "a member of the genus Canis",
    "negatives": ["a cat"],
    "instruction": "Find",
    "dataset": "a",
}
B = {
    "query": "run fast",
    "positive": "move quickly on foot",
    "negatives": ["walk"],
    "instruction": "Find",
    "dataset": "a",
}
C = {
    "query": "red",
    "positive": "the color of blood, or of a ripe tomato",
    "negatives": ["blue"],
    "instruction": "Find",
    "dataset": "a",
}
D = {"query": "a tall tree", "positive": "oak", "negatives": ["grass"], "instruction": "Find", "dataset": "a"}


class GradProbe(L.Callback):
    """The gradients of the first optimizer step, after accumulation and before the update."""

    def __init__(self):
        self.grads = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if self.grads is None:
            self.grads = {
                n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None
            }


def make(stage: str, backbone):
    optim = OptimConfig(warmup_steps=0, schedule="constant")
    if stage == "reconstruction":
        return stage1_module(copy.deepcopy(backbone), optim, lr_horizon=1, alpha=0.2, schedule="joint")
    return stage2_module(copy.deepcopy(backbone), optim, lr_horizon=1)


def trainer_grads(module, batches: list[dict], accumulate: int) -> dict:
    probe = GradProbe()
    trainer = L.Trainer(max_steps=1, accumulate_grad_batches=accumulate, accelerator="cpu", devices=1,
                        precision="32-true", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[probe])  # fmt: skip
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))
    return probe.grads


def mean_of_micro_batch_grads(module, batches: list[dict]) -> dict:
    module.zero_grad()
    for b in batches:
        out = module.step_loss(b)
        loss = out[0] if isinstance(out, tuple) else out.loss
        (loss / len(batches)).backward()
    return {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}


def assert_same(got: dict, want: dict, atol: float = 1e-6) -> None:
    assert got.keys() == want.keys() and got
    for n in got:
        torch.testing.assert_close(got[n], want[n], rtol=1e-4, atol=atol, msg=n)


@pytest.mark.parametrize("stage", ["reconstruction", "contrastive"])
def test_accumulation_is_the_mean_of_micro_batch_gradients(backbone, stage):
    collate = PairCollator(backbone.tokenizer, backbone.text_format, 32, 32, pad_id=backbone.pad_id)
    micro = [collate([A, B]), collate([C, D])]
    accumulated = trainer_grads(make(stage, backbone), micro, accumulate=2)
    assert_same(accumulated, mean_of_micro_batch_grads(make(stage, backbone), micro))
    doubled = trainer_grads(make(stage, backbone), [collate([A, B, C, D])], accumulate=1)
    differs = any(not torch.allclose(accumulated[n], doubled[n], rtol=1e-4, atol=1e-6) for n in accumulated)
    # Stage I: the micro-batches hold different numbers of target tokens, so their tokens weigh differently;
    # Stage II: the doubled batch's pool has 4 positives + 4 negatives per query, each micro-batch's only 2 + 2
    assert differs


def test_stage1_accumulation_equals_the_doubled_batch_when_token_counts_match(backbone):
    collate = PairCollator(backbone.tokenizer, backbone.text_format, 32, 32, pad_id=backbone.pad_id)
    micro = [collate([A, B]), collate([B, A])]  # equal target tokens per micro-batch
    accumulated = trainer_grads(make("reconstruction", backbone), micro, accumulate=2)
    assert_same(
        accumulated, trainer_grads(make("reconstruction", backbone), [collate([A, B, B, A])], accumulate=1)
    )
