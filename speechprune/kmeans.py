"""K-means in torch, fast when the number of clusters k is close to the number of points n.

Channel clustering asks for k = 0.9 n (10% sparsity) or k = n / 2 clusters of a few thousand
channels per layer. There, scikit-learn spends almost all its time in greedy k-means++, whose k
sequential steps each compute distances from a few candidates to all n points (O(n d) each). Here
the n x n squared-distance matrix is computed once with one matmul, so each step is O(n); Lloyd
iterations keep the n x k distance matrix and recompute only the columns of centers that moved,
which, when most clusters are singletons, is a small part of a full n x d x k matmul. Everything
runs on the input's device with no per-point Python loops, so the same code is fast on a GPU.
The k-means++ seeding (and the distance matmul) live in speechprune.kmeans_seeding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from speechprune.errors import SpeechPruneError
from speechprune.kmeans_seeding import (
    _draws,
    _kmeans_plus_plus,
    _run_steps,
    _SeedSteps,
    _sq_distances,
    _stepper_wanted,
)

#: Largest distance matrix (in elements) held at once: 2**28 is 1 GiB in float32.
MAX_DISTANCE_ELEMENTS = 2**28

INITS = ("k-means++", "random")


@dataclass
class KMeansResult:
    """A partition of the rows of x into k non-empty clusters.

    `centers` are the means of each cluster's members (so merging channels by `labels` and by
    `centers` agree) and `inertia` is the sum of squared distances of points to their center.
    `matmuls` lists the (rows, inner, columns) shapes of the distance matmuls that were run (over
    all `n_init` runs), so a benchmark can time the bare matmuls against the whole run.
    """

    labels: Tensor
    centers: Tensor
    inertia: float
    n_iter: int
    matmuls: list[tuple[int, int, int]] = field(default_factory=list)


def kmeans(
    x: Tensor,
    k: int,
    *,
    n_init: int = 1,
    max_iter: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
    init: str = "k-means++",
    sample_weight: Tensor | None = None,
) -> KMeansResult:
    """Cluster the rows of `x` ([n, d]) into `k` clusters with Lloyd's algorithm.

    Follows scikit-learn's `KMeans` (lloyd): greedy k-means++ with 2 + log(k) local trials,
    `tol` relative to the mean feature variance on the total squared center shift, early stop when
    no label changes, empty clusters re-seeded with the points farthest from their centers, best of
    `n_init` runs by inertia. Exact duplicate rows always share a cluster unless k exceeds the
    number of distinct rows (then copies are split off, at zero cost, to keep every cluster
    non-empty). Deterministic for a given `seed` on CPU. Distances are computed in float32 (float64
    for float64 input; keep TF32 matmuls off on CUDA, PyTorch's default, or near-duplicate channels
    blur); `centers` come back in `x`'s dtype, everything on `x`'s device.

    `sample_weight` ([n], positive) weighs each point in the seeding, the means and the inertia, as
    in scikit-learn's `fit(x, sample_weight=...)`.

    Parameters
    ----------
    x : Tensor
        The points, [n, d], floating point, on any device.
    k : int
        Number of clusters, ``1 <= k <= n``.
    n_init : int, default 1
        Independent runs; the one with the lowest inertia is returned.
    max_iter : int, default 100
        Lloyd iterations at most per run.
    tol : float, default 1e-4
        Stop when the total squared center shift falls below ``tol`` times the mean feature variance.
    seed : int, default 0
        Seed of the k-means++ (or random) initialisation.
    init : {"k-means++", "random"}, default "k-means++"
        How the first centers are chosen.
    sample_weight : Tensor, optional
        Positive weight of every point, [n].

    Returns
    -------
    KMeansResult
        ``labels`` [n] (every cluster non-empty), ``centers`` [k, d], ``inertia``, ``n_iter``.

    Raises
    ------
    SpeechPruneError
        For a tensor that is not 2-D floating point and finite, a ``k`` outside ``1..n``, an
        unknown ``init``, bad ``n_init``, ``max_iter`` or ``tol``, or weights that are not
        positive and of shape [n].

    Examples
    --------
    >>> import torch
    >>> from speechprune import kmeans
    >>> x = torch.tensor([[0.0, 0.0], [0.0, 0.1], [5.0, 5.0], [5.0, 5.1]])
    >>> result = kmeans(x, 2)
    >>> result.labels.tolist()
    [0, 0, 1, 1]
    >>> round(result.inertia, 4)
    0.01
    >>> kmeans(x, 5)
    Traceback (most recent call last):
    ...
    speechprune.errors.SpeechPruneError: k must be an integer with 1 <= k <= n = 4, got 5
    """
    problem = _prepare(x, k, n_init, max_iter, tol, seed, init, sample_weight)
    return problem if isinstance(problem, KMeansResult) else _finish(problem)


@dataclass
class _Problem:
    """One k-means call, prepared up to the seeding: what `_finish` needs."""

    x: Tensor
    k: int
    n_init: int
    max_iter: int
    init: str
    distinct: Tensor
    inverse: Tensor
    weights: Tensor | None
    tol_abs: float
    generator: torch.Generator
    sq_norms: Tensor
    pairwise: Tensor | None
    matmuls: list[tuple[int, int, int]]


def _prepare(x: Tensor, k: int, n_init: int, max_iter: int, tol: float, seed: int, init: str,
             sample_weight: Tensor | None, *, defer_pairwise: bool = False) -> KMeansResult | _Problem:
    """Check the arguments and set a call up to its seeding (or solve it, when no search is needed).

    With `defer_pairwise`, the n x n distance matrix is left for the caller to fill (`kmeans_many`
    computes it into one buffer for a batch of problems).
    """
    _check_arguments(x, k, n_init, max_iter, tol, init)
    n = x.shape[0]
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    given = None if sample_weight is None else _check_weights(sample_weight, n, x.device, dtype)
    if k == n:
        return KMeansResult(torch.arange(n, device=x.device), x.detach().clone(), 0.0, 0)
    # Adding +0.0 turns -0.0 into 0.0, so rows that compare equal are also bitwise equal.
    work = x.detach().to(dtype) + 0.0
    distinct, inverse, counts = torch.unique(work, dim=0, return_inverse=True, return_counts=True)
    if distinct.shape[0] == n:  # the usual case: keep the caller's row order
        distinct, inverse, weights = work, torch.arange(n, device=x.device), given
    elif given is None:
        weights = counts.to(work.dtype)
    else:
        weights = torch.zeros(distinct.shape[0], dtype=work.dtype, device=x.device).index_add_(0, inverse, given)
    if k >= distinct.shape[0]:
        result = _split_duplicates(work, inverse, distinct.shape[0], k)
        result.centers = result.centers.to(x.dtype)
        return result
    tol_abs = tol * work.var(dim=0, unbiased=False).mean().item()
    m = distinct.shape[0]
    sq_norms = (distinct * distinct).sum(1)
    problem = _Problem(x, k, n_init, max_iter, init, distinct, inverse, weights, tol_abs,
                       torch.Generator().manual_seed(seed), sq_norms, None, [])
    if _uses_pairwise(problem) and not defer_pairwise:  # shared by all n_init runs
        _fill_pairwise(problem, None)
    return problem


def _uses_pairwise(problem: _Problem) -> bool:
    """Whether k-means++ reads the n x n distance matrix (else candidate rows come from small matmuls)."""
    return problem.init == "k-means++" and problem.distinct.shape[0] ** 2 <= MAX_DISTANCE_ELEMENTS


def _fill_pairwise(problem: _Problem, out: Tensor | None) -> None:
    """The problem's n x n squared-distance matrix (into `out` when given), diagonal zero."""
    x, sq = problem.distinct, problem.sq_norms
    pairwise = _sq_distances(x, sq, x, sq).fill_diagonal_(0.0)
    if out is not None:
        pairwise = out.copy_(pairwise)
    problem.pairwise = pairwise
    problem.matmuls.append((x.shape[0], x.shape[1], x.shape[0]))


def _finish(problem: _Problem, seeds: Tensor | None = None) -> KMeansResult:
    """The `n_init` Lloyd runs of a prepared problem; `seeds`, when given, are the first run's."""
    p = problem
    runs = [
        _lloyd(p.distinct, p.sq_norms, p.weights, p.k, p.max_iter, p.tol_abs, p.init, p.generator, p.pairwise,
               seeds if i == 0 else None)
        for i in range(p.n_init)
    ]
    result = min(runs, key=lambda r: r.inertia)
    result.labels = result.labels[p.inverse]
    result.matmuls = p.matmuls + [shape for run in runs for shape in run.matmuls]
    result.centers = result.centers.to(p.x.dtype)
    return result


def _check_arguments(x: Tensor, k: int, n_init: int, max_iter: int, tol: float, init: str) -> None:
    """Raise SpeechPruneError (a ValueError) naming the first bad argument."""
    if x.dim() != 2 or x.shape[0] < 1:
        raise SpeechPruneError(f"kmeans needs a non-empty 2-D tensor [n, d], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise SpeechPruneError(f"kmeans needs a floating-point tensor, got {x.dtype}")
    n = x.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise SpeechPruneError(f"k must be an integer with 1 <= k <= n = {n}, got {k!r}")
    if n_init < 1 or max_iter < 1 or tol < 0:
        raise SpeechPruneError(
            f"need n_init >= 1, max_iter >= 1, tol >= 0; got {n_init}, {max_iter}, {tol}"
        )
    if init not in INITS:
        raise SpeechPruneError(f"init must be one of {INITS}, got {init!r}")
    if not torch.isfinite(x).all():
        raise SpeechPruneError("kmeans input contains NaN or infinity")


def _check_weights(sample_weight: Tensor, n: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    w = torch.as_tensor(sample_weight).detach().to(device=device, dtype=dtype)
    if w.shape != (n,):
        raise SpeechPruneError(f"sample_weight must have shape ({n},), got {tuple(w.shape)}")
    if not torch.isfinite(w).all() or not bool((w > 0).all()):
        raise SpeechPruneError("sample_weight must be finite and positive")
    return w


def _split_duplicates(x: Tensor, inverse: Tensor, n_distinct: int, k: int) -> KMeansResult:
    """k >= number of distinct rows: one cluster per distinct row, then split off copies.

    The first k - n_distinct repeated copies (in row order) become clusters of their own, so all k
    clusters are used and the inertia is exactly zero.
    """
    n = x.shape[0]
    rows = torch.arange(n, device=x.device)
    first = torch.full((n_distinct,), n, device=x.device).scatter_reduce_(0, inverse, rows, "amin")
    copies = (rows != first[inverse]).nonzero().squeeze(1)[: k - n_distinct]
    labels = inverse.clone()
    labels[copies] = torch.arange(n_distinct, k, device=x.device)
    representative = torch.cat([first, copies])
    return KMeansResult(labels, x[representative], 0.0, 0)


def _lloyd(
    x: Tensor,
    sq_norms: Tensor,
    weights: Tensor | None,
    k: int,
    max_iter: int,
    tol_abs: float,
    init: str,
    generator: torch.Generator,
    pairwise: Tensor | None,
    seeds: Tensor | None = None,
) -> KMeansResult:
    """One k-means run on distinct points `x` (weighted by their multiplicity), 1 <= k < n.

    `pairwise`, when given, is the n x n squared-distance matrix of `x` (for k-means++); `seeds`,
    when given, were chosen already (by `kmeans_many`'s batched k-means++).
    """
    n = x.shape[0]
    matmuls: list[tuple[int, int, int]] = []
    if seeds is None and init == "random":
        seeds = torch.randperm(n, generator=generator)[:k].to(x.device)
    elif seeds is None:
        seeds = _kmeans_plus_plus(x, sq_norms, weights, k, generator, pairwise, matmuls)
    # Seeds are points: their distance columns are already in the pairwise matrix.
    initial = None if pairwise is None else pairwise.index_select(1, seeds)
    distances = _Distances(x, sq_norms, x[seeds], matmuls, initial)
    centers = distances.centers

    previous: Tensor | None = None  # labels whose means the current centers are
    converged = False
    n_iter = 0
    while n_iter < max_iter:
        n_iter += 1
        labels = _fill_empty_clusters(*distances.nearest(), k)
        new_centers = _means(x, weights, labels, k)
        if previous is None:  # the seeds are points, not means: compare values
            moved = (new_centers != centers).any(1)
        else:  # a cluster's mean changes only if its membership does
            changed = labels != previous
            moved = torch.zeros(k, dtype=torch.bool, device=x.device)
            moved[labels[changed]] = True
            moved[previous[changed]] = True
        moved_ids = moved.nonzero().squeeze(1)
        if moved_ids.numel() == 0:  # strict convergence: labels did not change
            converged = True
            break
        shift = (new_centers[moved_ids] - centers[moved_ids]).pow(2).sum().item()
        centers = centers.index_copy(0, moved_ids, new_centers[moved_ids])
        distances.refresh(centers, moved_ids)
        previous = labels
        if shift <= tol_abs:
            break
    if not converged:  # labels consistent with the final centers, as scikit-learn does
        labels = _fill_empty_clusters(*distances.nearest(), k)
    centers = _means(x, weights, labels, k)
    sq_error = (x - centers[labels]).pow(2).sum(1)
    inertia = (sq_error.sum() if weights is None else sq_error @ weights).item()
    return KMeansResult(labels, centers, inertia, n_iter, matmuls)


#: Largest batch of distance matrices `kmeans_many` holds at once (elements): 2**29 is 2 GiB in float32.
MAX_BATCH_ELEMENTS = 2**29


def memory_budget(device: torch.device | str, cap: int, itemsize: int = 4) -> int:
    """Elements a working buffer may take: `cap`, or an eighth of the GPU's free memory when that is less
    (a free Colab T4 holding Whisper-large-v3 has far less room than the H200 these caps were measured on)."""
    device = torch.device(device)
    if device.type != "cuda":
        return cap
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, min(cap, free // (8 * itemsize)))


def kmeans_many(
    xs: list[Tensor],
    ks: int | list[int],
    *,
    n_init: int = 1,
    max_iter: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
    init: str = "k-means++",
    sample_weights: list[Tensor | None] | None = None,
) -> list[KMeansResult]:
    """:func:`kmeans` on many inputs at once; on a GPU, same-shaped inputs share their k-means++ steps.

    Each result is what ``kmeans(xs[i], ks[i], ...)`` returns, with one difference on a GPU:
    problems of the same shape, k and weighting (a model's layers) run their k − 1 sequential
    k-means++ steps as one batch, so 64 layers cost about what one does. The batch's kernels may
    round differently from one problem's, so on a GPU a layer's partition can differ from a lone
    ``kmeans`` call's (it is the same from run to run). On the CPU every problem runs alone.

    Parameters
    ----------
    xs : list of Tensor
        The inputs, each [n_i, d_i].
    ks : int or list of int
        The number of clusters of every input, or of each.
    n_init, max_iter, tol, seed, init
        As for :func:`kmeans`; batching needs ``n_init = 1`` and k-means++.
    sample_weights : list of Tensor or None, optional
        Each input's ``sample_weight``.

    Returns
    -------
    list of KMeansResult
        One per input, in order.

    Raises
    ------
    SpeechPruneError
        As :func:`kmeans`, naming the first bad input.

    Examples
    --------
    >>> import torch
    >>> from speechprune.kmeans import kmeans, kmeans_many
    >>> xs = [torch.randn(40, 3, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    >>> [r.labels.unique().numel() for r in kmeans_many(xs, 30)]
    [30, 30, 30]
    >>> all(torch.equal(a.labels, kmeans(x, 30).labels) for a, x in zip(kmeans_many(xs, 30), xs))  # on the CPU
    True
    """
    ks = [ks] * len(xs) if isinstance(ks, int) else list(ks)
    weights = list(sample_weights) if sample_weights is not None else [None] * len(xs)
    if not len(ks) == len(weights) == len(xs):
        raise SpeechPruneError(f"kmeans_many: {len(xs)} inputs, {len(ks)} values of k, {len(weights)} weights")
    results: list[KMeansResult | None] = [None] * len(xs)
    batches: dict[tuple, list[int]] = {}
    for i, (x, k, w) in enumerate(zip(xs, ks, weights)):
        batchable = (init == "k-means++" and n_init == 1 and isinstance(x, Tensor) and x.dim() == 2
                     and isinstance(k, int) and _stepper_wanted(x, k))
        problem = _prepare(x, k, n_init, max_iter, tol, seed, init, w, defer_pairwise=batchable)
        if isinstance(problem, KMeansResult):
            results[i] = problem
        elif batchable and _uses_pairwise(problem) and problem.distinct.shape[0] == x.shape[0]:  # no duplicate rows
            batches.setdefault((tuple(x.shape), k, problem.distinct.dtype, x.device, w is None), []).append(i)
            results[i] = problem  # type: ignore[assignment]
        else:  # alone, as kmeans() would run it
            if problem.pairwise is None and _uses_pairwise(problem):
                _fill_pairwise(problem, None)
            results[i] = _finish(problem)
    for (shape, k, dtype, device, _), members in batches.items():
        n = shape[0]
        size = max(1, memory_budget(device, MAX_BATCH_ELEMENTS, dtype.itemsize) // (n * n))
        for start in range(0, len(members), size):
            part = members[start:start + size]
            problems = [results[i] for i in part]
            buffer = torch.empty(len(part), n, n, dtype=dtype, device=device)
            for b, problem in enumerate(problems):
                _fill_pairwise(problem, buffer[b])
            seeds = _seed_batch(problems, buffer)
            for b, (i, problem) in enumerate(zip(part, problems)):
                results[i] = _finish(problem, seeds[b])
            del buffer
    return results  # type: ignore[return-value]


def _seed_batch(problems: list[_Problem], pairwise: Tensor) -> Tensor:
    """k-means++ seeds [B, k] of same-shaped problems whose distance matrices are `pairwise` [B, n, n]."""
    k = problems[0].k
    draws = [_draws(p.distinct.shape[0], k, p.weights, p.generator, p.distinct) for p in problems]
    first = torch.cat([f for f, _ in draws])  # [B]
    uniforms = torch.stack([u for _, u in draws])  # [B, k - 1, T]
    weights = None if problems[0].weights is None else torch.stack([p.weights for p in problems])
    seeds = torch.empty(len(problems), k, dtype=torch.long, device=pairwise.device)
    seeds[:, 0] = first
    closest = pairwise.gather(1, first.view(-1, 1, 1).expand(-1, 1, pairwise.shape[2])).squeeze(1)
    n = pairwise.shape[2]
    steps = _SeedSteps(closest, seeds, uniforms, weights,
                       lambda ids: pairwise.gather(1, ids.unsqueeze(2).expand(-1, -1, n)))
    _run_steps(steps, k - 1)
    return seeds


class _Distances:
    """Squared distances from every point to every center, refreshed only where centers moved.

    Holding the n x k matrix lets a Lloyd step recompute just the columns of the centers that
    moved; late iterations, and most clusters when k is close to n, move few centers. When the
    matrix would be too large, `nearest` instead recomputes all distances in row chunks.
    """

    def __init__(
        self,
        x: Tensor,
        sq_norms: Tensor,
        centers: Tensor,
        matmuls: list[tuple[int, int, int]],
        initial: Tensor | None = None,
    ) -> None:
        """`initial`, when given, is the distance matrix to `centers` and is used as is."""
        self.x, self.sq_norms, self.centers, self.matmuls = x, sq_norms, centers, matmuls
        n, k = x.shape[0], centers.shape[0]
        self.matrix: Tensor | None = None
        if n * k > MAX_DISTANCE_ELEMENTS:
            return
        if initial is not None:
            self.matrix = initial
        else:
            self.matrix = torch.empty(n, k, dtype=x.dtype, device=x.device)
            self.refresh(centers, torch.arange(k, device=x.device))

    def refresh(self, centers: Tensor, moved: Tensor) -> None:
        """Take the new `centers`, of which only rows `moved` differ from the last ones."""
        self.centers = centers
        if self.matrix is None:
            return
        c = centers.index_select(0, moved)
        self.matrix[:, moved] = _sq_distances(self.x, self.sq_norms, c, (c * c).sum(1))
        self.matmuls.append((self.x.shape[0], self.x.shape[1], moved.numel()))

    def nearest(self) -> tuple[Tensor, Tensor]:
        """Squared distance to, and index of, each point's nearest center."""
        if self.matrix is not None:
            return self.matrix.min(1)
        n, k = self.x.shape[0], self.centers.shape[0]
        chunk = max(1, MAX_DISTANCE_ELEMENTS // k)
        c_sq = (self.centers * self.centers).sum(1)
        parts = []
        for start in range(0, n, chunk):
            rows = slice(start, start + chunk)
            block = _sq_distances(self.x[rows], self.sq_norms[rows], self.centers, c_sq)
            self.matmuls.append((block.shape[0], self.x.shape[1], k))
            parts.append(block.min(1))
        return torch.cat([p.values for p in parts]), torch.cat([p.indices for p in parts])


def _fill_empty_clusters(distance: Tensor, labels: Tensor, k: int) -> Tensor:
    """Give each empty cluster one of the points farthest from their centers.

    Like scikit-learn, but the point of each cluster nearest its center never moves, so filling
    one cluster never empties another. Returns `labels` itself when no cluster is empty.
    """
    counts = torch.bincount(labels, minlength=k)
    empty = (counts == 0).nonzero().squeeze(1)
    if empty.numel() == 0:
        return labels
    n = labels.numel()
    rows = torch.arange(n, device=labels.device)
    best = torch.full((k,), math.inf, dtype=distance.dtype, device=labels.device)
    best.scatter_reduce_(0, labels, distance, "amin")
    nearest_row = torch.where(distance == best[labels], rows, n)
    anchor = torch.full((k,), n, device=labels.device).scatter_reduce_(0, labels, nearest_row, "amin")
    score = distance.clone()
    score[anchor[counts > 0]] = -1.0
    labels = labels.clone()
    labels[score.topk(empty.numel()).indices] = empty
    return labels


def _means(x: Tensor, weights: Tensor | None, labels: Tensor, k: int) -> Tensor:
    """Weighted mean of each cluster's members (every cluster must be non-empty)."""
    w = torch.ones_like(x[:, 0]) if weights is None else weights
    sums = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device)
    sums.index_add_(0, labels, x if weights is None else x * weights.unsqueeze(1))
    sizes = torch.zeros(k, dtype=x.dtype, device=x.device).index_add_(0, labels, w)
    return sums / sizes.unsqueeze(1)
