"""The paper's reported numbers and this project's measured analog of each: a façade.

Every name this module had still imports from here (the book's notebooks use it), but each part
now lives with what it belongs to:

- :mod:`speechprune.reference`: the stated numbers (``Reduction``, ``Setting``, ``SETTINGS``,
  ``paper_numbers``, ``CITATION``, ``ARXIV_URL``, ``TEST_SETS``, ``ROUNDING``);
- :mod:`speechprune.presets`: the cached measurement (``measure``, ``measure_comparison``,
  ``dense_model``), a preset of the study runner, and the bootstrap spread of its records through
  :mod:`speechprune.stats` (``wer_interval``, ``wer_difference``);
- :mod:`speechprune.report`: descriptions, tables and figures (``describe``,
  ``describe_comparison``, ``scale_note``, ``reductions``, ``comparison_table``,
  ``summary_table``, ``plot_paper_vs_ours``, ``plot_reductions``, ``QUANTITIES``);
- :mod:`speechprune.results`: full-scale result files (``save_full_scale``,
  ``load_full_scale``, ``saved_result``, ``is_full_scale``, ``PACKAGE_RESULTS``);
- :mod:`speechprune.book`: ``glue``, numbers pasted into the book's prose.
"""

from __future__ import annotations

from speechprune.book import glue
from speechprune.presets import (
    dense_model,
    measure,
    measure_comparison,
    wer_difference,
    wer_interval,
)
from speechprune.reference import (
    ARXIV_URL,
    CITATION,
    ROUNDING,
    SETTINGS,
    TEST_SETS,
    Reduction,
    Setting,
    paper_numbers,
)
from speechprune.report import (
    QUANTITIES,
    comparison_table,
    describe,
    describe_comparison,
    plot_paper_vs_ours,
    plot_reductions,
    reductions,
    scale_note,
    summary_table,
)
from speechprune.results import PACKAGE_RESULTS, is_full_scale, load_full_scale, save_full_scale, saved_result

# the private helpers it had, for code that reached into it
from speechprune.presets import _as_study_record, _loaded, _speech  # noqa: F401
from speechprune.reference import _HUBERT, _HUBERT_DENSE, _LIBRISPEECH, _WHISPER  # noqa: F401
from speechprune.report import _our_values, _paper_values  # noqa: F401

__all__ = [
    "ARXIV_URL", "CITATION", "PACKAGE_RESULTS", "QUANTITIES", "ROUNDING", "SETTINGS", "TEST_SETS",
    "Reduction", "Setting", "comparison_table", "dense_model", "describe", "describe_comparison", "glue",
    "is_full_scale", "load_full_scale", "measure", "measure_comparison", "paper_numbers", "plot_paper_vs_ours",
    "plot_reductions", "reductions", "save_full_scale", "saved_result", "scale_note", "summary_table",
    "wer_difference", "wer_interval",
]
