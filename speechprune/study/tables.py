"""Tables, figures and sentences of saved studies, for the book and ``speechprune study --summary``.

The saved studies ship with the package (:data:`PACKAGE_STUDIES`) so that a chapter opened alone,
on Colab, finds them (:func:`saved_study`). Every comparison in words comes from
:mod:`speechprune.stats`, which refuses to name a winner when the data cannot decide.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

from speechprune.options import RECIPE_FIELDS, recipe_fields
from speechprune.recipes import BASELINE, RECIPES_OPTIONS
from speechprune.stats import comparisons, groups, setting_key, versus
from speechprune.study.store import load_records

#: Saved studies that ship with the package (``results/studies`` in the repository links here), so
#: that a chapter opened alone, on Colab, finds them.
PACKAGE_STUDIES = Path(__file__).resolve().parents[1] / "data" / "results" / "studies"


def saved_study(name: str, results_dir: str | Path | None = None) -> dict | None:
    """The saved study ``name`` (:func:`load_records`), or None when there is none.

    Looks in ``results_dir/studies/name.json`` first, then in the copy shipped with the package.

    Examples
    --------
    >>> saved = saved_study("whisper-base-full")
    >>> saved["study"], {r["data"] for r in saved["records"]}
    ('whisper-base-full', {'embedded-full'})
    >>> saved_study("no-such-study") is None
    True
    """
    path = saved_study_path(name, results_dir)
    return load_records(path) if path else None


def saved_study_path(name: str, results_dir: str | Path | None = None) -> Path | None:
    """Where the saved ``name.json`` is: ``results_dir/studies`` first, then the package's copy; None if absent."""
    for folder in ([Path(results_dir) / "studies"] if results_dir else []) + [PACKAGE_STUDIES]:
        path = folder / f"{name}.json"
        if path.is_file():
            return path
    return None


def saved_comparison(name: str, results_dir: str | Path | None = None, *, pairs: list[tuple[str, str]],
                     n_boot: int = 2000, **where) -> tuple[str, list[dict], dict[tuple[str, str], str]]:
    """What a chapter shows of saved study ``name``: its provenance line, the records of one setting
    (``where``: scope=, sparsity=, decoding= ...; the dense runs are kept), and one generated
    sentence per pair of option labels (:func:`speechprune.stats.versus`).

    A study that is absent, or has no runs of a pair yet, gives sentences that say so.
    """
    saved = saved_study(name, results_dir)
    if saved is None or not saved["records"]:
        missing = f"not measured yet (no saved study {name!r})"
        return missing, [], {pair: missing for pair in pairs}
    records = [r for r in saved["records"]
               if r["method"] == "dense" or all(r.get(k) == v for k, v in where.items())]
    sentences = {}
    for a, b in pairs:
        found = versus(records, a, b, n_boot=n_boot)
        sentences[(a, b)] = found[1] if found else f"not measured yet (no saved runs of both {a} and {b})"
    return study_status(saved), records, sentences


def status_headline(status: str) -> str:
    """The head of a :func:`study_status` line: ``"NAME (complete)"`` or ``"NAME (PARTIAL: 22 of 34 runs
    saved so far)"``, for a sentence in the book."""
    head, paren, _ = status.partition(")")
    return head + paren if paren else status


def study_status(saved: dict) -> str:
    """One line of provenance: what the file is, how complete, when and with which versions."""
    records = saved["records"]
    n_runs = saved.get("n_runs", len(records))
    dates = sorted(r["date"] for r in records)
    versions = sorted({f"speechprune {r['versions']['speechprune']}, torch {r['versions']['torch']}, "
                       f"transformers {r['versions']['transformers']}" for r in records})
    complete = "complete" if len(records) >= n_runs else f"PARTIAL: {len(records)} of {n_runs} runs saved so far"
    converted = any(r.get("converted_from") for r in records)
    return (f"{saved.get('study')} ({complete}): {saved.get('description', '')}. Measured "
            f"{dates[0][:16]} to {dates[-1][:16]} UTC" + (f" with {'; '.join(versions)}" if versions else "")
            + (" (converted from an older results file)" if converted else "")
            + (f"; study file {saved['source']}" if saved.get("source") else "") + ".") if records else \
        f"{saved.get('study')}: no runs saved yet."


def plot_records(records: list[dict], *, title: str | None = None):
    """One panel per setting, one above the other: a dot per seed and a box per option, magnitude as a single
    run, dense as a line. Drawn 5 inches wide with 10-point text or larger, so that a phone (which scales
    the image to its column) shows the text at 9 px or more."""
    import matplotlib.pyplot as plt

    by_setting: dict[tuple, dict[str, list[dict]]] = {}
    dense: dict[tuple, float] = {}
    for g, rs in groups(records).items():
        r0 = rs[0]
        if r0["method"] == "dense":
            dense[(r0["model"], r0["data"], r0.get("max_samples"), r0["decoding"])] = r0["wer"]
            continue
        by_setting.setdefault(setting_key(r0), {})[r0.get("label") or r0["method"]] = rs
    if not by_setting:
        return None
    width, font = 5.0, 10  # inches and points: speechprune.book.figures.FIGURE_WIDTH and MIN_FONT
    fig, axes = plt.subplots(len(by_setting), 1, figsize=(width, 3.6 * len(by_setting) + (0.5 if title else 0)),
                             squeeze=False)
    for ax, (setting, options) in zip(axes[:, 0], sorted(by_setting.items(), key=str)):
        names = sorted(options, key=lambda n: (not n.startswith("magnitude"), n))
        for i, name in enumerate(names):
            wers = [r["wer"] for r in options[name]]
            colour = "#d1495b" if name.startswith("magnitude") else "#2a7ab9"
            if len(wers) > 1:
                ax.boxplot([wers], positions=[i], widths=0.5, showfliers=False,
                           medianprops=dict(color=colour), boxprops=dict(color="#777777"))
                ax.scatter([i] * len(wers), wers, color=colour, s=18, zorder=3)
            else:
                ax.scatter([i], wers, color=colour, marker="D", s=30, zorder=3)
                ax.annotate("single run", (i, wers[0]), textcoords="offset points", xytext=(0, 6),
                            ha="center", fontsize=font)
        key = setting[:3] + (setting[3],)
        if key in dense:
            ax.axhline(dense[key], color="black", linestyle="--", linewidth=1, label=f"dense {dense[key]:.1f}%")
            ax.legend(fontsize=font, loc="upper right")
        shown = [n.replace(" ", "\n", 1) for n in names]
        # names that would run into each other side by side (about 0.6 em a character, 4 inches of axis): slanted
        slant = max(len(line) for n in shown for line in n.split("\n")) * 0.62 * font > 0.9 * 4.0 * 72 / len(names)
        ax.set_xticks(range(len(names)), names if slant else shown, fontsize=font, rotation=35 if slant else 0,
                      ha="right" if slant else "center", rotation_mode="anchor")
        ax.set_xlim(-0.7, len(names) - 0.3)  # room for the "single run" labels at the ends
        n_seeds = max(len(v) for v in options.values())
        ax.set_title(f"{setting[0].removeprefix('embedded:')}, {setting[4]} {setting[5]:.0%}\n"
                     f"{setting[1]}, {setting[3]}, {n_seeds} seed{'s' if n_seeds > 1 else ''}", fontsize=font)
        ax.set_ylabel("WER (%)", fontsize=font)
        ax.tick_params(axis="y", labelsize=font)
        top = max(r["wer"] for v in options.values() for r in v)
        ax.set_ylim(0, top * 1.15 + 1)  # room for the "single run" labels above the points
    if title:
        fig.suptitle(textwrap.fill(title, 46, break_on_hyphens=False), fontsize=font + 1)
    fig.tight_layout()
    return fig


def markdown_summary(records: list[dict], n_boot: int = 2000) -> str:
    """Markdown tables of a study, one per model, data and decoding: a row per setting, a column per
    option (median WER, range and number of seeds), and each option's comparison with magnitude."""
    rows = comparisons(records, n_boot=n_boot)
    tables: dict[tuple, dict[tuple, dict[str, dict]]] = {}
    for r in rows:
        tables.setdefault((r["model"], r["data"], r["decoding"]), {}).setdefault((r["scope"], r["sparsity"]), {})[
            r["option"]] = r
    out = []
    for (model, data, decoding), settings in tables.items():
        options = sorted({o for by in settings.values() for o in by}, key=lambda o: (o != "magnitude", o))
        baselines = {o for by in settings.values() for o, r in by.items() if r["method"] == BASELINE}
        compared = [o for o in options if o not in baselines]
        dense = next((r["dense"] for by in settings.values() for r in by.values() if "dense" in r), None)
        n_utts = next(iter(next(iter(settings.values())).values()))["summary"].n_utterances
        out.append(f"{model}, {data} ({n_utts} utterances), {decoding} decoding"
                   + (f"; uncompressed {dense:.2f}%" if dense is not None else "") + ":\n")
        out.append("| setting | " + " | ".join(options) + " | " +
                   " | ".join(f"{o} against magnitude" for o in compared) + " |")
        out.append("|---" * (1 + len(options) + len(compared)) + "|")
        for (scope, sparsity), by in sorted(settings.items(), key=lambda kv: (kv[0][0], kv[0][1])):
            cells = []
            for o in options:
                if o not in by:
                    cells.append("")
                    continue
                sm = by[o]["summary"]
                cells.append(f"{sm.median:.2f} (single run)" if sm.n_seeds == 1 else
                             f"{sm.median:.2f} ({sm.low:.2f}-{sm.high:.2f}), {sm.n_seeds} seeds")
            cells += [by[o].get("sentence", "") if o in by else "" for o in compared]
            out.append(f"| {scope} {sparsity:.0%} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def recipe_of(record: dict) -> str | None:
    """The named recipe (``paper``, ``recommended``, ``pairs-refit-2026``, ``pairs-variance-2026``,
    ``pairs-2026``) whose options are exactly a record's, else None."""
    mine = {k: record.get(k) for k in RECIPE_FIELDS}
    return next((name for name in RECIPES_OPTIONS if recipe_fields(name) == mine), None)


def markdown_target(records: list[dict], n_boot: int = 2000) -> str:
    """One compact Markdown table per model and data: per setting, the uncompressed model, magnitude
    pruning, the paper's recipe (median and range over seeds) and the recommended recipe, the
    recommended recipe's WER as a multiple of the uncompressed model's, and its paired difference
    with magnitude pruning (points, 95% interval; "cannot decide" where the interval holds 0)."""
    rows = comparisons(records, n_boot=n_boot)
    blocks: dict[tuple, dict] = {}
    for r in rows:
        role = BASELINE if r["method"] == BASELINE else recipe_of(r["records"][0])
        if role:
            blocks.setdefault((r["model"], r["data"], r["decoding"]), {}).setdefault(
                (r["scope"], r["sparsity"]), {})[role] = r
    out = []
    for (model, data, decoding), settings in blocks.items():
        n_utts = next(iter(next(iter(settings.values())).values()))["summary"].n_utterances
        out.append(f"{model}, {data} ({n_utts} utterances), {decoding} decoding:\n")
        out.append("| setting | uncompressed | magnitude | paper's recipe | recommended | recommended / "
                   "uncompressed | recommended − magnitude |")
        out.append("|---|---|---|---|---|---|---|")
        for (scope, sparsity), by in sorted(settings.items()):
            first = next(iter(by.values()))
            dense = first.get("dense")

            def cell(role: str) -> str:
                if role not in by:
                    return "—"
                s = by[role]["summary"]
                return f"{s.median:.2f}" + (f" ({s.low:.2f}-{s.high:.2f}, {s.n_seeds} seeds)" if s.n_seeds > 1 else "")
            rec = by.get("recommended")
            ratio = f"{rec['summary'].median / dense:.1f}×" if rec and dense else "—"
            diff = "—"
            if rec and "difference" in rec:
                d = rec["difference"]
                sure = "" if d.interval[0] > 0 or d.interval[1] < 0 else ", cannot decide"
                diff = f"{d.median:+.1f} [{d.interval[0]:+.1f}, {d.interval[1]:+.1f}]{sure}".replace("-", "−")
            out.append(f"| {scope} {sparsity:.0%} | {dense:.2f} | {cell('magnitude')} | {cell('paper')} | "
                       f"{cell('recommended')} | {ratio} | {diff} |" if dense is not None else
                       f"| {scope} {sparsity:.0%} | — | {cell('magnitude')} | {cell('paper')} | {cell('recommended')} "
                       f"| {ratio} | {diff} |")
        out.append("")
    return "\n".join(out).rstrip("\n")

def target_rows(records: list[dict], ratio: float = 0.5, n_boot: int = 2000) -> list[dict]:
    """The brief's target, per setting and clustering option: is the median WER over seeds at most
    ``ratio`` (kept as ``limit``) times magnitude pruning's at the same budget, on the same clips?
    Each row carries the comparison with magnitude pruning in words (``sentence``), so that
    :func:`target_sentences` and :func:`target_table` need no second bootstrap."""
    rows = comparisons(records, n_boot=n_boot)
    magnitude = {r["setting"]: r["summary"].median for r in rows if r["method"] == BASELINE}
    out = []
    for r in rows:
        if r["method"] == BASELINE or r["setting"] not in magnitude:
            continue
        m, base = r["summary"].median, magnitude[r["setting"]]
        out.append(dict(model=r["model"], data=r["data"], decoding=r["decoding"], scope=r["scope"],
                        sparsity=r["sparsity"], option=r["option"], seeds=r["summary"].n_seeds, median=m,
                        magnitude=base, ratio=m / base if base else math.inf, met=m <= ratio * base,
                        limit=ratio, sentence=r.get("sentence")))
    return out


#: The second recipe search's targets (issue 20): the largest ratio to the uncompressed model's WER
#: that a data-free recipe may reach, per ``(scope, sparsity)``, on clips no choice was made on.
LOSSLESS_TARGETS = {("encoder.ffn", 0.2): 2.0, ("ffn", 0.1): 1.5}


def lossless_rows(records: list[dict], limits: dict | None = None, n_boot: int = 2000) -> list[dict]:
    """Toward lossless: per setting that has a limit (``LOSSLESS_TARGETS``) and per pruned option
    (magnitude pruning too), the median WER over seeds with its range, the uncompressed model's
    WER on the same clips, their ratio, and whether it is at most the limit (``met``).

    >>> rec = lambda method, errors, sp=0.2: dict(
    ...     model="m", data="d", decoding="greedy", scope="encoder.ffn", sparsity=sp, method=method,
    ...     features="producer", allocation="uniform", merge="mean", weighting="none", seed=None,
    ...     wer=sum(errors), utterance_ids=["a", "b"], utterance_errors=errors, utterance_words=[50, 50])
    >>> rows = lossless_rows([rec("dense", [1, 1], sp=None), rec("pairs", [1, 2]), rec("magnitude", [20, 20])],
    ...                      n_boot=10)
    >>> [(r["option"], r["median"], r["ratio"], r["met"]) for r in rows]
    [('pairs', 3.0, 1.5, True), ('magnitude', 40.0, 20.0, False)]
    """
    limits = LOSSLESS_TARGETS if limits is None else limits
    out = []
    for r in comparisons(records, n_boot=n_boot):
        limit = limits.get((r["scope"], r["sparsity"]))
        dense = r.get("dense")
        if limit is None or not dense:
            continue
        s = r["summary"]
        out.append(dict(model=r["model"], data=r["data"], decoding=r["decoding"], scope=r["scope"],
                        sparsity=r["sparsity"], option=r["option"], seeds=s.n_seeds, median=s.median, low=s.low,
                        high=s.high, dense=dense, ratio=s.median / dense, limit=limit,
                        met=s.median <= limit * dense))
    return sorted(out, key=lambda t: (t["scope"], t["sparsity"], t["median"]))


def target_sentences(rows: list[dict], *, target: bool = True) -> dict[tuple, list[str]]:
    """The brief's target in words, per ``(scope, sparsity)``, from :func:`target_rows`: one sentence
    per clustering option, the lowest median first, each with its paired comparison with magnitude
    pruning (generated by :func:`speechprune.stats.comparisons`, so a comparison the data cannot
    decide says so). ``target=False`` leaves out whether the target is met (for clips the recipe
    was chosen on)."""
    out: dict[tuple, list[str]] = {}
    for t in sorted(rows, key=lambda t: t["median"]):
        seeds = f"{t['seeds']} seeds" if t["seeds"] > 1 else "a single run"
        out.setdefault((t["scope"], t["sparsity"]), []).append(
            f"{t['option']}, median {t['median']:.2f}% over {seeds}, {t['ratio']:.2f} times magnitude pruning's "
            f"{t['magnitude']:.2f}%" + (f" (target {'met' if t['met'] else 'not met'})" if target else "")
            + (f": {t['sentence']}" if t["sentence"] else ""))
    return out


def target_table(rows: list[dict], seeds: int = 5):
    """A pandas table of :func:`target_rows`: median, magnitude's, the ratio and whether the target
    is met (``so far`` while an option has fewer than ``seeds`` seeds)."""
    import pandas as pd

    table = [{
        "setting": f"{t['model'].removeprefix('embedded:')}, {t['scope']} {t['sparsity']:.0%}, {t['data']}",
        "option": t["option"], "seeds": t["seeds"], "median WER (%)": round(t["median"], 2),
        "magnitude (%)": round(t["magnitude"], 2), "ratio": round(t["ratio"], 2),
        f"target (ratio at most {t['limit']})": ("met" if t["met"] else "not met")
        + ("" if t["seeds"] >= seeds or t["seeds"] == 1 else f" so far ({t['seeds']} of {seeds} seeds)"),
    } for t in rows]
    return pd.DataFrame(table).set_index(["setting", "option"]) if table else pd.DataFrame()


def seeds_table(records: list[dict], n_boot: int = 2000, *, sentences: bool = True):
    """A pandas table: per setting and option, WER over seeds, the interval and (with ``sentences``)
    the comparison with magnitude pruning in words; a page that lists the sentences below its
    table leaves them out, so that the table fits a phone."""
    import pandas as pd

    rows = []
    for r in sorted(comparisons(records, n_boot=n_boot),
                    key=lambda r: (str(r["setting"]), r["method"] != "magnitude", r["option"])):
        s = r["summary"]
        rows.append({
            "setting": f"{r['model'].removeprefix('embedded:')}, {r['scope']} {r['sparsity']:.0%}, {r['data']}, "
                       f"{r['decoding']}" + (f" (dense {r['dense']:.2f}%)" if "dense" in r else ""),
            "option": r["option"],
            "seeds": s.n_seeds,
            "median WER (%)": round(s.median, 2),
            "range": f"{s.low:.2f}-{s.high:.2f}" if s.n_seeds > 1 else "single run",
            "95% interval": f"[{s.interval[0]:.1f}, {s.interval[1]:.1f}]",
            **({"versus magnitude": r.get("sentence", "")} if sentences else {}),
        })
    return pd.DataFrame(rows).set_index(["setting", "option"]) if rows else pd.DataFrame()
