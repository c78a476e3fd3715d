"""The named recipes on clips no choice was made on, in words (chapter 1 and the results page).

Reads a saved final study (``recipe-final-4-heldout``: Whisper base on the 144 held-out clips of
``embedded:train``), finds each named recipe by its options (:func:`speechprune.study.recipe_of`,
so a study's own labels need not be known) and says, per setting, each recipe's WER as a multiple
of the uncompressed model's and the recommended recipe against magnitude pruning and against the
recipe it replaced, paired over the same utterances (:mod:`speechprune.stats`).
"""

from __future__ import annotations

from speechprune.recipes import BASELINE
from speechprune.stats import sentence, versus
from speechprune.study.tables import LOSSLESS_TARGETS, lossless_rows, recipe_of

HELDOUT = "recipe-final-4-heldout"
#: The recipe the recommended one replaced (round 3's pick), compared with it in ``versus_previous``.
PREVIOUS = "pairs-refit-2026"
#: Each recipe in words, as chapter 1 and the results page name them.
#: Plain words only: they are pasted with ``glue:text``, which renders no Markdown.
NAMES = {"recommended": "structured brain-surgeon pruning on synthetic speech with the variance allocation and "
                        "the refit merge (the recommended recipe)",
         "pairs-refit-2026": "closest pairs first with the variance allocation and the refit merge "
                             "(pairs-refit-2026)",
         "pairs-variance-2026": "closest pairs first with the variance allocation and the mean merge "
                                "(pairs-variance-2026)",
         "pairs-2026": "closest pairs first with the same share in every layer (pairs-2026)",
         "paper": "the paper's k-means recipe", BASELINE: "magnitude pruning"}
#: Short names for the paired sentences.
SHORT = {"recommended": "the recommended recipe", "pairs-refit-2026": "pairs-refit-2026",
         "pairs-variance-2026": "pairs-variance-2026",
         "pairs-2026": "pairs-2026", BASELINE: "magnitude pruning"}


def recipe_labels(records: list[dict]) -> dict[str, str]:
    """Recipe name -> the study's label for the runs whose options are exactly that recipe's."""
    out: dict[str, str] = {}
    for r in records:
        name = BASELINE if r["method"] == BASELINE else recipe_of(r)
        if name is not None:
            out.setdefault(name, r["label"])
    return out


def recipe_sentences(records: list[dict], scope: str, sparsity: float, *, n_boot: int = 2000) -> dict[str, str]:
    """At one budget: ``wers`` (each recipe's median WER, its range over seeds, and its ratio to the
    uncompressed model's), ``versus_magnitude`` and ``versus_previous`` (the recommended recipe
    against magnitude pruning and against :data:`PREVIOUS`, paired). An empty dict when the records
    have no uncompressed run or no recommended recipe at that budget."""
    labels = recipe_labels(records)
    names = {label: name for name, label in labels.items()}
    limit = LOSSLESS_TARGETS.get((scope, sparsity))
    rows = [t for t in lossless_rows(records, {(scope, sparsity): limit or float("inf")}, n_boot=n_boot)
            if t["option"] in names]
    if "recommended" not in labels or not any(names[t["option"]] == "recommended" for t in rows):
        return {}
    parts = []
    for t in rows:  # the lowest median first
        spread = (f" (median of {t['seeds']} seeds, {t['low']:.2f}-{t['high']:.2f})" if t["seeds"] > 1 else "")
        parts.append(f"{NAMES[names[t['option']]]} {t['median']:.2f}%{spread}, {t['ratio']:.1f} times the "
                     f"uncompressed model's {t['dense']:.2f}%")
    out = dict(wers="; ".join(parts))
    for key, other in (("versus_magnitude", BASELINE), ("versus_previous", PREVIOUS)):
        found = versus(records, labels["recommended"], labels[other], scope=scope, sparsity=sparsity,
                       n_boot=n_boot) if other in labels else None
        out[key] = sentence(found[0], SHORT["recommended"], SHORT[other]) if found else "not measured"
    if limit is not None:
        ours = next(t for t in rows if names[t["option"]] == "recommended")
        out["target"] = (f"at most {limit:g} times the uncompressed WER: "
                         + ("met" if ours["met"] else f"not met ({ours['ratio']:.2f} times)"))
    return out
