"""Deprecated alias of :mod:`speechprune.book`, kept for one release.

Importing it warns; its public names are :mod:`speechprune.book`'s (the same objects). Its private
helpers are gone: they live, private, in :mod:`speechprune.presets` and :mod:`speechprune.book`.
"""

from __future__ import annotations

import warnings

from speechprune.book import (
    ARXIV_URL,
    CITATION,
    PACKAGE_RESULTS,
    QUANTITIES,
    ROUNDING,
    SETTINGS,
    TEST_SETS,
    Reduction,
    Setting,
    comparison_table,
    dense_model,
    describe,
    describe_comparison,
    glue,
    is_full_scale,
    load_full_scale,
    measure,
    measure_comparison,
    paper_numbers,
    plot_paper_vs_ours,
    plot_reductions,
    reductions,
    save_full_scale,
    saved_result,
    scale_note,
    summary_table,
    wer_difference,
    wer_interval,
)

warnings.warn("speechprune.paper is deprecated and will be removed in the next release; import from speechprune.book",
              DeprecationWarning, stacklevel=2)

__all__ = [
    "ARXIV_URL", "CITATION", "PACKAGE_RESULTS", "QUANTITIES", "ROUNDING", "SETTINGS", "TEST_SETS",
    "Reduction", "Setting", "comparison_table", "dense_model", "describe", "describe_comparison", "glue",
    "is_full_scale", "load_full_scale", "measure", "measure_comparison", "paper_numbers", "plot_paper_vs_ours",
    "plot_reductions", "reductions", "save_full_scale", "saved_result", "scale_note", "summary_table",
    "wer_difference", "wer_interval",
]
