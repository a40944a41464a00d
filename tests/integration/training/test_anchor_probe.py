"""Stage I's anchor probe (bireco.training.anchor_probe) and the opt-in anchor conditioning of its decoder input."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import experiment, make_side

from bireco.config.schema import OptimConfig
from bireco.model.anchor import AnchorConditioning
from bireco.stages.reconstruction import ReconstructionModule

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
    assert json.loads((run_dir / "final" / "stage1_anchor.json").read_text())["scale"] == "raw"


def test_a_self_target_stage1_logs_the_probe_of_the_directions_it_trains(cfg_factory, tmp_path, monkeypatch):
    """`stage.target=self` through bireco.train: the run trains D2D (alpha 0), logs it as such, and the probe logs
    the D2D gain beside the paper's two directions, in the CSV and in final/train_summary.json; where only the anchor
    says which of eight documents to write, the decoder reads it."""
    from bireco.training import anchor_probe
    from bireco.training.run import run

    monkeypatch.setattr(anchor_probe, "heldout_records", lambda cfg, dm, n: list(RECORDS))
    STEPS = 150
    data = write_pairs(tmp_path / "pairs.jsonl", copies=4)
    cfg = cfg_factory("stage=reconstruction", "data=jsonl", f"data.path={data}", "data.num_hard_negatives=0",
                      "data.global_batch_size=8", "data.max_query_length=16", "data.max_doc_length=16",
                      "stage.alpha=0.0", "stage.target=self", "stage.optim.lr=3e-3", "stage.optim.warmup_steps=0",
                      "stage.optim.schedule=constant", "trainer.precision=32-true", f"trainer.max_steps={STEPS}",
                      f"stage.probe.every_n_steps={STEPS}", "stage.probe.batch_size=8")  # fmt: skip
    run(cfg)
    run_dir = Path(cfg.run_dir)
    rows = pd.read_csv(run_dir / "logs" / "metrics.csv")
    assert "train/loss_d2d" in rows and "train/loss_d2q" not in rows
    probe = rows.dropna(subset=["probe/anchor_gain_d2d"]).set_index("step")
    assert list(probe.index) == [0, STEPS]
    assert not {"probe/anchor_gain_q2q", "probe/anchor_gain_q2d", "probe/anchor_gain_d2q"} - set(probe)
    summary = json.loads((run_dir / "final" / "train_summary.json").read_text())
    assert summary["probe/anchor_gain_d2d"] == pytest.approx(probe.loc[STEPS, "probe/anchor_gain_d2d"])
    gain = probe["probe/anchor_gain_d2d"]
    assert gain[STEPS] > 0.3 and gain[STEPS] > gain[0] + 0.3, gain.to_dict()


def test_a_stage1_run_trains_and_keeps_the_affine_anchor_map(cfg_factory, tmp_path, monkeypatch):
    """`stage.anchor_scale=affine` through bireco.train: the map trains (it leaves the identity), final/ keeps it
    and the probe of inspection reads through it."""
    from bireco.evaluation.anchor_diagnostics import checkpoint_anchor_use
    from bireco.model.anchor import load_conditioning
    from bireco.model.backbone import Backbone
    from bireco.training import anchor_probe
    from bireco.training.run import run

    monkeypatch.setattr(anchor_probe, "heldout_records", lambda cfg, dm, n: list(RECORDS))
    data = write_pairs(tmp_path / "pairs.jsonl", copies=1)
    cfg = cfg_factory("stage=reconstruction", "data=jsonl", f"data.path={data}", "data.num_hard_negatives=0",
                      "data.global_batch_size=4", "trainer.precision=32-true", "trainer.max_steps=3",
                      "stage.optim.warmup_steps=0", "stage.anchor_scale=affine", "stage.anchor_affine_lr=1e-2",
                      "stage.probe.every_n_steps=3", "stage.probe.batch_size=4")  # fmt: skip
    run(cfg)
    final = Path(cfg.run_dir) / "final"
    loaded = load_conditioning(final)
    assert loaded.scale == "affine" and (final / "stage1_anchor.safetensors").is_file()
    assert not torch.allclose(loaded.affine.weight, torch.eye(loaded.affine.weight.shape[0]))
    use = checkpoint_anchor_use(Backbone.load(final), list(RECORDS), batch_size=4, bf16=False,
                                conditioning=loaded)  # fmt: skip
    logged = probe_rows(Path(cfg.run_dir)).loc[3]
    assert use["ce_d2q"] == pytest.approx(logged["probe/ce_d2q"], rel=1e-4)  # read as training read it


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


def _module(backbone, **kw) -> ReconstructionModule:
    return ReconstructionModule(backbone, OptimConfig(), lr_horizon=1, **kw)


def test_default_decoder_input_is_the_papers_bit_for_bit(backbone):
    """Options off (the default and every preset): the decoder input is [anchor; tokens], the loss the very number
    the backbone computes from the raw anchor, and the module's state dict has no new entries."""
    side = make_side(backbone, ["a domesticated carnivorous mammal", "dog"])
    from bireco.model.anchor import target_labels

    m = _module(backbone)
    assert m.conditioning.is_raw and not any("conditioning" in k for k in m.state_dict())
    anchor = m.anchor(side)
    assert m.conditioning(anchor) is anchor
    labels = target_labels(side, "paper", False)
    ref = backbone.reconstruction_loss(anchor, side["input_ids"], side["attention_mask"], labels)
    assert torch.equal(m.decode(anchor, side).loss, ref.loss)


@pytest.mark.parametrize("scale", ["token_norm", "centered_token_norm", "batch_centered_token_norm"])
def test_scaled_anchor_has_token_norm_and_gradient_reaches_the_encoder(backbone, scale):
    side = make_side(backbone, ["a domesticated carnivorous mammal", "dog", "red"])
    m = _module(backbone, anchor_scale=scale)
    table_norms = backbone.causal_lm.get_input_embeddings().weight.detach().norm(dim=-1)
    assert m.conditioning.token_norm == pytest.approx(float(table_norms.median()), rel=1e-5)
    m.train()
    anchor = m.anchor(side)
    conditioned = m.conditioning(anchor)
    assert torch.allclose(conditioned.norm(dim=-1), torch.full((3,), m.conditioning.token_norm), rtol=1e-4)
    if scale != "token_norm":  # the first training batch sets the running mean; later ones move it
        assert torch.allclose(m.conditioning.center, anchor.detach().mean(0), atol=1e-5)
        assert "conditioning.center" in m.state_dict()
    anchor = m.anchor(side)
    anchor.retain_grad()
    m.decode(anchor, side).loss.backward()
    assert anchor.grad is not None and bool((anchor.grad.norm(dim=-1) > 0).all())  # on to the encoder pass


def test_batch_centering_gives_a_shared_component_no_effect_in_training_and_keeps_the_mean_for_inference(
    backbone,
):
    """`stage.anchor_scale=batch_centered_token_norm`: in training, a vector added to every anchor of the batch
    changes nothing the decoder gets (it cannot serve as a generic prompt); in eval mode the running mean is
    subtracted, and the record keeps it for inspection."""
    m = _module(backbone, anchor_scale="batch_centered_token_norm")
    cond = m.conditioning
    anchor = torch.randn(4, backbone.hidden_size)
    shared = 10 * torch.randn(backbone.hidden_size)
    cond.train()
    first = cond(anchor)
    torch.testing.assert_close(cond(anchor + shared), first, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(cond.center, torch.zeros_like(cond.center))  # the running mean moved
    cond.eval()
    expected = anchor - cond.center
    expected = expected * (cond.token_norm / expected.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(cond(anchor), expected)
    loaded = AnchorConditioning.from_record(json.loads(json.dumps(cond.record())))
    assert loaded.scale == "batch_centered_token_norm" and torch.allclose(loaded.center, cond.center)


def test_batch_centering_needs_two_pairs_per_device(cfg_factory):
    from bireco.config.validate import validate
    from bireco.core.errors import ConfigError

    validate(cfg_factory("stage=reconstruction", "stage.anchor_scale=batch_centered_token_norm"))
    with pytest.raises(ConfigError, match="batch_centered_token_norm subtracts each device batch's mean"):
        validate(cfg_factory("stage=reconstruction", "stage.anchor_scale=batch_centered_token_norm",
                             "data.global_batch_size=1"))  # fmt: skip


def test_lead_token_sits_before_the_anchor_with_positions_and_mask(backbone, monkeypatch):
    """`stage.anchor_lead_token=bos`: the decoder input is [lead; anchor; tokens], positions 0.. over real tokens,
    the lead and anchor unmasked, and the hidden state at the anchor slot predicts target token 0."""
    tok = backbone.tokenizer
    lead_name = tok.bos_token or tok.eos_token
    m = _module(backbone, anchor_lead_token=lead_name)
    lead_id = tok.convert_tokens_to_ids(lead_name)
    assert m.conditioning.lead_token_id == lead_id
    side = make_side(backbone, ["dog", "a domesticated carnivorous mammal"])  # left-padded
    seen = {}
    real_forward = backbone.decoder.forward

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(backbone.decoder, "forward", spy)
    anchor = m.anchor(side)
    seen.clear()
    m.decode(anchor, side)
    embeds, mask, pos = seen["inputs_embeds"], seen["attention_mask"], seen["position_ids"]
    table = backbone.causal_lm.get_input_embeddings().weight
    n_real = side["attention_mask"].sum(1)
    assert embeds.shape[1] == side["input_ids"].shape[1] + 2
    assert torch.equal(embeds[:, 0], table[lead_id].expand(2, -1)) and torch.equal(embeds[:, 1], anchor)
    assert mask[:, :2].all() and torch.equal(mask.sum(1), n_real + 2)
    assert torch.equal(pos[0, : int(n_real[0]) + 2], torch.arange(int(n_real[0]) + 2))
    with pytest.raises(ValueError, match="not a single token"):
        _module(backbone, anchor_lead_token="no such token here")


def test_conditioning_is_recorded_and_inspection_decodes_with_it(backbone, tmp_path):
    """final/stage1_anchor.json holds the options (and the running mean); bireco.inspect's probe and greedy decoding
    apply them, so a checkpoint is read as it was trained."""
    from bireco.evaluation.anchor_diagnostics import checkpoint_anchor_use as anchor_use
    from bireco.evaluation.anchor_diagnostics import reconstruct
    from bireco.model.anchor import load_conditioning

    m = _module(backbone, anchor_scale="centered_token_norm", anchor_lead_token=backbone.tokenizer.eos_token)
    m.train()
    m.conditioning(m.anchor(make_side(backbone, ["dog", "a domesticated carnivorous mammal"])))
    ckpt = backbone.save(tmp_path / "final")
    (ckpt / "stage1_anchor.json").write_text(json.dumps(m.conditioning.record()))
    loaded = load_conditioning(ckpt)
    assert loaded.scale == "centered_token_norm" and loaded.lead_token_id == m.conditioning.lead_token_id
    assert torch.allclose(loaded.center, m.conditioning.center)
    records = RECORDS[:4]
    with_record = anchor_use(backbone, records, batch_size=4, bf16=False, conditioning=loaded)
    raw = anchor_use(backbone, records, batch_size=4, bf16=False)
    assert with_record["ce_d2q"] != pytest.approx(raw["ce_d2q"], abs=1e-6)
    m.eval()
    anchor = m.anchor(make_side(backbone, ["dog"]))
    ids, _ = reconstruct(backbone, anchor, max_new_tokens=3, conditioning=copy.deepcopy(loaded))
    assert len(ids) <= 3
    assert load_conditioning(tmp_path) is None  # no record: the paper's raw anchor
    assert AnchorConditioning().is_raw


def test_affine_anchor_map_starts_as_token_norm_trains_at_its_own_lr_and_round_trips(backbone, tmp_path):
    """`stage.anchor_scale=affine`: identity-initialised, so step 0 is the token_norm option; its weights get a
    gradient and an optimizer group at `stage.anchor_affine_lr`, the encoder side still gets its gradient; final/
    keeps the map beside the record and inspection loads it (a record without its weights is a clear error)."""
    from bireco.model.anchor import AFFINE_FILE, load_conditioning, save_conditioning

    side = make_side(backbone, ["a domesticated carnivorous mammal", "dog", "red"])
    m = _module(backbone, anchor_scale="affine", anchor_affine_lr=1e-2)
    ref = _module(backbone, anchor_scale="token_norm")
    m.train()
    anchor = m.anchor(side)
    assert torch.allclose(m.conditioning(anchor), ref.conditioning(anchor), atol=1e-5)
    assert "conditioning.affine.weight" in m.state_dict()
    anchor.retain_grad()
    m.decode(anchor, side).loss.backward()
    assert m.conditioning.affine.weight.grad.abs().sum() > 0 and anchor.grad.norm() > 0
    opt = m.configure_optimizers()["optimizer"]
    lrs = {id(p): g["initial_lr"] for g in opt.param_groups for p in g["params"]}  # before the warmup factor
    assert lrs[id(m.conditioning.affine.weight)] == 1e-2
    assert lrs[id(next(backbone.parameters()))] == m.optim_cfg.lr
    opt.step()
    assert not torch.equal(m.conditioning.affine.weight, torch.eye(backbone.hidden_size))
    save_conditioning(tmp_path, m.conditioning)
    loaded = load_conditioning(tmp_path).eval()
    m.eval()
    with torch.no_grad():
        assert torch.equal(loaded(anchor), m.conditioning(anchor))
    (tmp_path / AFFINE_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=AFFINE_FILE):
        load_conditioning(tmp_path)


def test_detached_anchor_trains_the_decoder_only(backbone):
    """`stage.anchor_detach=true`: the step's gradient is exactly that of decoding a detached anchor, and differs
    from the paper's (whose gradient also reaches the embedding through the anchor)."""
    side = make_side(backbone, ["a domesticated carnivorous mammal", "dog"])
    target = make_side(backbone, ["dog", "a domesticated carnivorous mammal"])

    def grads(module, detach_by_hand=False):
        backbone.zero_grad()
        anchor = module.anchor(side)
        module.decode(anchor.detach() if detach_by_hand else anchor, target).loss.backward()
        return {n: p.grad.clone() for n, p in backbone.named_parameters() if p.grad is not None}

    detached = grads(_module(backbone, anchor_detach=True))
    by_hand = grads(_module(backbone), detach_by_hand=True)
    paper = grads(_module(backbone))
    assert detached.keys() == by_hand.keys() and all(torch.equal(detached[k], by_hand[k]) for k in detached)
    assert any(not torch.allclose(detached[k], paper[k]) for k in detached)


def test_affine_lr_needs_the_affine_scale(cfg_factory):
    from bireco.config.validate import validate
    from bireco.core.errors import ConfigError

    with pytest.raises(ConfigError, match="anchor_scale=affine"):
        validate(cfg_factory("stage=reconstruction", "stage.anchor_affine_lr=1e-3"))
    validate(cfg_factory("stage=reconstruction", "stage.anchor_scale=affine", "stage.anchor_affine_lr=1e-3"))


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
    from bireco.model.anchor import AnchorConditioning, AnchorReader

    start = copy.deepcopy(backbone)
    side = make_side(backbone, ["a domesticated carnivorous mammal", "dog", "red"])
    target = make_side(backbone, ["dog", "a domesticated carnivorous mammal", "a colour"])
    m = ReconstructionModule(backbone, OptimConfig(lr=1e-2, warmup_steps=0), lr_horizon=10, decoder="frozen")
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
        by_start = AnchorReader(start, AnchorConditioning()).decode(anchor, target).loss
        by_trained = AnchorReader(backbone, AnchorConditioning()).decode(anchor, target).loss
        assert torch.equal(m.decode(anchor, target).loss, by_start)
        assert not torch.allclose(by_trained, by_start)


def test_frozen_decoder_config_fails_fast_where_nothing_would_train_or_it_cannot_be_rebuilt(
    cfg_factory, tmp_path
):
    from bireco.config.validate import validate
    from bireco.core.errors import ConfigError

    with pytest.raises(ConfigError, match="name_or_path"):  # the tiny test model is random-init
        validate(cfg_factory("stage=reconstruction", "stage.decoder=frozen"))
    named = f"model.name_or_path={tmp_path}"
    with pytest.raises(ConfigError, match="nothing would train"):
        validate(cfg_factory("stage=reconstruction", "stage.decoder=frozen", named, "stage.anchor=constant"))
    with pytest.raises(ConfigError, match="choose one of: shared, frozen"):
        validate(cfg_factory("stage=reconstruction", "stage.decoder=frozn", named))
    validate(cfg_factory("stage=reconstruction", "stage.decoder=frozen", named, "stage.anchor=constant",
                         "stage.anchor_scale=affine"))  # fmt: skip


def test_a_frozen_decoder_stage1_run_learns_to_write_what_its_start_reads(
    cfg_factory, tmp_path, monkeypatch, backbone
):
    """A real `bireco.train` Stage I with `stage.decoder=frozen` from a saved model: with reading forced (eight pairs
    repeated) the encoder learns anchors the frozen start model reads (D2Q gain clearly above 0); final/ records the
    decoder, inspection rebuilds it with the start weights, and its probe equals the last logged one."""
    from bireco.evaluation.anchor_diagnostics import checkpoint_anchor_use
    from bireco.model.anchor import load_conditioning, load_decoder
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
    use = checkpoint_anchor_use(Backbone.load(final), list(RECORDS), batch_size=8, bf16=False,
                                max_query_length=16, max_doc_length=16,
                                conditioning=load_conditioning(final), decoder=decoder)  # fmt: skip
    logged = probe_rows(run_dir).loc[200]
    assert use["ce_d2q"] == pytest.approx(logged["probe/ce_d2q"], rel=1e-4)  # decoded as training decoded
    assert use["anchor_gain_d2q"] == pytest.approx(gain[200], abs=2e-3)  # a difference of CEs: absolute
