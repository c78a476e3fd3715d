"""Assignment methods: a registry that the package's own methods and plug-ins share.

A method decides, for one unit with ``n`` channels and a budget of ``k``, which new channel
each old channel becomes::

    fn(unit, k, **options) -> LongTensor of length unit.n_channels

with values in ``0..k-1`` (the new channel it joins) or ``-1`` (dropped), every new channel
getting at least one member. :func:`speechprune.prune.merge` then builds the new channel
from its members, whatever method chose them. ``cluster`` and ``magnitude`` are registered
here like any other method; a method may also return an :class:`~speechprune.prune.Assignment`
to report its own cost (the built-ins do).

``options`` are the keyword arguments of :func:`speechprune.compress` that a method's
signature names (``seed``, ``max_iter``, ``n_init``, ``features``, ``weighting``), or all of
them when it takes ``**options``. A method whose signature names ``inputs`` is *calibrated*: it
gets each feed-forward unit's inputs on synthetic speech (:func:`speechprune.calibration.capture_inputs`,
``None`` for other units), as ``obs`` does.

A third-party package registers methods without touching speechprune by declaring an entry
point in the group ``speechprune.methods`` (``name = package.module:function``, or
``package.module:METHOD`` naming a :class:`Method` that declares what it reads). They are
loaded the first time a name is not found or the list of methods is asked for (the command
line does this); one that fails to import is reported and the others still work.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from speechprune.errors import SpeechPruneError
from speechprune.obs import assign_obs
from speechprune.prune import Assignment, assign_cluster, assign_magnitude, assign_pairs, channel_features, cluster_many
from speechprune.structure import Unit

ENTRY_POINT_GROUP = "speechprune.methods"

MethodFunction = Callable[..., Any]


#: The options that can shape a method's result (beyond the k-means knobs ``max_iter``, ``n_init``).
OPTION_NAMES = ("features", "weighting", "merge", "seed")


def _signature_names(fn: MethodFunction) -> set[str] | None:
    """The keyword names ``fn`` takes; None when it takes ``**kwargs``; an empty set without a signature."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: pass nothing
        return set()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


@dataclass(frozen=True)
class Method:
    """A named assignment method ``fn(unit, k, **options)`` that describes itself.

    Parameters
    ----------
    name : str
        The registered name.
    fn : callable
        ``fn(unit, k, **options)``.
    reads : frozenset of str, optional
        Which of :data:`OPTION_NAMES` shape its result. Default: the names its signature takes
        (all of them with ``**kwargs``), plus ``merge`` (its new channels may have several members).
        ``seed`` in ``reads`` is what makes a method seeded: without it a given seed is recorded as
        "no seed".
    fixed : mapping, optional
        Options the method fixes itself, as its report shows them (magnitude ranks by
        ``features="producer"``).
    batched : callable, optional
        ``batched(units, ks, **options) -> list of Assignment``: the same assignments for many units
        at once (k-means seeds same-shaped layers together on a GPU).
    description : str, optional
        What it does, in the words a model card uses.

    Everything that needs to know about a method (:func:`speechprune.compress`, the study runner,
    ``compare``, the report and the model card) asks it through these, never by its name.
    """

    name: str
    fn: MethodFunction
    reads: frozenset[str] | None = None
    fixed: Mapping[str, str] = field(default_factory=dict)
    batched: Callable[..., list[Assignment]] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if self.reads is None:
            names = _signature_names(self.fn)
            taken = set(OPTION_NAMES) if names is None else (set(OPTION_NAMES) & names) | {"merge"}
            object.__setattr__(self, "reads", frozenset(taken))
        else:
            unknown = set(self.reads) - set(OPTION_NAMES)
            if unknown:
                raise SpeechPruneError(f"method {self.name!r}: reads names unknown options {sorted(unknown)}; "
                                       f"use some of {', '.join(OPTION_NAMES)}")
            object.__setattr__(self, "reads", frozenset(self.reads))

    @property
    def calibrated(self) -> bool:
        """Whether it reads each unit's inputs on synthetic speech: its signature names ``inputs``
        (:func:`speechprune.compress` then records them before assigning, as for the refit merge)."""
        names = _signature_names(self.fn)
        return names is not None and "inputs" in names

    @property
    def takes_seed(self) -> bool:
        """Whether the seed changes the result (k-means); a seed-free method records "no seed"."""
        return "seed" in self.reads

    def accepted(self, options: dict[str, Any]) -> dict[str, Any]:
        """The subset of ``options`` that ``fn``'s signature takes (all of them with ``**kwargs``)."""
        names = _signature_names(self.fn)
        if names is None:
            return dict(options)
        return {k: v for k, v in options.items() if k in names}

    def __call__(self, unit: Unit, k: int, **options: Any) -> Assignment:
        """Run the method on ``unit`` and return its checked assignment.

        Raises
        ------
        SpeechPruneError
            When the method raises or returns something that is not a valid assignment;
            the message names the method and the unit.
        """
        try:
            out = self.fn(unit, k, **self.accepted(options))
        except SpeechPruneError as err:
            raise SpeechPruneError(f"method {self.name!r} failed on {unit.name}: {err}") from err
        except torch.cuda.OutOfMemoryError:  # not a bug of the method: compress says which step and what to lower
            raise
        except Exception as err:  # a plug-in's bug: name it, keep the traceback as the cause
            raise SpeechPruneError(
                f"method {self.name!r} failed on {unit.name}: {type(err).__name__}: {err}"
            ) from err
        cost = ridge = None
        if isinstance(out, Assignment):
            if out.k != k:
                raise SpeechPruneError(f"method {self.name!r} returned k={out.k} for {unit.name}, asked for {k}")
            out, cost, ridge = out.labels, out.cost, out.ridge
        labels = check_labels(out, unit, k, self.name)
        return Assignment(labels, k, float(cost) if cost is not None else assignment_cost(unit, labels, k), ridge)


def check_labels(labels: Any, unit: Unit, k: int, name: str = "method") -> torch.Tensor:
    """``labels`` as a LongTensor on the unit's device, or an error naming ``name``.

    A valid assignment is a 1-D integer tensor of length ``unit.n_channels`` with values in
    ``-1..k-1`` in which every value ``0..k-1`` occurs.
    """
    n = unit.n_channels
    where = f"method {name!r} on {unit.name}"
    if not isinstance(labels, torch.Tensor):
        raise SpeechPruneError(f"{where} returned a {type(labels).__name__}; it must return a LongTensor of {n} labels")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise SpeechPruneError(f"{where} returned {labels.dtype} labels; they must be integers (torch.long)")
    if labels.dim() != 1 or labels.numel() != n:
        raise SpeechPruneError(
            f"{where} returned labels of shape {tuple(labels.shape)}; expected ({n},), one per channel"
        )
    device = unit.consumer.weight.device
    labels = labels.detach().to(device=device, dtype=torch.long)
    lo, hi = int(labels.min()), int(labels.max())
    if lo < -1 or hi >= k:
        raise SpeechPruneError(
            f"{where} returned labels in [{lo}, {hi}]; they must lie in [-1, {k - 1}] (-1 drops a channel)"
        )
    used = torch.zeros(k, dtype=torch.bool, device=device)
    used[labels[labels >= 0]] = True
    if not bool(used.all()):
        empty = torch.nonzero(~used).squeeze(1)[:5].tolist()
        raise SpeechPruneError(
            f"{where} left new channel(s) {empty} without members; each of the {k} new channels needs one"
        )
    return labels


@torch.no_grad()
def assignment_cost(unit: Unit, labels: torch.Tensor, k: int) -> float:
    """The cost of an assignment in the paper's feature space.

    Squared distance of every kept channel's features (producer rows and consumer columns) to
    its cluster's mean, plus the squared norm of every dropped channel: k-means inertia for a
    clustering, and what magnitude pruning throws away for a selection.
    """
    x = channel_features(unit, "both")
    kept = labels >= 0
    dropped = float(x[~kept].pow(2).sum())
    xs, dst = x[kept], labels[kept]
    sums = torch.zeros(k, x.shape[1], device=x.device).index_add_(0, dst, xs)
    counts = torch.zeros(k, device=x.device).index_add_(0, dst, torch.ones_like(dst, dtype=x.dtype))
    means = sums / counts.clamp_min(1).unsqueeze(1)
    return dropped + float((xs - means[dst]).pow(2).sum())


def _magnitude(unit: Unit, k: int) -> Assignment:
    """Keep the ``k`` channels with the largest producer norm (the baseline)."""
    return assign_magnitude(unit, k)


_REGISTRY: dict[str, Method] = {}
_BUILTINS = ("cluster", "magnitude", "pairs", "obs")
_entry_points_loaded = False
#: entry point name -> why it could not be loaded, from the last :func:`load_entry_points`
entry_point_errors: dict[str, str] = {}


def register_method(name: str, fn: MethodFunction | None = None, *, replace: bool = False,
                    reads: Any = None, fixed: Mapping[str, str] | None = None,
                    batched: Callable[..., list[Assignment]] | None = None, description: str = ""):
    """Register an assignment method under ``name``.

    Parameters
    ----------
    name : str
        The name ``compress(method=...)`` and ``speechprune compress --method`` use.
    fn : callable, optional
        ``fn(unit, k, **options)`` returning a LongTensor of length ``unit.n_channels``: the
        new channel (``0..k-1``) of every old channel, or ``-1`` to drop it. It may instead
        return a :class:`speechprune.prune.Assignment` to report its own cost. Without
        ``fn``, ``register_method`` returns a decorator.
    replace : bool, default False
        Allow replacing a method already registered under ``name``.
    reads, fixed, batched, description : optional
        How the method describes itself (see :class:`Method`): the options that shape its result
        (default: from its signature; a method whose signature takes ``seed`` is seeded), the
        options it fixes itself, a batched form, and a phrase for model cards.

    Returns
    -------
    callable
        ``fn`` itself (or the decorator), so that it can be used as a decorator.

    Raises
    ------
    SpeechPruneError
        When ``name`` is taken (and ``replace`` is False), is not a plain identifier-like
        string, or ``fn`` is not callable.

    Examples
    --------
    >>> import torch
    >>> from speechprune import available_methods, register_method
    >>> from speechprune.methods import unregister_method
    >>> def first_k(unit, k):
    ...     labels = torch.full((unit.n_channels,), -1, dtype=torch.long)
    ...     labels[:k] = torch.arange(k)
    ...     return labels
    >>> register_method("first-k", first_k)  # doctest: +ELLIPSIS
    <function first_k at ...>
    >>> "first-k" in available_methods()
    True
    >>> register_method("first-k", first_k)
    Traceback (most recent call last):
    ...
    speechprune.errors.SpeechPruneError: method 'first-k' is already registered; pass replace=True to replace it
    >>> unregister_method("first-k")
    """
    if fn is None:
        return lambda f: register_method(name, f, replace=replace, reads=reads, fixed=fixed, batched=batched,
                                         description=description)
    if not isinstance(name, str) or not name or any(c.isspace() or c == "," for c in name):
        raise SpeechPruneError(f"method name {name!r} must be a non-empty string without spaces or commas")
    if not callable(fn):
        raise SpeechPruneError(f"method {name!r}: {fn!r} is not callable; register fn(unit, k, **options)")
    if name in _REGISTRY and not replace:
        raise SpeechPruneError(f"method {name!r} is already registered; pass replace=True to replace it")
    _REGISTRY[name] = Method(name, fn, None if reads is None else frozenset(reads), dict(fixed or {}), batched,
                             description)
    return fn


def unregister_method(name: str) -> None:
    """Remove a registered method (the built-ins ``cluster`` and ``magnitude`` stay)."""
    if name in _BUILTINS:
        raise SpeechPruneError(f"the built-in method {name!r} cannot be removed; register a replacement instead")
    if name not in _REGISTRY:
        raise SpeechPruneError(f"no method {name!r} is registered")
    del _REGISTRY[name]


def load_entry_points(*, reload: bool = False) -> dict[str, str]:
    """Register every method of the entry point group ``speechprune.methods`` (once per process).

    Returns the entry points that could not be loaded, by name, with the reason; each is also
    issued as a warning. Methods that load are registered even when others fail.
    """
    global _entry_points_loaded
    if _entry_points_loaded and not reload:
        return dict(entry_point_errors)
    _entry_points_loaded = True
    entry_point_errors.clear()
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            fn = ep.load()
            described = fn if isinstance(fn, Method) else None  # a Method describes itself; a function by signature
            fn = described.fn if described else fn
            if ep.name in _REGISTRY:
                if _REGISTRY[ep.name].fn is fn:  # loaded before
                    continue
                raise SpeechPruneError(f"the name {ep.name!r} is already taken by another method")
            if described:
                register_method(ep.name, fn, reads=described.reads, fixed=described.fixed, batched=described.batched,
                                description=described.description)
            else:
                register_method(ep.name, fn)
        except Exception as err:  # an uninstalled dependency, a syntax error, a clash: report, go on
            entry_point_errors[ep.name] = f"{type(err).__name__}: {err}"
    for name, why in entry_point_errors.items():
        warnings.warn(f"speechprune method plug-in {name!r} (entry point group {ENTRY_POINT_GROUP}) "
                      f"was not loaded: {why}", RuntimeWarning, stacklevel=2)
    return dict(entry_point_errors)


def available_methods(*, entry_points: bool = True) -> tuple[str, ...]:
    """Names of the registered methods, built-ins first.

    Parameters
    ----------
    entry_points : bool, default True
        Load the plug-ins of the entry point group ``speechprune.methods`` first (once per
        process; one that fails is reported with a warning and left out).

    Returns
    -------
    tuple of str
        ``("cluster", "magnitude", ...)``.

    Examples
    --------
    >>> from speechprune import available_methods
    >>> available_methods()[:2]
    ('cluster', 'magnitude')
    """
    if entry_points:
        load_entry_points()
    return tuple(sorted(_REGISTRY, key=lambda n: (n not in _BUILTINS, _BUILTINS.index(n) if n in _BUILTINS else 0, n)))


def get_method(method: str | MethodFunction | Method) -> Method:
    """The :class:`Method` for a registered name or a callable; unknown names list the known ones."""
    if isinstance(method, Method):
        return method
    if callable(method):
        for m in _REGISTRY.values():
            if m.fn is method:
                return m
        return Method(getattr(method, "__name__", type(method).__name__), method)
    if not isinstance(method, str):
        raise SpeechPruneError(f"method must be a registered name or a callable, got {type(method).__name__}")
    if method not in _REGISTRY:
        load_entry_points()
    if method not in _REGISTRY:
        failed = f" (plug-ins that failed to load: {', '.join(entry_point_errors)})" if entry_point_errors else ""
        raise SpeechPruneError(
            f"unknown method {method!r}: use one of {', '.join(available_methods(entry_points=False))}, "
            f"register one with speechprune.register_method, or pass a callable{failed}"
        )
    return _REGISTRY[method]


def assign(unit: Unit, k: int, method: str | MethodFunction | Method = "cluster", **options: Any) -> Assignment:
    """Assign ``unit``'s channels to ``k`` new ones with any registered method or callable."""
    n = unit.n_channels
    if not 1 <= k <= n:
        raise SpeechPruneError(f"{unit.name}: cannot keep {k} of {n} channels")
    return get_method(method)(unit, k, **options)


def is_registered(method: Method) -> bool:
    """Whether ``method`` is the one registered under its name (a plain callable is not)."""
    return method.name in _REGISTRY and _REGISTRY[method.name].fn is method.fn


def describe_method(name: str) -> str:
    """A registered method's description, or ``'NAME' assignment method``."""
    method = _REGISTRY.get(name)
    return method.description if method is not None and method.description else f"{name!r} assignment method"


register_method("cluster", assign_cluster, reads=("features", "weighting", "merge", "seed"), batched=cluster_many,
                description="channel k-means clustering (channels merged: producers averaged, consumers summed)")
# one member per new channel: no merge, no seed; it ranks channels by their producer norm
register_method("magnitude", _magnitude, reads=(), fixed={"features": "producer"},
                description="magnitude pruning (the channels with the largest producer norm kept)")
register_method("pairs", assign_pairs,  # from its signature: features, weighting, merge; no seed
                description="closest-pairs-first merging (the nearest channels merged until the budget is met; "
                            "no seed)")
register_method("obs", assign_obs,  # from its signature: features (attention units), merge; calibrated; no seed
                description="structured optimal-brain-surgeon pruning (feed-forward channels removed greedily by the "
                            "output error the refit cannot recover, on synthetic speech; no seed)")
