"""Everything the book's notebooks use beside the library itself, in one home (d2l's habit).

The chapters import their helpers from here, never from the modules below; each name lives with
what it belongs to:

- :mod:`speechprune.book.reference`: the paper's stated numbers (``Reduction``, ``Setting``,
  ``SETTINGS``, ``paper_numbers``, ``CITATION``, ``ARXIV_URL``, ``TEST_SETS``, ``ROUNDING``);
- :mod:`speechprune.book.tables`: descriptions and tables (``describe``, ``describe_comparison``,
  ``scale_note``, ``reductions``, ``comparison_table``, ``summary_table``, ``QUANTITIES``);
- :mod:`speechprune.book.figures`: figures (``plot_paper_vs_ours``, ``plot_reductions``) and their
  phone-sized style (``book_style``, ``BOOK_STYLE``, ``FIGURE_WIDTH``, ``wrap``);
- :mod:`speechprune.book.figure_log`: while the book is built, each figure's pixel sizes, for its check;
- :mod:`speechprune.book.full_scale`: full-scale result files (``save_full_scale``,
  ``load_full_scale``, ``saved_result``, ``is_full_scale``, ``PACKAGE_RESULTS``);
- :mod:`speechprune.book.prose`: ``glue``, numbers pasted into the book's prose;
- :mod:`speechprune.book.recipes`: the named recipes on held-out clips, in words (``recipe_sentences``);
- :mod:`speechprune.book.sweep` and :mod:`speechprune.book.curve`: chapter 3's saved sweep and
  fine-tuning curve;
- :mod:`speechprune.presets` (re-exported): the cached measurement (``measure``,
  ``measure_comparison``, ``measure_main_job``, ``dense_model``) and the bootstrap spread of its records
  (``wer_interval``, ``wer_difference``).

Importing any of them imports :mod:`speechprune.presets` (the study runner, torch), so the library's
own modules never import from here. pandas and matplotlib are imported only when a table or figure
is made.
"""

from __future__ import annotations

from speechprune.book.figure_log import register as _register_figure_log
from speechprune.book.figures import BOOK_STYLE as BOOK_STYLE  # the figures' style, for the notebooks' setup cells
from speechprune.book.figures import FIGURE_WIDTH as FIGURE_WIDTH
from speechprune.book.figures import book_style as book_style
from speechprune.book.figures import plot_paper_vs_ours, plot_reductions
from speechprune.book.figures import wrap as wrap
from speechprune.book.full_scale import PACKAGE_RESULTS, is_full_scale, load_full_scale, save_full_scale, saved_result
from speechprune.book.prose import glue
from speechprune.book.reference import (
    ARXIV_URL,
    CITATION,
    ROUNDING,
    SETTINGS,
    TEST_SETS,
    Reduction,
    Setting,
    paper_numbers,
)
from speechprune.book.tables import (
    QUANTITIES,
    comparison_table,
    describe,
    describe_comparison,
    reductions,
    scale_note,
    summary_table,
)
from speechprune.presets import dense_model, measure, measure_comparison, measure_main_job, wer_difference, wer_interval

__all__ = [
    "ARXIV_URL", "CITATION", "PACKAGE_RESULTS", "QUANTITIES", "ROUNDING", "SETTINGS", "TEST_SETS",
    "Reduction", "Setting", "comparison_table", "dense_model", "describe", "describe_comparison", "glue",
    "is_full_scale", "load_full_scale", "measure", "measure_comparison", "measure_main_job", "paper_numbers",
    "plot_paper_vs_ours",
    "plot_reductions", "reductions", "save_full_scale", "saved_result", "scale_note", "summary_table",
    "wer_difference", "wer_interval",
]

_register_figure_log()  # only while scripts/build_book.py builds the book (SPEECHPRUNE_FIGURE_LOG set)
