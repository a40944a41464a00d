"""Stage I's anchor probe (bireco.training.anchor_probe), the paper's decoder input, and the frozen decoder beyond it."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import experiment, make_side, stage1_module

from bireco.config.schema import OptimConfig

RECORDS = experiment(
    "anchor_memorise/anchor_memorise.py"
).RECORDS  # eight pairs: only the anchor says which target


def write_pairs(path: Path, copies: int) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS * copies))
    return path


def probe_rows(run_dir: Path) -> pd.DataFrame:
    rows = pd.read_csv(run_dir / "logs" / "metrics.csv")
    return rows.dropna(subset=["probe/anchor_gain_d2q"]).set_index("step")


@pytest.mark.parametrize("anchor", ["embedding", "constant"])
def test_probe_logs_anchor_gain_while_training(cfg_factory, tmp_path, monkeypatch, anchor):
    """Where reading is forced (eight pairs repeated: the memorisation setting), the in-training probe's D2Q gain
    climbs well above 0 with real anchors, its 95% interval clear of 0, and stays exactly 0 (interval too) under
    `stage.anchor=constant`; it is logged at step 0, every N steps and at the end, and its last values reach
    final/train_summary.json."""
    from bireco.training import anchor_probe
    from bireco.training.run import run

    # the probe's pairs are the eight training pairs here: reading a held-out pair needs far more than a tiny model
    monkeypatch.setattr(anchor_probe, "heldout_records", lambda cfg, dm, n: list(RECORDS))
    data = write_pairs(tmp_path / "pairs.jsonl", copies=4)
    cfg = cfg_factory("stage=reconstruction", "data=jsonl", f"data.path={data}", "data.num_hard_negatives=0",
                      "data.global_batch_size=8", "data.max_query_length=16", "data.max_doc_length=16",
                      "stage.alpha=0.5", "stage.optim.lr=3e-3", "stage.optim.warmup_steps=0", "stage.optim.schedule=constant",
                      "trainer.precision=32-true", "trainer.max_steps=200",
                      "stage.probe.every_n_steps=50", "stage.probe.batch_size=8", f"stage.anchor={anchor}")  # fmt: skip
    run(cfg)
    run_dir = tmp_path / "out" / "default" / "default" / "stage1"
    rows = probe_rows(run_dir)
    assert list(rows.index) == [0, 50, 100, 150, 200]
    summary = json.loads((run_dir / "final" / "train_summary.json").read_text())
    assert summary["probe/anchor_gain_d2q"] == pytest.approx(rows.loc[200, "probe/anchor_gain_d2q"])
    gain = rows["probe/anchor_gain_d2q"]
    assert summary["probe/anchor_gain_d2q_lo"] == pytest.approx(rows.loc[200, "probe/anchor_gain_d2q_lo"])
    if anchor == "embedding":
        assert gain[200] > 0.3 and gain[200] > gain[0] + 0.3, gain.to_dict()
        assert rows.loc[200, "probe/anchor_gain_d2q_lo"] > 0, rows.loc[
            200
        ].to_dict()  # the interval excludes 0
    else:
        # one vector for every pair: nothing to swap, exactly, interval included
        for key in ("probe/anchor_gain_d2q", "probe/anchor_gain_d2q_lo", "probe/anchor_gain_d2q_hi"):
            assert rows[key].abs().max() == 0, rows[key].to_dict()
    assert json.loads((run_dir / "final" / "stage1_anchor.json").read_text()) == {
        "anchor": anchor,
        "decoder": "shared",
    }


def test_the_probe_does_not_change_training(cfg_factory, tmp_path, monkeypatch):
    """No gradient, eval mode, no global RNG draws: the same losses with and without it (LoRA dropout on)."""
    from conftest import logged_losses

    from bireco.training import anchor_probe
    from bireco.training.run import run

    monkeypatch.setattr(anchor_probe, "heldout_records", lambda cfg, dm, n: list(RECORDS))
    data = write_pairs(tmp_path / "pairs.jsonl", copies=2)
    losses = []
    for every in (0, 2):
        cfg = cfg_factory("stage=reconstruction", "data=jsonl", f"data.path={data}", "trainer.max_steps=4",
                          "trainer.log_every_n_steps=1", "data.global_batch_size=4", "stage.lora.enabled=true",
                          "stage.lora.dropout=0.1", f"stage.probe.every_n_steps={every}", "stage.probe.batch_size=4",
                          f"experiment_name=probe{every}")  # fmt: skip
        run(cfg)
        losses.append(logged_losses(Path(cfg.run_dir)))
        assert ("probe/anchor_gain_d2q" in pd.read_csv(Path(cfg.run_dir) / "logs" / "metrics.csv")) == bool(
            every
        )
    assert losses[0] == losses[1] and len(losses[0]) == 4


def test_the_papers_decoder_input_is_the_raw_anchor_bit_for_bit(backbone):
    """The paper's Stage I: the decoder input is [anchor; tokens], the loss the very number the backbone computes from
    the raw anchor, and the module's state dict is the backbone's alone."""
    side = make_side(backbone, ["a domesticated carnivorous mammal", "dog"])
    from bireco.model.anchor import target_labels

    m = stage1_module(backbone, lr_horizon=1)
    assert {k.removeprefix("backbone.") for k in m.state_dict()} == set(backbone.state_dict())
    anchor = m.anchor(side)
    labels = target_labels(side, "paper", False)
    ref = backbone.reconstruction_loss(anchor, side["input_ids"], side["attention_mask"], labels)
    assert torch.equal(m.decode(anchor, side).loss, ref.loss)


@pytest.mark.slow
def test_the_gpu_anchor_study_runs_end_to_end_in_smoke_mode(tmp_path):
    """experiments/scale/anchor_study.py: the one-command GPU study (baseline, Anchor, constant-anchor control, the
    probe, the built-in suite, one table, and the frozen-decoder rows), its smoke mode on the tiny model on the CPU."""
    study = experiment("scale/anchor_study.py")
    ROWS, run_study = {**study.ROWS, **study.FROZEN_ROWS}, study.run_study

    result = run_study("smoke", tmp_path / "study", frozen_decoder=True)
    assert list(result["rows"]) == list(ROWS)
    frozen_final = tmp_path / "study" / "anchor_study" / "frozen" / "stage1" / "final"
    recorded = json.loads((frozen_final / "stage1_anchor.json").read_text())
    assert recorded["decoder"] == "frozen" and "tiny-start" in recorded["decoder_model"]["name_or_path"]
    assert "probe/anchor_gain_d2q" in result["rows"]["frozen-decoder Stage I only"]
    stage1 = result["rows"]["Stage I only"]
    assert (
        "probe/anchor_gain_d2q" in stage1
        and "probe/anchor_gain_d2q" not in result["rows"]["baseline (Stage II alone)"]
    )
    assert result["rows"]["constant-anchor Stage I only"]["probe/anchor_gain_d2q"] == pytest.approx(
        0, abs=1e-6
    )
    table = (tmp_path / "study" / "anchor_study.md").read_text()
    assert table.count("\n") == 2 + len(ROWS) and "WordNetDefinitionsRetrieval" in table


def test_inspect_probes_a_checkpoint_from_the_command_line(backbone, tmp_path):
    """`python -m bireco.inspect checkpoint=... probe=N`: the probe's numbers for a checkpoint, at lengths that fit
    the family's template and the WordNet instruction (the 32-token default did not on the tiny model)."""
    import subprocess

    from conftest import subprocess_env

    backbone.save(tmp_path / "run" / "final")
    cmd = [sys.executable, "-m", "bireco.inspect", f"checkpoint={tmp_path / 'run' / 'final'}", "probe=4"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "anchor probe on 3 of 4 WordNet dev pairs" in r.stdout  # the one pair of the other set: left out
    assert r.stdout.count("  q2d: CE") == 1 and r.stdout.count("  d2q: CE") == 1 and "[" in r.stdout


def test_frozen_decoder_decodes_with_the_start_weights_and_trains_only_the_encoder(backbone):
    """`stage.decoder=frozen`: the loss is the start model decoding the trained encoder's anchor, exactly; steps
    move the encoder and never the decoder; the decoder stays in eval mode and out of the optimizer."""
    from bireco.model.anchor import AnchorReader

    start = copy.deepcopy(backbone)
    side = make_side(backbone, ["a domesticated carnivorous mammal", "dog", "red"])
    target = make_side(backbone, ["dog", "a domesticated carnivorous mammal", "a colour"])
    m = stage1_module(backbone, OptimConfig(lr=1e-2, warmup_steps=0), lr_horizon=10, decoder="frozen",
                      decoder_backbone=copy.deepcopy(backbone))  # fmt: skip
    m.train()
    assert m.backbone.training and not m.frozen_decoder.training
    opt = m.configure_optimizers()["optimizer"]
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not any(id(p) in in_opt or p.requires_grad for p in m.frozen_decoder.parameters())
    for _ in range(3):
        m.decode(m.anchor(side), target).loss.backward()
        opt.step()
        opt.zero_grad()
    frozen, moved = m.frozen_decoder.backbone.state_dict(), backbone.state_dict()
    assert all(torch.equal(frozen[k], v) for k, v in start.state_dict().items())
    assert any(not torch.equal(moved[k], v) for k, v in start.state_dict().items())
    with torch.no_grad():
        anchor = m.anchor(side)
        by_start = AnchorReader(start).decode(anchor, target).loss
        by_trained = AnchorReader(backbone).decode(anchor, target).loss
        assert torch.equal(m.decode(anchor, target).loss, by_start)
        assert not torch.allclose(by_trained, by_start)


def test_frozen_decoder_config_fails_fast_where_nothing_would_train_or_it_cannot_be_rebuilt(
    cfg_factory, tmp_path
):
    from hydra.errors import ConfigCompositionException

    from bireco.config.validate import validate
    from bireco.core.errors import ConfigError

    with pytest.raises(ConfigError, match="name_or_path"):  # the tiny test model is random-init
        validate(cfg_factory("stage=reconstruction", "stage.decoder=frozen"))
    named = f"model.name_or_path={tmp_path}"
    with pytest.raises(ConfigError, match="nothing would train"):
        validate(cfg_factory("stage=reconstruction", "stage.decoder=frozen", named, "stage.anchor=constant"))
    with pytest.raises(ConfigCompositionException):  # not one of shared, frozen
        cfg_factory("stage=reconstruction", "stage.decoder=frozn", named)
    validate(cfg_factory("stage=reconstruction", "stage.decoder=frozen", named, "stage.anchor=shuffled"))


def test_a_frozen_decoder_stage1_run_learns_to_write_what_its_start_reads(
    cfg_factory, tmp_path, monkeypatch, backbone
):
    """A real `bireco.train` Stage I with `stage.decoder=frozen` from a saved model: with reading forced (eight pairs
    repeated) the encoder learns anchors the frozen start model reads (D2Q gain clearly above 0); final/ records the
    decoder, inspection rebuilds it with the start weights, and its probe equals the last logged one."""
    from bireco.evaluation.anchor_diagnostics import checkpoint_anchor_use
    from bireco.model.anchor_controls import load_decoder, reader_for_checkpoint
    from bireco.model.backbone import Backbone
    from bireco.training import anchor_probe
    from bireco.training.run import run

    start = backbone.save(tmp_path / "start")
    monkeypatch.setattr(anchor_probe, "heldout_records", lambda cfg, dm, n: list(RECORDS))
    data = write_pairs(tmp_path / "pairs.jsonl", copies=4)
    cfg = cfg_factory("stage=reconstruction", "data=jsonl", f"data.path={data}", "data.num_hard_negatives=0",
                      f"model.name_or_path={start}", "stage.decoder=frozen",
                      "data.global_batch_size=8", "data.max_query_length=16", "data.max_doc_length=16",
                      "stage.alpha=0.5", "stage.optim.lr=3e-3", "stage.optim.warmup_steps=0", "stage.optim.schedule=constant",
                      "trainer.precision=32-true", "trainer.max_steps=200",
                      "stage.probe.every_n_steps=50", "stage.probe.batch_size=8")  # fmt: skip
    run(cfg)
    run_dir = Path(cfg.run_dir)
    gain = probe_rows(run_dir)["probe/anchor_gain_d2q"]
    # a random-init decoder reads its first position weakly: 0.006 -> 0.095 when written (2026-12-02)
    assert gain[200] > 0.05 and gain[200] > gain[0] + 0.05, gain.to_dict()
    final = run_dir / "final"
    assert json.loads((final / "stage1_anchor.json").read_text())["decoder"] == "frozen"
    decoder = load_decoder(final)
    assert all(torch.equal(decoder.state_dict()[k], v) for k, v in backbone.state_dict().items())
    use = checkpoint_anchor_use(reader_for_checkpoint(Backbone.load(final), final), list(RECORDS), batch_size=8,
                                bf16=False, max_query_length=16, max_doc_length=16)  # fmt: skip
    logged = probe_rows(run_dir).loc[200]
    assert use["ce_d2q"] == pytest.approx(logged["probe/ce_d2q"], rel=1e-4)  # decoded as training decoded
    assert use["anchor_gain_d2q"] == pytest.approx(gain[200], abs=2e-3)  # a difference of CEs: absolute
