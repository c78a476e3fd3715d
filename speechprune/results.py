"""Moved to :mod:`speechprune.book.full_scale`; this name stays importable for the modules not yet switched."""

from __future__ import annotations

from speechprune.book.full_scale import (  # noqa: F401
    PACKAGE_RESULTS,
    is_full_scale,
    load_full_scale,
    save_full_scale,
    saved_result,
)
