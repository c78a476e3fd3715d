"""The book's helpers have one home, speechprune.book; speechprune.paper is a deprecated alias of it."""

from __future__ import annotations

import importlib
import sys
import warnings

import pytest

import speechprune.book as book

PUBLIC = {"ARXIV_URL", "CITATION", "PACKAGE_RESULTS", "QUANTITIES", "ROUNDING", "SETTINGS", "TEST_SETS",
          "Reduction", "Setting", "comparison_table", "dense_model", "describe", "describe_comparison", "glue",
          "is_full_scale", "load_full_scale", "measure", "measure_comparison", "measure_main_job", "paper_numbers",
          "plot_paper_vs_ours", "plot_reductions", "reductions", "save_full_scale", "saved_result", "scale_note",
          "summary_table", "wer_difference", "wer_interval"}


def _fresh_import(name: str, monkeypatch):
    """Import ``name`` anew (its module-level code runs again); the old module is restored afterwards."""
    parent, child = name.rsplit(".", 1)
    monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.delattr(sys.modules[parent], child, raising=False)
    return importlib.import_module(name)


def test_book_provides_every_helper_without_a_warning(monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        fresh = _fresh_import("speechprune.book", monkeypatch)
    assert set(fresh.__all__) == PUBLIC and all(hasattr(fresh, name) for name in PUBLIC)


def test_paper_warns_and_is_the_same_names(monkeypatch):
    with pytest.warns(DeprecationWarning, match="speechprune.paper is deprecated .* import from speechprune.book"):
        paper = _fresh_import("speechprune.paper", monkeypatch)
    assert set(paper.__all__) == PUBLIC
    for name in PUBLIC:
        assert getattr(paper, name) is getattr(book, name), name
    for private in ("_as_study_record", "_loaded", "_speech", "_HUBERT", "_WHISPER", "_our_values", "_paper_values"):
        assert not hasattr(paper, private), f"speechprune.paper still re-exports {private}"


def test_presets_names_are_the_presets_objects():
    from speechprune import presets

    for name in ("measure", "measure_comparison", "measure_main_job", "dense_model", "wer_interval", "wer_difference"):
        assert getattr(book, name) is getattr(presets, name)


def test_shipped_results_are_found_from_the_new_home():
    assert (book.PACKAGE_RESULTS / "finetune_demo.json").is_file()


def test_the_study_table_over_seeds_has_its_own_name():
    """The book's ``comparison_table`` (the paper against this project) and the study's table over seeds
    had one name; the study's is ``seeds_table``, and its old name warns for one release."""
    import speechprune.study as study
    from speechprune import book

    assert study.seeds_table is not book.comparison_table
    with pytest.warns(DeprecationWarning, match="seeds_table"):
        assert study.comparison_table is study.seeds_table


def _sweep_records():
    import random

    rng = random.Random(0)
    ids = [f"u{i}" for i in range(30)]
    words = [10] * 30

    def rec(label, method, sparsity, seed, rate):
        errors = [min(10, max(0, round(rng.gauss(rate * 10, 1)))) for _ in ids]
        return dict(label=label, method=method, sparsity=sparsity, seed=seed, wer=100 * sum(errors) / 300,
                    utterance_ids=ids, utterance_errors=errors, utterance_words=words)

    records = [rec("dense", "dense", 0.0, None, 0.05)]
    for s, (paper, mag) in zip((0.1, 0.3, 0.5), ((0.06, 0.2), (0.3, 0.6), (0.9, 0.95))):
        records += [rec("cluster (paper)", "cluster", s, seed, paper) for seed in range(5)]
        records.append(rec("magnitude", "magnitude", s, None, mag))
    return records


def test_the_sweep_says_where_each_method_breaks():
    from speechprune.book.sweep import breaking_points, breaking_words, plot_sweep, sweep_rows, sweep_sentences

    records = _sweep_records()
    rows = sweep_rows(records)
    assert [(r["option"], r["sparsity"], r["runs"]) for r in rows] == [
        ("cluster (paper)", 0.1, 5), ("cluster (paper)", 0.3, 5), ("cluster (paper)", 0.5, 5),
        ("magnitude", 0.1, 1), ("magnitude", 0.3, 1), ("magnitude", 0.5, 1)]
    assert all(r["low"] <= r["median"] <= r["high"] for r in rows)
    points = breaking_points(records)
    assert points["cluster (paper)"] == 0.1 and points["magnitude"] is None
    assert breaking_words(records) == ["cluster (paper) up to 10%", "magnitude not even at the smallest budget"]
    late = [r for r in records if not (r["label"] == "magnitude" and r["sparsity"] == 0.1)]
    assert breaking_words(late)[1] == "magnitude not at 30%, its smallest budget measured so far (10% not yet)"
    said = sweep_sentences(records, n_boot=200)
    assert "cluster (paper) is lower than magnitude" in said[0.3][0]
    fig = plot_sweep(records)
    assert len(fig.axes) == 1


def test_the_cache_keeps_recipes_apart_that_differ_in_any_option(tmp_path, monkeypatch):
    """measure's cache key is every option that can change the model: before, closest pairs on producer
    features and on both shared a record (features were keyed for k-means only), as did merge rules."""
    from speechprune import presets

    calls = []

    def fake_execute(run, dense, processor, speech, device=None):
        calls.append(run.key)
        return {"wer": float(len(calls)), "label": run.label}

    monkeypatch.setattr(presets, "execute", fake_execute)
    monkeypatch.setattr(presets, "dense_model", lambda spec, device="cpu": (None, None))
    monkeypatch.setattr(presets, "_speech", lambda spec, max_samples: [])
    common = dict(max_samples=2, cache_dir=tmp_path, device="cpu")
    variants = [dict(method="pairs", features="producer"), dict(method="pairs", features="both"),
                dict(method="cluster", merge="mean"), dict(method="cluster", merge="projection"),
                dict(method="cluster", weighting="none"), dict(method="cluster", weighting="consumer")]
    wers = [presets.measure("m", "d", sparsity=0.2, scope="ffn", **v, **common)["wer"] for v in variants]
    assert len(calls) == 5 and len(set(wers)) == 5, "cluster merge=mean and weighting=none are the same options"
    assert wers[2] == wers[4]
    again = [presets.measure("m", "d", sparsity=0.2, scope="ffn", **v, **common)["wer"] for v in variants]
    assert again == wers and len(calls) == 5, "the second time every record comes from the cache"
    assert len(list(tmp_path.glob("*.json"))) == 5


@pytest.mark.slow
def test_the_cached_main_job_reuses_the_comparison_and_matches_the_main_job(tmp_path, monkeypatch):
    """Chapters 3 and 4 run measure_comparison, then the main job over seeds with measure_main_job:
    the uncompressed model, magnitude pruning and seed 0 come from the cache, and the result is the
    main job's (same records, same WERs, same sentences) as run_main_job computes it afresh."""
    from speechprune import presets
    from speechprune.experiment import format_main_job, run_main_job

    model, data = "embedded:whisper-tiny.en", "embedded"
    at = dict(sparsity=0.2, scope="encoder.ffn")
    run = dict(max_samples=3, batch_size=3, device="cpu", cache_dir=tmp_path)
    measured = []
    real = presets.execute
    monkeypatch.setattr(presets, "execute", lambda r, *a, **k: measured.append(r.label) or real(r, *a, **k))
    presets.measure_comparison(model, [data], seed=0, **at, **run)
    assert len(measured) == 3
    cached = presets.measure_main_job(model, data, seeds=2, **at, **run)
    assert len(measured) == 5, f"only seed 1 and the recommended recipe are new: {measured[3:]}"
    fresh = run_main_job(model, data, seeds=2, max_samples=3, batch_size=3, device="cpu", progress=False, **at)
    roles = [(r["role"], r["label"], r["seed"]) for r in cached["records"]]
    assert roles == [(r["role"], r["label"], r["seed"]) for r in fresh["records"]]
    assert roles[0] == ("dense", "dense", None) and [s for role, _, s in roles if role == "paper"] == [0, 1]
    assert [r["wer"] for r in cached["records"]] == pytest.approx([r["wer"] for r in fresh["records"]])
    assert cached["sentences"] == fresh["sentences"] and len(cached["sentences"]) == 3
    assert format_main_job(cached).splitlines()[:8] == format_main_job(fresh).splitlines()[:8]
