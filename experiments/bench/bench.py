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
import dataclasses
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

from bireco.core.paths import asset_path
from bireco.model.backbone import Backbone

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
def model_cfg(setup: Setup, ckpt: bool, compile: bool = False, plain: bool = False) -> dict:
    """`plain`: what a hand-written loop loads (transformers' sdpa as is, no bireco attention on CPU)."""
    return {
        "family": "bench",
        "tokenizer": asset_path("tiny_tokenizer"),
        "architecture": dict(setup.arch),
        "dtype": {torch.float32: "float32", torch.bfloat16: "bfloat16"}[setup.dtype],
        "attn_implementation": "sdpa",
        "cpu_training_attention_fp32": not plain,
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


def build_backbone(
    setup: Setup,
    ckpt: bool,
    lora: bool = False,
    compile: bool = False,
    plain: bool = False,
    torch_dropout: bool = False,
) -> Backbone:
    """`plain` / `torch_dropout`: LoRA dropout is torch's nn.Dropout (what a hand-written loop has), not bireco's
    CPU Poisson sampler."""
    torch.manual_seed(0)
    lora_cfg = dict(LORA, cpu_poisson_dropout=not (plain or torch_dropout)) if lora else None
    if setup.model:
        from bireco.tools.offline_lm import offline_lm_path
        from bireco.tools.tiny_lm import family_format

        path = offline_lm_path(setup.model)
        cfg = dict(
            model_cfg(setup, ckpt, compile, plain), name_or_path=path, tokenizer=path, architecture=None
        )
        cfg["text_format"] = vars(family_format("smollm2"))
        return Backbone.from_config(cfg, lora_cfg)
    with torch.device(setup.device):  # random init straight on the device
        return Backbone.from_config(model_cfg(setup, ckpt, compile, plain), lora_cfg)


def model_arch(setup: Setup) -> dict:
    """The architecture of the mode's model (an offline LM's own config.json, else the inline `arch`)."""
    if setup.model:
        from transformers import AutoConfig

        from bireco.tools.offline_lm import offline_lm_path

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
    from bireco.core.precision import resolve_precision

    return resolve_precision(setup.precision, "gpu" if setup.device == "cuda" else "cpu")


def run_plain(name, setup, batches, loss_fn, params, work, backbone, token_sides) -> Result:
    from bireco.core.precision import autocast

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
def fit_steps(module, batches: list[dict], setup: Setup, callback) -> None:
    """bireco's real training path over `batches`, one optimizer step each: a Lightning Trainer on the setup's device
    and precision, clipping at 1.0, no logger, checkpoint or validation; `callback` times the steps."""
    import lightning as L
    from torch.utils.data import DataLoader

    trainer = L.Trainer(
        accelerator="gpu" if setup.device == "cuda" else "cpu", devices=1, precision=precision(setup),
        max_steps=len(batches), logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[callback], gradient_clip_val=1.0, num_sanity_val_steps=0,
        limit_val_batches=0,
    )  # fmt: skip
    loader = DataLoader(batches, batch_size=None, shuffle=False, pin_memory=setup.device == "cuda")
    trainer.fit(module, train_dataloaders=loader)


def run_bireco(name, setup, batches, module, work, token_sides) -> Result:
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
    fit_steps(module, batches, setup, clock)
    return summarise(name, clock.times, batches, setup, work, module.backbone, token_sides)


class Interleaved:
    """Two or more variants of one training run taking turns step by step (A B A B ...), so the machine's drift,
    up to 24% between two runs of one variant on the 2-core CPU, falls on all alike. `variants`: name -> a function
    that sets the module up for that variant before its step; step times per variant after `warmup` steps."""

    def __init__(self, variants: dict, warmup: int):
        import lightning as L

        names, outer = list(variants), self

        class Turns(L.Callback):
            def on_train_batch_start(self, trainer, module, batch, batch_idx):
                variants[names[batch_idx % len(names)]](module)
                outer.t0 = time.perf_counter()

            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                if batch_idx >= warmup:
                    outer.times[names[batch_idx % len(names)]].append(time.perf_counter() - outer.t0)

        self.callback, self.t0 = Turns(), 0.0
        self.times: dict[str, list[float]] = {n: [] for n in names}

    def fit(self, module, batches: list[dict], setup: Setup) -> dict[str, float]:
        """Train `module` on `batches` (bench's `fit_steps`); the median step time of each variant."""
        fit_steps(module, batches, setup, self.callback)
        return {k: statistics.median(v) for k, v in self.times.items()}


def interleaved_setup(mode: str, keep_freed: bool = True) -> Setup:
    """SETUPS[mode] for an interleaved comparison (frozen_casts.py, fused_adamw.py): the smoke toy model in fp32 under
    bf16 autocast, as a CPU trains SmolLM2; on a CPU, malloc keeps freed buffers for the process, as training does
    (`keep_freed=False`: left as it is, for malloc_reuse.py, which compares the two)."""
    setup = SETUPS[mode]
    if mode == "smoke":
        setup = dataclasses.replace(setup, dtype=torch.float32, precision="bf16-mixed")
    if keep_freed and setup.device == "cpu":  # as bireco's CPU training runs (trainer.cpu_keep_freed_memory)
        from bireco.core.allocator import keep_freed_memory

        keep_freed_memory()
    return setup


def write_interleaved(out: Path, stem: str, title: str, mode: str, setup: Setup, steps: int, rows: list[str],
                      data) -> str:  # fmt: skip
    """An interleaved comparison's report: a header naming the setup and the machine, then the table `rows`;
    printed and written to `out`/`stem`.md, with `data` as `stem`.json."""
    report = "\n".join([
        f"{title} ({mode}, {precision(setup)}, batch {setup.batch}, lengths {setup.q_len}/{setup.d_len}, "
        f"{torch.get_num_threads()} threads; {platform.machine()}, {platform.processor() or 'cpu'}, "
        f"torch {torch.__version__}), {steps} steps per variant, interleaved:", "", *rows,
    ])  # fmt: skip
    print(report)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(report + "\n")
    (out / f"{stem}.json").write_text(json.dumps(data, indent=1))
    return report


def optim_cfg(lr: float):
    from types import SimpleNamespace

    return SimpleNamespace(
        lr=lr,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0.0,
        fused=None,
        schedule="constant",
        warmup_steps=0,
        schedule_steps=None,
    )


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


def stage1_variants(setup: Setup, ckpt: bool, native_attention: bool = False, compiled: bool = False) -> list:
    """`native_attention`: only bireco's alternate step, with transformers' sdpa instead of bireco's CPU training
    attention (bireco.model.attention), to measure that lever against the default in the same process.
    `compiled`: only bireco's alternate step with `model.compile=true`."""
    from bireco.stages.reconstruction import ReconstructionModule

    tag = "ckpt" if ckpt else "no ckpt"
    sides = ("query", "positive")
    n_steps = setup.warmup + 1 + setup.steps

    def plain(both: bool):
        def go():
            backbone = build_backbone(setup, ckpt, plain=True)
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
            backbone = build_backbone(setup, ckpt, compile=compiled, plain=native_attention)
            bb = make_batches(
                n_steps, setup, backbone.text_format.eos_id(backbone.tokenizer), backbone.pad_id, False
            )
            module = ReconstructionModule(backbone, optim_cfg(1e-5), len(bb), alpha=0.2, schedule=schedule)
            name = (
                f"bireco Stage I, {schedule} ({tag})"
                + (", compiled" if compiled else "")
                + (NATIVE if native_attention else "")
            )
            return run_bireco(name, setup, bb, module, stage1_work(schedule == "joint", ckpt), sides)

        return go

    if native_attention or compiled:
        return [bireco("alternate")]
    return [plain(True), plain(False), bireco("joint"), bireco("alternate")]


def stage2_variants(
    setup: Setup,
    ckpt: bool,
    compiled: bool = False,
    native_attention: bool = False,
    torch_dropout: bool = False,
    frozen_autocast: bool = False,
) -> list:
    """`native_attention` / `torch_dropout` / `frozen_autocast`: only bireco's step, with transformers' sdpa / torch's
    LoRA dropout / autocast recasting the frozen base weights at every forward (bireco.core.precision.training_casts
    off)."""
    from bireco.stages.contrastive import ContrastiveModule

    tag = "LoRA r16" + (", ckpt" if ckpt else "")
    sides = ("query", "positive", "negatives")
    work = StepWork(body=dict.fromkeys(sides, 1), recompute=ckpt)  # three embeddings, no LM head
    n_steps = setup.warmup + 1 + setup.steps

    def plain():
        backbone = build_backbone(setup, ckpt, lora=True, plain=True)
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
            backbone = build_backbone(
                setup, ckpt, lora=True, compile=compile, plain=native_attention, torch_dropout=torch_dropout
            )
            bb = make_batches(
                n_steps, setup, backbone.text_format.eos_id(backbone.tokenizer), backbone.pad_id, True
            )
            module = ContrastiveModule(backbone, optim_cfg(2e-4), len(bb), scale=50.0)
            name = (
                f"bireco Stage II, {tag}"
                + (", compiled" if compile else "")
                + (NATIVE if native_attention else "")
                + (TORCH_DROPOUT if torch_dropout else "")
                + (FROZEN_AUTOCAST if frozen_autocast else "")
            )
            if not frozen_autocast:
                return run_bireco(name, setup, bb, module, work, sides)
            import bireco.stages.base as stage_base

            real, stage_base.training_casts = stage_base.training_casts, lambda device, prec, *models: []
            try:
                return run_bireco(name, setup, bb, module, work, sides)
            finally:
                stage_base.training_casts = real

        return go

    if compiled:
        return [bireco(True)]
    if native_attention or torch_dropout or frozen_autocast:
        return [bireco(False)]
    return [plain, bireco(False)]


def varlen_variants(setup: Setup) -> list:
    """Same records, same bireco Stage I (alternate): random batches vs length-bucketed batches."""
    from bireco.data.samplers import PairBatchSampler
    from bireco.stages.reconstruction import ReconstructionModule

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
            module = ReconstructionModule(
                backbone, optim_cfg(1e-5), len(bb), alpha=0.2, schedule="alternate", on_nonfinite="skip"
            )
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


NATIVE = ", transformers' sdpa"  # bench variants without bireco's CPU training attention
TORCH_DROPOUT = (
    ", torch's LoRA dropout"  # ... without bireco's CPU Poisson LoRA dropout (bireco.model.dropout)
)
FROZEN_AUTOCAST = (
    ", frozen weights cast by autocast"  # ... at every forward, not once (precision.training_casts)
)

GROUPS = {
    "stage1_ckpt": lambda s: stage1_variants(s, ckpt=True),
    "stage1_nockpt": lambda s: stage1_variants(s, ckpt=False),
    "stage2": lambda s: stage2_variants(s, ckpt=True),
    "stage2_nockpt": lambda s: stage2_variants(s, ckpt=False),
    "varlen": varlen_variants,
    "stage2_compile": lambda s: stage2_variants(s, ckpt=True, compiled=True),  # GPU: compile time ~1 min
    "stage2_compile_nockpt": lambda s: stage2_variants(s, ckpt=False, compiled=True),  # next to stage2_nockpt
    # compiled with torch's LoRA dropout: the Poisson dropout's random count recompiles (next to torch_dropout)
    "stage2_compile_torch_dropout": lambda s: stage2_variants(
        s, ckpt=False, compiled=True, torch_dropout=True
    ),
    "stage1_compile_nockpt": lambda s: stage1_variants(s, ckpt=False, compiled=True),  # next to stage1_nockpt
    # bireco's steps with transformers' sdpa instead of its CPU training attention: run next to stage1_nockpt /
    # stage2_nockpt, the ratio is what bireco.model.attention buys
    "native_attention": lambda s: (
        stage1_variants(s, ckpt=False, native_attention=True)
        + stage2_variants(s, ckpt=False, native_attention=True)
    ),
    # bireco's Stage II with torch's nn.Dropout for LoRA: next to stage2_nockpt, what bireco.model.dropout buys
    "torch_dropout": lambda s: stage2_variants(s, ckpt=False, torch_dropout=True),
    # bireco's Stage II with autocast recasting LoRA's frozen base weights at every forward: next to stage2_nockpt /
    # stage2, what casting them once (bireco.core.precision.training_casts) buys on a CPU under bf16-mixed
    "frozen_autocast": lambda s: (
        stage2_variants(s, ckpt=False, frozen_autocast=True)
        + stage2_variants(s, ckpt=True, frozen_autocast=True)
    ),
}
DEFAULT_GROUPS = {
    "cpu": ["stage1_nockpt", "stage2", "varlen"],
    "gpu": ["stage1_ckpt", "stage1_nockpt", "stage2", "varlen", "stage2_compile"],
    "smoke": [
        "stage1_ckpt",
        "stage1_nockpt",
        "stage2",
        "varlen",
        "native_attention",
        "torch_dropout",
        "frozen_autocast",
    ],
    "smollm2": ["stage1_nockpt", "stage2_nockpt", "native_attention", "torch_dropout", "frozen_autocast"],
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
    ratio("Stage I step time, bireco's CPU training attention / transformers' sdpa (alternate, no ckpt)",
          "bireco Stage I, alternate (no ckpt)", "bireco Stage I, alternate (no ckpt)" + NATIVE, "step_s")  # fmt: skip
    ratio("Stage II step time, bireco's CPU training attention / transformers' sdpa (LoRA r16)",
          "bireco Stage II, LoRA r16", "bireco Stage II, LoRA r16" + NATIVE, "step_s")  # fmt: skip
    ratio("Stage II step time, bireco's CPU Poisson LoRA dropout / torch's nn.Dropout (LoRA r16)",
          "bireco Stage II, LoRA r16", "bireco Stage II, LoRA r16" + TORCH_DROPOUT, "step_s")  # fmt: skip
    for s2 in ("LoRA r16", "LoRA r16, ckpt"):
        ratio(f"Stage II step time, frozen weights cast once / by autocast at every forward ({s2})",
              f"bireco Stage II, {s2}", f"bireco Stage II, {s2}" + FROZEN_AUTOCAST, "step_s")  # fmt: skip
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
    if setup.device == "cpu":
        # as bireco's CPU training runs (trainer.cpu_keep_freed_memory); malloc's setting is the process's, so the
        # plain loops run with it too
        from bireco.core.allocator import keep_freed_memory

        keep_freed_memory()
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
