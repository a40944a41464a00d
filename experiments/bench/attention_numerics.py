"""How far bf16-mixed training's gradients are from full fp32, with bireco's CPU training attention (fp32) and with
torch's bf16 kernel: the numerics half of the case for bireco.model.attention (attention_kernels.py is the speed half).

    python experiments/bench/attention_numerics.py          # SmolLM2-135M-Instruct (offline), 16 short texts

One LM loss (next-token CE over 16 WordNet-like texts, 24 tokens, padded) and its gradient over every parameter:
in fp32 without autocast (the reference), and under bf16 autocast with each attention. Prints the losses and each
gradient's relative L2 error against the reference.
"""

from __future__ import annotations

import argparse

import torch

TEXTS = [
    "a small domesticated carnivorous mammal with soft fur",
    "the act of running quickly over a short distance",
    "a large body of salt water that covers most of the earth",
    "a building where books are kept for reading or lending",
] * 4


def loss_and_grad(backbone, batch: dict, amp: bool) -> tuple[float, torch.Tensor]:
    backbone.model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        loss = backbone.causal_lm(**batch).loss
    loss.backward()
    grad = torch.cat([p.grad.flatten().clone() for p in backbone.model.parameters() if p.grad is not None])
    return loss.item(), grad


def main(argv=None) -> dict:
    from bireco.model.backbone import Backbone
    from bireco.tools.offline_lm import offline_lm_path
    from bireco.tools.tiny_lm import family_format

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-length", type=int, default=24)
    args = ap.parse_args(argv)
    path = offline_lm_path("smollm2-135m-instruct")

    def load(fp32_attention: bool) -> Backbone:
        cfg = dict(family="smollm2", name_or_path=path, tokenizer=path, dtype="float32",
                   cpu_training_attention_fp32=fp32_attention, text_format=vars(family_format("smollm2")))  # fmt: skip
        backbone = Backbone.from_config(cfg)
        backbone.model.train()
        return backbone

    plain, ours = load(False), load(True)
    enc = plain.tokenizer(
        TEXTS, padding="max_length", max_length=args.max_length, truncation=True, return_tensors="pt"
    )
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
             "labels": enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)}  # fmt: skip
    ref_loss, ref = loss_and_grad(plain, batch, amp=False)
    res = {"fp32 (reference)": {"loss": ref_loss, "grad_rel_error": 0.0}}
    for name, backbone in (
        ("bf16 autocast, torch's bf16 attention", plain),
        ("bf16 autocast, fp32 attention", ours),
    ):
        loss, grad = loss_and_grad(backbone, batch, amp=True)
        res[name] = {"loss": loss, "grad_rel_error": float((grad - ref).norm() / ref.norm())}
    for name, r in res.items():
        print(f"{name}: loss {r['loss']:.4f}, gradient relative error {r['grad_rel_error']:.4f}")
    return res


if __name__ == "__main__":
    main()
