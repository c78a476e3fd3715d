"""The main experiment: the same budget, two ways to spend it.

Compress one model with channel clustering and with magnitude pruning at the same sparsity
and scope, evaluate the dense model and both pruned ones on the same speech, and write a
results file (every WER with its model, data and settings) and a figure.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from speechprune.data import load_speech
from speechprune.errors import SpeechPruneError, check_choice, check_device, check_int
from speechprune.evaluate import DECODINGS
from speechprune.models import load_model
from speechprune.options import CompressionOptions
from speechprune.outputs import save_figure
from speechprune.stats import paired_difference, sentence
from speechprune.study import Run, execute, make_run, study_record

DEFAULT_MODEL = "embedded:whisper-base"
DEFAULT_DATA = "embedded"


def run_comparison(
    model: str = DEFAULT_MODEL,
    data: str = DEFAULT_DATA,
    options: Sequence[CompressionOptions] = (),
    *,
    max_samples: int | None = None,
    batch_size: int = 8,
    device: str | None = None,
    decoding: str = "greedy",
    progress: bool = True,
) -> dict:
    """Evaluate the dense model and one pruned copy per entry of ``options``, on the same speech.

    A preset of the study runner (:func:`speechprune.study.execute`): every record is a single
    run. ``options`` that resolve to the same compression (magnitude pruning with two feature
    sets, say) run once. Every entry must share one sparsity and scope (the result names them).
    Returns the records of :func:`speechprune.evaluate.evaluate`, each with its compression report.

    :func:`option_grid` builds ``options`` from lists of values (``speechprune compare``'s flags).
    """
    check_choice("decoding", decoding, DECODINGS)
    options = _distinct(options)
    if not options:
        raise SpeechPruneError("run_comparison needs at least one CompressionOptions to compare with the dense model")
    settings = {(o.sparsity, o.scope) for o in options}
    if len(settings) > 1:
        raise SpeechPruneError(f"run_comparison compares at one budget; the options have {len(settings)} "
                               "(sparsity, scope) pairs")
    (sparsity, scope), = settings
    seeds = sorted({o.seed for o in options if o.seed is not None})
    device = check_device(device)
    speech = load_speech(data, max_samples=max_samples)
    dense, processor = load_model(model, device=device)
    common = dict(decoding=decoding, batch_size=batch_size, max_samples=max_samples)
    runs = [make_run(model, data, **common)] + [make_run(model, data, options=o, label=o.label(), **common)
                                                for o in options]
    records = [execute(run, dense, processor, speech, device=device, progress=progress) for run in runs]
    return {
        "experiment": "method comparison at equal budget",
        "model": model,
        "data": data,
        "sparsity": sparsity,
        "scope": scope,
        "seed": seeds[0] if len(seeds) == 1 else None,
        "decoding": decoding,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "records": records,
    }


def option_grid(*, sparsity: float = 0.2, scope: str = "encoder.ffn", methods: Sequence[str] = ("cluster", "magnitude"),
                allocations: Sequence[str] = ("uniform",), features: Sequence[str] = ("both",),
                merges: Sequence[str] = ("mean",), weighting: str = "none", seed: int = 0,
                recipe: str | None = None) -> list[CompressionOptions]:
    """Every combination of the lists, as :class:`CompressionOptions`, without repeats.

    Options a method does not read collapse (magnitude pruning runs once per allocation).
    """
    return _distinct([CompressionOptions(method=m, sparsity=sparsity, scope=scope, allocation=a, features=f,
                                         merge=r, weighting=weighting, seed=seed, recipe=recipe)
                      for a in allocations for m in methods for f in features for r in merges])


def _distinct(options: Sequence[CompressionOptions]) -> list[CompressionOptions]:
    out, seen = [], set()
    for o in options:
        if not isinstance(o, CompressionOptions):
            raise SpeechPruneError(f"options must be CompressionOptions, got {type(o).__name__}")
        if o.key() not in seen:
            seen.add(o.key())
            out.append(o)
    return out


def _seed_text(seed: int | None) -> str:
    return "no seed" if seed is None else f"k-means seed {seed}"


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
    ax.set_title(f"{result['model']}, {result['scope']} at {result['sparsity']:.0%}, single run, {_seed_text(result['seed'])}\n"
                 f"{result['records'][0]['n_utterances']} utterances of {result['data']}", fontsize=10)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------- the main job: paper, recommendation, baseline

#: The rows of the main job, each with the role it plays in the comparison.
ROLES = {"dense": "uncompressed", "paper": "the paper's method", "recommended": "this project's recommendation",
         "magnitude": "the baseline"}


def main_job_plan(model: str, data: str, *, sparsity: float, scope: str, seeds: int, decoding: str = "greedy",
                  batch_size: int = 8, max_samples: int | None = None) -> list[tuple[str, CompressionOptions | None, Run]]:
    """The main job's runs, in order, as (role, options, run): the dense model (options None), the
    paper's recipe at seeds 0 .. ``seeds`` - 1, ``--recipe recommended`` and magnitude pruning.
    :func:`run_main_job` executes them; :func:`speechprune.presets.measure_main_job` measures them
    through the book's cache."""
    check_choice("decoding", decoding, DECODINGS)
    seeds = check_int("seeds", seeds, minimum=1, maximum=100)
    paper = [CompressionOptions(recipe="paper", sparsity=sparsity, scope=scope, seed=s) for s in range(seeds)]
    recommended = CompressionOptions(recipe="recommended", sparsity=sparsity, scope=scope)
    magnitude = CompressionOptions(method="magnitude", sparsity=sparsity, scope=scope)
    common = dict(decoding=decoding, batch_size=batch_size, max_samples=max_samples)
    plan: list[tuple[str, CompressionOptions | None, Run]] = [("dense", None, make_run(model, data, label="dense",
                                                                                        **common))]
    plan += [("paper", o, make_run(model, data, options=o, label=f"{o.method_name} (paper)", **common)) for o in paper]
    plan += [("recommended", recommended, make_run(model, data, options=recommended,
                                                   label=f"{recommended.method_name} (recommended)", **common)),
             ("magnitude", magnitude, make_run(model, data, options=magnitude, label="magnitude", **common))]
    return plan


def main_job_record(role: str, run: Run, full: dict, seconds: float) -> dict:
    """An evaluation record of the main job: labelled as ``run`` is, with its role and study record."""
    full = dict(full, label=run.label)
    full.update(role=role, seed=run.seed, study=study_record(run, full, seconds))
    return full


def main_job_result(model: str, data: str, records: list[dict], *, sparsity: float, scope: str, seeds: int,
                    decoding: str = "greedy") -> dict:
    """The main job's result: its records (:func:`main_job_record`) and the sentences that compare them."""
    return {
        "experiment": "the main job: the paper's method, the recommendation and the baseline at equal budget",
        "model": model, "data": data, "sparsity": sparsity, "scope": scope, "seed": None, "seeds": seeds,
        "decoding": decoding, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "records": records,
        "sentences": main_job_sentences(records),
    }


def run_main_job(model: str = DEFAULT_MODEL, data: str = DEFAULT_DATA, *, sparsity: float = 0.2,
                 scope: str = "encoder.ffn", seeds: int = 3, max_samples: int | None = None, batch_size: int = 8,
                 device: str | None = None, decoding: str = "greedy", progress: bool = True) -> dict:
    """The main job: at one budget, the dense model, the paper's recipe over ``seeds`` k-means seeds,
    ``--recipe recommended`` (no seed) and magnitude pruning, on the same utterances.

    Every record carries its ``role`` (:data:`ROLES`) and the result its ``sentences``: each method
    against magnitude pruning and the recommendation against the paper's recipe, in the words of
    :func:`speechprune.stats.sentence` (paired over utterances and seeds, with a 95% interval).
    """
    plan = main_job_plan(model, data, sparsity=sparsity, scope=scope, seeds=seeds, decoding=decoding,
                         batch_size=batch_size, max_samples=max_samples)
    device = check_device(device)
    speech = load_speech(data, max_samples=max_samples)
    dense, processor = load_model(model, device=device)
    records = []
    for role, _, run in tqdm(plan, desc="main job", unit="model", disable=not progress):
        started = time.perf_counter()
        full = execute(run, dense, processor, speech, device=device, progress=False)
        records.append(main_job_record(role, run, full, time.perf_counter() - started))
    return main_job_result(model, data, records, sparsity=sparsity, scope=scope, seeds=seeds, decoding=decoding)


def main_job_sentences(records: list[dict]) -> list[str]:
    """What the differences mean and how sure they are, from :mod:`speechprune.stats`."""
    by_role: dict[str, list[dict]] = {}
    for r in records:
        by_role.setdefault(r["role"], []).append(r["study"])
    names = {"paper": "the paper's method", "recommended": "the recommended recipe", "magnitude": "magnitude pruning"}
    sentences = []
    for a, b in (("recommended", "magnitude"), ("paper", "magnitude"), ("recommended", "paper")):
        if a in by_role and b in by_role:
            d = paired_difference(by_role[a], by_role[b])
            text = sentence(d, names[a], names[b])
            sentences.append(text[0].upper() + text[1:] + ".")
    return sentences


def _role_rows(result: dict) -> list[dict]:
    """One row per role: median (and range over seeds) of WER, with the settings that made it."""
    rows = []
    for role in ROLES:
        group = [r for r in result["records"] if r.get("role") == role]
        if not group:
            continue
        wers = sorted(r["wer"] for r in group)
        c = group[0].get("compression") or {}
        rows.append(dict(role=role, label=group[0]["label"], what=ROLES[role], wer=statistics.median(wers),
                         low=wers[0], high=wers[-1], n=len(group),
                         params=c.get("params_after", group[0]["model"].get("parameters")),
                         param_sparsity=c.get("param_sparsity", 0.0)))
    return rows


def format_main_job(result: dict) -> str:
    """The main job's table, each row labelled with its role, then what the differences mean."""
    head = f"{'model':24s} {'role':32s} {'WER %':>7s} {'range over seeds':>17s} {'params':>12s} {'removed':>8s}"
    lines = [head, "-" * len(head)]
    for row in _role_rows(result):
        spread = f"{row['low']:.2f}-{row['high']:.2f} ({row['n']})" if row["n"] > 1 else "no seed" \
            if row["role"] != "dense" else ""
        lines.append(f"{row['label']:24s} {row['what']:32s} {row['wer']:7.2f} {spread:>17s} {row['params']:12,d} "
                     f"{row['param_sparsity']:8.2%}")
    first = result["records"][0]
    lines.append(f"{result['model']} on {first['data'].get('name', result['data'])} ({first['n_utterances']} "
                 f"utterances), {result['scope']} at {result['sparsity']:.0%} channel sparsity, greedy decoding, "
                 f"Whisper English normaliser; the paper's method: median over k-means seeds 0-{result['seeds'] - 1}")
    lines += ["", *result["sentences"]]
    return "\n".join(lines)


def plot_main_job(result: dict, path: str | Path) -> None:
    """Bars per role (the paper's method: median, its seeds as dots), the dense WER as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _role_rows(result)
    dense = next(r for r in rows if r["role"] == "dense")
    pruned = [r for r in rows if r["role"] != "dense"]
    colours = {"paper": "#8c8c8c", "recommended": "#2a7ab9", "magnitude": "#d1495b"}
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    names = [f"{r['label']}\n{r['what']}" for r in pruned]
    ax.bar(names, [r["wer"] for r in pruned], color=[colours[r["role"]] for r in pruned])
    top = max([r["high"] for r in rows] + [1.0])
    for i, r in enumerate(pruned):
        seeds = [x["wer"] for x in result["records"] if x.get("role") == r["role"]]
        if len(seeds) > 1:
            ax.plot([i] * len(seeds), seeds, "o", color="black", markersize=4, zorder=3,
                    label="k-means seeds" if i == 0 else None)
        # the value above the bar and above its highest seed, so that no dot covers it
        ax.text(i, max(r["wer"], r["high"]) + 0.02 * top, f"{r['wer']:.1f}%", ha="center", va="bottom", fontsize=10)
    ax.set_ylim(0, 1.32 * top)  # room for the legend above the bars
    ax.axhline(dense["wer"], color="black", linestyle="--", linewidth=1, label=f"uncompressed {dense['wer']:.1f}%")
    ax.set_ylabel("WER (%)", fontsize=10)
    ax.tick_params(labelsize=9)
    ax.set_title(f"{result['model']}, {result['scope']} at {result['sparsity']:.0%} of channels removed\n"
                 f"{result['records'][0]['n_utterances']} utterances of {result['data']}; paper: median of "
                 f"{result['seeds']} seeds", fontsize=10)
    ax.legend(fontsize=9, loc="upper center", ncol=2)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
