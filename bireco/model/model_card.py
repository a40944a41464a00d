"""Model cards (README.md) for what bireco writes: every training run's `final/` and every export.

A card says what the model is and how to use it without bireco's source at hand: base model, the stages it went
through and on which data, the hyperparameters, the evaluation table when one exists, the prompts, the licence of
the base model, the paper's citation, and how to load it (transformers, sentence-transformers, mteb).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bireco.core.files import atomic_write_text
from bireco.core.runs import eval_dir, run_config, run_of

CITATION = """@inproceedings{su2025anchor,
  title     = {Training LLMs to be Better Text Embedders through Bidirectional Reconstruction},
  author    = {Su and others},
  booktitle = {Proceedings of EMNLP 2025},
  year      = {2025},
  note      = {arXiv:2509.03020}
}"""

STAGES = {"stage1": "Stage I (bidirectional reconstruction)", "stage2": "Stage I + Stage II (Anchor)",
          "baseline": "Stage II alone (the paper's baseline)"}  # fmt: skip


def run_facts(run_dir: Path) -> dict[str, Any]:
    """What a run directory records about itself: resolved config, and the evaluation summary if `make eval` ran."""
    from omegaconf import OmegaConf

    facts: dict[str, Any] = {}
    cfg = run_config(run_dir)
    if cfg is not None:
        facts["config"] = OmegaConf.to_container(cfg, resolve=False)
    summary = eval_dir(run_dir) / "summary.json"
    if summary.is_file():
        facts["eval"] = json.loads(summary.read_text())
    return facts


def _hyperparameters(cfg: dict) -> list[str]:
    s, t, d = cfg.get("stage", {}), cfg.get("trainer", {}), cfg.get("data", {})
    o, lora = s.get("optim", {}), s.get("lora", {})
    rows = [("stage", s.get("name")), ("steps", t.get("max_steps")), ("global batch", d.get("global_batch_size")),
            ("gradient accumulation", t.get("accumulate_grad_batches")), ("learning rate", o.get("lr")),
            ("warmup steps", o.get("warmup_steps")), ("schedule", o.get("schedule")),
            ("max query / document tokens", f"{d.get('max_query_length')} / {d.get('max_doc_length')}"),
            ("precision", t.get("precision")), ("seed", cfg.get("seed"))]  # fmt: skip
    if s.get("name") == "reconstruction":
        rows += [
            ("alpha (EBQ2D weight)", s.get("alpha")),
            ("direction schedule", s.get("schedule")),
            ("targets", s.get("labels")),
        ]
    else:
        rows += [
            ("temperature", 1 / s["scale"] if s.get("scale") else None),
            ("hard negatives", d.get("num_hard_negatives")),
        ]
    if lora.get("enabled"):
        rows.append(
            ("LoRA (r / alpha / dropout)", f"{lora.get('r')} / {lora.get('alpha')} / {lora.get('dropout')}")
        )
    return [f"| {k} | {v} |" for k, v in rows if v is not None]


def _eval_table(summary: dict) -> list[str]:
    lines = ["| task | main score (x100) |", "|---|---|"]
    lines += [f"| {name} | {t['main_score']:.2f} |" for name, t in sorted(summary.get("tasks", {}).items())]
    lines += [f"| **{c}** | {v:.2f} |" for c, v in summary.get("categories", {}).items()]
    return lines


def render(
    title: str,
    base_model: str,
    stage_run: str | None,
    facts: dict,
    usage: list[str],
    prompts: dict | None = None,
) -> str:
    cfg = facts.get("config") or {}
    data = cfg.get("data", {})
    lines = [
        "---", "library_name: sentence-transformers" if prompts is not None else "library_name: transformers",
        f"base_model: {base_model}", "tags: [bireco, text-embedding, feature-extraction]", "---", "",
        f"# {title}", "",
        f"A text embedder trained from **{base_model}** with bireco "
        "(*Training LLMs to be Better Text Embedders through Bidirectional Reconstruction*, EMNLP 2025): "
        f"{STAGES.get(stage_run or '', 'a bireco checkpoint')}. The embedding is the final hidden state of the "
        "last token ([EOS]); compare embeddings by cosine similarity.", "",
    ]  # fmt: skip
    if data:
        source = data.get("path") or "WordNet 3.0 pairs shipped with bireco (train split)"
        lines += ["## Training data", "", f"`data={data.get('name', data.get('format'))}`: {source}.", ""]
    if cfg:
        lines += ["## Hyperparameters", "", "| setting | value |", "|---|---|", *_hyperparameters(cfg), ""]
    if facts.get("eval"):
        lines += ["## Evaluation", "", *_eval_table(facts["eval"]), ""]
    if prompts:
        lines += ["## Prompts", "", *[f"- `{k}`: `{json.dumps(v)[1:-1]}`" for k, v in prompts.items()], ""]
    lines += ["## Usage", "", "```python", *usage, "```", "",
              "## Licence", "", f"The weights derive from {base_model}: its licence applies.", "",
              "## Citation", "", "```bibtex", CITATION, "```", ""]  # fmt: skip
    return "\n".join(lines)


def write_final_card(final_dir: Path, base_model: str, stage_run: str) -> Path:
    """README.md in a training run's final/ (called by bireco.training.run after saving)."""
    facts = run_facts(run_of(final_dir))
    usage = [
        "import bireco  # pip install bireco",
        f"emb = bireco.encode(['a dog'], '{final_dir}')  # bireco's exact text format and pooling",
        "# or plain transformers: AutoModel.from_pretrained(...) holds the trained weights (LoRA merged in)",
    ]
    card = render(f"bireco {STAGES.get(stage_run, stage_run)}", base_model, stage_run, facts, usage)
    path = final_dir / "README.md"
    atomic_write_text(path, card)
    return path
