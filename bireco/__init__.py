"""bireco: decoder LLMs -> text embedders via bidirectional reconstruction (Stage I) + contrastive learning (Stage II).

The public API, for scripts, notebooks and studies (experiments/ imports nothing else; `make lint` holds that):

    import bireco
    cfg = bireco.compose_train(["model=smollm2", "stage=reconstruction", "trainer.max_steps=20"])
    bireco.train_stage(cfg)                                             # one stage: what `bireco-train` runs
    bireco.evaluate_checkpoint("outputs/.../stage2/final", tasks=["builtin"])
    bireco.encode(["a dog"], "outputs/.../stage2/final")                # embeddings as numpy
    bireco.export_sentence_transformers("outputs/.../stage2/final", "exported/my-embedder")
    bireco.run_demo(Path("outputs/demo-run"))                           # `make demo`

Names are imported on first use (torch, transformers and mteb are heavy).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> the module that defines it
_API = {
    # configuration
    "compose": "bireco.config.compose",
    "compose_train": "bireco.config.compose",
    "validate": "bireco.config.validate",
    "quiet_console": "bireco.config.cli",
    "OptimConfig": "bireco.config.schema",
    "ReconstructionStageConfig": "bireco.config.schema",
    "ContrastiveStageConfig": "bireco.config.schema",
    "DataConfig": "bireco.config.schema",
    # training
    "train_stage": "bireco.training.run",
    "build_backbone": "bireco.training.builders",
    "build_datamodule": "bireco.training.builders",
    "build_module": "bireco.training.builders",
    "build_trainer": "bireco.training.builders",
    "build_callbacks": "bireco.training.callbacks",
    "export_backbone": "bireco.training.run",
    "run_demo": "bireco.training.demo",
    "EVAL_TASKS": "bireco.training.demo",
    "EVAL_SUBSAMPLE": "bireco.training.demo",
    "ReconstructionModule": "bireco.stages.reconstruction",
    "ContrastiveModule": "bireco.stages.contrastive",
    "CpuFastPath": "bireco.cpu.fast_path",
    "keep_freed_memory": "bireco.cpu.allocator",
    # the model, encoding, export
    "Backbone": "bireco.model.backbone",
    "encode": "bireco.model.encode",
    "encode_texts": "bireco.model.encode",
    "export_sentence_transformers": "bireco.model.export",
    "PairCollator": "bireco.data.collate",
    "PairBatchSampler": "bireco.data.samplers",
    "load_pairs": "bireco.data.records",
    "offline_lm_path": "bireco.tools.offline_lm",
    "pretrain_tiny_lm": "bireco.tools.tiny_lm",
    "family_format": "bireco.tools.tiny_lm",
    "asset_path": "bireco.core.paths",
    "resolve_precision": "bireco.core.precision",
    "autocast": "bireco.core.precision",
    # evaluation
    "evaluate_checkpoint": "bireco.evaluation.runner",
    "evaluate_reference": "bireco.evaluation.runner",
    "resolve_tasks": "bireco.evaluation.runner",
    "markdown_table": "bireco.evaluation.runner",
    "CATEGORIES": "bireco.evaluation.runner",
    "wordnet_retrieval_set": "bireco.evaluation.retrieval",
    "retrieval_scores": "bireco.evaluation.retrieval",
    "seed_row": "bireco.evaluation.seed_table",
    "seed_table_head": "bireco.evaluation.seed_table",
    "paired_difference": "bireco.evaluation.seed_table",
    # is my Stage I reading its anchor? (bireco.evaluation.anchor_diagnostics)
    "AnchorReader": "bireco.model.anchor",
    "reader_for_checkpoint": "bireco.model.anchor_controls",
    "anchor_use": "bireco.evaluation.anchor_diagnostics",
    "checkpoint_anchor_use": "bireco.evaluation.anchor_diagnostics",
    "pair_batches": "bireco.evaluation.anchor_diagnostics",
    "anchor_of": "bireco.evaluation.anchor_diagnostics",
    "query_overlap": "bireco.evaluation.anchor_diagnostics",
    "wordnet_dev_pairs": "bireco.evaluation.anchor_diagnostics",
    # run directories (bireco.core.runs: every fact about one)
    "final_dir": "bireco.core.runs",
    "eval_dir": "bireco.core.runs",
    "metrics_csv": "bireco.core.runs",
    "logged_curve": "bireco.core.runs",
    "run_of": "bireco.core.runs",
    "run_config": "bireco.core.runs",
    "find_runs": "bireco.core.runs",
    "checkpoint_step": "bireco.core.runs",
}
# names whose definition is spelt otherwise in its module
_RENAMED = {"train_stage": "run"}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'bireco' has no attribute {name!r}")
    # looked up at every access (the module itself is imported once): a test that patches the defining module's
    # function is seen here too
    return getattr(importlib.import_module(_API[name]), _RENAMED.get(name, name))


def __dir__() -> list[str]:
    return sorted(__all__)
