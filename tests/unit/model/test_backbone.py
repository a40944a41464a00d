import pytest
import torch
import torch.nn.functional as F
from conftest import TEXTS, make_side
from omegaconf import OmegaConf

from bireco.model.backbone import Backbone, to_right_padding
from bireco.model.pooling import last_token, mean, weighted_mean


def test_pooling_hand_computed():
    hidden = torch.arange(2 * 3 * 2, dtype=torch.float).view(2, 3, 2)  # (B=2, T=3, H=2)
    left = torch.tensor([[0, 1, 1], [1, 1, 1]])
    right = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert torch.equal(last_token(hidden, left), torch.tensor([[4.0, 5.0], [10.0, 11.0]]))
    assert torch.equal(last_token(hidden, right), torch.tensor([[2.0, 3.0], [10.0, 11.0]]))
    assert torch.allclose(mean(hidden, right), torch.tensor([[1.0, 2.0], [8.0, 9.0]]))
    # weights 1, 2 on the two real tokens of row 0: (1*[0,1] + 2*[2,3]) / 3
    assert torch.allclose(weighted_mean(hidden, right)[0], torch.tensor([4 / 3, 7 / 3]))


def test_embed_left_and_right_padding_agree(backbones):
    for name, bb in backbones.items():
        bb.eval()
        for pooling in ("last", "mean", "weighted_mean"):
            bb.pooling = pooling
            with torch.no_grad():
                left = bb.embed(make_side(bb, TEXTS, padding_side="left"))
                right = bb.embed(make_side(bb, TEXTS, padding_side="right"))
                single = torch.cat([bb.embed(make_side(bb, [t])) for t in TEXTS])
            assert left.shape == (len(TEXTS), bb.hidden_size)
            assert torch.allclose(left, right, atol=1e-5), (name, pooling)
            assert torch.allclose(left, single, atol=1e-5), (name, pooling)


def naive_reconstruction_ce(bb: Backbone, anchor, side, labels):
    """Full-vocabulary logits at every position, one sequence at a time, no padding at all."""
    losses = []
    table = bb.causal_lm.get_input_embeddings()
    for i in range(anchor.shape[0]):
        m = side["attention_mask"][i].bool()
        ids, lab = side["input_ids"][i][m], labels[i][m]
        x = torch.cat([anchor[i : i + 1], table(ids)], 0)[None]  # (1, 1 + n, H)
        logits = bb.causal_lm(inputs_embeds=x).logits[0, :-1]  # (n, V): position j predicts token j
        losses.append((logits, lab))
    logits = torch.cat([x for x, _ in losses])
    labels = torch.cat([y for _, y in losses])
    return F.cross_entropy(logits.float(), labels, ignore_index=-100)


def test_reconstruction_loss_equals_naive_full_logit_ce(backbone):
    backbone.ce_chunk_size = 7  # several chunks
    torch.manual_seed(0)
    for padding_side in ("left", "right"):
        side = make_side(backbone, TEXTS, padding_side=padding_side)
        labels = torch.where(side["embed_mask"], side["input_ids"], -100)
        anchor = torch.randn(len(TEXTS), backbone.hidden_size)
        out = backbone.reconstruction_loss(anchor, side["input_ids"], side["attention_mask"], labels)
        ref = naive_reconstruction_ce(backbone, anchor, side, labels)
        assert abs(out.loss.item() - ref.item()) < 1e-5
        assert out.n_tokens == int(side["embed_mask"].sum())


def test_anchor_receives_gradient_and_matters(backbone):
    side = make_side(backbone, TEXTS)
    labels = torch.where(side["embed_mask"], side["input_ids"], -100)
    anchor = torch.randn(len(TEXTS), backbone.hidden_size, requires_grad=True)
    loss = backbone.reconstruction_loss(anchor, side["input_ids"], side["attention_mask"], labels).loss
    loss.backward()
    assert anchor.grad is not None and anchor.grad.abs().sum() > 0
    zero = backbone.reconstruction_loss(
        torch.zeros_like(anchor), side["input_ids"], side["attention_mask"], labels
    ).loss
    assert abs(zero.item() - loss.item()) > 1e-6


def test_to_right_padding_moves_real_tokens_first():
    ids = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 1]])
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    out_ids, out_mask = to_right_padding(ids, attention_mask=mask)
    assert out_ids.tolist() == [[5, 6, 0, 0], [7, 8, 9, 1]]
    assert out_mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]


def test_bidirectional_attention_sees_later_tokens(backbone):
    backbone.eval()
    backbone.pooling = "mean"
    a = make_side(backbone, ["dog runs fast"], padding_side="right")
    b = make_side(backbone, ["dog walks slowly"], padding_side="right")
    with torch.no_grad():
        h_causal = [backbone.hidden_states(s["input_ids"], s["attention_mask"])[0, 0] for s in (a, b)]
        backbone.attention = "bidirectional"
        h_bi = [backbone.hidden_states(s["input_ids"], s["attention_mask"])[0, 0] for s in (a, b)]
        backbone.attention = "causal"
        again = backbone.hidden_states(a["input_ids"], a["attention_mask"])[0, 0]
    assert torch.allclose(h_causal[0], h_causal[1], atol=1e-6)  # first token cannot see the rest
    assert not torch.allclose(h_bi[0], h_bi[1], atol=1e-4)  # ... unless attention is bidirectional
    assert torch.allclose(again, h_causal[0], atol=1e-6)  # switch restored
    assert getattr(backbone.causal_lm.config, "is_causal", True) is not False


def test_lora_merge_equals_unmerged(backbone):
    from bireco.model.loading import apply_lora

    backbone.model = apply_lora(
        backbone.model, {"r": 4, "alpha": 8, "dropout": 0.0}, ["q_proj", "v_proj", "up_proj"]
    )
    with torch.no_grad():  # make the adapter non-trivial
        for n, p in backbone.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    backbone.eval()
    side = make_side(backbone, TEXTS)
    with torch.no_grad():
        unmerged = backbone.embed(side)
        backbone.model = backbone.model.merge_and_unload()
        merged = backbone.embed(side)
    assert torch.allclose(unmerged, merged, atol=1e-5)


def test_save_load_round_trip(backbone, tmp_path):
    from bireco.model.loading import apply_lora

    side = make_side(backbone, TEXTS)
    backbone.eval()
    with torch.no_grad():
        ref = backbone.embed(side)
    Backbone.save(backbone, tmp_path / "full")
    loaded = Backbone.load(tmp_path / "full", dtype="float32").eval()
    with torch.no_grad():
        assert torch.equal(loaded.embed(side), ref)
    assert loaded.text_format == backbone.text_format
    # LoRA: full (base + adapter/) and merged both reload to the same function
    backbone.model = apply_lora(backbone.model, {"r": 4, "alpha": 8, "dropout": 0.0}, ["q_proj", "v_proj"])
    with torch.no_grad():
        for n, p in backbone.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
        ref = backbone.eval().embed(side)
    for mode in ("full", "merged"):
        backbone.save(tmp_path / mode, mode)
        again = Backbone.load(tmp_path / mode, dtype="float32").eval()
        with torch.no_grad():
            assert torch.allclose(again.embed(side), ref, atol=1e-5), mode
    assert (tmp_path / "full" / "adapter" / "adapter_config.json").is_file()
    assert not (tmp_path / "merged" / "adapter").exists()
    assert backbone.is_lora  # saving merged did not merge the training model
    # plain transformers loads the trained model from final/ (LoRA merged in), not the base without Stage II
    import copy

    from transformers import AutoModelForCausalLM

    want = copy.deepcopy(backbone.model).merge_and_unload().state_dict()
    got = AutoModelForCausalLM.from_pretrained(tmp_path / "full").state_dict()
    assert got.keys() == want.keys() and all(torch.allclose(got[k], want[k], atol=1e-6) for k in want)


def test_adapter_only_checkpoint_loads_wherever_a_checkpoint_does(
    backbone, tmp_path, cfg_factory, monkeypatch
):
    """save_mode=adapter writes the adapter and the base model's path: Backbone.load (evaluate, export, inspect) and
    stage.init_from load base + adapter, from any working directory; a random-init base is refused up front."""
    from bireco.config.validate import validate
    from bireco.core.errors import ConfigError
    from bireco.training.builders import build_backbone

    monkeypatch.chdir(tmp_path)
    Backbone.save(backbone, "base")  # a relative path, as a run's outputs/... would be
    lora = Backbone.from_config(dict(OmegaConf.to_container(cfg_factory().model, resolve=True), name_or_path="base",
                                     tokenizer="base", architecture=None), {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0})  # fmt: skip
    with torch.no_grad():
        for n, p in lora.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    side = make_side(backbone, TEXTS)
    with torch.no_grad():
        ref = lora.eval().embed(side)
    lora.save(tmp_path / "adapter_only", "adapter")
    assert not (tmp_path / "adapter_only" / "config.json").exists()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with torch.no_grad():
        assert torch.allclose(
            Backbone.load(tmp_path / "adapter_only", dtype="float32").eval().embed(side), ref, atol=1e-5
        )
        cfg = cfg_factory(
            "stage=baseline", f"stage.init_from={tmp_path / 'adapter_only'}", "stage.lora.enabled=false"
        )
        assert torch.allclose(build_backbone(cfg).eval().embed(side), ref, atol=1e-5)
    with pytest.raises(ConfigError, match="save_mode=adapter .*random weights"):
        validate(cfg_factory("stage=baseline", "save_mode=adapter"))
    with pytest.raises(ConfigError, match="stage.lora.enabled=false"):
        validate(cfg_factory("stage=reconstruction", "save_mode=adapter", "model.name_or_path=base"))


def test_checkpoint_of_other_family_fails_clearly(backbone, tmp_path, cfg_factory):
    import pytest

    backbone.save(tmp_path / "ckpt")
    cfg = cfg_factory("model=tiny_qwen2")
    from omegaconf import OmegaConf

    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model_cfg.update(name_or_path=str(tmp_path / "ckpt"), architecture=None)
    with pytest.raises(ValueError, match="'llama' model but the model config expects 'qwen2'"):
        Backbone.from_config(model_cfg)
    (tmp_path / "ckpt" / "model.safetensors").unlink()
    model_cfg["expected_model_type"] = "llama"
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        Backbone.from_config(model_cfg)


@pytest.mark.parametrize("chunk", [3, 1000])
@pytest.mark.parametrize("train_weight", [True, False])
@pytest.mark.parametrize("softcap", [None, 2.0])
def test_fused_chunked_ce_matches_full_logit_ce_and_its_gradients(chunk, train_weight, softcap):
    from bireco.losses.chunked_ce import chunked_cross_entropy

    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=True)
    head.weight.requires_grad_(train_weight)
    head.bias.requires_grad_(train_weight)
    h = torch.randn(11, 16, requires_grad=True)
    y = torch.randint(0, 50, (11,))
    loss, correct = chunked_cross_entropy(h, y, head, chunk, softcap)
    (2.5 * loss).backward()  # a non-unit incoming gradient must scale the precomputed ones
    got = [h.grad.clone()] + ([head.weight.grad.clone(), head.bias.grad.clone()] if train_weight else [])
    for t in (h, head.weight, head.bias):
        t.grad = None
    logits = head(h) if softcap is None else softcap * torch.tanh(head(h) / softcap)
    ref = F.cross_entropy(logits, y, reduction="sum")
    (2.5 * ref).backward()
    want = [h.grad] + ([head.weight.grad, head.bias.grad] if train_weight else [])
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    assert int(correct) == int((logits.argmax(-1) == y).sum())
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    if not train_weight:
        assert head.weight.grad is None


def test_missing_checkpoint_is_reported_as_missing(tmp_path):
    """Not "not a bireco checkpoint": a path that does not exist says so, and names a half-written save beside it."""
    with pytest.raises(FileNotFoundError, match="no such checkpoint directory$"):
        Backbone.load(tmp_path / "nothing" / "final")
    from bireco.core.files import temp_name

    (tmp_path / "run").mkdir()
    temp_name(tmp_path / "run" / "final").mkdir()  # where a killed Backbone.save leaves its partial directory
    with pytest.raises(FileNotFoundError, match=r"final\.tmp-\S+ exists: that run's save did not finish"):
        Backbone.load(tmp_path / "run" / "final")
    (tmp_path / "run" / "other").mkdir()
    with pytest.raises(FileNotFoundError, match="not a bireco checkpoint"):
        Backbone.load(tmp_path / "run" / "other")


def test_gemma2_reconstruction_loss_uses_the_models_softcapped_logits():
    """Gemma-2 caps its final logits (c * tanh(z / c)); Stage I's fused CE must train that distribution."""
    from conftest import compose_cfg
    from omegaconf import OmegaConf

    torch.manual_seed(0)
    model_cfg = OmegaConf.to_container(compose_cfg(["model=tiny_llama"]).model, resolve=True)
    model_cfg.update(expected_model_type="gemma2", attn_implementation="eager", architecture=dict(
        model_type="gemma2", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, final_logit_softcapping=0.2))  # fmt: skip
    bb = Backbone.from_config(model_cfg).eval()
    model, V = bb.causal_lm, bb.causal_lm.config.vocab_size
    ids = torch.randint(1, V, (2, 7))
    anchor = torch.randn(2, 32)
    out = bb.reconstruction_loss(anchor, ids, torch.ones_like(ids), ids.clone())
    # the model's own forward on the same inputs: [anchor; token embeddings] -> its logits (softcapped inside)
    inputs = torch.cat([anchor[:, None], model.get_input_embeddings()(ids)], dim=1)
    logits = model(inputs_embeds=inputs).logits[:, :7]
    want = F.cross_entropy(logits.reshape(-1, V), ids.reshape(-1))
    raw = bb.lm_head(model.get_decoder()(inputs_embeds=inputs).last_hidden_state[:, :7])
    uncapped = F.cross_entropy(raw.reshape(-1, V), ids.reshape(-1))
    assert logits.abs().max() <= 0.2 and abs(float(uncapped - want)) > 1e-3  # the cap matters on this model
    torch.testing.assert_close(out.loss, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model_type", ["gemma", "gemma2"])
def test_gemma_scales_its_tokens_by_sqrt_d_but_not_the_anchor(model_type):
    """Gemma multiplies token embeddings by sqrt(d). In transformers >= 5.4 (bireco's floor) that lives in the
    embedding module, so Stage I's decoder sees scaled tokens and the anchor exactly as given (docs/method.md §2.3);
    under transformers 4.x the model's forward scaled every `inputs_embeds`, the anchor included."""
    from conftest import compose_cfg
    from omegaconf import OmegaConf

    torch.manual_seed(0)
    model_cfg = OmegaConf.to_container(compose_cfg(["model=tiny_llama"]).model, resolve=True)
    model_cfg.update(expected_model_type=model_type, attn_implementation="eager", architecture=dict(
        model_type=model_type, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8))  # fmt: skip
    bb = Backbone.from_config(model_cfg).eval()
    seen = {}

    def remember(module, args, kwargs):
        seen.setdefault("x", kwargs.get("hidden_states", args[0] if args else None))

    hook = bb.decoder.layers[0].register_forward_pre_hook(remember, with_kwargs=True)
    ids = torch.randint(1, bb.causal_lm.config.vocab_size, (2, 5))
    anchor = torch.randn(2, 32)
    with torch.no_grad():
        bb.reconstruction_loss(anchor, ids, torch.ones_like(ids), ids.clone())
    hook.remove()
    x = seen["x"]  # (B, 1 + T, H): what the first decoder layer receives
    raw_rows = bb.causal_lm.get_input_embeddings().weight[ids]
    torch.testing.assert_close(x[:, 0], anchor)  # the anchor: not scaled
    torch.testing.assert_close(
        x[:, 1:], raw_rows * 32**0.5, rtol=1e-4, atol=1e-5
    )  # the tokens: scaled by sqrt(d)
