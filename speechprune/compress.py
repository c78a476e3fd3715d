"""Compress a speech model: allocate a channel budget, assign channels, shrink the layers.

``compress(model, method="cluster", sparsity=0.2, scope="ffn")`` changes ``model`` in place
and returns a :class:`CompressionReport`; ``speechprune compress`` does the same from the
command line and saves a folder that :func:`speechprune.checkpoint.load_checkpoint` reloads.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from speechprune.allocation import ALLOCATIONS, allocate
from speechprune.errors import SpeechPruneError, check_choice
from speechprune.prune import FEATURES, MERGES, METHODS, WEIGHTINGS, assign, assign_cluster, merge
from speechprune.recipes import RECIPES, resolve
from speechprune.structure import count_parameters, model_family, parse_scope, units_in_scope, widths


@dataclass
class UnitReport:
    name: str
    part: str
    channels_before: int
    channels_after: int
    params_before: int
    params_after: int
    cost: float  # k-means inertia (cluster) or squared norm of what is dropped (magnitude)
    seconds: float


@dataclass
class CompressionReport:
    family: str
    method: str
    sparsity: float
    scope: list[str]
    allocation: str
    seed: int
    params_before: int
    params_after: int
    seconds: float
    units: list[UnitReport] = field(default_factory=list)
    features: str = "both"
    merge_rule: str = "mean"
    weighting: str = "none"

    @property
    def param_sparsity(self) -> float:
        """Fraction of all the model's parameters removed."""
        return 1.0 - self.params_after / self.params_before

    def channel_sparsity(self, part: str | None = None) -> float:
        """Fraction of channels (neurons or heads) removed in the scope, or in one part."""
        us = [u for u in self.units if part is None or u.part == part]
        return 1.0 - sum(u.channels_after for u in us) / sum(u.channels_before for u in us)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["param_sparsity"] = self.param_sparsity
        return d

    def to_json(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "CompressionReport":
        d = {k: v for k, v in d.items() if k != "param_sparsity"}
        d["units"] = [UnitReport(**u) for u in d.get("units", [])]
        return cls(**d)

    def table(self) -> str:
        """A plain-text table: one row per unit, then the totals."""
        head = f"{'unit':34s} {'before':>7s} {'after':>6s} {'params before':>14s} {'params after':>13s} {'cost':>11s}"
        rows = [head, "-" * len(head)]
        for u in self.units:
            rows.append(
                f"{u.name:34s} {u.channels_before:7d} {u.channels_after:6d} "
                f"{u.params_before:14,d} {u.params_after:13,d} {u.cost:11.4g}"
            )
        rows.append("-" * len(head))
        rows.append(
            f"{self.family} | {self.method} | {self.allocation} allocation | scope {','.join(self.scope)} | "
            f"channel sparsity {self.channel_sparsity():.1%} | parameters {self.params_before:,} -> "
            f"{self.params_after:,} ({self.param_sparsity:.2%} of the model removed) | {self.seconds:.1f} s"
        )
        return "\n".join(rows)


def check_sparsity(sparsity: float) -> float:
    try:
        s = float(sparsity)
    except (TypeError, ValueError):
        raise SpeechPruneError(f"sparsity must be a number in [0, 1), got {sparsity!r}") from None
    if not (0.0 <= s < 1.0) or math.isnan(s):
        raise SpeechPruneError(f"sparsity must be in [0, 1), got {sparsity!r}")
    return s


@torch.no_grad()
def compress(
    model: nn.Module,
    *,
    method: str | None = None,
    sparsity: float = 0.2,
    scope: str = "ffn",
    allocation: str | None = None,
    seed: int = 0,
    max_iter: int = 100,
    n_init: int = 1,
    features: str | None = None,
    weighting: str | None = None,
    merge_rule: str | None = None,
    progress: bool = True,
    recipe: str | None = None,
) -> CompressionReport:
    """Prune ``model`` in place and return what was done.

    ``sparsity`` is the fraction of channels removed in ``scope`` (feed-forward neurons
    and/or attention heads); the report also gives the fraction of all parameters.
    ``features``, ``weighting`` and ``merge_rule`` choose what k-means sees, how much each
    channel counts in it, and how merged producers are combined (see :mod:`speechprune.prune`).
    ``recipe`` (:mod:`speechprune.recipes`, default ``paper``) fills in every one of these
    options left as None. Everything is checked before the first layer changes.
    """
    chosen = resolve(recipe, method=method, allocation=allocation, features=features, weighting=weighting,
                     merge=merge_rule)
    method = chosen["method"]
    allocation, features, weighting, merge_rule = (chosen["allocation"], chosen["features"], chosen["weighting"],
                                                   chosen["merge"])
    family = model_family(model)
    sparsity = check_sparsity(sparsity)
    check_choice("method", method, METHODS)
    check_choice("merge rule", merge_rule, MERGES)
    check_choice("feature set", features, FEATURES)
    check_choice("weighting", weighting, WEIGHTINGS)
    parts = parse_scope(scope, model)
    units = units_in_scope(model, parts)
    options = dict(seed=seed, max_iter=max_iter, n_init=n_init, features=features, weighting=weighting)

    start = time.perf_counter()
    params_before = count_parameters(model)
    bar = tqdm(total=len(units), desc=f"{method} {sparsity:g}", unit="layer", disable=not progress)

    def cost_fn(unit, k):
        return assign_cluster(unit, k, **{**options, "max_iter": min(max_iter, 20)}).cost

    keep = allocate(units, sparsity, allocation, cost_fn=cost_fn,
                    progress=(lambda name: bar.set_postfix_str(f"allocating: {name}")) if progress else None)
    reports = []
    for unit in units:
        bar.set_postfix_str(unit.name)
        t0 = time.perf_counter()
        n, p0 = unit.n_channels, unit.num_parameters()
        a = assign(unit, keep[unit.name], method, **options)
        merge(unit, a, merge_rule)
        reports.append(UnitReport(unit.name, unit.part, n, a.k, p0, unit.num_parameters(), a.cost,
                                  time.perf_counter() - t0))
        bar.update(1)
    bar.close()
    report = CompressionReport(family, method, sparsity, list(parts), allocation, seed, params_before,
                               count_parameters(model), time.perf_counter() - start, reports,
                               features if method != "magnitude" else "producer",
                               merge_rule if method != "magnitude" else "none",
                               weighting if method != "magnitude" else "none")
    record_widths(model, {k: v for k, v in report.to_dict().items() if k != "units"})
    return report


def record_widths(model: nn.Module, compression: dict | None = None) -> None:
    """Store every unit's channel count (and what produced it) in ``model.config.speechprune``.

    This is what lets a saved folder be rebuilt in its pruned shapes without the original.
    """
    previous = getattr(model.config, "speechprune", None) or {}
    history = list(previous.get("compressions", [])) + ([compression] if compression else [])
    model.config.speechprune = {"format": 1, "widths": widths(model), "compressions": history}


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compress", help="prune a model's channels and save it as a folder",
                       description="Compress MODEL by channel clustering or magnitude pruning and save it to --out.")
    p.add_argument("model", help="local Hugging Face folder, embedded:whisper-base / embedded:whisper-tiny.en, or a hub id")
    p.add_argument("--method", choices=METHODS, default=None,
                   help="cluster (k-means, the paper), magnitude (the baseline) or pairs (closest pairs first, "
                        "no seed); default: the recipe's (paper: cluster)")
    p.add_argument("--sparsity", type=float, required=True, help="fraction of channels removed in the scope, in [0, 1)")
    p.add_argument("--scope", default="ffn",
                   help="comma-separated parts: encoder.ffn, encoder.attention, decoder.ffn, decoder.attention, "
                        "or encoder, decoder, ffn, attention, all (default: ffn)")
    p.add_argument("--recipe", choices=RECIPES, default=None,
                   help="a named set of the options below (default: paper); options given explicitly override it")
    p.add_argument("--allocation", choices=ALLOCATIONS, default=None,
                   help="how the budget is spread over layers (paper recipe: uniform)")
    p.add_argument("--features", choices=FEATURES, default=None,
                   help="what k-means compares: both = producer rows + consumer columns (the paper), producer, "
                        "or normalized = producer rows as they act on the LayerNorm-normalised input")
    p.add_argument("--weighting", choices=WEIGHTINGS, default=None,
                   help="k-means weight of a channel: none, or consumer = its consumer column's squared norm")
    p.add_argument("--merge", choices=MERGES, default=None, dest="merge_rule",
                   help="how a cluster's producers combine: mean (the paper), weighted (by consumer norm) "
                        "or projection (first-order optimal)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-iter", type=int, default=100, help="k-means iterations at most")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--out", required=True, help="folder to write the pruned model to (must be empty or absent)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.set_defaults(func=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:
    from speechprune.checkpoint import check_output_dir, save_pruned
    from speechprune.models import load_model

    check_sparsity(args.sparsity)
    check_output_dir(args.out, overwrite=args.overwrite)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, processor = load_model(args.model, device=device)
    report = compress(model, method=args.method, sparsity=args.sparsity, scope=args.scope,
                      allocation=args.allocation, seed=args.seed, max_iter=args.max_iter,
                      features=args.features, weighting=args.weighting, merge_rule=args.merge_rule,
                      recipe=args.recipe)
    save_pruned(model, args.out, processor=processor, report=report, overwrite=args.overwrite)
    print(report.table())
    print(f"saved to {args.out}")
    return 0
