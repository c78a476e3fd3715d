"""Compress a speech model: allocate a channel budget, assign channels, shrink the layers.

``compress(model, method="cluster", sparsity=0.2, scope="ffn")`` changes ``model`` in place
and returns a :class:`CompressionReport`; ``speechprune compress`` does the same from the
command line and saves a folder that :func:`speechprune.checkpoint.load_checkpoint` reloads.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from speechprune.allocation import allocate
from speechprune.errors import SpeechPruneError, check_choice, check_int, check_seed, warn
from speechprune.outputs import check_output_file, write_json
from speechprune.methods import Method, assign, check_labels, get_method
from speechprune.prune import FEATURES, MERGES, WEIGHTINGS, assign_cluster, cluster_many, merge
from speechprune.structure import (PARTS, Unit, count_parameters, iter_units, model_family, parse_scope,
                                   record_widths, units_in_scope)
from speechprune.recipes import resolve


@dataclass
class UnitReport:
    """One unit's line in a :class:`CompressionReport`: channels, parameters, cost and time."""

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
    """What :func:`compress` did: the recipe, and channels and parameters per unit and in total.

    It is saved with a pruned folder (``speechprune_report.json``, and as the last entry of
    ``config.json``'s ``speechprune.compressions``) and shown in its model card.

    Parameters
    ----------
    family : str
        The model family (``"whisper"``, ``"hubert"``, ...).
    method : str
        The assignment method's registered name (or the callable's ``__name__``).
    sparsity : float
        Fraction of channels removed in the scope.
    scope : list of str
        The parts pruned (``encoder.ffn``, ...).
    allocation : str
        ``uniform``, ``variance``, ``cost``, or ``explicit`` for a ``keep`` budget.
    seed : int
        The k-means seed.
    params_before, params_after : int
        All the model's parameters before and after.
    seconds : float
        Wall time of the compression.
    units : list of UnitReport
        One row per unit: channels and parameters before and after, cost, time.
    features, merge_rule, weighting : str
        The clustering recipe (``"none"`` where it did not apply).

    Examples
    --------
    >>> from speechprune import CompressionReport, compress
    >>> from speechprune.testing import tiny_model
    >>> report = compress(tiny_model("hubert"), sparsity=0.5, scope="all", progress=False)
    >>> report.channel_sparsity("encoder.attention"), report.channel_sparsity("encoder.ffn")
    (0.5, 0.5)
    >>> round(report.param_sparsity, 3)
    0.35
    >>> CompressionReport.from_dict(report.to_dict()) == report
    True
    """

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
        """A JSON-ready dict, with ``param_sparsity`` added."""
        d = asdict(self)
        d["param_sparsity"] = self.param_sparsity
        return d

    def to_json(self, path: str, *, overwrite: bool = False) -> None:
        """Write :meth:`to_dict` to ``path`` atomically; an existing file speechprune did not write is
        replaced only with ``overwrite``."""
        write_json(check_output_file(path, overwrite=overwrite, flag="path"), self.to_dict())

    @classmethod
    def from_dict(cls, d: dict) -> "CompressionReport":
        """The report back from :meth:`to_dict`'s output (e.g. a folder's ``speechprune_report.json``)."""
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
    """``sparsity`` as a float in [0, 1), or a :class:`SpeechPruneError` naming the bad value."""
    try:
        s = float(sparsity)
    except (TypeError, ValueError):
        raise SpeechPruneError(f"sparsity must be a number in [0, 1), got {sparsity!r}") from None
    if not (0.0 <= s < 1.0) or math.isnan(s):
        raise SpeechPruneError(f"sparsity must be in [0, 1), got {sparsity!r}")
    return s


def _check_keep(model: nn.Module, keep: dict[str, int], scope: str | None) -> list[Unit]:
    """The units an explicit budget names, in forward order, each with ``1 <= k <= n``."""
    if not isinstance(keep, dict) or not keep:
        raise SpeechPruneError("keep must be a non-empty dict {unit name: channels to keep}, e.g. from allocate()")
    units = {u.name: u for u in iter_units(model)}
    unknown = sorted(set(keep) - set(units))
    if unknown:
        raise SpeechPruneError(
            f"keep names units this {model_family(model)} model does not have: {unknown[:5]}; "
            f"its units are named like {next(iter(units))!r} (see speechprune.structure.widths(model))"
        )
    parts = parse_scope(scope, model) if scope is not None else None
    chosen = [u for name, u in units.items() if name in keep]
    for u in chosen:
        k = keep[u.name]
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= u.n_channels:
            raise SpeechPruneError(f"keep[{u.name!r}] = {k!r}: it must be an integer from 1 to {u.n_channels}")
        if parts is not None and u.part not in parts:
            raise SpeechPruneError(f"keep names {u.name}, which is outside the scope {scope!r}")
    return chosen


@torch.no_grad()
def compress(
    model: nn.Module,
    *,
    method: str | Callable | None = None,
    sparsity: float | None = None,
    scope: str | None = None,
    allocation: str | None = None,
    keep: dict[str, int] | None = None,
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

    Each unit in ``scope`` (a layer's feed-forward neurons or attention heads) goes from ``n``
    to ``k`` channels: the method assigns every old channel to a new one (or drops it), and
    :func:`speechprune.prune.merge` builds each new channel from its members (producers
    combined, consumers summed), so the layers physically shrink. Every unit's assignment is
    computed and checked before the first layer changes: a bad option, budget or method
    return leaves ``model`` as it was.

    Parameters
    ----------
    model : transformers model
        A supported speech model (see ``speechprune.structure.FAMILIES``), changed in place.
    method : str or callable, optional
        A registered method name (``"cluster"``, ``"magnitude"``, ``"pairs"``, a plug-in's) or a callable
        ``fn(unit, k, **options)`` returning the new channel of each old channel (-1 drops
        it); see :func:`speechprune.register_method`. Default: the recipe's (``cluster``).
    sparsity : float, default 0.2
        Fraction of channels removed in ``scope``, in [0, 1). Not with ``keep``.
    scope : str, default "ffn"
        Comma-separated parts: ``encoder.ffn``, ``encoder.attention``, ``decoder.ffn``,
        ``decoder.attention``, or ``encoder``, ``decoder``, ``ffn``, ``attention``, ``all``.
    allocation : {"uniform", "variance", "cost"}, optional
        How the budget is spread over layers (see :func:`speechprune.allocate`); default: the
        recipe's (``uniform``).
    keep : dict, optional
        An explicit budget ``{unit name: channels to keep}`` (what ``allocate`` returns);
        only the named units change, and ``sparsity`` and ``allocation`` do not apply.
    seed : int, default 0
        The k-means seed (passed to every method that takes ``seed``).
    max_iter : int, default 100
        k-means iterations at most.
    n_init : int, default 1
        k-means restarts; the run with the lowest inertia is kept.
    features : {"both", "producer", "normalized"}, optional
        What k-means compares (see :func:`speechprune.prune.channel_features`).
    weighting : {"none", "consumer"}, optional
        The k-means weight of each channel.
    merge_rule : {"mean", "weighted", "projection"}, optional
        How a new channel's producer combines its members' (see :func:`speechprune.prune.merge`).
    progress : bool, default True
        Show a progress bar.
    recipe : {"paper", "recommended"}, optional
        A named set of the clustering options (:mod:`speechprune.recipes`, default ``paper``:
        ``cluster``, ``both``, ``uniform``, ``mean``, ``none``); every option given explicitly
        overrides it.

    Returns
    -------
    CompressionReport
        Channels and parameters before and after, per unit and in total. The channel counts
        are also stored in ``model.config.speechprune``, so that :func:`speechprune.save_pruned`
        writes a folder that :func:`speechprune.load_checkpoint` rebuilds.

    Raises
    ------
    SpeechPruneError
        For an unsupported model, an unknown method, scope, allocation or option, a sparsity
        outside [0, 1) or one that empties a layer, a bad ``keep``, or a method that raises or
        returns an invalid assignment (named in the message). The model is then unchanged.

    Examples
    --------
    >>> import torch
    >>> from speechprune import compress
    >>> from speechprune.testing import tiny_model
    >>> model = tiny_model("whisper")  # random, 2+2 layers, 64 neurons per feed-forward block
    >>> report = compress(model, sparsity=0.25, scope="ffn", progress=False)
    >>> model.model.encoder.layers[0].fc1.out_features
    48
    >>> report.channel_sparsity()
    0.25

    An explicit budget, and a method given as a plain function:

    >>> def keep_first(unit, k):
    ...     labels = torch.full((unit.n_channels,), -1)
    ...     labels[:k] = torch.arange(k)
    ...     return labels
    >>> report = compress(tiny_model("whisper"), method=keep_first, keep={"decoder.layers.1.ffn": 10},
    ...                   progress=False)
    >>> [(u.name, u.channels_after) for u in report.units]
    [('decoder.layers.1.ffn', 10)]
    """
    seed = check_seed(seed)
    max_iter = check_int("max_iter", max_iter, minimum=1)
    n_init = check_int("n_init", n_init, minimum=1)
    if scope is not None and not isinstance(scope, str):
        raise SpeechPruneError(f"scope must be a string such as 'ffn' or 'encoder.ffn,decoder.attention', "
                               f"got {scope!r}")
    explicit = {k: v for k, v in dict(features=features, weighting=weighting, merge=merge_rule).items()
                if v is not None}
    chosen = resolve(recipe, method=method, allocation=allocation, features=features, weighting=weighting,
                     merge=merge_rule)
    method = chosen["method"]
    allocation, features, weighting, merge_rule = (chosen["allocation"], chosen["features"], chosen["weighting"],
                                                   chosen["merge"])
    family = model_family(model)
    chosen = get_method(method)
    check_choice("merge rule", merge_rule, MERGES)
    check_choice("feature set", features, FEATURES)
    check_choice("weighting", weighting, WEIGHTINGS)
    if keep is not None:
        if sparsity is not None:
            raise SpeechPruneError("give either sparsity or keep, not both: keep already fixes every unit's budget")
        units = _check_keep(model, keep, scope)
        parts = tuple(p for p in PARTS if any(u.part == p for u in units))
        allocation = "explicit"
    else:
        sparsity = check_sparsity(0.2 if sparsity is None else sparsity)
        parts = parse_scope("ffn" if scope is None else scope, model)
        units = units_in_scope(model, parts)
    options = dict(seed=seed, max_iter=max_iter, n_init=n_init, features=features, weighting=weighting)
    _warn_ignored(chosen, explicit, options, merge_rule)

    start = time.perf_counter()
    params_before = count_parameters(model)
    label = f"{chosen.name} {sparsity:g}" if keep is None else f"{chosen.name} explicit"
    bar = tqdm(total=2 * len(units), desc=label, unit="step", disable=not progress)

    def cost_fn(unit, k):
        return assign_cluster(unit, k, **{**options, "max_iter": min(max_iter, 20)}).cost

    if keep is None:
        keep = allocate(units, sparsity, allocation, cost_fn=cost_fn,
                        progress=(lambda name: bar.set_postfix_str(f"allocating: {name}")) if progress else None)
    # every assignment first, so that a failing or invalid method leaves the model untouched
    assignments = []
    if chosen.fn is assign_cluster and len(units) > 1:  # k-means: on a GPU, same-shaped layers seeded together
        bar.set_postfix_str(f"clustering {len(units)} units")
        t0 = time.perf_counter()
        try:
            batch = cluster_many(units, [keep[u.name] for u in units], **options)
        except SpeechPruneError as err:
            raise SpeechPruneError(f"method {chosen.name!r} failed: {err}") from err
        each = (time.perf_counter() - t0) / len(units)
        for unit, a in zip(units, batch):
            check_labels(a.labels, unit, a.k, chosen.name)
            assignments.append((a, each))
            bar.update(1)
    else:
        for unit in units:
            bar.set_postfix_str(f"assigning: {unit.name}")
            t0 = time.perf_counter()
            assignments.append((assign(unit, keep[unit.name], chosen, **options), time.perf_counter() - t0))
            bar.update(1)
    reports = []
    for unit, (a, seconds) in zip(units, assignments):
        bar.set_postfix_str(f"merging: {unit.name}")
        t0 = time.perf_counter()
        n, p0 = unit.n_channels, unit.num_parameters()
        merge(unit, a, merge_rule)
        reports.append(UnitReport(unit.name, unit.part, n, a.k, p0, unit.num_parameters(), a.cost,
                                  seconds + time.perf_counter() - t0))
        bar.update(1)
    bar.close()
    if sparsity is None:
        sparsity = 1.0 - sum(r.channels_after for r in reports) / sum(r.channels_before for r in reports)
    report = CompressionReport(family, chosen.name, sparsity, list(parts), allocation, seed, params_before,
                               count_parameters(model), time.perf_counter() - start, reports,
                               *_recipe(chosen, options, merge_rule))
    record_widths(model, {k: v for k, v in report.to_dict().items() if k != "units"})
    return report


def _warn_ignored(method: Method, explicit: dict[str, str], options: dict, merge_rule: str) -> None:
    """Warn about options given explicitly that ``method`` does not read (the report records what ran)."""
    ran = dict(zip(("features", "merge", "weighting"), _recipe(method, options, merge_rule)))
    ignored = [f"{name}={value!r}" for name, value in explicit.items() if ran[name] != value]
    if ignored:
        warn(f"method {method.name!r} ignores {', '.join(ignored)}: it does not read "
             f"{'them' if len(ignored) > 1 else 'it'}; the report records what ran "
             f"({', '.join(f'{k}={v!r}' for k, v in ran.items())})")


def _recipe(method: Method, options: dict, merge_rule: str) -> tuple[str, str, str]:
    """The (features, merge rule, weighting) that actually shaped the result, for the report."""
    if method.fn is assign_cluster:
        return options["features"], merge_rule, options["weighting"]
    if method.name == "magnitude" and method.fn is get_method("magnitude").fn:
        return "producer", "none", "none"  # one member per new channel: merging changes nothing
    accepted = method.accepted(options)
    return accepted.get("features", "none"), merge_rule, accepted.get("weighting", "none")
