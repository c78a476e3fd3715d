"""Chapter 3's sparsity sweep: WER against the fraction of channels removed, one curve per method.

Read from a saved study whose settings differ only in sparsity (``studies/sweep-encoder-ffn.toml``):
each option is a curve (the median over its k-means seeds, with the range over seeds as a band),
the uncompressed model a line. :func:`sweep_rows` is the table, :func:`breaking_points` (and :func:`breaking_words`) says where
each method's median passes a multiple of the uncompressed WER, :func:`sweep_sentences` compares
each option with magnitude pruning at every sparsity in the words of :mod:`speechprune.stats`.
"""

from __future__ import annotations

import statistics

from speechprune.recipes import BASELINE
from speechprune.stats import paired_difference, sentence


def _options(records: list[dict]) -> list[str]:
    """The pruned options' labels, in the order the study lists them."""
    return list(dict.fromkeys(r["label"] for r in records if r["method"] != "dense"))


def dense_wer(records: list[dict]) -> float:
    """The uncompressed model's WER in the study."""
    return next(r["wer"] for r in records if r["method"] == "dense")


def sweep_rows(records: list[dict]) -> list[dict]:
    """One row per (option, sparsity): median WER over seeds, its range and the number of runs."""
    rows = []
    for label in _options(records):
        for sparsity in sorted({r["sparsity"] for r in records if r["label"] == label}):
            wers = sorted(r["wer"] for r in records if r["label"] == label and r["sparsity"] == sparsity)
            rows.append(dict(option=label, sparsity=sparsity, median=statistics.median(wers), low=wers[0],
                             high=wers[-1], runs=len(wers)))
    return rows


def breaking_points(records: list[dict], factor: float = 2.0) -> dict[str, float | None]:
    """Per option, the largest sparsity up to which its median WER stays within ``factor`` times the
    uncompressed WER at every sparsity swept (None: not even at the smallest)."""
    limit = factor * dense_wer(records)
    rows = sweep_rows(records)
    out: dict[str, float | None] = {}
    for label in _options(records):
        last = None
        for row in (r for r in rows if r["option"] == label):
            if row["median"] > limit:
                break
            last = row["sparsity"]
        out[label] = last
    return out


def breaking_words(records: list[dict], factor: float = 2.0) -> list[str]:
    """:func:`breaking_points` in words, one phrase per option. An option whose first measured
    sparsity is above the sweep's smallest (a run still missing) is said to be unmeasured there,
    not to break there."""
    points, rows = breaking_points(records, factor), sweep_rows(records)
    smallest = min(r["sparsity"] for r in rows)
    words = []
    for label, s in points.items():
        first = min(r["sparsity"] for r in rows if r["option"] == label)
        if s is not None:
            words.append(f"{label} up to {s:.0%}")
        elif first > smallest:
            words.append(f"{label} not at {first:.0%}, its smallest budget measured so far "
                         f"({smallest:.0%} not yet)")
        else:
            words.append(f"{label} not even at the smallest budget")
    return words


def sweep_sentences(records: list[dict], *, n_boot: int = 2000) -> dict[float, list[str]]:
    """At each sparsity, every option against magnitude pruning, paired over utterances (and seeds)."""
    by_sparsity: dict[float, list[str]] = {}
    baseline = [lab for lab in _options(records)
                if next(r for r in records if r["label"] == lab)["method"] == BASELINE]
    for sparsity in sorted({r["sparsity"] for r in records if r["method"] != "dense"}):
        at = [r for r in records if r["sparsity"] == sparsity]
        lines = []
        for label in _options(records):
            if label in baseline:
                continue
            a = [r for r in at if r["label"] == label]
            b = [r for r in at if r["label"] in baseline]
            if a and b:
                lines.append(sentence(paired_difference(a, b, n_boot=n_boot), label, BASELINE))
        by_sparsity[sparsity] = lines
    return by_sparsity


COLOURS = {BASELINE: "#d1495b"}
PALETTE = ("#8c8c8c", "#2a7ab9", "#66a61e", "#e6ab02")


def plot_sweep(records: list[dict], *, title: str | None = None):
    """WER against sparsity: a line per option through its medians, its seeds' range as a band, the
    uncompressed WER dashed. One panel, sized to stay legible on a phone."""
    import matplotlib.pyplot as plt

    rows = sweep_rows(records)
    fig, ax = plt.subplots(figsize=(5.0, 3.6))
    for i, label in enumerate(_options(records)):
        mine = [r for r in rows if r["option"] == label]
        method = next(r for r in records if r["label"] == label)["method"]
        colour = COLOURS.get(method, PALETTE[i % len(PALETTE)])
        xs = [100 * r["sparsity"] for r in mine]
        seeds = max(r["runs"] for r in mine)
        ax.plot(xs, [r["median"] for r in mine], "o-", color=colour, linewidth=2,
                label=f"{label}" + (f" (median of {seeds} seeds)" if seeds > 1 else ""))
        if seeds > 1:
            ax.fill_between(xs, [r["low"] for r in mine], [r["high"] for r in mine], color=colour, alpha=0.2,
                            linewidth=0)
    ax.axhline(dense_wer(records), color="black", linestyle="--", linewidth=1,
               label=f"uncompressed {dense_wer(records):.1f}%")
    ax.set_xlabel("channels removed (%)", fontsize=11)
    ax.set_ylabel("WER (%)", fontsize=11)
    ax.tick_params(labelsize=11)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=10, loc="upper left")
    if title:
        ax.set_title(title, fontsize=11)
    fig.tight_layout()
    return fig
