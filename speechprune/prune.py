"""Choosing and merging channels: channel clustering and the magnitude baseline.

Both methods reduce a unit from ``n`` to ``k`` channels and both physically shrink its
layers. They differ only in the assignment of old channels to new ones:

* ``cluster``: k-means on each channel's feature vector (producer rows and biases, then
  consumer columns); a cluster becomes one channel whose producer is the *mean* of its
  members and whose consumer is the *sum* of theirs. Identical members merge exactly.
* ``magnitude``: keep the ``k`` channels whose producer rows have the largest L2 norm,
  drop the rest.

Beyond the paper's reading, clustering can compare the producer side only (``features=
"producer"``: summing makes the consumer side exact, so only producer differences cost
anything), compare producers through their LayerNorm (``"normalized"``), weight channels by
their consumer power in k-means (``weighting="consumer"``) and combine producers by a weighted
mean (``merge`` rules ``weighted`` and ``projection``). ``results/studies/*.json`` and the
book's results page show where each helps.

An assignment is a label per old channel: ``0..k-1`` for the new channel it joins, ``-1``
for a dropped one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from speechprune.errors import SpeechPruneError, check_choice
from speechprune.kmeans import kmeans, kmeans_many, memory_budget
from speechprune.pairs import closest_pairs
from speechprune.refit import RIDGE, dense_output, refit_consumer, refittable
from speechprune.structure import Unit
from speechprune.synthetic import SYNTHETIC_INPUTS, function_features, mean_activations, synthetic_inputs



@dataclass
class Assignment:
    """Where each of a unit's old channels goes, and what that costs.

    ``labels[i]`` is the new channel (``0..k-1``) of old channel ``i``, or -1 if it is
    dropped; every new channel has at least one member. A method registered with
    :func:`speechprune.register_method` may return one instead of bare labels to report its
    own ``cost``, and ``ridge``: the strength of the ``refit`` merge's pull toward the merged
    consumer that its cost assumed (``obs`` costs a removal as re-solved with its damping);
    None leaves the refit's :data:`speechprune.refit.RIDGE`.
    """

    labels: torch.Tensor  # LongTensor [n]: new channel of each old one, -1 if dropped
    k: int
    cost: float  # clustering inertia, or the squared norm magnitude pruning throws away
    ridge: float | None = None  # the refit merge's ridge this assignment was costed with (None: RIDGE)


FEATURES = ("both", "producer", "normalized", "function")
WEIGHTINGS = ("none", "consumer")


@torch.no_grad()
def _producer_blocks(unit: Unit, normalized: bool = False) -> list[torch.Tensor]:
    """Each producer's weight and bias, as [n, group * (d_in + 1)] float32 blocks.

    ``normalized``: as the producer acts on its LayerNorm's *normalised* input x^: the row
    ``w`` becomes ``w * gamma`` and the bias ``b + w . beta`` (the LayerNorm's affine part is
    folded in), so coordinates that the norm amplifies count as much as they do in the layer.
    """
    n, g = unit.n_channels, unit.group_size
    norms = unit.input_norms or (None,) * len(unit.producers)
    blocks = []
    for lin, norm in zip(unit.producers, norms):
        w = lin.weight.float()
        b = None if lin.bias is None else lin.bias.float()
        gamma = getattr(norm, "weight", None) if normalized else None
        if gamma is not None:
            beta = getattr(norm, "bias", None)
            shift = w @ beta.float() if beta is not None else torch.zeros(w.shape[0], device=w.device)
            b = shift if b is None else b + shift
            w = w * gamma.float()
        w = w.reshape(n, g, -1)
        if b is not None:
            w = torch.cat([w, b.reshape(n, g, 1)], dim=2)
        blocks.append(w.reshape(n, -1))
    return blocks


@torch.no_grad()
def _consumer_block(unit: Unit) -> torch.Tensor:
    """The consumer columns of every channel, [n, group * d_out] float32."""
    n, g = unit.n_channels, unit.group_size
    w = unit.consumer.weight.float()  # [d_out, n * g]
    return w.reshape(w.shape[0], n, g).permute(1, 0, 2).reshape(n, -1)


@torch.no_grad()
def channel_features(unit: Unit, features: str = "both") -> torch.Tensor:
    """Feature vector of every channel, [n, D] in float32.

    ``both``: producer rows (with bias) then consumer columns, as in model folding (the paper).
    ``producer``: producer rows with bias only.
    ``normalized``: producer rows with bias as they act on the LayerNorm-normalised input (the
    norm's scale and shift folded in; see :func:`_producer_blocks`). Data-free: it uses only the
    LayerNorm's own weights.
    ``function``: what each channel computes, compared without data: its activations (after the
    nonlinearity) on synthetic inputs drawn from its LayerNorm's weight and bias
    (:func:`speechprune.synthetic.function_features`), so two channels are close when their outputs
    are, whatever their weights.
    """
    check_choice("feature set", features, FEATURES)
    if features == "function":
        return function_features(unit)
    parts = _producer_blocks(unit, normalized=features == "normalized")
    if features == "both":
        parts.append(_consumer_block(unit))
    return torch.cat(parts, dim=1)


@torch.no_grad()
def channel_weights(unit: Unit, weighting: str = "none") -> torch.Tensor | None:
    """k-means weight of every channel: ``None`` (all equal) or its consumer's squared norm.

    With ``consumer``, merging two channels costs in proportion to how much each writes to the
    output: to first order the output error of replacing producer ``p_i`` by ``p`` is
    ``|c_i|^2 |p_i - p|^2`` (for roughly orthogonal consumer columns ``c_i``), which is weighted
    k-means with weights ``|c_i|^2``.
    """
    check_choice("weighting", weighting, WEIGHTINGS)
    if weighting == "none":
        return None
    w = _consumer_block(unit).pow(2).sum(1)
    return w.clamp_min(1e-12 * float(w.max().clamp_min(1e-30)))


@torch.no_grad()
def magnitude_scores(unit: Unit) -> torch.Tensor:
    """L2 norm of each channel's producer weights (all q/k/v rows of a head)."""
    n, g = unit.n_channels, unit.group_size
    sq = sum(lin.weight.float().reshape(n, g, -1).pow(2).sum(dim=(1, 2)) for lin in unit.producers)
    return sq.sqrt()


def _canonical(labels: torch.Tensor, k: int) -> torch.Tensor:
    """Relabel clusters in order of their first member, so equal partitions give equal labels."""
    n = labels.numel()
    idx = torch.arange(n, device=labels.device)
    first = torch.full((k,), n, device=labels.device, dtype=torch.long)
    first.scatter_reduce_(0, labels, idx, reduce="amin")
    rank = torch.empty_like(first)
    rank[torch.argsort(first)] = torch.arange(k, device=labels.device)
    return rank[labels]


@torch.no_grad()
def assign_magnitude(unit: Unit, k: int) -> Assignment:
    """The magnitude baseline: keep the ``k`` channels with the largest producer norm, in order.

    The cost is the squared norm (producer and consumer features) of the dropped channels.
    """
    scores = magnitude_scores(unit)
    keep = torch.sort(torch.topk(scores, k).indices).values
    labels = torch.full_like(scores, -1, dtype=torch.long)
    labels[keep] = torch.arange(k, device=labels.device)
    dropped = channel_features(unit)[labels < 0]  # cost: the squared norm thrown away
    return Assignment(labels, k, float(dropped.pow(2).sum()))


@torch.no_grad()
def assign_cluster(unit: Unit, k: int, *, seed: int = 0, max_iter: int = 100, n_init: int = 1,
                   features: str = "both", weighting: str = "none") -> Assignment:
    """Channel clustering: k-means on the channels' features; each cluster becomes one channel.

    Labels are put in order of each cluster's first member, so equal partitions compare
    equal; the cost is the k-means inertia (in the chosen feature space and weighting).
    """
    x = channel_features(unit, features)
    result = kmeans(x, k, seed=seed, max_iter=max_iter, n_init=n_init,
                    sample_weight=channel_weights(unit, weighting))
    return Assignment(_canonical(result.labels, k), k, float(result.inertia))


#: Channel features `cluster_many` holds at once (elements; 2**29 is 2 GiB in float32).
MAX_FEATURE_ELEMENTS = 2**29


@torch.no_grad()
def cluster_many(units: list[Unit], ks: list[int], *, seed: int = 0, max_iter: int = 100, n_init: int = 1,
                 features: str = "both", weighting: str = "none") -> list[Assignment]:
    """:func:`assign_cluster` for many units at once, through :func:`speechprune.kmeans.kmeans_many`.

    On a GPU, units of the same shape (a model's layers) share their k-means++ steps, in groups
    whose features fit in ``MAX_FEATURE_ELEMENTS``; on the CPU each unit is clustered alone, exactly
    as :func:`assign_cluster` does.
    """
    out: list[Assignment] = []
    group: list[tuple[Unit, int]] = []
    size = 0
    budget = memory_budget(units[0].producers[0].weight.device, MAX_FEATURE_ELEMENTS) if units else 0

    def flush() -> None:
        xs = [channel_features(u, features) for u, _ in group]
        results = kmeans_many(xs, [k for _, k in group], seed=seed, max_iter=max_iter, n_init=n_init,
                              sample_weights=[channel_weights(u, weighting) for u, _ in group])
        out.extend(Assignment(_canonical(r.labels, k), k, float(r.inertia)) for r, (_, k) in zip(results, group))
        group.clear()

    for unit, k in zip(units, ks):
        elements = 2 * sum(lin.weight.numel() for lin in unit.producers)  # producer rows and consumer columns
        if group and size + elements > budget:
            flush()
            size = 0
        group.append((unit, k))
        size += elements
    if group:
        flush()
    return out


def assign_pairs(unit: Unit, k: int, *, features: str = "both", weighting: str = "none") -> Assignment:
    """Closest pairs first: agglomerate the nearest channels (Ward cost) until ``k`` remain; no seed.

    When ``k`` is close to ``n`` most channels stay alone and the few merges go where they cost
    least, instead of wherever a k-means partition happens to put its larger clusters.
    """
    x = channel_features(unit, features)
    result = closest_pairs(x, k, sample_weight=channel_weights(unit, weighting))
    return Assignment(_canonical(result.labels, k), k, float(result.inertia))


MERGES = ("mean", "weighted", "projection", "corrected", "refit")
#: Synthetic inputs for the ``corrected`` merge's mean output (more than for features: a mean needs them).
CORRECTION_INPUTS = 4 * SYNTHETIC_INPUTS


@torch.no_grad()
def merge(unit: Unit, assignment: Assignment, rule: str = "mean", *, inputs: torch.Tensor | None = None) -> None:
    """Shrink ``unit`` to ``assignment.k`` channels: consumers summed, producers combined.

    ``mean`` (the paper's reading): a new channel's producer is the plain mean of its
    members'. ``weighted``: the mean weighted by each member's squared consumer norm
    ``|c_i|^2``, the centre of consumer-weighted k-means (members that write more count
    more). ``projection``: a weighted mean with weights ``w_i = <c, c_i> / |c|^2``, where
    ``c_i`` are the members' consumer columns and ``c`` their sum. These weights sum to one
    and minimise the first-order output error ``|sum_i c_i (p_i - p)^T|`` of replacing every
    member's producer ``p_i`` by ``p``; for orthogonal consumer columns they equal the
    ``weighted`` ones. ``corrected``: the mean merge, then the shift of the block's mean output
    that the merge causes, measured on synthetic inputs drawn from the LayerNorm's weights
    (:mod:`speechprune.synthetic`, no data), is put back into the consumer's bias (feed-forward
    units with a consumer bias; elsewhere it is the mean merge). All four are exact for identical
    members. ``refit``: the mean merge, then the consumer (weight and bias) refitted by ridge least
    squares so that the shrunk block reproduces the dense one on ``inputs``, the unit's inputs on
    synthetic speech (:mod:`speechprune.refit`; :func:`speechprune.compress` captures them from the
    dense model; feed-forward units only, elsewhere it is the mean merge). Dropped channels (label
    -1) vanish from both sides; otherwise the consumer bias is unchanged.
    """
    check_choice("merge rule", rule, MERGES)
    if rule == "refit" and refittable(unit) and assignment.k < unit.n_channels:
        if inputs is None:
            raise SpeechPruneError(f"{unit.name}: the refit merge needs the unit's inputs on synthetic speech "
                                   "(speechprune.refit.capture_inputs); speechprune.compress captures them")
        target = dense_output(unit, inputs)
        merge(unit, assignment, "mean")
        refit_consumer(unit, inputs, target, ridge=RIDGE if assignment.ridge is None else assignment.ridge)
        return
    correct = rule == "corrected" and unit.kind == "ffn" and unit.consumer.bias is not None
    if correct:
        x = synthetic_inputs(unit, CORRECTION_INPUTS)
        mean_before = unit.consumer.weight.float() @ mean_activations(unit, x)
    labels, k = assignment.labels, assignment.k
    n, g = unit.n_channels, unit.group_size
    kept = labels >= 0
    src = torch.nonzero(kept).squeeze(1)
    dst = labels[kept]
    counts = torch.zeros(k, device=labels.device).index_add_(0, dst, torch.ones_like(dst, dtype=torch.float))
    if bool((counts == 0).any()):
        raise SpeechPruneError(f"{unit.name}: assignment leaves a new channel without members")

    old_producers = [(lin.weight.detach(), None if lin.bias is None else lin.bias.detach()) for lin in unit.producers]
    old_consumer = unit.consumer.weight.detach()
    old_consumer_bias = None if unit.consumer.bias is None else unit.consumer.bias.detach()
    d_out = old_consumer.shape[0]
    cols = old_consumer.float().reshape(d_out, n, g)[:, src]  # [d_out, m, g]
    summed = torch.zeros(d_out, k, g, device=cols.device).index_add_(1, dst, cols)
    weights = 1.0 / counts[dst]
    if rule == "weighted":
        power = cols.pow(2).sum((0, 2))  # [m] squared consumer norm of each member
        total_power = torch.zeros(k, device=cols.device).index_add_(0, dst, power)[dst]
        weights = torch.where(total_power > 0, power / total_power.clamp_min(1e-30), weights)
    if rule == "projection":
        c = cols.permute(1, 0, 2).reshape(len(src), -1)  # [m, d_out * g]
        total = summed.permute(1, 0, 2).reshape(k, -1)[dst]  # each member's cluster sum
        norm2 = total.pow(2).sum(1)
        usable = norm2 > 1e-12 * c.pow(2).sum(1).mean()
        weights = torch.where(usable, (total * c).sum(1) / norm2.clamp_min(1e-30), weights)
    unit.resize(k)

    def _combine_rows(t: torch.Tensor) -> torch.Tensor:  # [n*g, ...] -> [k*g, ...]
        v = t.float().reshape(n, g, -1)[src] * weights.view(-1, 1, 1)
        out = torch.zeros(k, g, v.shape[-1], device=v.device).index_add_(0, dst, v)
        return out.reshape(k * g, *t.shape[1:])

    for lin, (w, b) in zip(unit.producers, old_producers):
        lin.weight.copy_(_combine_rows(w))
        if b is not None:
            lin.bias.copy_(_combine_rows(b))
    unit.consumer.weight.copy_(summed.reshape(d_out, k * g))
    if old_consumer_bias is not None:
        unit.consumer.bias.copy_(old_consumer_bias)
    if correct:
        mean_after = unit.consumer.weight.float() @ mean_activations(unit, x)
        unit.consumer.bias.add_((mean_before - mean_after).to(unit.consumer.bias.dtype))
