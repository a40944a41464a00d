"""InfoNCE over cosine similarity with in-batch, hard and cross-device negatives (docs/method.md §3).

For query i the candidates are every positive and every hard negative of the *global* batch; the target is
positive i. loss = CE(scale * cos(q_i, c)) averaged over this rank's queries. With `gather` (an autograd
all-gather whose backward sums gradients to the owner) and DDP's gradient averaging, the parameter gradient
equals single-process training on the global batch. Reference: llm2vec HardNegativeNLLLoss; ST MNRL.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class InfoNCEOutput:
    loss: torch.Tensor
    accuracy: torch.Tensor  # in-batch top-1 over the candidate pool (this rank's queries)
    pos_sim: torch.Tensor  # mean cosine of (q_i, p_i)
    hard_neg_sim: torch.Tensor  # mean over queries of the highest non-target candidate cosine


class InfoNCELoss(nn.Module):
    def __init__(self, scale: float = 50.0, symmetric: bool = False):
        super().__init__()
        self.scale = scale
        self.symmetric = symmetric

    def forward(
        self,
        q: torch.Tensor,
        p: torch.Tensor,
        n: torch.Tensor | None = None,
        gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
        rank: int = 0,
        n_mask: torch.Tensor | None = None,
    ) -> InfoNCEOutput:
        """
        Args:
            q: (B, H) this rank's query embeddings; p: (B, H) their positives; n: (N, H) hard negatives (any N).
            gather: tensor (X, H) -> (world * X, H) concatenated over ranks in rank order, with gradient.
                Every rank must hold the same B and N (the batch sampler guarantees equal B; pad N and pass
                `n_mask` (N,) bool, False = padding, when ranks hold different numbers of negatives).
        """
        B = q.shape[0]
        q, p = F.normalize(q.float(), dim=-1), F.normalize(p.float(), dim=-1)
        n = F.normalize(n.float(), dim=-1) if n is not None and n.numel() else None
        if gather is not None:
            q_all, p_all = gather(q), gather(p)  # (W*B, H)
            n_all = gather(n) if n is not None else None
            n_mask = (
                gather(n_mask[:, None].float())[:, 0].bool() if n is not None and n_mask is not None else None
            )
            q_local = q_all[rank * B : (rank + 1) * B]  # this rank's queries, taken from the gathered tensor
        else:
            q_all, p_all, n_all, q_local = q, p, n, q
        cands = p_all if n_all is None else torch.cat([p_all, n_all], dim=0)  # (W*B + W*N, H)
        sims = q_local @ cands.T  # (B, C)
        if n_all is not None and n_mask is not None:
            # (C,)
            valid = torch.cat([torch.ones(p_all.shape[0], dtype=torch.bool, device=sims.device), n_mask])
            sims = sims.masked_fill(~valid, float("-inf"))
        target = torch.arange(B, device=q.device) + rank * B  # positive i of this rank
        loss = F.cross_entropy(self.scale * sims, target)
        if self.symmetric:  # document -> query over the gathered queries
            sims_dq = p_all[rank * B : (rank + 1) * B] @ q_all.T  # (B, W*B)
            loss = (loss + F.cross_entropy(self.scale * sims_dq, target)) / 2
        with torch.no_grad():
            acc = (sims.argmax(-1) == target).float().mean()
            pos = sims.gather(1, target[:, None]).mean()
            masked = sims.scatter(1, target[:, None], float("-inf"))
            hard = masked.max(-1).values.mean() if masked.shape[1] > 1 else sims.new_zeros(())
        return InfoNCEOutput(loss=loss, accuracy=acc, pos_sim=pos, hard_neg_sim=hard)
