"""One compression's options, resolved and checked in one place: :class:`CompressionOptions`.

Every entry point builds one: :func:`speechprune.compress` (from its keyword arguments, or given
one), ``speechprune compress`` and ``compare`` (from their flags), a study file's options (one per
option and setting), the book's presets and the model card (back from a saved report). The
recipe is resolved here and nowhere else, every value is checked here with one message per bad
value, and the method is asked, not named, what it reads: an option the method does not take is
recorded as ``None`` (``"no seed"`` for a seed-free method), whichever entry point built it.

>>> from speechprune.options import CompressionOptions
>>> o = CompressionOptions(recipe="recommended", sparsity=0.1)
>>> o.method, o.features, o.seed, o.label()
('pairs', 'producer', None, 'pairs variance producer refit')
>>> CompressionOptions(method="cluster", sparsity=0.2, scope="encoder.ffn").cli_args()[:6]
['--method', 'cluster', '--sparsity', '0.2', '--scope', 'encoder.ffn']
>>> CompressionOptions(sparsity=1.0)
Traceback (most recent call last):
...
speechprune.errors.SpeechPruneError: sparsity must be in [0, 1), got 1.0
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable

from speechprune.allocation import ALLOCATIONS
from speechprune.errors import SpeechPruneError, check_choice, check_seed
from speechprune.methods import Method, get_method, is_registered
from speechprune.prune import FEATURES, MERGES, WEIGHTINGS
from speechprune.recipes import DEFAULT_RECIPE, RECIPES, recipe_options
from speechprune.structure import parse_scope

#: The options a recipe fills in (an explicit value overrides the recipe's).
RECIPE_FIELDS = ("method", "features", "allocation", "merge", "weighting")
#: What a study record and its key store of a compression (``None`` where the method does not read it).
RECORD_FIELDS = ("scope", "sparsity", "method", "features", "allocation", "merge", "weighting", "seed")
#: Old keyword names that still work for one release, with a :class:`DeprecationWarning`.
RENAMED = {"merge_rule": "merge", "keep": "budget"}
DEFAULT_SPARSITY = 0.2
DEFAULT_SCOPE = "ffn"


def check_sparsity(sparsity: Any) -> float:
    """``sparsity`` as a float in [0, 1), or a :class:`SpeechPruneError` naming the bad value.

    The one rule for every entry point (the command line, :func:`speechprune.compress`, a study
    file, ``compare``).
    """
    if isinstance(sparsity, bool):
        raise SpeechPruneError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    try:
        s = float(sparsity)
    except (TypeError, ValueError):
        raise SpeechPruneError(f"sparsity must be a number in [0, 1), got {sparsity!r}") from None
    if not (0.0 <= s < 1.0) or math.isnan(s):
        raise SpeechPruneError(f"sparsity must be in [0, 1), got {sparsity!r}")
    return s


def renamed(kwargs: dict[str, Any], where: str) -> dict[str, Any]:
    """``kwargs`` with the old names of :data:`RENAMED` mapped to the new ones, each with a warning."""
    out = dict(kwargs)
    for old, new in RENAMED.items():
        if old in out:
            if out.get(new) is not None:
                raise SpeechPruneError(f"{where}: give {new}= or its old name {old}=, not both")
            warnings.warn(f"{where}: {old}= is deprecated and will be removed in the next release; use {new}=",
                          DeprecationWarning, stacklevel=4)
            out[new] = out.pop(old)
    return out


@dataclass(frozen=True)
class CompressionOptions:
    """What to compress and how: resolved from ``recipe`` and checked when it is made.

    Options the method does not read are set to ``None`` (``features``, ``merge``, ``weighting``,
    ``seed``): what the report, the study record, the label and the command line show is what ran.

    Parameters
    ----------
    method : str or callable, optional
        A registered method (``cluster``, ``magnitude``, ``pairs``, a plug-in's) or a callable
        ``fn(unit, k, **options)``; default: the recipe's.
    sparsity : float, optional
        Fraction of channels removed in ``scope``, in [0, 1); default 0.2 (not with ``budget``).
    scope : str, optional
        Comma-separated parts (``encoder.ffn``, ``decoder.attention``, ``ffn``, ``all``, ...);
        checked against a model by :func:`speechprune.structure.parse_scope`. Default ``ffn``;
        with a ``budget``, no scope (the budget names its units) unless one is given.
    allocation, features, merge, weighting : str, optional
        Default: the recipe's (see :mod:`speechprune.recipes`).
    seed : int or None, default 0
        The k-means seed; ``None`` (no seed) for a method that takes none, whatever was given.
    recipe : str, optional
        ``paper`` or ``recommended``; explicit options override it. Unset, the options are the
        paper's defaults (and ``recipe`` stays None: no recipe was named).
    budget : dict, optional
        An explicit per-unit budget ``{unit name: channels kept}`` (what
        :func:`speechprune.allocate` returns); then ``sparsity`` is not given and ``allocation``
        is ``"explicit"``.

    Raises
    ------
    SpeechPruneError
        For an unknown recipe, method, allocation, feature set, merge rule or weighting, a sparsity
        outside [0, 1), a bad seed, or a budget given with a sparsity; one message per bad value.

    Examples
    --------
    >>> from speechprune import CompressionOptions, compress
    >>> from speechprune.testing import tiny_model
    >>> options = CompressionOptions(recipe="recommended", sparsity=0.25, scope="encoder.ffn", seed=3)
    >>> options.method, options.features, options.seed  # the brain surgeon takes no seed
    ('obs', 'producer', None)
    >>> options.label()
    'obs variance producer refit'
    >>> print(" ".join(options.cli_args()))
    --method obs --sparsity 0.25 --scope encoder.ffn --allocation variance --features producer --merge refit
    >>> report = compress(tiny_model("whisper"), options, progress=False)
    >>> report.options == options
    True
    >>> CompressionOptions(method="kmeans")
    Traceback (most recent call last):
    ...
    speechprune.errors.SpeechPruneError: unknown method 'kmeans': use one of cluster, magnitude, pairs, ...
    """

    method: str | Callable | None = None
    sparsity: float | None = None
    scope: str | None = None
    allocation: str | None = None
    features: str | None = None
    merge: str | None = None
    weighting: str | None = None
    seed: int | None = 0
    recipe: str | None = None
    budget: Mapping[str, int] | None = dataclasses.field(default=None, compare=True, repr=False)

    def __post_init__(self) -> None:
        recipe = DEFAULT_RECIPE if self.recipe is None else self.recipe
        check_choice("recipe", recipe, RECIPES)
        chosen = recipe_options(recipe)
        chosen.update({k: getattr(self, k) for k in RECIPE_FIELDS if getattr(self, k) is not None})
        method = get_method(chosen["method"])
        scope = DEFAULT_SCOPE if self.scope is None and self.budget is None else self.scope
        if scope is not None:
            if not isinstance(scope, str) or not scope.strip():
                raise SpeechPruneError(f"scope must be a string such as 'ffn' or 'encoder.ffn,decoder.attention', "
                                       f"got {scope!r}")
            parse_scope(scope)  # its parts, before any model is loaded; compress checks them against the model
        check_choice("merge rule", chosen["merge"], MERGES)
        check_choice("feature set", chosen["features"], FEATURES)
        check_choice("weighting", chosen["weighting"], WEIGHTINGS)
        if self.budget is not None:
            if self.sparsity is not None:
                raise SpeechPruneError("give either sparsity or budget (keep), not both: the budget already fixes "
                                       "every unit's channels")
            if not isinstance(self.budget, Mapping) or not self.budget:
                raise SpeechPruneError("budget (keep) must be a non-empty dict {unit name: channels to keep}, "
                                       "e.g. from allocate()")
            allocation, sparsity = "explicit", None
        else:
            allocation = chosen["allocation"]
            if allocation == "explicit":
                raise SpeechPruneError("allocation 'explicit' comes with a budget (budget=...); without one use "
                                       f"{', '.join(ALLOCATIONS)}")
            check_choice("allocation", allocation, ALLOCATIONS)
            sparsity = check_sparsity(DEFAULT_SPARSITY if self.sparsity is None else self.sparsity)
        seed = check_seed(0 if self.seed is None else self.seed)
        reads = method.reads
        values = dict(method=method.name if is_registered(method) else method.fn, scope=scope,
                      sparsity=sparsity, allocation=allocation,
                      features=chosen["features"] if "features" in reads else None,
                      merge=chosen["merge"] if "merge" in reads else None,
                      weighting=chosen["weighting"] if "weighting" in reads else None,
                      seed=seed if method.takes_seed else None)
        for name, value in values.items():
            object.__setattr__(self, name, value)

    # -- what the method is -----------------------------------------------------------------

    @property
    def assigner(self) -> Method:
        """The :class:`~speechprune.methods.Method` these options run."""
        return get_method(self.method)

    @property
    def method_name(self) -> str:
        return self.assigner.name

    @property
    def takes_seed(self) -> bool:
        return self.assigner.takes_seed

    def method_kwargs(self, *, max_iter: int = 100, n_init: int = 1) -> dict[str, Any]:
        """The keyword arguments the method's function takes, from these options and the k-means knobs."""
        given = dict(seed=self.seed, max_iter=max_iter, n_init=n_init, features=self.features,
                     weighting=self.weighting)
        return self.assigner.accepted({k: v for k, v in given.items() if v is not None})

    def shaped(self) -> tuple[str, str, str]:
        """(features, merge rule, weighting) as a compression report records them: what shaped the
        result, ``"none"`` where the method does not read it (magnitude ranks by producer norm)."""
        fixed = self.assigner.fixed
        return tuple(getattr(self, k) if getattr(self, k) is not None else fixed.get(k, "none")
                     for k in ("features", "merge", "weighting"))

    # -- names, keys, command lines ---------------------------------------------------------

    def record_fields(self) -> dict[str, Any]:
        """The fields a study record and its key store (``RECORD_FIELDS``: scope, sparsity, method, features,
        allocation, merge, weighting, seed)."""
        out = {k: getattr(self, k) for k in RECORD_FIELDS}
        out["method"] = self.method_name
        return out

    def key(self) -> str:
        """A short stable hash of :meth:`record_fields` (the same options give the same key)."""
        fields = self.record_fields()
        fields["budget"] = dict(sorted(self.budget.items())) if self.budget is not None else None
        return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]

    def label(self) -> str:
        """``cluster``, ``magnitude variance``, ``cluster producer projection``: the method and what
        differs from the paper's defaults."""
        parts = [self.method_name] + ([self.allocation] if self.allocation not in ("uniform", "explicit") else [])
        parts += [v for v, default in ((self.features, "both"), (self.merge, "mean"), (self.weighting, "none"))
                  if v is not None and v != default]
        return " ".join(parts)

    def cli_args(self) -> list[str] | None:
        """The ``speechprune compress`` options that reproduce these (None for an explicit budget,
        which has no command-line form)."""
        if self.budget is not None:
            return None
        args = ["--method", self.method_name, "--sparsity", f"{self.sparsity:g}", "--scope", self.scope,
                "--allocation", self.allocation]
        if self.method_name == "cluster" and self.assigner.fn is get_method("cluster").fn:
            args += ["--features", self.features, "--weighting", self.weighting, "--merge", self.merge]
        else:  # the options that shaped it, where they differ from what the flag would default to
            for flag, value, default in (("--features", self.features, None), ("--weighting", self.weighting, None),
                                         ("--merge", self.merge, "mean")):
                if value not in (None, "none", default):
                    args += [flag, value]
        if self.seed is not None:
            args += ["--seed", str(self.seed)]
        return args

    def describe(self) -> str:
        """One line: ``cluster (paper) at 20% of encoder.ffn, uniform allocation, seed 0``."""
        at = "an explicit budget" if self.budget is not None else f"{self.sparsity:.0%} of {self.scope}"
        seed = "no seed" if self.seed is None else f"seed {self.seed}"
        recipe = f" ({self.recipe})" if self.recipe else ""
        return f"{self.label()}{recipe} at {at}, {self.allocation} allocation, {seed}"

    # -- other shapes -----------------------------------------------------------------------

    @classmethod
    def from_report(cls, report: Mapping[str, Any]) -> "CompressionOptions":
        """The options back from a compression report (a dict: a saved folder's report or card).

        Fields a method did not read were saved as ``"none"`` (features, merge, weighting) and are
        read back as unset; the method's name must be registered.
        """
        def given(key: str) -> Any:
            value = report.get(key)
            return None if value in (None, "none") else value

        allocation = report.get("allocation")
        scope = report.get("scope")
        return cls(method=report["method"], scope=",".join(scope) if isinstance(scope, list) else scope,
                   sparsity=None if allocation == "explicit" else report.get("sparsity"),
                   allocation=None if allocation == "explicit" else allocation,
                   features=given("features"), merge=given("merge") or given("merge_rule"), weighting=given("weighting"),
                   seed=report.get("seed"), recipe=report.get("recipe"), budget=_budget_of(report) if allocation == "explicit" else None)

    def replace(self, **changes: Any) -> "CompressionOptions":
        """A copy with ``changes`` (checked again)."""
        return dataclasses.replace(self, **changes)


def recipe_fields(recipe: str | CompressionOptions) -> dict[str, Any]:
    """A named recipe's options (or those of resolved ``CompressionOptions``) as a run resolves them:
    :data:`RECIPE_FIELDS`, with ``None`` for what its method does not read (``obs`` reads no weighting).
    What records and reports store, so compare with this, not with
    :func:`speechprune.recipes.recipe_options`, which lists every field the recipe sets."""
    options = recipe if isinstance(recipe, CompressionOptions) else CompressionOptions(recipe=recipe)
    fields = options.record_fields()
    return {k: fields[k] for k in RECIPE_FIELDS}


def _budget_of(report: Mapping[str, Any]) -> dict[str, int]:
    return {u["name"]: u["channels_after"] for u in report.get("units", [])}


def options_from(options: CompressionOptions | None, fields: dict[str, Any], where: str) -> CompressionOptions:
    """``options``, or :class:`CompressionOptions` built from keyword ``fields`` (old names mapped)."""
    fields = renamed(fields, where)
    unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(CompressionOptions)})
    if unknown:
        raise TypeError(f"{where}() got unexpected keyword argument(s) {', '.join(unknown)}")
    if options is None:
        return CompressionOptions(**fields)
    if not isinstance(options, CompressionOptions):
        raise SpeechPruneError(f"{where}: options must be a CompressionOptions, got {type(options).__name__}")
    given = {k: v for k, v in fields.items() if v is not None}
    if given:
        raise SpeechPruneError(f"{where}: give a CompressionOptions or keyword options ({', '.join(given)}), not both")
    return options
