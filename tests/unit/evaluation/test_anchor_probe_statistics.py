"""The anchor probe's statistics: other anchors from the same pair set only, pairs fixed apart from the training
seed, per-pair sums behind every gain, a bootstrap interval beside it."""

from __future__ import annotations

import pytest
import torch
from conftest import TEXTS

from bireco.data.collate import PairCollator
from bireco.evaluation.anchor_diagnostics import anchor_use, gain_interval, probe_batches
from bireco.model.anchor import AnchorReader


def records(n: int, dataset: str) -> list[dict]:
    return [
        {
            "query": f"{TEXTS[i % 4]} {i}",
            "positive": TEXTS[(i + 1) % 4],
            "instruction": "",
            "dataset": dataset,
        }
        for i in range(n)
    ]


def collate_of(backbone):
    return PairCollator(
        backbone.tokenizer, backbone.text_format, 16, 16, num_hard_negatives=0, pad_id=backbone.pad_id
    )


def test_probe_batches_never_mix_pair_sets_and_leave_out_a_lone_pair(backbone):
    """Mixed records in: every batch holds one pair set (its rolled anchor is another pair of that set), a lone last
    pair joins the batch before it, and a set of one pair (nothing to swap with) is left out."""
    mixed = records(7, "definitions") + records(5, "examples") + records(1, "single")
    mixed = [
        mixed[i] for i in torch.randperm(len(mixed), generator=torch.Generator().manual_seed(0)).tolist()
    ]
    batches = probe_batches(mixed, collate_of(backbone), batch_size=3)
    assert all(len(set(b["dataset"])) == 1 and len(b["dataset"]) >= 2 for b in batches)
    sizes = {}
    for b in batches:
        sizes.setdefault(b["dataset"][0], []).append(len(b["dataset"]))
    assert sizes == {"definitions": [3, 4], "examples": [3, 2]}
    with pytest.raises(ValueError, match="two pairs of one pair set"):
        probe_batches(records(1, "a") + records(1, "b"), collate_of(backbone), batch_size=4)


def test_gain_interval_is_the_token_weighted_gain_with_a_bootstrap_interval_around_it():
    own = torch.tensor([10.0, 8.0, 12.0, 9.0, 11.0, 10.0])
    tokens = torch.tensor([5, 4, 6, 5, 5, 5])
    other = own + torch.tensor([1.0, 0.8, 1.5, 0.9, 1.2, 1.1])  # every pair reads its own anchor
    gain, lo, hi = gain_interval(own, other, tokens, seed=0)
    assert gain == pytest.approx(6.5 / 30)
    assert 0 < lo < gain < hi
    assert gain_interval(own, other, tokens, seed=0) == (gain, lo, hi)  # its own generator: repeatable
    state = torch.get_rng_state()
    gain_interval(own, own, tokens, seed=1)
    assert torch.equal(state, torch.get_rng_state())  # no draw from the global stream
    assert gain_interval(own, own, tokens) == (0.0, 0.0, 0.0)
    noisy = own + torch.tensor([1.0, -1.0, 0.5, -0.5, 0.2, -0.2])
    _, lo, hi = gain_interval(own, noisy, tokens)
    assert lo < 0 < hi


def test_anchor_use_reports_each_pair_set_and_sums_to_the_overall_gain(backbone):
    """Overall and per-set CE and gains are sums over the same pairs: per-set sums add up to the overall ones."""
    batches = probe_batches(
        records(6, "definitions") + records(4, "examples"), collate_of(backbone), batch_size=4
    )
    use = anchor_use(AnchorReader(backbone), batches, bf16=False)
    assert use["pairs"] == 10 and use["definitions/pairs"] == 6 and use["examples/pairs"] == 4
    for d in ("q2d", "d2q"):
        assert use[f"anchor_gain_{d}_lo"] <= use[f"anchor_gain_{d}"] <= use[f"anchor_gain_{d}_hi"]
        for name in ("definitions", "examples"):
            assert use[f"{name}/anchor_gain_{d}_lo"] <= use[f"{name}/anchor_gain_{d}_hi"]

    # a constant anchor: the rolled anchor is the same vector, so every gain and interval is exactly 0
    class Constant(AnchorReader):
        def anchor(self, side):
            return torch.ones(side["input_ids"].shape[0], self.backbone.hidden_size)

    const = anchor_use(Constant(backbone), batches, bf16=False)
    assert all(v == 0.0 for k, v in const.items() if "anchor_gain" in k)


def test_probe_pairs_are_the_same_whatever_the_training_seed(cfg_factory):
    """The pairs come from stage.probe.seed, not the training seed: seeds 1 and 2 are probed on the same pairs."""
    from bireco.training.anchor_probe import heldout_records

    pairs = [heldout_records(cfg_factory("stage=reconstruction", f"seed={s}"), None, 16) for s in (1, 2)]
    assert pairs[0] == pairs[1] and len(pairs[0]) == 16
    other = heldout_records(cfg_factory("stage=reconstruction", "stage.probe.seed=7"), None, 16)
    assert other != pairs[0]
