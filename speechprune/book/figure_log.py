"""What each of the book's figures looks like in pixels, logged while the book is built.

``scripts/build_book.py`` sets ``SPEECHPRUNE_FIGURE_LOG`` to a JSON-lines file for each notebook it runs;
importing :mod:`speechprune.book` then adds :func:`log_figure` to matplotlib's ``figure.hooks`` (matplotlib
3.7 or later), so every figure pyplot makes in that notebook gets a ``draw_event`` callback. Each time the
figure is *saved* (the inline backend saves a PNG for the page, at ``figure.dpi`` with ``bbox_inches="tight"``),
the callback writes one line: the image's width and height in pixels, the smallest font among the texts
drawn (titles, axis labels, tick labels, legend texts, annotations, bar labels) in pixels of that image,
the number of panels (axes that are not colour bars), how many of them stand side by side, and a title to
name the figure by. The build turns these into the size the text has on a phone and on a desktop page
(:func:`shown_text_px`). Without the variable (Colab, a reader's own run) nothing is registered and nothing
is written.
"""

from __future__ import annotations

import json
import os

ENV = "SPEECHPRUNE_FIGURE_LOG"
HOOK = "speechprune.book.figure_log:log_figure"


def register() -> bool:
    """Add :func:`log_figure` to matplotlib's ``figure.hooks`` when ``SPEECHPRUNE_FIGURE_LOG`` is set.

    Returns whether it did; without the variable matplotlib is not even imported."""
    if not os.environ.get(ENV):
        return False
    import matplotlib

    hooks = list(matplotlib.rcParams.get("figure.hooks", []))
    if HOOK not in hooks:
        matplotlib.rcParams["figure.hooks"] = [*hooks, HOOK]
    return True


def log_figure(fig) -> None:
    """The ``figure.hooks`` entry: log ``fig``'s measurements each time it is saved (see the module)."""
    path = os.environ.get(ENV)
    if not path:
        return

    def on_draw(event) -> None:
        if not event.canvas.is_saving():  # an on-screen draw is not what the page shows
            return
        if "draw_text" in vars(event.renderer):  # the dry run that sizes a tight bounding box (draws nothing)
            return
        try:
            record = measure(fig, event.renderer)
        except Exception as err:  # noqa: BLE001 - never break a notebook over its log
            record = dict(error=f"{type(err).__name__}: {err}")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(record) + "\n")

    fig.canvas.mpl_connect("draw_event", on_draw)


def drawn_texts(fig, renderer=None) -> list:
    """The visible, non-empty text artists that a draw of ``fig`` puts on the image.

    Tick labels count only for the ticks an axis actually draws (an axis keeps spare ticks with stale
    labels); every other text (titles, axis labels, legends, annotations, bar labels, ``fig.text``) counts
    when it is visible, not empty and inside the image."""
    from matplotlib.axis import Axis, Tick
    from matplotlib.text import Text

    texts, tick_labels = [], set()
    for axis in fig.findobj(lambda a: isinstance(a, Axis)):
        for tick in axis.get_major_ticks() + axis.get_minor_ticks():
            tick_labels.update({id(tick.label1), id(tick.label2)})
        if not axis.get_visible():
            continue
        for tick in axis._update_ticks():  # the ticks this axis draws (in its view)
            texts += [t for t in (tick.label1, tick.label2) if t.get_visible()]
    texts += [t for t in fig.findobj(lambda a: isinstance(a, Text) and not isinstance(a, Tick))
              if id(t) not in tick_labels]
    shown = []
    image = fig.bbox
    for text in texts:
        if not (text.get_visible() and text.get_text().strip()) or (text.axes is not None and not text.axes.get_visible()):
            continue
        if renderer is not None:
            box = text.get_window_extent(renderer)
            if box.x1 < image.x0 or box.x0 > image.x1 or box.y1 < image.y0 or box.y0 > image.y1:
                continue
        shown.append(text)
    return list({id(t): t for t in shown}.values())


def panels(fig) -> list:
    """The figure's panels: its visible axes that are not colour bars."""
    return [ax for ax in fig.axes if ax.get_visible() and getattr(ax, "_colorbar", None) is None
            and ax.get_label() != "<colorbar>"]


def columns(fig) -> int:
    """How many panels stand side by side at most (panels whose horizontal extents overlap count once)."""
    best = 0
    rows: list[list] = []  # panels in one row: their vertical extents overlap
    for ax in panels(fig):
        box = ax.get_position()
        for row in rows:
            if any(min(box.y1, o.y1) - max(box.y0, o.y0) > 0.25 * min(box.height, o.height) for o in row):
                row.append(box)
                break
        else:
            rows.append([box])
    for row in rows:
        row.sort(key=lambda b: b.x0)
        side_by_side, right = 0, float("-inf")
        for box in row:
            if box.x0 >= right - 1e-6:
                side_by_side, right = side_by_side + 1, box.x1
        best = max(best, side_by_side)
    return best


def title_of(fig) -> str:
    """A name for messages: the suptitle, else the first panel's title, else its axis labels."""
    sup = getattr(fig, "_suptitle", None)
    if sup is not None and sup.get_text().strip():
        return " ".join(sup.get_text().split())
    for ax in panels(fig):
        for title in (ax.title, ax._left_title, ax._right_title):
            if title.get_text().strip():
                return " ".join(title.get_text().split())
    for ax in panels(fig):
        if ax.get_ylabel() or ax.get_xlabel():
            return f"({ax.get_ylabel() or ax.get_xlabel()})"
    return "(untitled figure)"


def measure(fig, renderer=None) -> dict:
    """``fig`` in pixels of its saved image: ``width_px``/``height_px`` (``fig.bbox``, which a tight
    bounding box has already cropped while the figure is being saved), ``min_text_px`` (the smallest font
    size among :func:`drawn_texts`, in pixels: points * dpi / 72), the text showing it, ``panels``,
    ``columns`` and ``title``."""
    dpi = fig.dpi
    texts = drawn_texts(fig, renderer)
    smallest = min(texts, key=lambda t: t.get_fontsize(), default=None)
    return dict(
        title=title_of(fig),
        width_px=round(fig.bbox.width, 1),
        height_px=round(fig.bbox.height, 1),
        dpi=dpi,
        min_text_px=round(smallest.get_fontsize() * dpi / 72, 2) if smallest is not None else None,
        min_text=" ".join(smallest.get_text().split())[:40] if smallest is not None else None,
        panels=len(panels(fig)),
        columns=columns(fig),
    )


def shown_text_px(record: dict, column_px: float) -> float | None:
    """The smallest text of a logged figure as the page shows it in a column ``column_px`` CSS pixels wide:
    an image wider than the column is scaled down to it, a narrower one is shown at its own size."""
    if record.get("min_text_px") is None:
        return None
    return record["min_text_px"] * min(1.0, column_px / record["width_px"])
