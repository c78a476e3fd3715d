"""Numbers pasted into the book's prose: myst-nb's ``glue`` where the book is built, a display elsewhere."""

from __future__ import annotations

from typing import Any


def glue(name: str, value: Any, display: bool = False) -> None:
    """myst-nb's ``glue`` (numbers in the book's prose come from the run); a plain display elsewhere."""
    try:
        from myst_nb import glue as myst_glue
    except ImportError:  # Colab and plain Jupyter: nothing to paste into, show it when asked
        if display:
            from IPython.display import display as show

            show(value)
        return
    myst_glue(name, value, display=display)
