import math

import pytest
import torch
from torch import nn

from bireco.cpu.dropout import (
    CpuPoissonDropout,
    poisson_drop_positions,
    use_cpu_poisson_dropout,
    use_torch_dropout,
)
from bireco.model.loading import apply_lora


@pytest.mark.parametrize("p", [0.05, 0.3])
def test_mask_is_iid_bernoulli_with_the_dropout_rate(p):
    """Drop rate p (not the 1 - e^-p a fixed number of uniform draws would give) and neighbours dropped
    independently: each within 5 standard errors over 2M elements."""
    torch.manual_seed(0)
    n = 2_000_000
    dropped = torch.zeros(n, dtype=torch.bool).index_fill_(0, poisson_drop_positions(n, p), True)
    rate = dropped.double().mean().item()
    assert abs(rate - p) < 5 * math.sqrt(p * (1 - p) / n), rate
    both = (dropped[:-1] & dropped[1:]).double().mean().item()
    assert abs(both - p * p) < 5 * math.sqrt(p * p * (1 - p * p) / n), both


def test_kept_elements_are_scaled_once_in_float_like_the_dropout_of_an_fp32_copy():
    """A bf16 input gives the bits peft's path gave (the input cast to fp32, dropped, then rounded by autocast):
    x / (1 - p) rounded once, with the same drawn positions zero."""
    x = torch.randn(10_000)
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(0)
        y = CpuPoissonDropout(0.05)(x.to(dtype))
        torch.manual_seed(0)
        reference = CpuPoissonDropout(0.05)(x.to(dtype).float()).to(dtype)
        assert y.dtype == dtype and torch.equal(y, reference)
        assert 0 < (y == 0).sum() < 1_000


def test_forward_backward_and_seeding():
    x = torch.randn(64, 48, requires_grad=True)
    drop = CpuPoissonDropout(0.1)
    torch.manual_seed(3)
    y = drop(x)
    y.sum().backward()
    mask = (y != 0).float() * torch.tensor(1 / 0.9)
    assert torch.equal(x.grad, mask) and torch.equal(y, x * mask)  # the gradient is the mask the forward used
    torch.manual_seed(3)
    assert torch.equal(drop(x), y)
    assert not torch.equal(drop(x), y)  # the stream moved on
    drop.eval()
    assert torch.equal(drop(x), x)
    assert torch.equal(CpuPoissonDropout(0.0)(x), x)


def test_lora_dropouts_swap_to_poisson_and_back(backbone):
    """peft's LoRA dropouts are torch's nn.Dropout as loaded; the fast path swaps every one (p > 0) for the Poisson
    sampler for a run and back after, with no parameter or state-dict change."""
    model = apply_lora(
        backbone.model, {"r": 4, "alpha": 8, "dropout": 0.05}, ["q_proj", "v_proj", "down_proj"]
    )

    def slots():
        return [d for m in model.modules() if isinstance(getattr(m, "lora_dropout", None), nn.ModuleDict)
                for d in m.lora_dropout.values()]  # fmt: skip

    layers = model.base_model.model.config.num_hidden_layers
    keys = set(model.state_dict())
    assert len(slots()) == 3 * layers and all(type(d) is nn.Dropout for d in slots())
    assert use_cpu_poisson_dropout(model) == 3 * layers
    assert all(type(d) is CpuPoissonDropout and d.p == 0.05 for d in slots())
    assert set(model.state_dict()) == keys  # nothing new saved
    assert use_torch_dropout(model) == 3 * layers
    assert all(type(d) is nn.Dropout and d.p == 0.05 for d in slots())
