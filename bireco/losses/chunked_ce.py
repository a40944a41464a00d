"""Fused linear + cross-entropy over the vocabulary, only at label positions, in chunks, without keeping logits.

Why: full-vocabulary logits for every position cost B*T*V floats (128k vocab x 32 x 512 tokens > 8 GB in
fp32), twice per Stage I step in the released code. Here only the N positions that carry a label are
projected, `chunk_size` rows at a time, and each chunk's gradients (w.r.t. the hidden states and the output
weight) are computed right away in the forward, the way Liger-Kernel's fused linear CE does it: peak extra memory
is one chunk of logits, and no matmul is recomputed in backward (3 matmuls per chunk instead of 4 with activation
checkpointing). Plain PyTorch, so the same code runs on CPU and GPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _chunk_ce(h, y, weight, bias, softcap):
    """One chunk's CE per token, `(ce (n, 1), target is the argmax (n, 1), unnormalised softmax (n, V), its row sums
    (n, 1), tanh(z / c) under a softcap else None)`: the fused loss and `token_cross_entropy` share these numbers."""
    logits = F.linear(h, weight, bias).float()  # (n, V) fp32 for a stable log-softmax
    t = None
    if softcap:
        t = logits.div_(
            softcap
        ).tanh_()  # (n, V) in place; kept for the gradient: d(c tanh(z/c))/dz = 1 - t^2
        logits = t * softcap
    target = logits.gather(1, y[:, None])  # (n, 1)
    top = logits.amax(-1, keepdim=True)  # (n, 1)
    probs = logits.sub_(top).exp_()  # in place: (n, V) unnormalised softmax, no second buffer
    total = probs.sum(-1, keepdim=True)  # (n, 1)
    return top + total.log() - target, target >= top, probs, total, t  # CE = logsumexp - target logit


class _FusedLinearCE(torch.autograd.Function):
    """loss_sum = sum_i CE(z_i, y_i), z = h_i @ W^T + b, or c * tanh(z / c) with a final logit softcap c (Gemma-2).
    Gradients for d(loss_sum) = 1 are computed in forward and scaled by the incoming gradient in backward (the loss
    is a scalar, so that is exact)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, chunk_size, softcap=None):
        need_h, need_w, need_b = (
            ctx.needs_input_grad[0],
            ctx.needs_input_grad[1],
            bias is not None and ctx.needs_input_grad[2],
        )
        loss_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
        correct = torch.zeros((), dtype=torch.long, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        grad_b = torch.zeros_like(bias, dtype=torch.float32) if need_b else None
        for start in range(0, hidden.shape[0], chunk_size):
            h = hidden[start : start + chunk_size]  # (n, H)
            y = labels[start : start + chunk_size]  # (n,)
            ce, hit, probs, total, t = _chunk_ce(h, y, weight, bias, softcap)
            loss_sum += ce.sum()
            correct += hit.sum()
            if need_h or need_w or need_b:
                g = probs.div_(total)  # dCE/dlogits = softmax - onehot
                g.scatter_add_(1, y[:, None], torch.full_like(total, -1.0))
                if softcap:
                    g.mul_(t.mul_(t).neg_().add_(1.0))
                g = g.to(h.dtype)
                if need_h:
                    grad_h[start : start + chunk_size] = g @ weight
                if need_w:
                    grad_w += (g.T @ h).float()
                if need_b:
                    grad_b += g.float().sum(0)
        ctx.weight_dtype = weight.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.mark_non_differentiable(correct)
        return loss_sum, correct

    @staticmethod
    def backward(ctx, grad_loss, _grad_correct):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        return (
            None if grad_h is None else grad_h * grad_loss.to(grad_h.dtype),
            None if grad_w is None else (grad_w * grad_loss).to(ctx.weight_dtype),
            None if grad_b is None else (grad_b * grad_loss).to(ctx.bias_dtype),
            None,
            None,
            None,
        )


def chunked_cross_entropy(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    lm_head: torch.nn.Module,
    chunk_size: int = 4096,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed CE and number of correct argmax predictions.

    Args:
        hidden: (N, H) hidden states at label positions only.
        labels: (N,) target token ids.
        lm_head: the model's output projection (nn.Linear-like: `.weight`, optional `.bias`).
        softcap: the model's final logit softcapping (Gemma-2's `final_logit_softcapping`), applied as the model does.
    Returns:
        (loss_sum, n_correct): scalar tensors; divide loss_sum by N for the token-mean.
    """
    weight = lm_head.weight
    bias = getattr(lm_head, "bias", None)
    return _FusedLinearCE.apply(hidden, weight, bias, labels, chunk_size, softcap)


@torch.no_grad()
def token_cross_entropy(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    lm_head: torch.nn.Module,
    chunk_size: int = 4096,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) CE of every label position and (N,) whether its argmax was right, chunk by chunk, without gradient:
    what a per-pair statistic (the anchor probe) sums by row. The numbers are the fused loss's."""
    weight, bias = lm_head.weight, getattr(lm_head, "bias", None)
    ce, hit = [], []
    for start in range(0, hidden.shape[0], chunk_size):
        c, h, *_ = _chunk_ce(
            hidden[start : start + chunk_size], labels[start : start + chunk_size], weight, bias, softcap
        )
        ce.append(c[:, 0])
        hit.append(h[:, 0])
    return torch.cat(ce), torch.cat(hit)
