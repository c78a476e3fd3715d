"""The paper beside our measurements, as figures: WER bars with intervals, and the reductions.

Both read records (from :mod:`speechprune.presets` or :mod:`speechprune.book.full_scale`) and the
stated numbers of :mod:`speechprune.book.reference`; nothing measures. matplotlib is imported only
when a figure is drawn.
"""

from __future__ import annotations

from speechprune.book.reference import TEST_SETS, Setting
from speechprune.book.tables import reductions
from speechprune.presets import wer_interval


def plot_paper_vs_ours(setting: Setting, ours: dict[str, dict[str, dict]], *, title: str | None = None):
    """Two panels of WER bars: the paper's (implied) on the left, ours with 95% intervals on the right."""
    import matplotlib.pyplot as plt

    colours = {"dense": "#7f7f7f", "magnitude": "#d1495b", "cluster": "#2a7ab9"}
    names = {"dense": "uncompressed", "magnitude": "magnitude pruning", "cluster": "channel clustering"}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.26
    for i, (test_set, r) in enumerate(setting.reductions.items()):
        values = {"dense": setting.dense.get(test_set, (None,))[0], "magnitude": r.magnitude_wer, "cluster": r.cluster_wer}
        for j, (kind, v) in enumerate(values.items()):
            if v is None:
                continue
            bar = left.bar(i + (j - 1) * width, v, width, color=colours[kind], label=names[kind] if i == 0 else None,
                           hatch="//" if kind != "dense" else None, edgecolor="white")
            left.bar_label(bar, fmt="%.2f", fontsize=8)
    left.set_xticks(range(len(setting.reductions)), [f"LibriSpeech\n{t}" for t in setting.reductions])
    left.set_title(f"Paper (abstract): {setting.title}, {setting.sparsity:.0%} sparsity"
                   + (f", {setting.finetune_epochs} epochs fine-tuning" if setting.finetune_epochs else ""), fontsize=10)
    left.set_ylabel("WER (%)")
    left.legend(fontsize=8)
    for i, (column, recs) in enumerate(ours.items()):
        for j, kind in enumerate(("dense", "magnitude", "cluster")):
            if kind not in recs:
                continue
            rec = recs[kind]
            lo, hi = wer_interval(rec)
            bar = right.bar(i + (j - 1) * width, rec["wer"], width, color=colours[kind],
                            yerr=[[rec["wer"] - lo], [hi - rec["wer"]]], capsize=3,
                            label=names[kind] if i == 0 else None)
            right.bar_label(bar, fmt="%.2f", fontsize=8, padding=2)
    right.set_xticks(range(len(ours)), list(ours), fontsize=8)
    right.set_xlim(-0.8, len(ours) - 0.2)
    first = next(iter(ours.values()))["cluster"]
    c = first["compression"]
    right.set_title(title or f"This build: {first['settings']['model']}, {c['sparsity']:.0%} of {','.join(c['scope'])}",
                    fontsize=10)
    right.set_ylabel("WER (%), 95% bootstrap interval")
    right.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_reductions(entries: list[tuple[Setting, dict[str, dict[str, dict]] | None]]):
    """Absolute and relative WER reduction of clustering over magnitude pruning, paper beside ours.

    One group of bars per setting: the paper's test-clean and test-other (hatched), then each of
    our data sets where ``ours`` is not None.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for ax, key, unit in [(axes[0], "absolute", "WER points"), (axes[1], "relative", "% of the magnitude WER")]:
        ticks, labels, x = [], [], 0.0
        for setting, ours in entries:
            group = [(f"paper\n{t.removeprefix('test-')}", getattr(setting.reductions[t], key), True) for t in TEST_SETS]
            group += [("ours", reductions(recs["magnitude"], recs["cluster"])[key], False) for recs in (ours or {}).values()]
            for j, (name, value, is_paper) in enumerate(group):
                bar = ax.bar(x + j, value, 0.9, color="#9ecae1" if is_paper else "#2a7ab9",
                             hatch="//" if is_paper else None, edgecolor="white")
                ax.bar_label(bar, fmt="%.1f", fontsize=7)
                ticks.append(x + j)
                labels.append(name)
            ax.text(x + (len(group) - 1) / 2, -0.2, setting.label.replace(", ", "\n", 1), ha="center", va="top",
                    fontsize=8, transform=ax.get_xaxis_transform())
            x += len(group) + 1
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(ticks, labels, fontsize=7)
        ax.set_ylabel(f"{key} reduction ({unit})")
        ax.set_title(f"{key} WER reduction, clustering vs magnitude", fontsize=10)
    axes[0].bar(0, 0, color="#9ecae1", hatch="//", edgecolor="white", label="paper (abstract), LibriSpeech")
    axes[0].bar(0, 0, color="#2a7ab9", label="ours (embedded-scale analog)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig
