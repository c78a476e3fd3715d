"""The README and the book's "Every saved study" page quote only what their commands print."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_study_tables_are_what_the_summary_command_prints():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    tables = (ROOT / "book" / "study_tables.md").read_text(encoding="utf-8")
    assert readme.count("--target -->") == 1  # the front door's one results table
    assert tables.count("--summary -->") >= 3  # the book's settings, chapter 2's allocations, the seed studies
    done = subprocess.run([sys.executable, "scripts/readme_studies.py", "--check"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr


def test_the_readme_is_a_front_door():
    """At most about 150 lines before the reference sections, which start at '# Reference'."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    front = readme[:readme.index("# Reference")]
    assert len(front) <= 160
    text = "\n".join(front)
    for must in ("make demo", "make test", "results/main_job/wer.png", "--recipe recommended", "CONTRIBUTING.md",
                 "prune_your_own", "how_we_measure", "full_scale", "api.html", "#citing"):
        assert must in text, must
    image = re.search(r"!\[[^\]]+\]\(([^)]+)\)", text)
    assert image and (ROOT / image.group(1)).is_file()


def test_the_deployment_table_is_what_the_benchmark_saved():
    done = subprocess.run([sys.executable, "benchmarks/bench_deploy.py", "--check-readme"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("<!-- python benchmarks/bench_deploy.py --readme -->")[1].split("<!-- end of deploy table")[0]
    assert "| setting | runtime |" in block and "fastest pruned" in block


def test_the_readme_quotes_round_4_from_its_held_out_study():
    """The README's sentences on the recommended recipe quote recipe-final-4-heldout as lossless_rows and
    target_rows read it."""
    from speechprune.study import load_records, lossless_rows, target_rows

    records = load_records(ROOT / "results" / "studies" / "recipe-final-4-heldout.json")["records"]
    rows = {(r["scope"], r["sparsity"]): r for r in lossless_rows(records, n_boot=10)
            if r["option"].startswith("O ")}
    before = {(r["scope"], r["sparsity"]): r for r in lossless_rows(records, n_boot=10)
              if r["option"].startswith("R ")}
    enc, both = rows[("encoder.ffn", 0.2)], rows[("ffn", 0.1)]
    half = next(t for t in target_rows(records) if t["option"].startswith("O ") and t["sparsity"] == 0.5)
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    said = (f"brings the recommended recipe to {enc['median']:.2f}% and {both['median']:.2f}%, "
            f"{enc['ratio']:.2f} and {both['ratio']:.2f} times the uncompressed model's",
            f"`pairs-refit-2026`, was at {before[('encoder.ffn', 0.2)]['ratio']:.2f} and "
            f"{before[('ffn', 0.1)]['ratio']:.2f} times",
            f"to {half['median']:.2f}% at encoder FFN 50%, where magnitude pruning is at {half['magnitude']:.2f}%")
    for sentence in said:
        assert sentence in readme, sentence


def test_the_readme_quotes_the_saved_main_job():
    """The README's sentence on the main job is the first sentence `speechprune compare` saved in results/main_job."""
    import json

    saved = json.loads((ROOT / "results" / "main_job" / "results.json").read_text(encoding="utf-8"))
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    first = saved["sentences"][0].rstrip(".")
    assert first.startswith("The recommended recipe is lower than magnitude pruning"), first
    assert f'"{first}"' in readme, first
    assert {r["role"] for r in saved["records"]} == {"dense", "paper", "recommended", "magnitude"}
    recommended = next(r for r in saved["records"] if r["role"] == "recommended")
    from speechprune.recipes import RECIPES_OPTIONS

    assert {k: recommended["compression"].get(k) for k in RECIPES_OPTIONS["recommended"]} == \
        RECIPES_OPTIONS["recommended"], "measured with today's recipe"
