"""The main experiment: the same budget, two ways to spend it.

Compress one model with channel clustering and with magnitude pruning at the same sparsity
and scope, evaluate the dense model and both pruned ones on the same speech, and write a
results file (every WER with its model, data and settings) and a figure.
"""

from __future__ import annotations

import time
from pathlib import Path

from speechprune.allocation import ALLOCATIONS
from speechprune.compress import check_sparsity
from speechprune.data import load_speech
from speechprune.errors import check_choice, check_device
from speechprune.evaluate import DECODINGS
from speechprune.models import load_model
from speechprune.prune import FEATURES, MERGES, METHODS, WEIGHTINGS
from speechprune.study import execute, make_run

DEFAULT_MODEL = "embedded:whisper-base"
DEFAULT_DATA = "embedded"


def run_comparison(
    model: str = DEFAULT_MODEL,
    data: str = DEFAULT_DATA,
    *,
    sparsity: float = 0.2,
    scope: str = "encoder.ffn",
    allocations: tuple[str, ...] = ("uniform",),
    methods: tuple[str, ...] = ("cluster", "magnitude"),
    merge_rules: tuple[str, ...] = ("mean",),
    feature_sets: tuple[str, ...] = ("both",),
    weighting: str = "none",
    max_samples: int | None = None,
    batch_size: int = 8,
    device: str | None = None,
    seed: int = 0,
    decoding: str = "greedy",
    progress: bool = True,
) -> dict:
    """Evaluate the dense model and every (allocation, method, features, merge rule) pruned copy.

    A preset of the study runner (:func:`speechprune.study.execute`) at one k-means seed: every
    record is a single run. Feature sets, the weighting and merge rules apply to ``cluster``
    only (magnitude keeps single channels, ranked by producer norm). Returns the records of
    :func:`speechprune.evaluate.evaluate`, each with its compression report.
    """
    check_sparsity(sparsity)
    check_choice("decoding", decoding, DECODINGS)
    for kind, values, choices in (("allocation", allocations, ALLOCATIONS), ("method", methods, METHODS),
                                  ("merge rule", merge_rules, MERGES), ("feature set", feature_sets, FEATURES)):
        for value in values:
            check_choice(kind, value, choices)
    check_choice("weighting", weighting, WEIGHTINGS)
    device = check_device(device)
    speech = load_speech(data, max_samples=max_samples)
    dense, processor = load_model(model, device=device)
    common = dict(decoding=decoding, batch_size=batch_size, max_samples=max_samples)
    runs = [make_run(model, data, **common)]
    runs += [make_run(model, data, method=m, scope=scope, sparsity=sparsity, allocation=a, features=f, merge=r,
                      weighting=weighting, seed=seed, label=_label(m, a, f, r), **common)
             for a in allocations for m in methods
             for f in (feature_sets if m != "magnitude" else ("both",))
             for r in (merge_rules if m != "magnitude" else ("mean",))]
    records = [execute(run, dense, processor, speech, device=device, progress=progress) for run in runs]
    return {
        "experiment": "method comparison at equal budget",
        "model": model,
        "data": data,
        "sparsity": sparsity,
        "scope": scope,
        "seed": seed,
        "decoding": decoding,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "records": records,
    }


def summary_rows(result: dict) -> list[dict]:
    """One flat row per evaluated model: label, WER, S/D/I, parameters, sparsity."""
    rows = []
    for r in result["records"]:
        c = r.get("compression") or {}
        rows.append({
            "model": r["label"],
            "wer": r["wer"],
            "substitutions": r["substitutions"],
            "deletions": r["deletions"],
            "insertions": r["insertions"],
            "params": c.get("params_after", r["model"].get("parameters")),
            "param_sparsity": c.get("param_sparsity", 0.0),
            "rtf": r["rtf"],
        })
    return rows


def format_table(result: dict) -> str:
    head = f"{'model':24s} {'WER %':>7s} {'S':>5s} {'D':>5s} {'I':>5s} {'params':>12s} {'removed':>8s} {'RTF':>6s}"
    lines = [head, "-" * len(head)]
    for row in summary_rows(result):
        lines.append(
            f"{row['model']:24s} {row['wer']:7.2f} {row['substitutions']:5d} {row['deletions']:5d} "
            f"{row['insertions']:5d} {row['params']:12,d} {row['param_sparsity']:8.2%} {row['rtf']:6.3f}"
        )
    first = result["records"][0]
    lines.append(
        f"{result['model']} on {first['data'].get('name', result['data'])} ({first['n_utterances']} utterances), "
        f"{result['scope']} at {result['sparsity']:.0%} channel sparsity, greedy decoding, Whisper English normaliser"
    )
    return "\n".join(lines)


def plot_comparison(result: dict, path: str | Path) -> None:
    """Bar chart of WER per model, the dense WER as a line, settings in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary_rows(result)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    pruned = rows[1:]
    bars = ax.bar([r["model"] for r in pruned], [r["wer"] for r in pruned],
                  color=["#d1495b" if r["model"].startswith("magnitude") else "#2a7ab9" for r in pruned])
    ax.bar_label(bars, fmt="%.1f%%")
    ax.set_ylim(0, 1.15 * max([r["wer"] for r in rows] + [1.0]))  # room for the labels
    ax.axhline(rows[0]["wer"], color="black", linestyle="--", linewidth=1, label=f"dense {rows[0]['wer']:.1f}%")
    ax.set_ylabel("WER (%)")
    ax.set_title(f"{result['model']}, {result['scope']} at {result['sparsity']:.0%}, single run, k-means seed {result['seed']}\n"
                 f"{result['records'][0]['n_utterances']} utterances of {result['data']}", fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _label(method: str, allocation: str, features: str, rule: str) -> str:
    """``cluster``, ``magnitude variance``, ``cluster producer projection``: what differs from the defaults."""
    parts = [method] + ([allocation] if allocation != "uniform" else [])
    if method != "magnitude":
        parts += [x for x, default in ((features, "both"), (rule, "mean")) if x != default]
    return " ".join(parts)
