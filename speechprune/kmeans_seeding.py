"""k-means++ seeding for speechprune.kmeans: greedy, scikit-learn's, on a precomputed distance matrix.

Each of the k - 1 sequential steps draws 2 + log(k) candidates with probability proportional to the
(weighted) squared distance to the nearest seed and keeps the one that lowers the total most. With the
n x n distance matrix at hand a step is O(n); on a GPU the steps are captured in CUDA graphs and
replayed (`_SeedSteps`, `_run_steps`), and a batch of same-shaped problems shares their kernels
(`speechprune.kmeans.kmeans_many`). Random numbers come from the CPU generator, so a seed picks the
same seeds on every device. `_sq_distances` is the one distance matmul that kmeans and pairs share.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _sq_distances(a: Tensor, a_sq: Tensor, b: Tensor, b_sq: Tensor) -> Tensor:
    """Squared Euclidean distances [len(a), len(b)] as |a|^2 - 2 a.b + |b|^2 with one matmul."""
    out = torch.addmm(b_sq.unsqueeze(0), a, b.T, alpha=-2.0)
    return out.add_(a_sq.unsqueeze(1)).clamp_min_(0.0)


def _kmeans_plus_plus(
    x: Tensor,
    sq_norms: Tensor,
    weights: Tensor | None,
    k: int,
    generator: torch.Generator,
    pairwise: Tensor | None,
    matmuls: list[tuple[int, int, int]],
) -> Tensor:
    """Greedy k-means++ seeding (scikit-learn's): indices of k seed points.

    Each step samples 2 + log(k) candidates with probability proportional to (weighted) squared
    distance to the nearest seed and keeps the one that lowers the total most. Candidate distance
    rows come from `pairwise` when given (O(n) per step), else from a small matmul. Random numbers
    are drawn on the CPU generator, so a seed gives the same seeds on every device, and the loop
    never waits for the device.
    """
    n = x.shape[0]
    first, uniforms = _draws(n, k, weights, generator, x)

    def rows(ids: Tensor) -> Tensor:
        if pairwise is not None:
            return pairwise.index_select(0, ids)
        matmuls.append((ids.numel(), x.shape[1], n))
        return _sq_distances(x[ids], sq_norms[ids], x, sq_norms)

    seeds = torch.empty(k, dtype=torch.long, device=x.device)
    seeds[:1] = first
    closest = rows(first).squeeze(0)
    if _stepper_wanted(x, k):
        if pairwise is None:  # record the shapes the captured steps will run
            matmuls.extend([(uniforms.shape[1], x.shape[1], n)] * (k - 1))
            rows_of = lambda ids: _sq_distances(  # noqa: E731
                x.index_select(0, ids[0]), sq_norms.index_select(0, ids[0]), x, sq_norms).unsqueeze(0)
        else:
            rows_of = lambda ids: pairwise.index_select(0, ids[0]).unsqueeze(0)  # noqa: E731
        steps = _SeedSteps(closest.unsqueeze(0), seeds.unsqueeze(0), uniforms.unsqueeze(0),
                           None if weights is None else weights.unsqueeze(0), rows_of)
        _run_steps(steps, k - 1)
        return seeds
    for step in range(1, k):
        cumulative = torch.cumsum(closest if weights is None else closest * weights, 0)
        candidates = torch.searchsorted(cumulative, uniforms[step - 1] * cumulative[-1])
        candidates.clamp_(max=n - 1)
        trial = rows(candidates)
        torch.minimum(trial, closest, out=trial)
        potentials = trial.sum(1) if weights is None else trial @ weights
        best = potentials.argmin().unsqueeze(0)
        seeds[step : step + 1] = candidates.index_select(0, best)
        closest = trial.index_select(0, best).squeeze(0)
    return seeds


def _draws(n: int, k: int, weights: Tensor | None, generator: torch.Generator, like: Tensor) -> tuple[Tensor, Tensor]:
    """k-means++'s random numbers, drawn on the CPU generator: the first seed [1] and the uniforms
    [k - 1, 2 + log(k)] of the candidate draws, on `like`'s device and dtype."""
    trials = 2 + int(math.log(k))
    if weights is None:
        first = torch.randint(n, (1,), generator=generator)
    else:
        first = torch.multinomial(weights.cpu().double(), 1, generator=generator)
    uniforms = torch.rand(k - 1, trials, generator=generator, dtype=torch.float64)
    return first.to(like.device), uniforms.to(device=like.device, dtype=like.dtype)


#: On a GPU, the k-means++ steps are captured in CUDA graphs of this many steps and replayed.
#: Each step is a dozen tiny kernels on n numbers, so eager launching (about 10 us of Python and
#: dispatch per kernel) dominates: Whisper-large-v3-sized layers (k = 4608) spent 0.6 s each in it.
GRAPH_STEPS = 64


def _stepper_wanted(x: Tensor, k: int) -> bool:
    """Whether the k-means++ loop runs as captured steps (CUDA, and enough steps to pay off)."""
    return x.is_cuda and k - 1 >= 4 * GRAPH_STEPS


class _SeedSteps:
    """One k-means++ step for a batch of B problems of the same shape, its step number on the device.

    Nothing in a call reads a value back to the host or depends on a Python counter, so a run of
    calls can be captured in a CUDA graph once and replayed. With B = 1 it gives the seeds of the
    plain loop in `_kmeans_plus_plus` exactly (the same operations in the same order); a batch
    shares each step's kernels among all its problems. `rows(candidates [B, T])` returns the
    candidates' squared distances to every point, [B, T, n].
    """

    def __init__(self, closest: Tensor, seeds: Tensor, uniforms: Tensor, weights: Tensor | None, rows) -> None:
        self.closest = closest.clone()  # [B, n]
        self.seeds, self.uniforms, self.weights, self.rows = seeds, uniforms, weights, rows  # [B, k], [B, k-1, T]
        self.last = closest.shape[1] - 1
        self.step = torch.ones(1, dtype=torch.long, device=seeds.device)  # the seed chosen next

    def __call__(self) -> None:
        closest, weights = self.closest, self.weights
        cumulative = torch.cumsum(closest if weights is None else closest * weights, 1)
        uniform = self.uniforms.index_select(1, self.step - 1).squeeze(1)
        candidates = torch.searchsorted(cumulative, uniform * cumulative[:, -1:])
        candidates.clamp_(max=self.last)
        trial = self.rows(candidates)
        torch.minimum(trial, closest.unsqueeze(1), out=trial)
        if weights is None:
            potentials = trial.sum(2)
        elif trial.shape[0] == 1:  # the plain loop's own product, so that B = 1 matches it exactly
            potentials = (trial[0] @ weights[0]).unsqueeze(0)
        else:
            potentials = torch.bmm(trial, weights.unsqueeze(2)).squeeze(2)
        best = potentials.argmin(1, keepdim=True)
        self.seeds.index_copy_(1, self.step, candidates.gather(1, best))
        closest.copy_(trial.gather(1, best.unsqueeze(2).expand(-1, 1, trial.shape[2])).squeeze(1))
        self.step.add_(1)


def _run_steps(step: _SeedSteps, count: int) -> None:
    """Call `step` `count` times: on a GPU through replays of a captured graph of GRAPH_STEPS calls."""
    device = step.seeds.device
    if device.type != "cuda" or count < 2 * GRAPH_STEPS:
        for _ in range(count):
            step()
        return
    warm_up = 2  # real steps, run eagerly on a side stream before capturing, as torch asks
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(warm_up):
            step()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):  # capturing runs nothing
        for _ in range(GRAPH_STEPS):
            step()
    replays = (count - warm_up) // GRAPH_STEPS
    for _ in range(replays):
        graph.replay()
    for _ in range(count - warm_up - replays * GRAPH_STEPS):
        step()
    del graph
