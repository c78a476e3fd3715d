"""Compress a speech model: allocate a channel budget, assign channels, shrink the layers.

``compress(model, method="cluster", sparsity=0.2, scope="ffn")`` changes ``model`` in place
and returns a :class:`CompressionReport`; ``speechprune compress`` does the same from the
command line and saves a folder that :func:`speechprune.checkpoint.load_checkpoint` reloads.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from speechprune.allocation import allocate
from speechprune.gpu import out_of_memory_as_error
from speechprune.errors import SpeechPruneError, check_int, warn
from speechprune.outputs import check_output_file, write_json
from speechprune.methods import assign, check_labels
from speechprune.options import CompressionOptions, check_sparsity, options_from  # noqa: F401 (check_sparsity: its old home)
from speechprune.prune import assign_cluster, merge
from speechprune.calibration import capture_inputs
from speechprune.refit import refittable
from speechprune.structure import (PARTS, Unit, count_parameters, iter_units, model_family, parse_scope,
                                   record_widths, units_in_scope)


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
    seed : int or None
        The k-means seed; None for a method that takes none (magnitude, closest pairs).
    params_before, params_after : int
        All the model's parameters before and after.
    seconds : float
        Wall time of the compression.
    units : list of UnitReport
        One row per unit: channels and parameters before and after, cost, time.
    features, merge, weighting : str
        The clustering options that shaped the result (``"none"`` where they did not apply).
        Reports saved by 0.3 and earlier named ``merge`` ``merge_rule``; :meth:`from_dict` reads both.
    recipe : str or None
        The recipe the options were resolved from (None in reports saved before it was recorded).

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
    seed: int | None
    params_before: int
    params_after: int
    seconds: float
    units: list[UnitReport] = field(default_factory=list)
    features: str = "both"
    merge: str = "mean"
    weighting: str = "none"
    recipe: str | None = None

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
        if "merge_rule" in d:  # the name in 0.3 and earlier
            d["merge"] = d.pop("merge_rule")
        d["units"] = [UnitReport(**u) for u in d.get("units", [])]
        return cls(**d)

    @property
    def options(self) -> CompressionOptions:
        """The :class:`~speechprune.options.CompressionOptions` that reproduce this compression."""
        return CompressionOptions.from_report(self.to_dict())

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


def _check_keep(model: nn.Module, keep: dict[str, int], scope: str | None) -> list[Unit]:
    """The units an explicit budget names, in forward order, each with ``1 <= k <= n``."""
    if not isinstance(keep, dict) or not keep:
        raise SpeechPruneError("budget must be a non-empty dict {unit name: channels to keep}, e.g. from allocate()")
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
            raise SpeechPruneError(f"budget[{u.name!r}] = {k!r}: it must be an integer from 1 to {u.n_channels}")
        if parts is not None and u.part not in parts:
            raise SpeechPruneError(f"the budget names {u.name}, which is outside the scope {scope!r}")
    return chosen


@torch.no_grad()
def compress(
    model: nn.Module,
    options: CompressionOptions | None = None,
    *,
    max_iter: int = 100,
    n_init: int = 1,
    progress: bool = True,
    **fields: Any,
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
    options : CompressionOptions, optional
        What to do, resolved and checked in one place (:class:`speechprune.options.CompressionOptions`).
        Instead of it, its fields can be given as keyword arguments (not both):
    method : str or callable, optional
        A registered method name (``"cluster"``, ``"magnitude"``, ``"pairs"``, ``"obs"``, a plug-in's) or a
        callable ``fn(unit, k, **options)`` returning the new channel of each old channel (-1 drops
        it); see :func:`speechprune.register_method`. A method whose signature names ``inputs`` gets
        each feed-forward unit's inputs on synthetic speech (``obs`` does; :mod:`speechprune.calibration`).
        Default: the recipe's (``cluster``).
    sparsity : float, default 0.2
        Fraction of channels removed in ``scope``, in [0, 1). Not with ``budget``.
    scope : str, default "ffn"
        Comma-separated parts: ``encoder.ffn``, ``encoder.attention``, ``decoder.ffn``,
        ``decoder.attention``, or ``encoder``, ``decoder``, ``ffn``, ``attention``, ``all``.
    allocation : {"uniform", "variance", "cost"}, optional
        How the budget is spread over layers (see :func:`speechprune.allocate`); default: the
        recipe's (``uniform``).
    budget : dict, optional
        An explicit budget ``{unit name: channels to keep}`` (what ``allocate`` returns);
        only the named units change, and ``sparsity`` and ``allocation`` do not apply.
        (Its old name ``keep`` works for one more release, with a warning.)
    seed : int, default 0
        The k-means seed (for a method that takes one; a seed-free method's report says None).
    features : {"both", "producer", "normalized", "function"}, optional
        What k-means compares (see :func:`speechprune.prune.channel_features`).
    weighting : {"none", "consumer"}, optional
        The k-means weight of each channel.
    merge : {"mean", "weighted", "projection", "corrected", "refit"}, optional
        How a new channel's producer combines its members' (see :func:`speechprune.prune.merge`);
        ``refit`` also refits each feed-forward consumer on synthetic speech (:mod:`speechprune.refit`).
        (Its old name ``merge_rule`` works for one more release, with a warning.)
    recipe : {"paper", "recommended", "pairs-refit-2026", "pairs-variance-2026", "pairs-2026"}, optional
        A named set of the clustering options (:mod:`speechprune.recipes`, default ``paper``:
        ``cluster``, ``both``, ``uniform``, ``mean``, ``none``); every option given explicitly
        overrides it.
    max_iter : int, default 100
        k-means iterations at most.
    n_init : int, default 1
        k-means restarts; the run with the lowest inertia is kept.
    progress : bool, default True
        Show a progress bar.

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
        outside [0, 1) or one that empties a layer, a bad ``budget``, or a method that raises or
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
    >>> report = compress(tiny_model("whisper"), method=keep_first, budget={"decoder.layers.1.ffn": 10},
    ...                   progress=False)
    >>> [(u.name, u.channels_after) for u in report.units]
    [('decoder.layers.1.ffn', 10)]
    """
    options = options_from(options, fields, "compress")
    max_iter = check_int("max_iter", max_iter, minimum=1)
    n_init = check_int("n_init", n_init, minimum=1)
    family = model_family(model)
    chosen = options.assigner
    keep, sparsity = options.budget, options.sparsity
    if keep is not None:
        units = _check_keep(model, dict(keep), options.scope)
        parts = tuple(p for p in PARTS if any(u.part == p for u in units))
    else:
        parts = parse_scope(options.scope, model)
        units = units_in_scope(model, parts)
    _warn_ignored(options, fields)
    method_kwargs = options.method_kwargs(max_iter=max_iter, n_init=n_init)

    start = time.perf_counter()
    params_before = count_parameters(model)
    label = f"{chosen.name} {sparsity:g}" if keep is None else f"{chosen.name} explicit"
    bar = tqdm(total=2 * len(units), desc=label, unit="step", disable=not progress)

    def cost_fn(unit, k):
        return assign_cluster(unit, k, **{**_kmeans_knobs(options, max_iter, n_init), "max_iter": min(max_iter, 20)}).cost

    lower_kmeans = ("lower the k-means batch (speechprune.kmeans.MAX_BATCH_ELEMENTS, default 2**29 elements), "
                    "or compress on the CPU (--device cpu, DEVICE = 'cpu' in the chapters)")
    with out_of_memory_as_error(f"allocating the channels of {len(units)} units (the model is unchanged)",
                                lower_kmeans):
        if keep is None:  # the cost allocation runs k-means too
            keep = allocate(units, sparsity, options.allocation, cost_fn=cost_fn,
                            progress=(lambda name: bar.set_postfix_str(f"allocating: {name}")) if progress else None)
    inputs = {}
    if options.merge == "refit" or chosen.calibrated:  # every unit's inputs on synthetic speech, from the dense model
        why = "the refit merge" if options.merge == "refit" else f"the {chosen.name!r} method"
        bar.set_postfix_str("calibration: the dense model on synthetic speech")
        with out_of_memory_as_error(f"running the dense model on synthetic speech for {why} (the model is "
                                    "unchanged)", "lower speechprune.calibration.CALIBRATION_BATCH['cuda'] (clips "
                                    "per pass, default 8) or CALIBRATION_ROWS, or compress on the CPU"):
            inputs = capture_inputs(model, [u for u in units if refittable(u)])
    with out_of_memory_as_error(f"assigning the channels of {len(units)} units with {chosen.name!r} "
                                "(the model is unchanged)", lower_kmeans):
        # every assignment first, so that a failing or invalid method leaves the model untouched
        assignments = _assignments(units, keep, chosen, method_kwargs, bar,
                                   inputs=inputs if chosen.calibrated else None)
    reports = []
    for unit, (a, seconds) in zip(units, assignments):
        bar.set_postfix_str(f"merging: {unit.name}")
        t0 = time.perf_counter()
        n, p0 = unit.n_channels, unit.num_parameters()
        merge(unit, a, options.merge or "mean", inputs=inputs.pop(unit.name, None))
        reports.append(UnitReport(unit.name, unit.part, n, a.k, p0, unit.num_parameters(), a.cost,
                                  seconds + time.perf_counter() - t0))
        bar.update(1)
    bar.close()
    if sparsity is None:
        sparsity = 1.0 - sum(r.channels_after for r in reports) / sum(r.channels_before for r in reports)
    features, merge_rule, weighting = options.shaped()
    report = CompressionReport(family, chosen.name, sparsity, list(parts), options.allocation, options.seed,
                               params_before, count_parameters(model), time.perf_counter() - start, reports,
                               features, merge_rule, weighting, options.recipe)
    record_widths(model, {k: v for k, v in report.to_dict().items() if k != "units"})
    return report


def _assignments(units: list[Unit], keep: dict[str, int], chosen, method_kwargs: dict, bar,
                 inputs: dict | None = None) -> list[tuple]:
    """Every unit's checked assignment and its seconds (the batched form when the method has one).

    ``inputs`` ({unit name: its inputs on synthetic speech}) go to a calibrated method, one unit at a time.
    """
    assignments = []
    if inputs is None and chosen.batched is not None and len(units) > 1:  # e.g. k-means: on a GPU, same-shaped layers seeded together
        bar.set_postfix_str(f"assigning {len(units)} units together")
        t0 = time.perf_counter()
        try:
            batch = chosen.batched(units, [keep[u.name] for u in units], **method_kwargs)
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
            calibration = {} if inputs is None else {"inputs": inputs.get(unit.name)}
            assignments.append((assign(unit, keep[unit.name], chosen, **method_kwargs, **calibration),
                                time.perf_counter() - t0))
            bar.update(1)
    return assignments


def _kmeans_knobs(options: CompressionOptions, max_iter: int, n_init: int) -> dict:
    """The k-means options of the cost allocation's probe (seeded, whichever method then runs)."""
    return dict(seed=0 if options.seed is None else options.seed, max_iter=max_iter, n_init=n_init,
                features=options.features or "both", weighting=options.weighting or "none")


def _warn_ignored(options: CompressionOptions, fields: dict) -> None:
    """Warn about options given explicitly that the method does not read (the report records what ran)."""
    fields = {("merge" if k == "merge_rule" else k): v for k, v in fields.items()}
    ignored = [f"{name}={fields[name]!r}" for name in ("features", "merge", "weighting")
               if fields.get(name) is not None and getattr(options, name) != fields[name]]
    if ignored:
        ran = dict(zip(("features", "merge", "weighting"), options.shaped()))
        warn(f"method {options.method_name!r} ignores {', '.join(ignored)}: it does not read "
             f"{'them' if len(ignored) > 1 else 'it'}; the report records what ran "
             f"({', '.join(f'{k}={v!r}' for k, v in ran.items())})")
