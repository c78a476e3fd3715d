"""Moved to :mod:`speechprune.book.tables` and :mod:`speechprune.book.figures`; this name stays
importable for the modules not yet switched."""

from __future__ import annotations

from speechprune.book.figures import plot_paper_vs_ours, plot_reductions  # noqa: F401
from speechprune.book.tables import (  # noqa: F401
    QUANTITIES,
    comparison_table,
    describe,
    describe_comparison,
    reductions,
    scale_note,
    summary_table,
)
