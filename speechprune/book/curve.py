"""Chapter 3's fine-tuning curve at encoder FFN 50%: after how many steps clustering beats magnitude.

Read from the saved run of ``studies/finetune_curve.py`` (``finetune-curve-encoder-ffn50.json`` in the
saved studies): one fine-tuning run per method, the weights after chosen steps scored on the same
test utterances. :func:`curve_comparisons` compares two methods at every step, paired over the
utterances (:mod:`speechprune.stats`), :func:`first_decided_win` is the smallest step at which the
first is lower with an interval that excludes 0, :func:`curve_sentences` says it all in words and
:func:`plot_curve` draws WER against training steps.
"""

from __future__ import annotations

import json
from pathlib import Path

from speechprune.stats import paired_difference, sentence, undecided_reason
from speechprune.study.tables import saved_study_path

CURVE = "finetune-curve-encoder-ffn50"
#: The curve's methods (``studies/finetune_curve.py``): the saved one has magnitude, pairs-2026,
#: pairs-refit-2026 (measured as "recommended" before round 4) and recommended.
LABELS = {"pairs-2026": "closest pairs (uniform allocation)",
          "pairs-variance-2026": "closest pairs (variance allocation)",
          "pairs-refit-2026": "closest pairs (variance allocation, refit merge)",
          "recommended": "brain-surgeon pruning (variance allocation, refit merge)",
          "paper": "the paper's recipe (k-means, seed 0)", "magnitude": "magnitude pruning"}


def saved_curve(results_dir: str | Path | None = None, name: str = CURVE) -> dict | None:
    """The saved curve: ``results_dir/studies/NAME.json`` first, then the copy in the package; None if absent."""
    path = saved_study_path(name, results_dir)
    return json.loads(path.read_text(encoding="utf-8")) if path else None


def curve_comparisons(saved: dict, a: str = "pairs-2026", b: str = "magnitude") -> list[dict]:
    """Per step where both ``a`` and ``b`` were scored: both WERs and ``a − b`` paired over the same utterances.

    Examples
    --------
    >>> rec = lambda m, step, errors: dict(method=m, step=step, seed=None, wer=100 * sum(errors) / 40,
    ...     train_seconds=6.0 * step, utterance_ids=[f"u{i}" for i in range(40)],
    ...     utterance_errors=errors, utterance_words=[1] * 40)
    >>> saved = dict(records=[rec("magnitude", 0, [1] * 40), rec("pairs-2026", 0, [1] * 40),
    ...                       rec("magnitude", 10, [1] * 40), rec("pairs-2026", 10, [0] * 40)])
    >>> [(r["step"], r["decided_lower"]) for r in curve_comparisons(saved)]
    [(0, False), (10, True)]
    >>> first_decided_win(curve_comparisons(saved))["step"]
    10
    """
    by = {(r["method"], r["step"]): r for r in saved.get("records", [])}
    rows = []
    for step in sorted({s for m, s in by if m == a and (b, s) in by}):
        d = paired_difference([by[a, step]], [by[b, step]])
        rows.append(dict(step=step, train_seconds=by[a, step]["train_seconds"], wer_a=by[a, step]["wer"],
                         wer_b=by[b, step]["wer"], difference=d, said=sentence(d, a, b),
                         decided_lower=undecided_reason(d) is None and d.median < 0))
    return rows


def first_decided_win(rows: list[dict]) -> dict | None:
    """The first step at which ``a`` is lower than ``b`` with a paired interval that excludes 0."""
    return next((r for r in rows if r["decided_lower"]), None)


def curve_sentences(saved: dict | None, a: str = "pairs-2026", b: str = "magnitude") -> dict[str, str]:
    """``status`` (what was run), ``steps`` (one sentence per step) and ``answer`` (the first decided win)."""
    if not saved or not saved.get("records"):
        missing = f"not measured yet (no saved run {CURVE!r}: python studies/finetune_curve.py)"
        return dict(status=missing, steps=missing, answer=missing)
    t = saved["training"]
    n = saved["records"][0]["n_utterances"]
    trained = ("the decoder only: the pruned encoder frozen" if t["freeze"] == "encoder"
               else "all but the convolutional front-end")
    status = (f"{saved['model']}, {saved['scope']} at {saved['sparsity']:.0%}, fine-tuned on "
              f"{saved['train']['name']} ({trained}; learning rate {t['learning_rate']:g}, batch {t['batch_size']}, {t['max_steps']} steps, seed "
              f"{t['seed']}), scored on {n} utterances of {saved['test']['name']}; one fine-tuning run per "
              f"method, measured {saved['date'][:10]}")
    rows = curve_comparisons(saved, a, b)
    steps = "; ".join(f"after {r['step']} steps, {LABELS.get(a, a)} {r['wer_a']:.1f}% and {LABELS.get(b, b)} "
                      f"{r['wer_b']:.1f}% ({r['said']})" for r in rows) or "no step has both methods scored yet"
    win = first_decided_win(rows)
    planned = t.get("snapshot_steps", [])
    complete = {r["step"] for r in rows} >= {0, *planned}
    if win and win["step"] == 0:
        answer = (f"{LABELS.get(a, a)} is lower than {LABELS.get(b, b)} with an interval that excludes 0 "
                  "before any fine-tuning")
    elif win:
        answer = (f"{LABELS.get(a, a)} is lower than {LABELS.get(b, b)} with an interval that excludes 0 first "
                  f"after {win['step']} steps ({win['step'] * t['batch_size']} training utterances seen; "
                  f"{win['train_seconds'] / 60:.1f} min of training, measured on "
                  f"{host_note(saved, a)})")
    elif complete:
        answer = (f"within the {t['max_steps']} steps measured, {LABELS.get(a, a)} is never lower than "
                  f"{LABELS.get(b, b)} with an interval that excludes 0")
    else:
        answer = "the curve is not complete yet: no step so far shows a decided win"
    return dict(status=status, steps=steps, answer=answer)


def host_note(saved: dict, method: str) -> str:
    """Where ``method``'s fine-tuning ran: its own note when it was added to the file later, else the file's."""
    return (saved.get("methods", {}).get(method, {}).get("host_note")
            or saved.get("host", {}).get("note", "the CPU it ran on"))


def plot_curve(saved: dict, title: str = ""):
    """WER against fine-tuning steps, one line per method (a figure, for chapter 3)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.8), layout="constrained")
    for method in dict.fromkeys(r["method"] for r in saved["records"]):
        points = sorted((r["step"], r["wer"]) for r in saved["records"] if r["method"] == method)
        ax.plot([s for s, _ in points], [w for _, w in points], "o-", label=LABELS.get(method, method))
    ax.set_xlabel("fine-tuning steps (batch %d)" % saved["training"]["batch_size"])
    ax.set_ylabel("WER (%)")
    ax.set_ylim(bottom=0)
    if title:
        ax.set_title(title, fontsize=11)
    ax.legend(fontsize=10)
    return fig
