"""Mixed sparsity: how many channels each layer keeps, chosen from the weights alone.

Every allocation removes the same total number of channels from a pool of units (all
feed-forward units in scope form one pool, all attention units another): the number a
uniform allocation removes; one that cannot (its per-layer floor keeps more) is refused. A
sparsity that rounds to nothing removed in a pool gets a warning. They differ only in where:

* ``uniform``: every layer loses the same fraction (the reference).
* ``variance``: a layer keeps channels in proportion to the variance of its producer
  weights: layers with more spread-out weights keep more.
* ``cost``: a global greedy on clustering cost: channels are removed, a grid step at a
  time, from whichever layer's k-means inertia grows least per channel removed.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from speechprune.errors import SpeechPruneError, check_choice, warn
from speechprune.structure import Unit

ALLOCATIONS = ("uniform", "variance", "cost")


def uniform_keep(n: int, sparsity: float) -> int:
    """Channels a uniform cut keeps of ``n``: ``round(n * (1 - sparsity))``."""
    return int(round(n * (1.0 - sparsity)))


def _check_uniform(units: Sequence[Unit], sparsity: float) -> dict[str, int]:
    keep = {}
    for u in units:
        k = uniform_keep(u.n_channels, sparsity)
        if k < 1:
            raise SpeechPruneError(
                f"sparsity {sparsity:g} leaves {u.name} with zero of its {u.n_channels} "
                f"{'heads' if u.kind == 'attention' else 'channels'}"
            )
        keep[u.name] = k
    return keep


def _fit_total(ns: torch.Tensor, weights: torch.Tensor, total_keep: int, min_keep: torch.Tensor) -> torch.Tensor:
    """Integer keeps in [min_keep, n] proportional to ``weights * n``, summing to ``total_keep``."""
    lo, hi = 0.0, 1.0
    while float(torch.clamp(hi * weights * ns, min_keep, ns).sum()) < total_keep:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        if float(torch.clamp(mid * weights * ns, min_keep, ns).sum()) < total_keep:
            lo = mid
        else:
            hi = mid
    real = torch.clamp(hi * weights * ns, min_keep, ns)
    keep = torch.floor(real).long()
    # hand out the remaining channels to the largest fractional parts that still have room
    short = total_keep - int(keep.sum())
    order = torch.argsort(real - keep, descending=True)
    for i in order.tolist():
        if short <= 0:
            break
        if keep[i] < ns[i]:
            keep[i] += 1
            short -= 1
    return keep


def _variance_keep(units: Sequence[Unit], total_keep: int, min_frac: float, sparsity: float) -> list[int]:
    ns = torch.tensor([u.n_channels for u in units], dtype=torch.float64)
    var = torch.tensor(
        [float(torch.var(torch.cat([p.weight.detach().float().flatten() for p in u.producers]))) for u in units],
        dtype=torch.float64,
    )
    min_keep = torch.clamp(torch.ceil(ns * min_frac), min=1)
    floor = int(min_keep.sum())
    if floor > total_keep:
        raise SpeechPruneError(
            f"variance allocation cannot reach sparsity {sparsity:g}: it keeps at least {min_frac:.0%} of every "
            f"{units[0].kind} unit ({floor} channels over {len(units)} units), but the budget keeps {total_keep}; "
            "use --allocation uniform or a lower sparsity")
    keep = _fit_total(ns, var / var.mean(), total_keep, min_keep)
    if int(keep.sum()) != total_keep:  # never expected: _fit_total hands out exactly the budget
        raise SpeechPruneError(f"variance allocation kept {int(keep.sum())} channels instead of {total_keep}")
    return keep.tolist()


def _warn_if_rounding_removes_nothing(units: Sequence[Unit], sparsity: float, keep: dict[str, int]) -> None:
    """Warn when rounding leaves every unit of a kind whole: the requested sparsity removes nothing there."""
    for kind in ("ffn", "attention"):
        pool = [u for u in units if u.kind == kind]
        if not pool or sparsity == 0 or any(keep[u.name] < u.n_channels for u in pool):
            continue
        what = "heads" if kind == "attention" else "channels"
        n = min(u.n_channels for u in pool)
        warn(f"sparsity {sparsity:g} removes no {kind} {what}: round({n} x {1 - sparsity:g}) = "
             f"{uniform_keep(n, sparsity)} of {n} {what} kept in each of the {len(pool)} {kind} unit(s); "
             f"a sparsity above {0.5 / n:g} removes at least one")


def _cost_keep(units: Sequence[Unit], total_keep: int, sparsity: float, min_frac: float,
               cost_fn: Callable[[Unit, int], float], progress: Callable[[str], None] | None) -> list[int]:
    """Greedy over a grid of kept fractions, by least growth of clustering cost per channel."""
    step = min(0.05, max(sparsity / 2, 0.01))
    floor = max(min_frac, 1.0 - min(0.9, 3 * sparsity))
    grids: list[list[int]] = []
    for u in units:
        n, ks, f = u.n_channels, [u.n_channels], 1.0 - step
        while f >= floor - 1e-9:
            k = max(1, int(round(n * f)))
            if k < ks[-1]:
                ks.append(k)
            f -= step
        grids.append(ks)
    # Lazy: a layer's cost at a grid point is measured only when the greedy reaches the point
    # before it, so the choices are those of measuring the whole grid, at a fraction of the k-means.
    costs: list[list[float]] = [[0.0] for _ in units]

    def cost_at(i: int, j: int) -> float:
        while len(costs[i]) <= j:
            if progress:
                progress(units[i].name)
            costs[i].append(cost_fn(units[i], grids[i][len(costs[i])]))
        return costs[i][j]

    pos = [0] * len(units)
    to_remove = sum(u.n_channels for u in units) - total_keep
    removed = 0
    while removed < to_remove:
        best, best_rate = -1, float("inf")
        for i, ks in enumerate(grids):
            j = pos[i]
            if j + 1 < len(ks):
                rate = (cost_at(i, j + 1) - costs[i][j]) / (ks[j] - ks[j + 1])
                if rate < best_rate:
                    best, best_rate = i, rate
        if best < 0:
            raise SpeechPruneError("cost allocation: the grid cannot reach the requested sparsity")
        ks, j = grids[best], pos[best]
        take = min(ks[j] - ks[j + 1], to_remove - removed)
        pos[best] += 1
        removed += take
        if take < ks[j] - ks[j + 1]:  # the last step overshoots: stop part-way
            grids[best] = ks[: j + 1] + [ks[j] - take]
    return [grids[i][pos[i]] for i in range(len(units))]


def allocate(units: Sequence[Unit], sparsity: float, allocation: str = "uniform", *,
             min_keep_fraction: float = 0.05,
             cost_fn: Callable[[Unit, int], float] | None = None,
             progress: Callable[[str], None] | None = None) -> dict[str, int]:
    """Channels to keep per unit name. Pools feed-forward and attention units separately.

    Every allocation keeps the total that a uniform cut would keep in each pool; they differ
    only in which layers give up more (see the module's description of each rule). The
    result can be edited and passed to ``compress(model, budget=...)``.

    Parameters
    ----------
    units : sequence of Unit
        The units to budget, e.g. ``speechprune.structure.units_in_scope(model, "ffn")``.
    sparsity : float
        Fraction of channels removed in each pool, in [0, 1).
    allocation : {"uniform", "variance", "cost"}, default "uniform"
        How the removals are spread over the layers.
    min_keep_fraction : float, default 0.05
        No layer keeps fewer than this fraction of its channels (mixed allocations).
    cost_fn : callable, optional
        ``cost_fn(unit, k)``: the clustering cost of keeping ``k`` channels; ``cost`` needs it.
    progress : callable, optional
        Called with each unit's name while costs are measured.

    Returns
    -------
    dict
        ``{unit name: channels to keep}``.

    Raises
    ------
    SpeechPruneError
        For an unknown allocation, a sparsity that leaves a layer with no channel, or the
        ``cost`` allocation without ``cost_fn``.

    Examples
    --------
    >>> from speechprune import allocate, compress
    >>> from speechprune.structure import units_in_scope
    >>> from speechprune.testing import tiny_model
    >>> model = tiny_model("hubert")
    >>> keep = allocate(units_in_scope(model, "ffn"), 0.5)
    >>> keep
    {'encoder.layers.0.ffn': 32, 'encoder.layers.1.ffn': 32}
    >>> keep["encoder.layers.1.ffn"] = 16  # prune the last layer harder
    >>> report = compress(model, budget=keep, progress=False)
    >>> model.hubert.encoder.layers[1].feed_forward.intermediate_dense.out_features
    16
    """
    check_choice("allocation", allocation, ALLOCATIONS)
    uniform = _check_uniform(units, sparsity)
    _warn_if_rounding_removes_nothing(units, sparsity, uniform)
    if allocation == "uniform" or sparsity == 0:
        return uniform
    keep: dict[str, int] = {}
    for kind in ("ffn", "attention"):
        pool = [u for u in units if u.kind == kind]
        if not pool:
            continue
        total = sum(uniform[u.name] for u in pool)
        if allocation == "variance":
            ks = _variance_keep(pool, total, min_keep_fraction, sparsity)
        else:
            if cost_fn is None:
                raise SpeechPruneError("the cost allocation needs a clustering cost function")
            ks = _cost_keep(pool, total, sparsity, min_keep_fraction, cost_fn, progress)
        keep.update({u.name: int(k) for u, k in zip(pool, ks)})
    return keep
