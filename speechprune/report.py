"""The paper beside our measurements: one-line descriptions, tables and figures for the book.

Everything here reads records (from :mod:`speechprune.presets` or :mod:`speechprune.results`) and
the stated numbers of :mod:`speechprune.reference`; nothing measures. pandas and matplotlib are
imported only by the functions that draw.
"""

from __future__ import annotations

from speechprune.presets import wer_interval
from speechprune.reference import TEST_SETS, Setting
from speechprune.results import is_full_scale

def scale_note(setting: Setting, model: str, data_sets: list[str], *, scope: str, sparsity: float,
               max_samples: int | None = None) -> str:
    """One sentence saying whether a run is the paper's experiment or the embedded-scale analog."""
    if is_full_scale(setting, model, data_sets):
        subset = f"the first {max_samples} utterances of each" if max_samples else "every utterance"
        return f"Full scale: the paper's model {model} on {', '.join(data_sets)}, {subset}."
    return (f"Embedded-scale analog, not the paper's experiment: {model} (not {setting.model}) on "
            f"{', '.join(data_sets)} (not LibriSpeech), pruning {scope} at {sparsity:.0%}. Compare "
            "directions and rough sizes with the paper, not the numbers themselves.")


def describe(record: dict) -> str:
    """Model, data, compression and decoding of a record, in one line."""
    s, c = record["settings"], record.get("compression")
    what = "uncompressed" if not c else (
        f"{c['method']} at {c['sparsity']:.0%} of {','.join(c['scope'])} channels, {c['allocation']} allocation"
        + (f", {c.get('features', 'both')} features, seed {c['seed']}" if c["method"] == "cluster" else "")
        + f" ({c['param_sparsity']:.1%} of all parameters removed)"
    )
    return (f"{s['model']} on {record['data']['name']} ({record['n_utterances']} utterances), {what}; "
            f"greedy decoding, Whisper English normaliser, {record['dtype']}")


def describe_comparison(recs: dict[str, dict]) -> str:
    """One line for a dense / magnitude / cluster trio measured with the same settings."""
    r, c = recs["cluster"], recs["cluster"]["compression"]
    return (f"{r['settings']['model']} on {r['data']['name']} ({r['n_utterances']} utterances): magnitude "
            f"pruning and clustering (seed {c['seed']}) of {c['sparsity']:.0%} of {','.join(c['scope'])} "
            f"channels, {c['allocation']} allocation ({c['param_sparsity']:.1%} of all parameters removed); "
            f"greedy decoding, Whisper English normaliser, {r['dtype']}")


def reductions(magnitude: dict, cluster: dict) -> dict[str, float]:
    """Our absolute and relative reduction, in the paper's terms, from two measured records."""
    m, c = magnitude["wer"], cluster["wer"]
    return dict(magnitude_wer=m, cluster_wer=c, absolute=m - c, relative=100.0 * (m - c) / m if m else float("nan"))


QUANTITIES = ("magnitude pruning WER (%)", "channel clustering WER (%)", "absolute WER reduction (points)",
              "relative WER reduction (%)", "uncompressed WER (%)")


def _paper_values(setting: Setting, test_set: str) -> list[str]:
    r, dense = setting.reductions[test_set], setting.dense.get(test_set)
    return [f"{r.magnitude_wer:.2f} (implied)", f"{r.cluster_wer:.2f} (implied)", f"{r.absolute:.2f}",
            f"{r.relative:.2f}", f"{dense[0]:.1f} ({dense[1]})" if dense else "not stated"]


def _our_values(recs: dict[str, dict]) -> list[str]:
    red = reductions(recs["magnitude"], recs["cluster"])
    return [f"{red['magnitude_wer']:.2f}", f"{red['cluster_wer']:.2f}", f"{red['absolute']:.2f}",
            f"{red['relative']:.2f}", f"{recs['dense']['wer']:.2f}" if "dense" in recs else "not measured"]


def comparison_table(setting: Setting, ours: dict[str, dict[str, dict]]):
    """A DataFrame: one row per quantity, the paper's test sets then each of our data sets.

    ``ours`` maps a column title to records ``{"dense": ..., "magnitude": ..., "cluster": ...}``
    (dense optional).
    """
    import pandas as pd

    columns = {f"paper: {setting.title}, LibriSpeech {t}": _paper_values(setting, t) for t in setting.reductions}
    columns.update({title: _our_values(recs) for title, recs in ours.items()})
    return pd.DataFrame(columns, index=list(QUANTITIES)).rename_axis(setting.label)


def summary_table(entries: list[tuple[Setting, dict[str, dict[str, dict]] | None]]):
    """Every setting's numbers in one DataFrame: the paper's two test sets beside ours.

    Each entry is ``(setting, ours)``: ``ours`` as for :func:`comparison_table` (records need only
    ``wer``), or None where this build has no measurement ("not measured").
    """
    import pandas as pd

    rows = []
    for setting, ours in entries:
        ours_values = [_our_values(recs) for recs in (ours or {}).values()]
        clean, other = (_paper_values(setting, t) for t in TEST_SETS)
        for i, quantity in enumerate(QUANTITIES):
            rows.append({"setting": setting.label, "quantity": quantity, "paper: test-clean": clean[i],
                         "paper: test-other": other[i],
                         "ours": " / ".join(v[i] for v in ours_values) if ours_values else "not measured"})
    return pd.DataFrame(rows).set_index(["setting", "quantity"])


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
