"""The book's helpers have one home, speechprune.book; speechprune.paper is a deprecated alias of it."""

from __future__ import annotations

import importlib
import sys
import warnings

import pytest

import speechprune.book as book

PUBLIC = {"ARXIV_URL", "CITATION", "PACKAGE_RESULTS", "QUANTITIES", "ROUNDING", "SETTINGS", "TEST_SETS",
          "Reduction", "Setting", "comparison_table", "dense_model", "describe", "describe_comparison", "glue",
          "is_full_scale", "load_full_scale", "measure", "measure_comparison", "paper_numbers",
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

    for name in ("measure", "measure_comparison", "dense_model", "wer_interval", "wer_difference"):
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
