"""Choosing a recipe from a study's records: the selection rule of ``studies/README.md``.

Step 1 scores a screening's options (:func:`screening_scores`, shown by :func:`markdown_scores`)
and keeps two (:func:`select_options`); step 3 picks the recommended recipe from the final study
(:func:`recommend`), or stays with the paper's.
"""

from __future__ import annotations

import statistics

from speechprune.recipes import BASELINE
from speechprune.stats import comparisons, groups, option_label, setting_key
from speechprune.study.spec import Study


def screening_scores(records: list[dict]) -> list[dict]:
    """Step 1 of the selection rule in ``studies/README.md``, from a screening's records.

    Per option: the median WER over seeds in each cell (model and setting; a single run for an
    option without a seed), averaged over the cells (``score``); the largest WER over seeds,
    averaged the same way (``worst``); and how many cells it covers. Sorted by score.
    """
    cells: dict[str, dict[tuple, list[float]]] = {}
    for rs in groups(records).values():
        r0 = rs[0]
        if r0["method"] == "dense":
            continue
        cell = setting_key(r0)
        cells.setdefault(option_label(r0), {})[cell] = [r["wer"] for r in rs]
    every = set().union(*cells.values()) if cells else set()
    rows = []
    for option, by in cells.items():
        rows.append(dict(option=option, score=statistics.fmean(statistics.median(v) for v in by.values()),
                         worst=statistics.fmean(max(v) for v in by.values()), cells=len(by), of_cells=len(every),
                         seeds=min(len(v) for v in by.values()), seeded=any(len(v) > 1 for v in by.values())))
    return sorted(rows, key=lambda r: (r["score"], r["worst"]))


def grid_cells(study: Study) -> int:
    """How many cells (model, data and setting; the options aside) the study's grid has."""
    return len({setting_key(r.settings()) for r in study.runs if r.method != "dense"})


def markdown_scores(records: list[dict], complete: bool, n_cells: int | None = None,
                    exclude: tuple[str, ...] = ("magnitude",)) -> str:
    """A screening as a Markdown table: per option, its median WER over seeds in each cell (model
    and setting) with the number of seeds, its score and worst case (step 1 of the rule in
    ``studies/README.md``), and which options the rule keeps, marked provisional until ``complete``.
    ``n_cells``: the number of cells in the whole grid (default: the cells with runs so far)."""
    cells: dict[tuple, str] = {}
    table: dict[str, dict[tuple, str]] = {}
    for rs in groups(records).values():
        r0 = rs[0]
        if r0["method"] == "dense":
            continue
        cell = setting_key(r0)
        cells[cell] = f"{r0['model'].removeprefix('embedded:')} {r0['scope']} {r0['sparsity']:.0%}"
        wers = [r["wer"] for r in rs]
        table.setdefault(option_label(r0), {})[cell] = (f"{statistics.median(wers):.2f} ({len(wers)})"
                                                        if len(wers) > 1 else f"{wers[0]:.2f}")
    if not table:
        return "no runs saved yet"
    order = sorted(cells, key=str)
    scores = screening_scores(records)
    for row in scores:
        row["of_cells"] = n_cells or row["of_cells"]
    lines = ["| option | " + " | ".join(cells[c] for c in order) + " | score | worst | cells |",
             "|---|" + "---|" * (len(order) + 3)]
    for row in scores:
        by = table[row["option"]]
        lines.append(f"| {row['option']} | " + " | ".join(by.get(c, "") for c in order)
                     + f" | {row['score']:.2f} | {row['worst']:.2f} | {row['cells']} of {row['of_cells']} |")
    kept = select_options(scores, exclude=exclude)
    note = ("Each cell: median WER (%) over k-means seeds, the number of seeds in brackets (a single run for "
            "magnitude pruning and closest pairs, which have no seed). Score: the medians averaged over the "
            "cells; worst: the largest WER over seeds, averaged the same way.")
    verdict = (f"The rule keeps {' and '.join(kept)}" if kept else "No option covers every cell yet")
    verdict += "." if complete else " (provisional: the screening is not complete, and scores over different cells do not compare)."
    return "\n".join(lines) + "\n\n" + note + " " + verdict


def select_options(scores: list[dict], n: int = 2, *, tie: float = 1.0, exclude: tuple[str, ...] = ("magnitude",)
                   ) -> list[str]:
    """The ``n`` options with the lowest score among those that cover every cell; a score within
    ``tie`` points of the best left goes to the lower worst case (the rule in ``studies/README.md``)."""
    left = [r for r in scores if r["option"] not in exclude and r["cells"] == r["of_cells"]]
    kept = []
    while left and len(kept) < n:
        best = min(left, key=lambda r: r["score"])
        close = [r for r in left if r["score"] - best["score"] <= tie]
        pick = min(close, key=lambda r: (r["worst"], r["score"]))
        kept.append(pick["option"])
        left.remove(pick)
    return kept


#: The paper's recipe as the screening (``studies/screen-recipes.toml``) and the final studies label
#: it: the fallback of step 3 and the recipe the book compares the recommended one with.
PAPER_OPTION = "A paper (both)"
#: The recommended recipe that round 1 picked, as the studies label it: round 2's incumbent.
INCUMBENT_OPTION = "G pairs producer"
#: The recommended recipe that round 2 picked (``--recipe pairs-variance-2026`` since round 3), as
#: the studies label it: round 3's incumbent.
ROUND_2_OPTION = "K pairs producer, variance allocation"
#: The recommended recipe that round 3 picked (R: K with the refit merge; ``--recipe pairs-refit-2026``
#: since round 4), as the studies label it: round 4's incumbent.
ROUND_3_OPTION = "R pairs producer, variance allocation, refit merge"
#: Options each screening's rule may not keep (``studies/README.md``): round 1 keeps any option but
#: magnitude pruning; round 2 carries magnitude, the paper's recipe and the incumbent for reference.
SCREENING_EXCLUDES = {"screen-recipes": ("magnitude",),
                      "screen-recipes-2": ("magnitude", PAPER_OPTION, INCUMBENT_OPTION)}


def recommend(records: list[dict], *, fallback: str, tie: float = 1.0, need: int = 2, n_boot: int = 2000,
              incumbent: str | None = None) -> dict:
    """Step 3 of the selection rule in ``studies/README.md``, from a final study's records.

    Per option (magnitude pruning aside): the median WER over seeds in each setting averaged over
    the settings (``score``), the largest WER over seeds averaged the same way (``worst``), and
    ``wins``, the settings where its paired difference with magnitude pruning is negative with a
    95% interval that excludes 0. The option with the lowest score among those that cover every
    setting is chosen (a score within ``tie`` points of the best goes to the lower worst case),
    provided it has at least ``need`` wins; otherwise the choice is ``fallback`` (the paper's
    recipe). With an ``incumbent`` (the recommended recipe of an earlier round, round 2 of the
    rule), a challenger must also score more than ``tie`` points below it; otherwise the incumbent
    stays (``fallback`` is then the incumbent too). Returns the choice, the reason in words, and one
    row per option.
    """
    by_option: dict[str, dict[tuple, dict]] = {}
    for row in comparisons(records, n_boot=n_boot):
        if row["method"] == BASELINE:
            continue
        by_option.setdefault(row["option"], {})[row["setting"]] = row
    every = set().union(*by_option.values()) if by_option else set()
    rows = []
    for option, per in by_option.items():
        wins = sum(1 for r in per.values() if "difference" in r and r["difference"].interval[1] < 0)
        rows.append(dict(option=option, score=statistics.fmean(r["summary"].median for r in per.values()),
                         worst=statistics.fmean(r["summary"].high for r in per.values()), wins=wins,
                         settings=len(per), of_settings=len(every),
                         seeds=min(r["summary"].n_seeds for r in per.values())))
    rows.sort(key=lambda r: (r["score"], r["worst"]))
    chosen = select_options([dict(r, cells=r["settings"], of_cells=r["of_settings"]) for r in rows], n=1, tie=tie,
                            exclude=())  # the same tie rule as the screening's
    if not chosen:
        return dict(choice=fallback, reason="no option covers every setting: the recipe stays the paper's",
                    rows=rows)
    pick = next(r for r in rows if r["option"] == chosen[0])
    held = next((r for r in rows if r["option"] == incumbent), None)
    if held is not None and pick is not held and pick["score"] > held["score"] - tie:
        reason = (f"{pick['option']} has the lowest median WER averaged over the settings ({pick['score']:.2f}%), "
                  f"but not more than {tie:g} point{'' if tie == 1 else 's'} below the incumbent {incumbent} ({held['score']:.2f}%): "
                  f"the recipe stays {incumbent}")
        return dict(choice=incumbent, reason=reason, rows=rows)
    if held is not None and pick is held:
        reason = (f"the incumbent {incumbent} keeps the lowest median WER averaged over the settings "
                  f"({held['score']:.2f}%): the recipe stays {incumbent}")
        return dict(choice=incumbent, reason=reason, rows=rows)
    if pick["wins"] >= need:
        reason = (f"{pick['option']} has the lowest median WER averaged over the {pick['of_settings']} settings "
                  f"({pick['score']:.2f}%) and beats magnitude pruning, with an interval that excludes 0, in "
                  f"{pick['wins']} of them")
        return dict(choice=pick["option"], reason=reason, rows=rows)
    reason = (f"{pick['option']} has the lowest median WER averaged over the settings ({pick['score']:.2f}%) but "
              f"beats magnitude pruning clearly in only {pick['wins']} of {pick['of_settings']} (at least {need} "
              f"needed): the recipe stays {fallback}")
    return dict(choice=fallback, reason=reason, rows=rows)
