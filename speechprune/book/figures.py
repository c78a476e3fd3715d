"""The paper beside our measurements, as figures: WER bars with intervals, and the reductions; and the
size every figure of the book is drawn at.

Both read records (from :mod:`speechprune.presets` or :mod:`speechprune.book.full_scale`) and the
stated numbers of :mod:`speechprune.book.reference`; nothing measures. matplotlib is imported only
when a figure is drawn.

Figures are read on phones: a PNG wider than the phone's column (about 358 CSS px at a 390 px viewport)
is scaled down to it, and its text with it. So the book draws every figure :data:`FIGURE_WIDTH` inches
wide (500 px at the inline backend's 100 dpi) with no text under :data:`MIN_FONT` points: on a phone that
is 9 px or more, on a desktop page (shown at its own size) 13 px. Panels go one per row, never side by side
(a tall figure scrolls; a wide one shrinks). ``scripts/build_book.py`` checks both for every figure.
"""

from __future__ import annotations

import textwrap

from speechprune.book.reference import TEST_SETS, Setting
from speechprune.book.tables import reductions
from speechprune.presets import wer_interval

#: Width of every book figure, inches (with the inline backend's 100 dpi: a 500 px image).
FIGURE_WIDTH = 5.0
#: The smallest font of a book figure, points (font_pt >= 1.8 * width_in keeps it >= 9 px on a phone).
MIN_FONT = 10.0
#: matplotlib rcParams for the book's notebooks (:func:`book_style` applies them).
BOOK_STYLE = {
    "figure.figsize": (FIGURE_WIDTH, 3.4),
    "figure.dpi": 100,
    "font.size": MIN_FONT,
    "axes.titlesize": 11,
    "axes.labelsize": MIN_FONT,
    "xtick.labelsize": MIN_FONT,
    "ytick.labelsize": MIN_FONT,
    "legend.fontsize": MIN_FONT,
    "legend.title_fontsize": MIN_FONT,
    "figure.titlesize": 11,
}


def book_style() -> dict:
    """Apply :data:`BOOK_STYLE` to matplotlib's rcParams (a notebook's setup cell calls it); returns it."""
    import matplotlib

    matplotlib.rcParams.update(BOOK_STYLE)
    return dict(BOOK_STYLE)


def wrap(text: str, width_in: float = FIGURE_WIDTH - 1.0, fontsize: float = 11) -> str:
    """``text`` broken into lines that fit ``width_in`` inches (by default a panel's width, the figure's less
    its axis labels) at ``fontsize`` points; its words unchanged, its own line breaks kept."""
    chars = max(12, int(width_in * 72 / (0.62 * fontsize)))  # DejaVu Sans: about 0.6 em a character
    return "\n".join(textwrap.fill(line, chars, break_on_hyphens=False, break_long_words=False)
                     for line in text.split("\n"))


def plot_paper_vs_ours(setting: Setting, ours: dict[str, dict[str, dict]], *, title: str | None = None):
    """Two panels of WER bars, one above the other: the paper's (implied) on top, ours with 95% intervals
    below."""
    import matplotlib.pyplot as plt

    colours = {"dense": "#7f7f7f", "magnitude": "#d1495b", "cluster": "#2a7ab9"}
    names = {"dense": "uncompressed", "magnitude": "magnitude pruning", "cluster": "channel clustering"}
    fig, (left, right) = plt.subplots(2, 1, figsize=(FIGURE_WIDTH, 8.6))
    width = 0.26
    for i, (test_set, r) in enumerate(setting.reductions.items()):
        values = {"dense": setting.dense.get(test_set, (None,))[0], "magnitude": r.magnitude_wer, "cluster": r.cluster_wer}
        for j, (kind, v) in enumerate(values.items()):
            if v is None:
                continue
            bar = left.bar(i + (j - 1) * width, v, width, color=colours[kind], label=names[kind] if i == 0 else None,
                           hatch="//" if kind != "dense" else None, edgecolor="white")
            left.bar_label(bar, fmt="%.2f", fontsize=MIN_FONT)
    left.set_xticks(range(len(setting.reductions)), [f"LibriSpeech\n{t}" for t in setting.reductions])
    left.set_title(wrap(f"Paper (abstract): {setting.title}, {setting.sparsity:.0%} sparsity"
                        + (f", {setting.finetune_epochs} epochs fine-tuning" if setting.finetune_epochs else "")),
                   fontsize=11)
    left.set_ylabel("WER (%)")
    left.margins(y=0.45)  # room for the bar labels and, above the bars, the legend
    left.legend(fontsize=MIN_FONT, loc="upper right")
    for i, (column, recs) in enumerate(ours.items()):
        for j, kind in enumerate(("dense", "magnitude", "cluster")):
            if kind not in recs:
                continue
            rec = recs[kind]
            lo, hi = wer_interval(rec)
            bar = right.bar(i + (j - 1) * width, rec["wer"], width, color=colours[kind],
                            yerr=[[rec["wer"] - lo], [hi - rec["wer"]]], capsize=3,
                            label=names[kind] if i == 0 else None)
            right.bar_label(bar, fmt="%.2f", fontsize=MIN_FONT, padding=2)
    right.set_xticks(range(len(ours)), [wrap(name, 4.2 / max(1, len(ours)), MIN_FONT) for name in ours],
                     fontsize=MIN_FONT)
    right.set_xlim(-0.8, len(ours) - 0.2)
    first = next(iter(ours.values()))["cluster"]
    c = first["compression"]
    right.set_title(wrap(title or f"This build: {first['settings']['model']}, {c['sparsity']:.0%} of "
                         f"{','.join(c['scope'])}"), fontsize=11)
    right.set_ylabel("WER (%), 95% bootstrap interval")
    right.legend(fontsize=MIN_FONT)
    fig.tight_layout()
    return fig


def plot_reductions(entries: list[tuple[Setting, dict[str, dict[str, dict]] | None]], *,
                    ours_labels: list[str] | None = None):
    """Absolute and relative WER reduction of clustering over magnitude pruning, paper beside ours.

    Two panels, one above the other, of horizontal bars: one group per setting (its name above it), the
    paper's test-clean and test-other (hatched), then each of our data sets where ``ours`` is not None.
    ``ours_labels`` names our bars in order (each panel uses the list from its start); else "ours".
    """
    import matplotlib.pyplot as plt

    rows = sum(len(TEST_SETS) + len(ours or {}) + 1 for _, ours in entries)
    height = 0.62 + 0.24 * rows
    fig, axes = plt.subplots(2, 1, figsize=(FIGURE_WIDTH, 2 * height + 1.3), layout="constrained")
    for ax, key, unit in [(axes[0], "absolute", "WER points"), (axes[1], "relative", "% of the magnitude WER")]:
        ticks, labels, y = [], [], 0.0
        names = iter(ours_labels or [])
        for setting, ours in entries:
            ax.text(0.0, y, setting.label, ha="left", va="center", fontsize=MIN_FONT, fontweight="bold",
                    transform=ax.get_yaxis_transform())
            group = [(f"paper {t.removeprefix('test-')}", getattr(setting.reductions[t], key), True) for t in TEST_SETS]
            group += [(next(names, "ours"), reductions(recs["magnitude"], recs["cluster"])[key], False)
                      for recs in (ours or {}).values()]
            for j, (name, value, is_paper) in enumerate(group, 1):
                bar = ax.barh(y + j, value, 0.85, color="#9ecae1" if is_paper else "#2a7ab9",
                              hatch="//" if is_paper else None, edgecolor="white")
                ax.bar_label(bar, fmt="%.1f", fontsize=MIN_FONT, padding=2)
                ticks.append(y + j)
                labels.append(name)
            y += len(group) + 1
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(ticks, labels, fontsize=MIN_FONT)
        ax.set_ylim(y - 0.4, -0.6)  # top to bottom, in reading order
        ax.margins(x=0.18)  # room for the bar labels
        ax.set_xlabel(f"{key} reduction ({unit})")
        ax.set_title(wrap(f"{key} WER reduction, clustering vs magnitude"), fontsize=11)
    axes[0].barh(0, 0, color="#9ecae1", hatch="//", edgecolor="white", label="paper (abstract), LibriSpeech")
    axes[0].barh(0, 0, color="#2a7ab9", label="ours (embedded-scale analog)")
    fig.legend(fontsize=MIN_FONT, loc="outside lower center")  # below both panels: no bar hidden
    return fig
