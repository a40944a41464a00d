"""Gather-gradient equivalence: 2 gloo ranks with autograd all-gather vs one process on the global batch.

Run by tests/unit/stages/test_contrastive.py as a subprocess (never DDP inside pytest). Writes a JSON result.
"""

import json
import os
import sys

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.multiprocessing as mp

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def build():
    from conftest import compose_cfg

    from bireco.data import wordnet
    from bireco.data.collate import PairCollator
    from bireco.model.backbone import Backbone

    torch.manual_seed(0)
    bb = Backbone.from_config(compose_cfg([]).model)
    bb.eval()  # no dropout: both runs must be deterministic
    recs = [dict(r, instruction="Find") for r in wordnet.pair_records("dev")[:8]]
    coll = PairCollator(bb.tokenizer, bb.text_format, 32, 32, pad_id=bb.pad_id)
    return bb, coll, recs


def loss_grads(bb, batch, gather=None, rank=0):
    from bireco.losses.info_nce import InfoNCELoss

    bb.zero_grad(set_to_none=True)
    q, p, n = bb.embed(batch["query"]), bb.embed(batch["positive"]), bb.embed(batch["negatives"])
    out = InfoNCELoss(scale=50.0)(q, p, n, gather=gather, rank=rank)
    out.loss.backward()
    return out.loss.detach(), [p_.grad.detach().clone() for p_ in bb.parameters()]


def worker(rank, world, path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("BIRECO_TEST_PORT", "29533"))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    bb, coll, recs = build()
    per = len(recs) // world
    local = coll(recs[rank * per : (rank + 1) * per])
    gather = lambda t: torch.cat(dist_nn.all_gather(t), dim=0)  # noqa: E731
    loss, grads = loss_grads(bb, local, gather=gather, rank=rank)
    for g in grads:  # what DDP does: average gradients over ranks
        dist.all_reduce(g)
        g /= world
    dist.all_reduce(loss)
    loss /= world
    if rank == 0:
        ref_loss, ref = loss_grads(bb, coll(recs))
        diff = max(float((a - b).abs().max()) for a, b in zip(grads, ref))
        with open(path, "w") as f:
            json.dump(
                {"max_abs_grad_diff": diff, "loss_diff": float(loss - ref_loss), "n_params": len(ref)}, f
            )
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(worker, args=(2, sys.argv[1]), nprocs=2, join=True)
