"""The paper beside our measurements, in words and tables: one-line descriptions, reductions, tables.

Everything here reads records (from :mod:`speechprune.presets` or :mod:`speechprune.book.full_scale`)
and the stated numbers of :mod:`speechprune.book.reference`; nothing measures. pandas is imported
only by the functions that build a table.
"""

from __future__ import annotations

from speechprune.book.full_scale import is_full_scale
from speechprune.book.reference import TEST_SETS, Setting


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
