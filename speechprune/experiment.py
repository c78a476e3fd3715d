"""The main experiment: the same budget, two ways to spend it.

Compress one model with channel clustering and with magnitude pruning at the same sparsity
and scope, evaluate the dense model and both pruned ones on the same speech, and write a
results file (every WER with its model, data and settings) and a figure.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


from speechprune.allocation import ALLOCATIONS
from speechprune.compress import check_sparsity
from speechprune.errors import check_choice, check_device
from speechprune.evaluate import DECODINGS
from speechprune.prune import FEATURES, MERGES, METHODS, WEIGHTINGS
from speechprune.recipes import RECIPES, resolve

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
    from speechprune.data import load_speech
    from speechprune.models import load_model
    from speechprune.study import execute, make_run

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


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="cluster vs magnitude at the same budget: compress, evaluate, plot",
                       description="The main job: compress MODEL with each method at the same sparsity and scope, "
                                   "evaluate the dense and pruned models, print the table and save a plot.")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--data", default=DEFAULT_DATA, help="embedded, embedded-full, an audiofolder, librispeech:test-clean ...")
    p.add_argument("--sparsity", type=float, default=0.2)
    p.add_argument("--scope", default="encoder.ffn")
    p.add_argument("--recipe", choices=RECIPES, default=None,
                   help="compare this recipe's clustering with magnitude; the options below, when given, override it "
                        "(default: no recipe, the paper's features and producer features side by side)")
    p.add_argument("--allocations", default=None, help=f"comma-separated, from {', '.join(ALLOCATIONS)} (default: uniform)")
    p.add_argument("--merges", default=None,
                   help=f"comma-separated merge rules for cluster, from {', '.join(MERGES)} (default: mean)")
    p.add_argument("--features", default=None,
                   help=f"comma-separated feature sets for cluster, from {', '.join(FEATURES)} "
                        "(default: the paper's reading, both, and the producer rows alone)")
    p.add_argument("--weighting", default=None, choices=WEIGHTINGS,
                   help="k-means weight of each channel (cluster; default: none)")
    p.add_argument("--decoding", default="greedy", choices=DECODINGS,
                   help="greedy (default, the paper's protocol) or fallback (Whisper's temperature fallback)")
    p.add_argument("--max-samples", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/main", help="folder for results.json and wer.png")
    p.add_argument("--overwrite", action="store_true",
                   help="replace results speechprune wrote in --out (refused if it holds anything else)")
    p.set_defaults(func=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:
    from speechprune.errors import SpeechPruneError, check_choice, check_device
    from speechprune.outputs import check_output_dir, output_state, staged_output

    # everything that can be checked before loading data or a model
    _apply_recipe(args)
    check_sparsity(args.sparsity)
    lists = {}
    for flag, kind, choices in (("allocations", "allocation", ALLOCATIONS), ("merges", "merge rule", MERGES),
                                ("features", "feature set", FEATURES)):
        lists[flag] = _names(getattr(args, flag))
        if not lists[flag]:
            raise SpeechPruneError(f"--{flag} names nothing: use one or more of {', '.join(choices)}")
        for name in lists[flag]:
            check_choice(kind, name, choices)
    if args.max_samples is not None and args.max_samples < 1:
        raise SpeechPruneError(f"--max-samples must be at least 1, got {args.max_samples}")
    if args.batch_size < 1:
        raise SpeechPruneError(f"--batch-size must be at least 1, got {args.batch_size}")
    device = check_device(args.device)
    target = check_output_dir(args.out, overwrite=args.overwrite, inputs=[args.model])
    expect = output_state(target)
    result = run_comparison(args.model, args.data, sparsity=args.sparsity, scope=args.scope,
                            allocations=lists["allocations"], merge_rules=lists["merges"],
                            feature_sets=lists["features"], weighting=args.weighting,
                            max_samples=args.max_samples, decoding=args.decoding, methods=args.methods,
                            batch_size=args.batch_size, device=device, seed=args.seed)
    with staged_output(args.out, overwrite=args.overwrite, expect=expect, command="compare") as staging:
        (staging / "results.json").write_text(json.dumps(result, indent=2))
        plot_comparison(result, staging / "wer.png")
    print(format_table(result))
    out = Path(args.out)
    print(f"results: {out / 'results.json'}  figure: {out / 'wer.png'}")
    return 0


def _apply_recipe(args: argparse.Namespace) -> None:
    """Fill the options left unset: from ``--recipe`` when given, else the defaults (both feature sets)."""
    if args.recipe is None:
        defaults = dict(allocations="uniform", merges="mean", features="both,producer", weighting="none")
        args.methods = ("cluster", "magnitude")
    else:
        r = resolve(args.recipe)
        defaults = dict(allocations=r["allocation"], merges=r["merge"], features=r["features"],
                        weighting=r["weighting"])
        args.methods = (r["method"], "magnitude")
    for name, value in defaults.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)


def _label(method: str, allocation: str, features: str, rule: str) -> str:
    """``cluster``, ``magnitude variance``, ``cluster producer projection``: what differs from the defaults."""
    parts = [method] + ([allocation] if allocation != "uniform" else [])
    if method != "magnitude":
        parts += [x for x, default in ((features, "both"), (rule, "mean")) if x != default]
    return " ".join(parts)


def _names(text: str) -> tuple[str, ...]:
    return tuple(a.strip() for a in text.split(",") if a.strip())
