import copy

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import compose_cfg, stage1_module

from bireco.data.collate import PairCollator
from bireco.model.anchor import target_labels
from bireco.stages.reconstruction import D2Q, Q2D, direction_at

RECORDS = [
    {"query": "dog", "positive": "a member of the genus Canis", "negatives": ["a cat"], "instruction": "Find the sense", "dataset": "a"},
    {"query": "run fast", "positive": "move quickly on foot", "negatives": ["walk"], "instruction": "Find the sense", "dataset": "a"},
    {"query": "red", "positive": "the color of blood", "negatives": ["blue"], "instruction": "Find the sense", "dataset": "a"},
]  # fmt: skip


def make_batch(backbone):
    return PairCollator(backbone.tokenizer, backbone.text_format, 32, 32, pad_id=backbone.pad_id)(RECORDS)


def module(backbone, **kw):
    return stage1_module(backbone, lr_horizon=10, **kw)


@pytest.mark.parametrize(
    "alpha,expected", [(0.0, "DDDDDDDDDD"), (0.2, "DDDDQDDDDQ"), (0.5, "DQDQDQDQDQ"), (1.0, "QQQQQQQQQQ")]
)
def test_interleave_pattern_is_exact(alpha, expected):
    got = "".join("Q" if direction_at(k, alpha) == Q2D else "D" for k in range(10))
    assert got == expected
    share = sum(direction_at(k, alpha) == Q2D for k in range(1000)) / 1000
    assert share == alpha


def count_passes(m, batch, schedule):
    calls = []
    hook = m.backbone.decoder.register_forward_hook(lambda *a: calls.append(1))
    m.schedule = schedule
    m.step_loss(batch)
    hook.remove()
    return len(calls)


def test_alternate_runs_two_passes_joint_four(backbone):
    m = module(backbone)
    batch = make_batch(backbone)
    assert count_passes(m, batch, "alternate") == 2
    assert count_passes(m, batch, "joint") == 4


def test_joint_skips_a_direction_of_weight_zero(backbone):
    """alpha 0 / 1 (the direction ablation) under the default joint schedule: the zero-weight direction's two
    passes are skipped; the loss is the other direction's alone."""
    batch = make_batch(backbone)
    for alpha, direction in ((0.0, D2Q), (1.0, Q2D)):
        m = module(backbone, alpha=alpha)
        assert m.schedule == "joint" and count_passes(m, batch, "joint") == 2
        loss, logs = m.step_loss(batch)
        own = (m.q2d(batch) if direction == Q2D else m.d2q(batch)).loss
        torch.testing.assert_close(loss, own)
        assert set(logs) == {f"train/loss_{direction}", f"train/acc_{direction}", "train/loss"}


def test_constant_anchor_control_decodes_without_the_other_side(backbone):
    """stage.anchor=constant: the Q2D loss no longer depends on the query (no encoder pass), the method's does."""
    batch = make_batch(backbone)
    other = copy.deepcopy(batch)
    other["query"] = make_batch(backbone)["query"]
    other["query"]["input_ids"] = other["query"]["input_ids"].flip(0)
    other["query"]["attention_mask"] = other["query"]["attention_mask"].flip(0)
    const, method = module(backbone, anchor="constant"), module(backbone)
    torch.testing.assert_close(const.q2d(batch).loss, const.q2d(other).loss)
    assert not torch.allclose(method.q2d(batch).loss, method.q2d(other).loss)
    with pytest.raises(Exception) as bad:  # a choice the schema does not have: refused as the config composes
        compose_cfg(["stage=reconstruction", "stage.anchor=none"])
    assert "expected one of [embedding, constant, shuffled]" in str(bad.value.__cause__)


def test_shuffled_anchor_control_decodes_each_target_from_the_previous_pairs_embedding(backbone):
    """stage.anchor=shuffled: the step's loss is the method's CE with the batch's anchors rolled by one (pair i
    decoded from pair i-1's embedding), the gradient still reaches the encoder side, and the reader (which the probe
    uses) still gives each pair its own anchor."""
    batch = make_batch(backbone)
    shuffled, method = module(backbone, anchor="shuffled"), module(backbone)
    own = method.anchor(batch["query"])
    torch.testing.assert_close(shuffled.anchor(batch["query"]), own.roll(1, 0))
    torch.testing.assert_close(shuffled.reader.anchor(batch["query"]), own)
    torch.testing.assert_close(
        shuffled.q2d(batch).loss, method.decode(own.roll(1, 0), batch["positive"]).loss
    )
    assert not torch.allclose(shuffled.q2d(batch).loss, method.q2d(batch).loss)
    shuffled.d2q(batch).loss.backward()
    assert backbone.decoder.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


def test_joint_loss_is_weighted_sum_of_independent_ces(backbone):
    alpha = 0.2
    m = module(backbone, alpha=alpha, schedule="joint")
    batch = make_batch(backbone)
    loss, logs = m.step_loss(batch)

    def ce(src, tgt):  # independent: full logits, per sequence, paper labels
        bb = backbone
        h = bb.hidden_states(batch[src]["input_ids"], batch[src]["attention_mask"])
        last = batch[src]["attention_mask"].shape[1] - 1  # left padding: EOS at the end
        logits, labels = [], []
        for i in range(len(RECORDS)):
            m_ = batch[tgt]["attention_mask"][i].bool()
            ids = batch[tgt]["input_ids"][i][m_]
            lab = torch.where(batch[tgt]["embed_mask"][i][m_], ids, -100)
            x = torch.cat([h[i, last][None], bb.causal_lm.get_input_embeddings()(ids)])[None]
            logits.append(bb.causal_lm(inputs_embeds=x).logits[0, :-1])
            labels.append(lab)
        return F.cross_entropy(torch.cat(logits), torch.cat(labels), ignore_index=-100)

    expected = alpha * ce("query", "positive") + (1 - alpha) * ce("positive", "query")
    assert abs(loss.item() - expected.item()) < 1e-6
    assert abs(logs["train/loss_q2d"].item() - ce("query", "positive").item()) < 1e-6


def test_gradient_reaches_encoder_through_anchor(backbone):
    m = module(backbone)
    batch = make_batch(backbone)
    anchor = m.anchor(batch["query"])
    out = m.decode(anchor, batch["positive"])
    g_anchor = torch.autograd.grad(out.loss, anchor, retain_graph=True)[0]
    assert g_anchor.abs().sum() > 0
    zeroed = m.decode(torch.zeros_like(anchor), batch["positive"])
    assert abs(zeroed.loss.item() - out.loss.item()) > 1e-6
    params = [p for p in backbone.parameters()]
    g1 = torch.autograd.grad(out.loss, params, allow_unused=True)
    g0 = torch.autograd.grad(zeroed.loss, params, allow_unused=True)
    assert any(a is not None and b is not None and not torch.allclose(a, b) for a, b in zip(g1, g0))


def test_batch_is_not_mutated_by_a_step(backbone):
    m = module(backbone, schedule="joint")
    batch = make_batch(backbone)
    before = copy.deepcopy(batch)
    m.step_loss(batch)[0].backward()
    for side in ("query", "positive", "negatives"):
        for k, v in before[side].items():
            assert torch.equal(v, batch[side][k]), (side, k)


def test_label_modes(backbone):
    batch = make_batch(backbone)
    q = batch["query"]
    paper = target_labels(q, "paper", False)
    assert torch.equal(paper != -100, q["embed_mask"])  # text + EOS only
    with_instr = target_labels(q, "paper", True)
    assert torch.equal(with_instr != -100, q["embed_mask"] | q["instruction_mask"])
    code = target_labels(q, "released_code", False)
    assert (
        (code != -100)
        == (
            q["attention_mask"].bool() & (torch.arange(q["input_ids"].shape[1]) < q["input_ids"].shape[1] - 1)
        )
    ).all()
    eos = backbone.text_format.eos_id(backbone.tokenizer)
    assert (paper[:, -1] == eos).all() and (code[:, -1] == -100).all()


@pytest.mark.integration
def test_short_run_reduces_both_losses_and_feeds_stage2(cfg_factory, tmp_path):
    from bireco.training.run import run

    # a small real pair set (64 WordNet pairs), seen several times: both directions must learn it
    common = [
        "trainer.log_every_n_steps=1",
        "data.global_batch_size=16",
        "data.datasets=[wordnet_definitions]",
        "data.max_train_records=64",
    ]
    cfg = cfg_factory(
        "stage=reconstruction",
        "stage.schedule=joint",
        "trainer.max_steps=50",
        "stage.optim.lr=6e-3",
        "stage.optim.warmup_steps=4",
        *common,
    )
    run(cfg)
    run_dir = tmp_path / "out" / "default" / "default" / "stage1"
    log = pd.read_csv(run_dir / "logs" / "metrics.csv")
    for direction in ("q2d", "d2q"):
        col = log[f"train/loss_{direction}"].dropna()
        first, last = col.iloc[0], col.iloc[-5:].mean()
        assert last < 0.7 * first, (direction, first, last)
    assert (run_dir / "final" / "bireco.json").is_file() and (run_dir / "config.yaml").is_file()
    # Stage II finds and loads it without a path
    cfg2 = cfg_factory("stage=contrastive", "trainer.max_steps=2", *common)
    run(cfg2)
    final = tmp_path / "out" / "default" / "default" / "stage2" / "final"
    assert (final / "adapter").is_dir()
    card = (final / "README.md").read_text()  # every final/ carries a model card
    assert "Stage I + Stage II (Anchor)" in card and "| learning rate |" in card and "@inproceedings" in card


@pytest.mark.integration
def test_stage2_without_stage1_output_explains(cfg_factory):
    from bireco.core.errors import ConfigError
    from bireco.training.run import run

    with pytest.raises(ConfigError, match="no Stage I output"):
        run(cfg_factory("stage=contrastive", "trainer.max_steps=1"))


def test_direction_logging_in_alternate(backbone):
    m = module(backbone, alpha=0.5, schedule="alternate")
    batch = make_batch(backbone)
    seen = []
    for _ in range(2):
        _, logs = m.step_loss(batch)
        m.micro_step += 1
        seen.append(sorted(k for k in logs if k.startswith("train/loss_")))
    assert seen == [[f"train/loss_{D2Q}"], [f"train/loss_{Q2D}"]]


@pytest.mark.integration
def test_inspector_reconstructs_training_queries_after_stage1(cfg_factory, tmp_path):
    """A Stage I (EBD2Q) model trained on a tiny set greedily decodes training queries from their documents'
    embeddings (the single anchor vector); the untrained model does not."""
    from bireco.data import wordnet
    from bireco.data.instructions import load_table
    from bireco.evaluation.anchor_diagnostics import anchor_of, reconstruct, target_prompt
    from bireco.model.backbone import Backbone
    from bireco.training.run import run

    cfg = cfg_factory("stage=reconstruction", "stage.alpha=0.0", "trainer.max_steps=100", "stage.optim.lr=6e-3",
                      "stage.optim.warmup_steps=4", "data.global_batch_size=16", "data.max_train_records=16",
                      "data.datasets=[wordnet_definitions]")  # fmt: skip
    untrained = Backbone.from_config(cfg.model)
    run(cfg)
    trained = Backbone.load(tmp_path / "out" / "default" / "default" / "stage1" / "final")
    records = [r for r in wordnet.pair_records("train") if r["dataset"] == "wordnet_definitions"][:16]
    instruction = load_table("wordnet")["wordnet_definitions"]

    def exact(bb):
        prompt = target_prompt(bb, instruction)
        outs = [reconstruct(bb, anchor_of(bb, r["positive"]), 16, prompt)[1].strip() for r in records]
        return sum(o == r["query"] for o, r in zip(outs, records)) / len(records)

    assert exact(untrained) == 0.0
    assert exact(trained) >= 0.5


def test_anchor_use_is_stage1_ce_with_own_vs_another_pairs_anchor(backbone):
    """The diagnostic behind docs/results.md: CE with the pair's own anchor equals Stage I's loss on that batch, and the
    gain is the CE increase when each target is decoded from the next pair's anchor instead."""
    from bireco.data import wordnet
    from bireco.data.instructions import instruction_for, load_table
    from bireco.evaluation.anchor_diagnostics import checkpoint_anchor_use
    from bireco.model.anchor import AnchorReader

    def anchor_use(backbone, records, **kw):
        return checkpoint_anchor_use(AnchorReader(backbone), records, **kw)

    instruction = instruction_for(load_table("wordnet"), wordnet.DEFINITIONS, 0)
    records = [
        dict(r, instruction=instruction)
        for r in wordnet.pair_records("dev")
        if r["dataset"] == wordnet.DEFINITIONS
    ][:6]
    out = anchor_use(backbone, records, batch_size=6, max_query_length=48, max_doc_length=64, bf16=False)
    collate = PairCollator(
        backbone.tokenizer, backbone.text_format, 48, 64, backbone.padding_side, 0, backbone.pad_id
    )
    batch = collate(records)
    module = stage1_module(backbone, lr_horizon=1)
    module.eval()
    with torch.no_grad():
        own = module.d2q(batch)
        anchor = module.anchor(batch["positive"]).roll(1, 0)
        other = module.decode(anchor, batch["query"])
        assert out["ce_d2q"] == pytest.approx(float(own.loss), rel=1e-5)
        gain = float(other.loss - own.loss)  # small on a random model, but not zero
        assert abs(gain) > 1e-4 and out["anchor_gain_d2q"] == pytest.approx(gain, abs=2e-5)
        q2d = module.q2d(batch)
        assert out["ce_q2d"] == pytest.approx(float(q2d.loss), rel=1e-5) and out["acc_q2d"] == pytest.approx(
            float(q2d.accuracy)
        )


@pytest.mark.integration
def test_inspect_cli_takes_ordinary_text(backbone, tmp_path):
    """`python -m bireco.inspect text="a dog, with a long snout"`: the shell drops the quotes, and the comma (or an
    apostrophe) must not turn the text into a Hydra sweep."""
    import subprocess
    import sys

    from conftest import subprocess_env

    from bireco.model.backbone import Backbone

    Backbone.save(backbone, tmp_path / "ckpt")
    text = "a dog, with a long snout [and] the owner's = 2"
    cmd = [
        sys.executable,
        "-m",
        "bireco.inspect",
        f"checkpoint={tmp_path / 'ckpt'}",
        f"text={text}",
        "max_new_tokens=4",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"document: {text!r}" in r.stdout


@pytest.mark.integration
def test_stage1_learns_to_read_its_anchor_where_the_text_alone_cannot_say_which_pair(backbone):
    """Eight pairs trained over and over (experiments/anchor_memorise/anchor_memorise.py): only the anchor says which of the eight
    targets to write, so with real anchors the decoder must read them (CE with another pair's anchor rises: gain), and
    with `anchor=constant` it cannot. Guards the anchor path end to end (position, mask, gradient into the encoder)."""

    from conftest import experiment

    from bireco.evaluation.anchor_diagnostics import checkpoint_anchor_use
    from bireco.model.anchor import AnchorReader

    def anchor_use(backbone, records, **kw):  # with real anchors, whatever the model trained with
        return checkpoint_anchor_use(AnchorReader(backbone), records, **kw)

    memorise = experiment("anchor_memorise/anchor_memorise.py")
    RECORDS, train_pairs = memorise.RECORDS, memorise.train_pairs

    torch.manual_seed(0)
    after = {}
    for anchor in ("embedding", "constant"):
        b = copy.deepcopy(backbone)
        train_pairs(b, anchor, steps=200, lr=1e-3)
        after[anchor] = anchor_use(b, RECORDS, batch_size=8, bf16=False)
    real, constant = after["embedding"], after["constant"]
    assert real["anchor_gain_d2q"] > 0.3 and abs(constant["anchor_gain_d2q"]) < 0.05, after
    assert real["ce_d2q"] < constant["ce_d2q"] - 0.3 and real["ce_q2d"] < constant["ce_q2d"], after


def test_inspect_embeds_a_query_as_evaluation_does(backbone):
    """bireco.inspect's anchor of a query with an instruction ending in ":" is the embedding evaluation computes
    (same "...: text" rule, TextFormat.for_instruction), not a "...:; text" variant."""
    from bireco.evaluation.anchor_diagnostics import anchor_of
    from bireco.model.encode import encode_texts

    instruction = "Given a web search query, retrieve passages:"
    got = anchor_of(backbone, "a small dog", instruction, max_length=48)[0]
    want = encode_texts(backbone, ["a small dog"], instruction, 48, normalize=False, bf16=False)[0]
    torch.testing.assert_close(got.float(), want, rtol=1e-4, atol=1e-4)
