"""Moved to :mod:`speechprune.book.reference`; this name stays importable for the modules not yet switched."""

from __future__ import annotations

from speechprune.book.reference import (  # noqa: F401
    ARXIV_URL,
    CITATION,
    ROUNDING,
    SETTINGS,
    TEST_SETS,
    Reduction,
    Setting,
    paper_numbers,
)
