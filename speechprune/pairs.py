"""Closest pairs first: a seed-free partition of channels for ``--method pairs``.

Agglomerative clustering with Ward's merge cost, round by round: when k is close to n (10-20%
sparsity), k-means leaves most channels alone and fills a few clusters with channels that are far
apart; merging mutual nearest neighbours, cheapest first, keeps every merged cluster tight. It
returns the same :class:`~speechprune.kmeans.KMeansResult` as :func:`speechprune.kmeans.kmeans` and
shares its argument checks and distance matmul.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from speechprune.kmeans import KMeansResult, _check_arguments, _check_weights
from speechprune.kmeans_seeding import _sq_distances


def closest_pairs(x: Tensor, k: int, *, sample_weight: Tensor | None = None) -> KMeansResult:
    """Partition the rows of `x` into `k` clusters by merging the closest pairs first (no seed).

    Agglomerative clustering with Ward's merge cost: merging clusters a and b (weights w, means m)
    raises the (weighted) inertia by ``w_a w_b / (w_a + w_b) |m_a - m_b|^2``. Each round merges
    mutual nearest neighbours under that cost, cheapest first, each cluster at most once per round,
    until n - k merges are done. Every merge is the cheapest one available to its two members, so
    no cluster gathers points that are far apart, which k-means can do when k is close to n
    (it then leaves most points alone and fills a few clusters with whatever is left). The result
    is deterministic: ties are broken by index, and no random numbers are drawn.
    """
    _check_arguments(x, k, 1, 1, 0.0, "k-means++")
    n = x.shape[0]
    dtype = torch.float64  # costs are compared across the whole matrix: keep them exact enough
    w = torch.ones(n, dtype=dtype, device=x.device) if sample_weight is None else \
        _check_weights(sample_weight, n, x.device, dtype)
    points = x.detach().to(dtype)
    labels = torch.arange(n, device=x.device)  # cluster of each point, as an index into `centers`
    centers, weights = points.clone(), w.clone()
    matmuls: list[tuple[int, int, int]] = []
    while centers.shape[0] > k:
        m = centers.shape[0]
        sq = (centers * centers).sum(1)
        cost = _sq_distances(centers, sq, centers, sq)
        matmuls.append((m, centers.shape[1], m))
        cost.mul_(weights[:, None] * weights[None, :] / (weights[:, None] + weights[None, :]))
        cost.fill_diagonal_(math.inf)
        free = torch.ones(m, dtype=torch.bool, device=x.device)
        partner = torch.full((m,), -1, dtype=torch.long, device=x.device)
        needed = m - k
        while needed > 0 and int(free.sum()) >= 2:
            # `cost` holds inf in the rows and columns of the clusters paired in this round (set below,
            # in place: a masked m x m copy per pass cost more than the search itself at 4096+ channels)
            best_cost, nearest = cost.min(1)
            idx = torch.arange(m, device=x.device)
            mutual = free & (nearest[nearest] == idx) & (idx < nearest) & torch.isfinite(best_cost)
            cand = mutual.nonzero().squeeze(1)
            if cand.numel() == 0:
                break
            order = torch.argsort(best_cost[cand], stable=True)[:needed]
            a, b = cand[order], nearest[cand[order]]
            partner[a], partner[b] = b, a
            free[a], free[b] = False, False
            taken = torch.cat([a, b])
            cost[taken] = math.inf
            cost[:, taken] = math.inf
            needed -= a.numel()
        # new clusters: each pair becomes one, unpaired clusters stay; ordered by their lowest member
        root = torch.where((partner >= 0) & (partner < torch.arange(m, device=x.device)), partner,
                           torch.arange(m, device=x.device))
        uniq, new_index = torch.unique(root, return_inverse=True)
        new_w = torch.zeros(uniq.numel(), dtype=dtype, device=x.device).index_add_(0, new_index, weights)
        sums = torch.zeros(uniq.numel(), centers.shape[1], dtype=dtype, device=x.device)
        sums.index_add_(0, new_index, centers * weights[:, None])
        centers, weights = sums / new_w[:, None], new_w
        labels = new_index[labels]
    sq_error = (points - centers[labels]).pow(2).sum(1)
    inertia = float(sq_error @ w)
    return KMeansResult(labels, centers.to(x.dtype), inertia, 0, matmuls)
