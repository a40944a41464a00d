"""AdamW's fused kernel is the default wherever torch has one (the CPU too), and it trains as the foreach loop does."""

from types import SimpleNamespace

import torch

from bireco.stages.optim import build_optimizer


def optim(fused=None, lr=1e-2):
    return SimpleNamespace(lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1, fused=fused)


def train(fused, dtype=torch.float32, steps=5):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4)).to(dtype)
    opt = build_optimizer(model.parameters(), optim(fused))
    for i in range(steps):
        torch.manual_seed(100 + i)
        loss = model(torch.randn(6, 8, dtype=dtype)).float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return opt, [p.detach().float().clone() for p in model.parameters()]


def test_cpu_default_is_the_fused_kernel_with_the_foreach_update():
    opt, fused = train(None)
    assert all(g["fused"] for g in opt.param_groups)
    opt, foreach = train(False)
    assert not any(g["fused"] for g in opt.param_groups)
    for a, b in zip(fused, foreach, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # float rounding only; five steps of lr 1e-2


def test_fused_kernel_takes_bf16_weights():
    """bf16-true training keeps bf16 weights in the optimizer: the fused CPU kernel takes them too."""
    _, fused = train(None, torch.bfloat16)
    _, foreach = train(False, torch.bfloat16)
    for a, b in zip(fused, foreach, strict=True):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)  # bf16 rounding of the update


def test_off_cpu_and_cuda_the_foreach_loop():
    params = [torch.nn.Parameter(torch.zeros(3, device="meta"))]
    opt = build_optimizer(params, optim())
    assert not opt.param_groups[0]["fused"]


def test_bf16_mixed_training_clips_a_fused_adamw_as_the_foreach_one(backbone):
    """Lightning refuses to clip for a fused AdamW under autocast (it could unscale in its step); bf16 has no scaler,
    so bireco clips it itself: a step with clipping that bites gives the foreach run's weights."""
    import copy

    import lightning as L
    from conftest import stage1_module
    from torch.utils.data import DataLoader

    from bireco.config.schema import OptimConfig
    from bireco.data.collate import PairCollator

    pairs = [{"query": q, "positive": d, "negatives": [], "instruction": "Find", "dataset": "a"}
             for q, d in [("dog", "a member of the genus Canis"), ("run fast", "move quickly on foot")]]  # fmt: skip
    batch = PairCollator(backbone.tokenizer, backbone.text_format, 32, 32, pad_id=backbone.pad_id)(pairs)
    weights = {}
    for fused in (True, False):
        module = stage1_module(copy.deepcopy(backbone), OptimConfig(warmup_steps=0, schedule="constant",
                               fused=fused), lr_horizon=2, alpha=0.2, schedule="joint")  # fmt: skip
        trainer = L.Trainer(max_steps=2, accelerator="cpu", devices=1, precision="bf16-mixed", gradient_clip_val=1e-3,
                            logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False)  # fmt: skip
        trainer.fit(module, train_dataloaders=DataLoader([batch, batch], batch_size=None))
        assert module.optimizers().optimizer.param_groups[0]["fused"] is fused
        weights[fused] = {n: p.detach().clone() for n, p in module.named_parameters()}
    for n, w in weights[True].items():
        torch.testing.assert_close(w, weights[False][n], rtol=1e-5, atol=1e-6, msg=n)
