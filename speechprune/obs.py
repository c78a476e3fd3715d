"""The ``obs`` method: feed-forward channels chosen by what the refit cannot recover (structured OBS).

The ``refit`` merge (:mod:`speechprune.refit`) re-solves a shrunk feed-forward block's consumer on
the block's inputs on synthetic speech. Which channels are removed is still chosen before, from
the weights. The refit's own least-squares problem says which channels the others can stand in for:
with ``H`` the block's activations on those inputs (one column per channel, and a column of ones
for the consumer's bias), ``G = H^T H + damp * mean(diag(H^T H)) * I`` and ``C`` the consumer,
removing a set ``S`` of channels and re-solving the consumer raises the block's squared output
error by

    trace(C_S [G^-1]_SS^-1 C_S^T)

(the structured optimal brain surgeon of Hassibi and Stork, as ZipLM uses it for whole channels).
``obs`` removes channels greedily by that cost: in each of at most :data:`STEPS` rounds the
cheapest channels, one round's share of the budget, are removed together, and ``C`` and ``G^-1``
are updated in closed form, so every round ranks channels as the block stands after the removals
before it. The kept channels keep their producers (new channel ``j`` is the ``j``-th kept channel,
label -1 for a removed one); with ``merge="refit"`` the consumer is then re-solved with ridge
:data:`DAMP` toward the dense consumer's kept columns (the assignment carries it), which is the
compensation the cost assumed; the refit's ridge 1 pulls harder toward them, and on Whisper base it
leaves more error (``studies/probe_obs.py``).

**No recordings are used**: ``H`` comes from the inputs :func:`speechprune.calibration.capture_inputs`
records on synthetic speech (the same rows as the refit merge), so the method stays data-free and
seed-free. Units it cannot score this way (attention heads, blocks without a nonlinearity) are
assigned by closest pairs first (:func:`speechprune.prune.assign_pairs`) on ``features``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from speechprune.errors import SpeechPruneError
from speechprune.prune import Assignment, assign_pairs
from speechprune.refit import refittable
from speechprune.structure import Unit
from speechprune.synthetic import unit_activations

#: Removal rounds at most per unit: each round removes ``ceil(removed / STEPS)`` channels at once.
STEPS = 64
#: Damping of the Gram matrix, relative to its mean diagonal (keeps ``G`` invertible).
DAMP = 0.01


def _spd_inverse(gram: Tensor) -> Tensor:
    """The inverse of a damped Gram matrix: through its Cholesky factor (about 1.7x faster than
    ``torch.linalg.inv`` at 5121 rows on a CPU), or by LU where rounding left it not positive definite."""
    factor, info = torch.linalg.cholesky_ex(gram)
    if int(info) == 0:
        return torch.cholesky_inverse(factor)
    return torch.linalg.inv(gram)


@torch.no_grad()
def obs_order(activations: Tensor, consumer: Tensor, n_remove: int, *, steps: int | None = None,
              damp: float | None = None) -> tuple[Tensor, float]:
    """Which channels to remove, greedily by structured OBS cost: (removed indices, total cost).

    ``activations`` is [rows, n] (one column per channel), ``consumer`` [d_out, n]. A column of ones
    is added for the consumer's bias and never removed. Computed in float64. ``steps`` and ``damp``
    default to :data:`STEPS` and :data:`DAMP`.
    """
    steps = STEPS if steps is None else steps
    damp = DAMP if damp is None else damp
    rows, n = activations.shape
    if not 0 <= n_remove < n:
        raise SpeechPruneError(f"obs: cannot remove {n_remove} of {n} channels")
    h = torch.cat([activations.float(), torch.ones(rows, 1, dtype=torch.float32, device=activations.device)], 1)
    gram = (h.T @ h).double()  # float32 product (fast), float64 from here on
    gram.diagonal().add_(damp * float(gram.diagonal().mean().clamp_min(1e-12)))
    ginv = _spd_inverse(gram)
    del gram, h
    c = torch.cat([consumer.double(), consumer.new_zeros(consumer.shape[0], 1, dtype=torch.float64)], 1)
    alive = torch.ones(n + 1, dtype=torch.bool, device=c.device)
    alive[n] = False  # the bias column is never a candidate
    per_round = max(1, math.ceil(n_remove / steps))
    removed, total, done = [], 0.0, 0
    while done < n_remove:
        m = min(per_round, n_remove - done)
        cost = (c * c).sum(0) / ginv.diagonal()
        cost[~alive] = float("inf")
        s = torch.topk(cost, m, largest=False).indices
        block = torch.linalg.inv(ginv[s][:, s])  # [m, m]
        cs = c[:, s]
        total += float(torch.einsum("ij,jk,ik->", cs, block, cs))
        rows_s = ginv[s]  # [m, n]: one fused update each (a rank-m product subtracted in place, no n x n temporary)
        c.addmm_(cs @ block, rows_s, alpha=-1)
        ginv.addmm_(ginv[:, s] @ block, rows_s, alpha=-1)
        c[:, s] = 0
        alive[s] = False
        removed.append(s)
        done += m
    gone = torch.cat(removed) if removed else torch.zeros(0, dtype=torch.long, device=c.device)
    return gone, total


@torch.no_grad()
def assign_obs(unit: Unit, k: int, *, inputs: Tensor | None = None, features: str = "producer") -> Assignment:
    """Keep ``k`` channels of ``unit``, removing greedily by structured OBS cost on ``inputs`` (see the module).

    ``inputs`` are the unit's inputs on synthetic speech, [rows, d_in] (:func:`speechprune.compress`
    records them when the method is ``obs``). A unit that is not a feed-forward block with one
    producer and a nonlinearity is assigned by closest pairs first on ``features``. The cost is the
    block's squared output error summed over the rows, as the greedy removal estimated it; the
    assignment asks the refit merge for ridge :data:`DAMP`, the damping that cost assumed.
    """
    n = unit.n_channels
    if not refittable(unit):
        return assign_pairs(unit, k, features=features)
    if inputs is None:
        raise SpeechPruneError(f"{unit.name}: the obs method needs the unit's inputs on synthetic speech "
                               "(speechprune.calibration.capture_inputs); speechprune.compress records them")
    h = unit_activations(unit, inputs.to(unit.consumer.weight.device)).T  # [rows, n]
    gone, cost = obs_order(h, unit.consumer.weight.detach(), n - k)
    labels = torch.zeros(n, dtype=torch.long, device=h.device)
    labels[gone] = -1
    kept = labels >= 0
    labels[kept] = torch.arange(k, device=h.device)
    return Assignment(labels, k, cost, ridge=DAMP)
