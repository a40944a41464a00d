"""bireco's Stage I / Stage II training steps against plain PyTorch + transformers loops, in one process.

    python experiments/bench/bench.py --mode cpu            # tiny model, minutes on a laptop (make bench)
    python experiments/bench/bench.py --mode gpu            # Llama-3.2-1B shape, bf16, batch 32 (one H100)
    python experiments/bench/bench.py --mode gpu --only stage1_ckpt,varlen
    python experiments/bench/bench.py --mode smollm2        # the real SmolLM2-135M-Instruct on CPU, bf16 autocast

Every variant builds the same model shape from the same seed and trains on the same synthetic batches (token ids,
fixed lengths: query / document / hard negative). bireco runs through its real path: Backbone + the stage's
LightningModule under a Lightning Trainer (hooks, logging, guards included). The plain loops are what a researcher
writes by hand (released-code style: full-vocabulary logits through the HF loss, both directions per batch).
Step time is the median wall time between consecutive steps after warm-up (device synchronised), so data transfer
and framework overhead count. MFU counts the model FLOPs the step's method needs (`StepWork`, the same count for
bireco and the plain loop of one group, so their MFU ratio is their speed ratio): per token through the transformer
body, 2 FLOPs per matmul weight forward, 2 more for the gradient to its input, 2 more for its own gradient where it
trains (full fine-tuning: 6 per weight; LoRA: 4 per frozen base weight, 6 per LoRA weight), 2 more per
recomputation; causal attention 2*T*d per layer and token forward (times 3, or 4 recomputed); the LM head (V*H,
tied or not) only on the tokens Stage I predicts, 6 FLOPs per weight, and nowhere in Stage II, which never forms
logits. The embedding table is a lookup, not a matmul. Tokens through the body are the padded ones. (Until
2026-12-03 the bench counted 6*N / 4*N over every parameter N, embedding included, on every token, which
overstated MFU where the embedding is a large share of N: SmolLM2's tied 28 M-weight table is a fifth of its 135 M;
the JSON keeps that figure as `mfu_all_params` beside each row.) On a GPU the
ceiling is the 989 TFLOP/s bf16 datasheet figure of an H100; on a CPU it is measured in the same
process: the GEMM mix of the model's own shapes in the precision the variant trains in (matmul_limit.py), so MFU
reads "fraction of what this machine's matmuls can do". The `varlen` group draws E5-like lengths (short queries, long-tailed
documents) and compares real-token throughput of length-bucketed batches with random batches.

Prints a markdown table with ratios bireco / reference and writes it (plus JSON) to --out.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import statistics
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from matmul_limit import matmul_limit

from bireco import Backbone, asset_path

PEAK_TFLOPS = 989.0  # H100 SXM bf16 dense, datasheet
CPU_LIMIT_GFLOPS: dict[
    str, float
] = {}  # measured in main() on a CPU: bf16 / fp32 GEMM mix of the model's shapes

LLAMA_1B = dict(
    model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
    num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072, rope_theta=500000.0,
    tie_word_embeddings=True, head_dim=64,
)  # fmt: skip
TINY = dict(
    model_type="llama", hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=2, vocab_size=8192, max_position_embeddings=1024, tie_word_embeddings=True,
)  # fmt: skip


@dataclass
class Setup:
    arch: dict
    dtype: torch.dtype
    batch: int
    q_len: int
    d_len: int
    warmup: int
    steps: int
    device: str
    # Lightning precision for bireco's Trainer; *-mixed runs the plain loops under the same autocast
    precision: str
    # an offline LM (bireco.tools.offline_lm) instead of a random `arch`; `arch` then only gives the vocab
    model: str | None = None


SETUPS = {
    "cpu": Setup(TINY, torch.float32, 8, 32, 128, 2, 8, "cpu", "32-true"),
    "gpu": Setup(LLAMA_1B, torch.bfloat16, 32, 64, 256, 3, 10, "cuda", "bf16-true"),
    # the real offline LLM with bireco's CPU default precision (bf16-mixed where the CPU has native bf16), WordNet-like
    # lengths at the demo's batch size
    "smollm2": Setup(
        {"vocab_size": 49152}, torch.float32, 16, 16, 48, 2, 6, "cpu", "auto", model="smollm2-135m-instruct"
    ),
    # every code path of the gpu mode (bf16, all groups) at toy size on CPU: the test suite runs it
    "smoke": Setup(
        dict(TINY, hidden_size=64, intermediate_size=128, num_hidden_layers=2),
        torch.bfloat16,
        4,
        16,
        32,
        1,
        2,
        "cpu",
        "bf16-true",
    ),
}


@dataclass
class Result:
    name: str
    step_s: float
    pairs_per_s: float
    tokens_per_s: float  # real (non-pad) tokens
    peak_gb: float | None
    mfu: float | None
    error: str | None = None
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- synthetic data
def make_side(lengths: list[int], vocab: int, eos: int, pad: int, side: str, g: torch.Generator) -> dict:
    """Random token ids ending in EOS, padded on `side`; all masks explicit (as the collator makes them)."""
    B, T = len(lengths), max(lengths)
    ids = torch.full((B, T), pad, dtype=torch.long)
    attn = torch.zeros((B, T), dtype=torch.long)
    for i, n in enumerate(lengths):
        row = torch.randint(16, vocab, (n,), generator=g)
        row[-1] = eos
        sl = slice(T - n, T) if side == "left" else slice(0, n)
        ids[i, sl], attn[i, sl] = row, 1
    return {
        "input_ids": ids,
        "attention_mask": attn,
        "embed_mask": attn.bool(),
        "instruction_mask": torch.zeros_like(attn, dtype=torch.bool),
    }


def make_batches(
    n: int, setup: Setup, eos: int, pad: int, negatives: bool, lengths=None, seed: int = 0
) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    vocab = setup.arch["vocab_size"]
    out = []
    for b in range(n):
        ql, dl = lengths[b] if lengths else ([setup.q_len] * setup.batch, [setup.d_len] * setup.batch)
        batch = {
            "query": make_side(ql, vocab, eos, pad, "left", g),
            "positive": make_side(dl, vocab, eos, pad, "left", g),
        }
        if negatives:
            batch["negatives"] = make_side(dl, vocab, eos, pad, "left", g)
            batch["negative_owner"] = torch.arange(len(dl))
        batch["dataset"] = ["bench"] * len(ql)
        out.append(batch)
    return out


def e5_like_lengths(
    n_batches: int, batch: int, q_max: int, d_max: int, seed: int = 0
) -> list[tuple[list[int], list[int]]]:
    """Records with short queries (median ~q_max/5) and long-tailed documents (median ~d_max/5, capped at d_max)."""
    g = torch.Generator().manual_seed(seed)
    n = n_batches * batch
    q = torch.exp(torch.randn(n, generator=g) * 0.5 + math.log(q_max / 5)).clamp(4, q_max).long()
    d = torch.exp(torch.randn(n, generator=g) * 0.9 + math.log(d_max / 5)).clamp(8, d_max).long()
    return list(zip(q.tolist(), d.tolist()))


def to_device(batch: dict, device: str) -> dict:
    return {
        k: to_device(v, device)
        if isinstance(v, dict)
        else (v.to(device, non_blocking=True) if torch.is_tensor(v) else v)
        for k, v in batch.items()
    }


def real_tokens(batch: dict, sides=("query", "positive", "negatives")) -> int:
    return sum(int(batch[s]["attention_mask"].sum()) for s in sides if s in batch)


def padded_tokens(batch: dict, sides) -> int:
    return sum(batch[s]["input_ids"].numel() for s in sides if s in batch)


# ---------------------------------------------------------------------------------------------- model building
def model_cfg(setup: Setup, ckpt: bool, compile: bool = False) -> dict:
    return {
        "family": "bench",
        "tokenizer": asset_path("tiny_tokenizer"),
        "architecture": dict(setup.arch),
        "dtype": {torch.float32: "float32", torch.bfloat16: "bfloat16"}[setup.dtype],
        "attn_implementation": "sdpa",
        "gradient_checkpointing": ckpt,
        "compile": compile,
        "text_format": {
            "add_bos": True,
            "prefix": "<|start_header_id|>user<|end_header_id|>\n\n",
            "eos_token": "<|eot_id|>",
        },
        "lora_target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    }


LORA = {"enabled": True, "r": 16, "alpha": 32, "dropout": 0.05}


def build_backbone(setup: Setup, ckpt: bool, lora: bool = False, compile: bool = False) -> Backbone:
    """The setup's model as loaded (transformers' sdpa, torch's LoRA dropout: what a hand-written loop has); bireco's
    steps add its CPU fast path for the run (`fit_steps`)."""
    torch.manual_seed(0)
    lora_cfg = LORA if lora else None
    if setup.model:
        from bireco import family_format, offline_lm_path

        path = offline_lm_path(setup.model)
        cfg = dict(model_cfg(setup, ckpt, compile), name_or_path=path, tokenizer=path, architecture=None)
        cfg["text_format"] = vars(family_format("smollm2"))
        return Backbone.from_config(cfg, lora_cfg)
    with torch.device(setup.device):  # random init straight on the device
        return Backbone.from_config(model_cfg(setup, ckpt, compile), lora_cfg)


def model_arch(setup: Setup) -> dict:
    """The architecture of the mode's model (an offline LM's own config.json, else the inline `arch`)."""
    if setup.model:
        from transformers import AutoConfig

        from bireco import offline_lm_path

        return AutoConfig.from_pretrained(offline_lm_path(setup.model)).to_dict()
    return setup.arch


def n_params(backbone: Backbone) -> int:
    return sum(p.numel() for p in backbone.causal_lm.parameters())


@dataclass
class StepWork:
    """What one training step computes, per side of the batch, for its model FLOPs (module docstring).
    `body`: how many times (on average per step) each side's tokens go through the transformer body;
    `head`: how many times each side's target tokens (its embed_mask) are predicted through the LM head."""

    body: dict[str, float]
    head: dict[str, float] = field(default_factory=dict)
    recompute: bool = False

    def flops(self, backbone: Backbone, batch: dict, attention: bool = True) -> float:
        """Model FLOPs of the step on `batch`; `attention=False`: the GEMMs' share only (profile_steps.py)."""
        lm = backbone.causal_lm
        table, head = lm.get_input_embeddings().weight, lm.get_output_embeddings().weight
        skip = {id(table), id(head)}
        weights = [p for p in lm.parameters() if p.dim() == 2 and id(p) not in skip]
        extra = 2 if self.recompute else 0
        per_token = sum(((6 if p.requires_grad else 4) + extra) * p.numel() for p in weights)
        cfg = lm.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        attn_width = cfg.num_attention_heads * head_dim
        total = 0.0
        for side, times in self.body.items():
            if side not in batch:
                continue
            B, T = batch[side]["input_ids"].shape
            attn = (
                2 * T * attn_width * cfg.num_hidden_layers * (4 if self.recompute else 3) if attention else 0
            )
            total += times * B * T * (per_token + attn)
        for side, times in self.head.items():
            if side in batch:
                total += times * 6 * head.numel() * int(batch[side]["embed_mask"].sum())
        return total


# ---------------------------------------------------------------------------------------------- timing
def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def reset_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gb(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None


def summarise(name, times, batches, setup, work: StepWork, backbone: Backbone, token_sides) -> Result:
    step = statistics.median(times)
    timed = batches[setup.warmup + 1 : setup.warmup + 1 + len(times)] or batches[-len(times) :]
    pairs = statistics.mean(len(b["dataset"]) for b in timed)
    real = statistics.mean(real_tokens(b, token_sides) for b in timed)
    padded = statistics.mean(padded_tokens(b, token_sides) for b in timed)
    flops = statistics.mean(work.flops(backbone, b) for b in timed) / step
    # the count before 2026-12-03: 6*N (4*N LoRA, +2*N recomputed) over every parameter and padded token
    k = (6 if not backbone.is_lora else 4) + (2 if work.recompute else 0)
    legacy = k * max(work.body.values()) * n_params(backbone) * padded / step
    if setup.device == "cuda":
        limit = PEAK_TFLOPS * 1e3
    else:
        limit = CPU_LIMIT_GFLOPS.get("bfloat16" if precision(setup).startswith("bf16") else "float32")
    mfu = flops / (limit * 1e9) if limit else None
    extra = {"times": times, "model_gflop_per_step": flops * step / 1e9}
    if limit:
        extra["mfu_all_params"] = legacy / (limit * 1e9)
    return Result(name, step, pairs / step, real / step, peak_gb(setup.device), mfu, extra=extra)


# ---------------------------------------------------------------------------------------------- plain loops
def right_pad(side: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded side -> right-padded ids and mask (what a hand-written decoder loop feeds the LM)."""
    lengths = side["attention_mask"].sum(1)
    T = side["input_ids"].shape[1]
    idx = (torch.arange(T, device=lengths.device)[None, :] + (T - lengths)[:, None]) % T
    return side["input_ids"].gather(1, idx), side["attention_mask"].gather(1, idx)


def plain_stage1_loss(model, batch: dict, direction: str) -> torch.Tensor:
    """Released-code style: encoder [EOS] state as a one-vector prefix, HF causal-LM loss over full logits."""
    src, tgt = (
        (batch["query"], batch["positive"]) if direction == "q2d" else (batch["positive"], batch["query"])
    )
    hidden = model.model(input_ids=src["input_ids"], attention_mask=src["attention_mask"]).last_hidden_state
    anchor = hidden[:, -1]  # left padding: the last column is every row's EOS
    ids, mask = right_pad(tgt)
    emb = model.get_input_embeddings()(ids)
    inputs = torch.cat([anchor[:, None].to(emb.dtype), emb], 1)
    attn = torch.cat([mask.new_ones(mask.shape[0], 1), mask], 1)
    labels = torch.cat([torch.full_like(ids[:, :1], -100), ids.masked_fill(mask == 0, -100)], 1)
    return model(inputs_embeds=inputs, attention_mask=attn, labels=labels, use_cache=False).loss


def plain_stage2_loss(decoder, batch: dict, scale: float = 50.0) -> torch.Tensor:
    def emb(side):
        return F.normalize(
            decoder(input_ids=side["input_ids"], attention_mask=side["attention_mask"])
            .last_hidden_state[:, -1]
            .float(),
            dim=-1,
        )

    q, p, n = emb(batch["query"]), emb(batch["positive"]), emb(batch["negatives"])
    scores = scale * q @ torch.cat([p, n]).T
    return F.cross_entropy(scores, torch.arange(q.shape[0], device=q.device))


def precision(setup: Setup) -> str:
    from bireco import resolve_precision

    return resolve_precision(setup.precision, "gpu" if setup.device == "cuda" else "cpu")


def run_plain(name, setup, batches, loss_fn, params, work, backbone, token_sides) -> Result:
    from bireco import autocast

    opt = torch.optim.AdamW(params, lr=1e-5, fused=setup.device == "cuda")
    mixed = precision(setup) == "bf16-mixed"
    times, last = [], None
    for i, batch in enumerate(batches):
        batch = to_device(batch, setup.device)
        with autocast(setup.device, mixed):
            loss = loss_fn(batch, i)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(setup.device)
        now = time.perf_counter()
        if i > setup.warmup:
            times.append(now - last)
        last = now
    return summarise(name, times, batches, setup, work, backbone, token_sides)


# ---------------------------------------------------------------------------------------------- bireco
def fit_steps(module, batches: list[dict], setup: Setup, callback, fast_path: bool = True) -> None:
    """bireco's real training path over `batches`, one optimizer step each: a Lightning Trainer on the setup's device
    and precision, clipping at 1.0, no logger, checkpoint or validation, and on a CPU the CPU fast path as
    `trainer=cpu` has it (`fast_path=False`: without it); `callback` times the steps."""
    import lightning as L
    from torch.utils.data import DataLoader

    from bireco import CpuFastPath

    callbacks = [callback, *([CpuFastPath()] if fast_path and setup.device == "cpu" else [])]
    trainer = L.Trainer(
        accelerator="gpu" if setup.device == "cuda" else "cpu", devices=1, precision=precision(setup),
        max_steps=len(batches), logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=callbacks, gradient_clip_val=1.0, num_sanity_val_steps=0,
        limit_val_batches=0,
    )  # fmt: skip
    loader = DataLoader(batches, batch_size=None, shuffle=False, pin_memory=setup.device == "cuda")
    trainer.fit(module, train_dataloaders=loader)


def run_bireco(name, setup, batches, module, work, token_sides, fast_path: bool = True) -> Result:
    import lightning as L

    class StepClock(L.Callback):
        def __init__(self):
            self.times, self.last = [], None

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            sync(setup.device)
            now = time.perf_counter()
            if batch_idx > setup.warmup:
                self.times.append(now - self.last)
            self.last = now

    clock = StepClock()
    fit_steps(module, batches, setup, clock, fast_path)
    return summarise(name, clock.times, batches, setup, work, module.backbone, token_sides)


def optim_cfg(lr: float):
    """AdamW at a constant `lr` (bireco's own optimizer, as the stage builds it)."""
    from bireco import OptimConfig

    return OptimConfig(lr=lr, warmup_steps=0, schedule="constant")


def stage1_module(backbone: Backbone, n_steps: int, schedule: str, on_nonfinite: str = "raise"):
    """bireco's Stage I module (alpha 0.2) from its typed stage config."""
    from bireco import ReconstructionModule, ReconstructionStageConfig

    stage = ReconstructionStageConfig(alpha=0.2, schedule=schedule, optim=optim_cfg(1e-5))
    return ReconstructionModule(backbone, stage, n_steps, on_nonfinite)


def stage2_module(backbone: Backbone, n_steps: int):
    """bireco's Stage II module (InfoNCE, scale 50) from its typed stage config."""
    from bireco import ContrastiveModule, ContrastiveStageConfig

    return ContrastiveModule(backbone, ContrastiveStageConfig(scale=50.0, optim=optim_cfg(2e-4)), n_steps)


# ---------------------------------------------------------------------------------------------- variants
def stage1_work(both: bool, recompute: bool) -> StepWork:
    """Stage I's step: each side through the body once per direction it takes part in (as anchor or as target);
    the target's tokens through the LM head. One direction per step (bireco's alternate schedule, the plain loop's
    one direction) is Q2D on a fifth of the steps (alpha 0.2)."""
    both_sides = ("query", "positive")
    if both:
        return StepWork(
            body=dict.fromkeys(both_sides, 2), head=dict.fromkeys(both_sides, 1), recompute=recompute
        )
    return StepWork(
        body=dict.fromkeys(both_sides, 1), head={"positive": 0.2, "query": 0.8}, recompute=recompute
    )


def stage1_variants(setup: Setup, ckpt: bool, fast_path: bool = True, compiled: bool = False) -> list:
    """`fast_path=False`: only bireco's alternate step, without its CPU fast path (what the fast path buys, measured in
    the same process). `compiled`: only bireco's alternate step with `model.compile=true`."""
    tag = "ckpt" if ckpt else "no ckpt"
    sides = ("query", "positive")
    n_steps = setup.warmup + 1 + setup.steps

    def plain(both: bool):
        def go():
            backbone = build_backbone(setup, ckpt)
            model = backbone.causal_lm
            model.train()
            bb = make_batches(
                n_steps, setup, backbone.text_format.eos_id(backbone.tokenizer), backbone.pad_id, False
            )

            def loss_fn(batch, i):
                if both:
                    return 0.2 * plain_stage1_loss(model, batch, "q2d") + 0.8 * plain_stage1_loss(
                        model, batch, "d2q"
                    )
                return plain_stage1_loss(model, batch, "q2d" if i % 5 == 0 else "d2q")

            name = f"plain Stage I, {'both directions' if both else 'one direction'} ({tag})"
            return run_plain(
                name,
                setup,
                bb,
                loss_fn,
                model.parameters(),
                stage1_work(both, ckpt),
                backbone,
                sides,
            )

        return go

    def bireco(schedule: str):
        def go():
            backbone = build_backbone(setup, ckpt, compile=compiled)
            bb = make_batches(
                n_steps, setup, backbone.text_format.eos_id(backbone.tokenizer), backbone.pad_id, False
            )
            module = stage1_module(backbone, len(bb), schedule)
            name = (
                f"bireco Stage I, {schedule} ({tag})"
                + (", compiled" if compiled else "")
                + ("" if fast_path else NO_FAST_PATH)
            )
            return run_bireco(
                name, setup, bb, module, stage1_work(schedule == "joint", ckpt), sides, fast_path
            )

        return go

    if not fast_path or compiled:
        return [bireco("alternate")]
    return [plain(True), plain(False), bireco("joint"), bireco("alternate")]


def stage2_variants(setup: Setup, ckpt: bool, compiled: bool = False, fast_path: bool = True) -> list:
    """`fast_path=False`: only bireco's step, without its CPU fast path. `compiled`: only bireco's step, compiled."""
    tag = "LoRA r16" + (", ckpt" if ckpt else "")
    sides = ("query", "positive", "negatives")
    work = StepWork(body=dict.fromkeys(sides, 1), recompute=ckpt)  # three embeddings, no LM head
    n_steps = setup.warmup + 1 + setup.steps

    def plain():
        backbone = build_backbone(setup, ckpt, lora=True)
        backbone.model.train()
        bb = make_batches(
            n_steps, setup, backbone.text_format.eos_id(backbone.tokenizer), backbone.pad_id, True
        )
        params = [p for p in backbone.model.parameters() if p.requires_grad]
        return run_plain(
            f"plain Stage II, {tag}",
            setup,
            bb,
            lambda b, i: plain_stage2_loss(backbone.decoder, b),
            params,
            work,
            backbone,
            sides,
        )

    def bireco(compile: bool):
        def go():
            backbone = build_backbone(setup, ckpt, lora=True, compile=compile)
            bb = make_batches(
                n_steps, setup, backbone.text_format.eos_id(backbone.tokenizer), backbone.pad_id, True
            )
            module = stage2_module(backbone, len(bb))
            name = (
                f"bireco Stage II, {tag}"
                + (", compiled" if compile else "")
                + ("" if fast_path else NO_FAST_PATH)
            )
            return run_bireco(name, setup, bb, module, work, sides, fast_path)

        return go

    if compiled:
        return [bireco(True)]
    if not fast_path:
        return [bireco(False)]
    return [plain, bireco(False)]


def varlen_variants(setup: Setup) -> list:
    """Same records, same bireco Stage I (alternate): random batches vs length-bucketed batches."""
    from bireco import PairBatchSampler

    n_batches = setup.warmup + 1 + 3 * setup.steps
    q_max, d_max = (64, 512) if setup.device == "cuda" else (32, 128)
    records = e5_like_lengths(n_batches, setup.batch, q_max, d_max)

    def go(bucketed: bool):
        def inner():
            sampler = PairBatchSampler(
                ["e5"] * len(records),
                setup.batch,
                seed=0,
                lengths=[q + d for q, d in records] if bucketed else None,
            )
            order = list(sampler)
            lengths = [([records[i][0] for i in b], [records[i][1] for i in b]) for b in order]
            backbone = build_backbone(setup, ckpt=setup.device == "cuda")
            bb = make_batches(
                len(order),
                setup,
                backbone.text_format.eos_id(backbone.tokenizer),
                backbone.pad_id,
                False,
                lengths,
            )
            module = stage1_module(backbone, len(bb), "alternate", on_nonfinite="skip")
            name = f"bireco Stage I, E5-like lengths, {'length-bucketed' if bucketed else 'random'} batches"
            work = stage1_work(False, setup.device == "cuda")
            r = run_bireco(name, setup, bb, module, work, ("query", "positive"))
            r.extra["nonfinite_skipped"] = module.nonfinite.skipped
            # throughput over the whole timed stretch (batches differ in size): real tokens / total time
            timed = bb[setup.warmup + 1 :]
            total = sum(r.extra.get("times", [])) or r.step_s * len(timed)
            sides = ("query", "positive")
            real = sum(real_tokens(b, sides) for b in timed)
            r.tokens_per_s = real / total
            r.pairs_per_s = sum(len(b["dataset"]) for b in timed) / total
            # the upper bound of bucketing's gain: real tokens per padded token
            r.extra["real_per_padded"] = real / sum(padded_tokens(b, sides) for b in timed)
            return r

        return inner

    return [go(False), go(True)]


NO_FAST_PATH = (
    ", without the CPU fast path"  # bench variants without bireco.cpu (trainer.cpu_fast_path=false)
)

GROUPS = {
    "stage1_ckpt": lambda s: stage1_variants(s, ckpt=True),
    "stage1_nockpt": lambda s: stage1_variants(s, ckpt=False),
    "stage2": lambda s: stage2_variants(s, ckpt=True),
    "stage2_nockpt": lambda s: stage2_variants(s, ckpt=False),
    "varlen": varlen_variants,
    "stage2_compile": lambda s: stage2_variants(s, ckpt=True, compiled=True),  # GPU: compile time ~1 min
    "stage2_compile_nockpt": lambda s: stage2_variants(s, ckpt=False, compiled=True),  # next to stage2_nockpt
    "stage1_compile_nockpt": lambda s: stage1_variants(s, ckpt=False, compiled=True),  # next to stage1_nockpt
    # bireco's steps without its CPU fast path: next to stage1_nockpt / stage2_nockpt, the ratio is what it buys
    "no_fast_path": lambda s: (
        stage1_variants(s, ckpt=False, fast_path=False) + stage2_variants(s, ckpt=False, fast_path=False)
    ),
}
DEFAULT_GROUPS = {
    "cpu": ["stage1_nockpt", "stage2", "varlen"],
    "gpu": ["stage1_ckpt", "stage1_nockpt", "stage2", "varlen", "stage2_compile"],
    "smoke": ["stage1_ckpt", "stage1_nockpt", "stage2", "varlen", "no_fast_path"],
    "smollm2": ["stage1_nockpt", "stage2_nockpt", "no_fast_path"],
}


# ---------------------------------------------------------------------------------------------- report
def fmt(x, spec):
    return "–" if x is None else format(x, spec)


def table(results: list[Result]) -> str:
    rows = ["| variant | step s | pairs/s | real tokens/s | MFU | peak GB |", "|---|---|---|---|---|---|"]
    for r in results:
        if r.error:
            rows.append(f"| {r.name} | failed: {r.error} | | | | |")
        else:
            skipped = r.extra.get("nonfinite_skipped")
            name = r.name + (f" ({skipped} non-finite steps skipped)" if skipped else "")
            rows.append(
                f"| {name} | {r.step_s:.3f} | {r.pairs_per_s:.1f} | {r.tokens_per_s:,.0f} | {fmt(r.mfu, '.2f')} | {fmt(r.peak_gb, '.1f')} |"
            )
    return "\n".join(rows)


def ratios(results: list[Result]) -> list[str]:
    by = {r.name: r for r in results if not r.error}
    out = []

    def ratio(label, a, b, attr, target=None, higher=True):
        if a in by and b in by:
            x, y = getattr(by[a], attr), getattr(by[b], attr)
            if x is None or y is None:
                return
            v = x / y
            ok = (
                ""
                if target is None
                else (" ✔" if (v >= target if higher else v <= target) else " ✘")
                + f" (target {'≥' if higher else '≤'} {target})"
            )
            out.append(f"- {label}: **{v:.2f}×**{ok}")

    for tag in ("ckpt", "no ckpt"):
        ratio(
            f"Stage I step time, bireco alternate / plain one direction ({tag}) — framework overhead",
            f"bireco Stage I, alternate ({tag})",
            f"plain Stage I, one direction ({tag})",
            "step_s",
            1.10,
            higher=False,
        )
        ratio(
            f"Stage I pairs/s, bireco alternate / plain both directions ({tag})",
            f"bireco Stage I, alternate ({tag})",
            f"plain Stage I, both directions ({tag})",
            "pairs_per_s",
            2.0,
        )
        ratio(
            f"Stage I peak memory, bireco alternate / plain both directions ({tag})",
            f"bireco Stage I, alternate ({tag})",
            f"plain Stage I, both directions ({tag})",
            "peak_gb",
            0.6,
            higher=False,
        )
        ratio(
            f"Stage I peak memory, bireco joint / plain both directions ({tag})",
            f"bireco Stage I, joint ({tag})",
            f"plain Stage I, both directions ({tag})",
            "peak_gb",
        )
    for s2 in ("LoRA r16, ckpt", "LoRA r16"):
        ratio(
            f"Stage II step time, bireco / plain ({s2}) — framework overhead",
            f"bireco Stage II, {s2}",
            f"plain Stage II, {s2}",
            "step_s",
            1.10,
            higher=False,
        )
        ratio(
            f"Stage II pairs/s, bireco compiled / plain ({s2})",
            f"bireco Stage II, {s2}, compiled",
            f"plain Stage II, {s2}",
            "pairs_per_s",
        )
    ratio("Stage I step time, with / without the CPU fast path (alternate, no ckpt)",
          "bireco Stage I, alternate (no ckpt)", "bireco Stage I, alternate (no ckpt)" + NO_FAST_PATH, "step_s")  # fmt: skip
    ratio("Stage II step time, with / without the CPU fast path (LoRA r16)",
          "bireco Stage II, LoRA r16", "bireco Stage II, LoRA r16" + NO_FAST_PATH, "step_s")  # fmt: skip
    ratio("Variable lengths, real tokens/s, bucketed / random batches",
          "bireco Stage I, E5-like lengths, length-bucketed batches", "bireco Stage I, E5-like lengths, random batches", "tokens_per_s", 1.5)  # fmt: skip
    pad = [by.get(f"bireco Stage I, E5-like lengths, {k} batches") for k in ("random", "length-bucketed")]
    if all(r is not None and "real_per_padded" in r.extra for r in pad):
        (rnd, bkt) = (r.extra["real_per_padded"] for r in pad)
        out.append(f"- Real tokens per padded token, random / bucketed batches: {rnd:.2f} / {bkt:.2f} "
                   f"({bkt / rnd:.2f}×: the gain if a step's time followed its padded tokens)")  # fmt: skip
    return out


def machine() -> str:
    import lightning
    import transformers

    dev = (
        torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    )
    return f"{dev}; Python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, lightning {lightning.__version__}"


def main(argv=None) -> list[Result]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=sorted(SETUPS), default="cpu")
    ap.add_argument("--only", default=None, help=f"comma-separated groups: {', '.join(GROUPS)}")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per variant")
    ap.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="run each group N times in turn and keep each variant's "
        "fastest median (shared CPUs are noisy); default 2 on cpu, 1 on gpu",
    )
    ap.add_argument("--out", default=None, help="directory for bench-<mode>.md / .json")
    args = ap.parse_args(argv)
    setup = SETUPS[args.mode]
    if args.steps:
        setup.steps = args.steps
    if setup.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--mode gpu needs a CUDA device")
    warnings.filterwarnings("ignore")
    import logging

    for name in ("lightning.pytorch", "lightning.pytorch.utilities.rank_zero", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    groups = args.only.split(",") if args.only else DEFAULT_GROUPS[args.mode]
    limits = ""
    if setup.device == "cpu":
        arch = model_arch(setup)
        for dtype in (torch.bfloat16, torch.float32):
            r = matmul_limit(arch, dtype, tokens=setup.batch * (setup.q_len + setup.d_len))
            CPU_LIMIT_GFLOPS[r["dtype"]] = r["gflops"]
        limits = (f"Matmul limit of this machine at the model's GEMM shapes ({torch.get_num_threads()} threads): "
                  f"bf16 {CPU_LIMIT_GFLOPS['bfloat16']:.0f} GFLOP/s, fp32 {CPU_LIMIT_GFLOPS['float32']:.0f} GFLOP/s; "
                  "MFU = model FLOP/s / the limit of the precision the variant trains in.\n\n")  # fmt: skip
        print(f"[bench] {limits.strip()}", flush=True)
    repeats = args.repeats or (2 if setup.device == "cpu" and args.mode != "smoke" else 1)
    best: dict[str, Result] = {}
    for g in groups:
        for variant in [
            v for _ in range(repeats) for v in GROUPS[g](setup)
        ]:  # A B A B: drift hits both alike
            reset_memory(setup.device)
            if setup.device == "cpu":
                # the plain loops run with malloc's buffer reuse too (bireco's CPU fast path sets it for its runs
                # and sets glibc's defaults back after), so the ratios compare the loops, not the allocator
                from bireco import keep_freed_memory

                keep_freed_memory()
            t0 = time.perf_counter()
            try:
                r = variant()
            except Exception as e:  # one failing variant (e.g. out of memory) must not lose the others
                r = Result(
                    getattr(variant, "__qualname__", "?"),
                    math.nan,
                    math.nan,
                    math.nan,
                    None,
                    None,
                    error=f"{type(e).__name__}: {str(e)[:160]}",
                )
            print(
                f"[bench] {r.name}: {'failed ' + r.error if r.error else f'{r.step_s:.3f} s/step'} ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
            if r.name not in best or best[r.name].error or (not r.error and r.step_s < best[r.name].step_s):
                best[r.name] = r
            gc.collect()
    results = list(best.values())
    report = (
        f"Machine: {machine()}; mode {args.mode}, precision {precision(setup)}, batch {setup.batch}, lengths {setup.q_len}/{setup.d_len}\n\n{limits}{table(results)}\n\n"
        + "\n".join(ratios(results))
        + "\n"
    )
    print("\n" + report)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"bench-{args.mode}.md").write_text(report)
        (out / f"bench-{args.mode}.json").write_text(
            json.dumps([r.__dict__ for r in results], indent=1, default=str)
        )
    return results


if __name__ == "__main__":
    main()
