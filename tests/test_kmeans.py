"""k-means in torch: quality against scikit-learn, determinism, and the edge cases merging relies on."""

from __future__ import annotations

import importlib
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from speechprune.errors import SpeechPruneError
from speechprune.kmeans import kmeans

kmeans_module = importlib.import_module("speechprune.kmeans")  # the module: speechprune.kmeans is the function

sklearn_cluster = pytest.importorskip("sklearn.cluster")
threadpoolctl = pytest.importorskip("threadpoolctl")


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """These problems are tiny: on a busy 2-core machine OpenMP regions cost more than they save."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpoolctl.threadpool_limits(1):
        yield
    torch.set_num_threads(threads)


def within_cluster_ss(x: torch.Tensor, labels: torch.Tensor) -> float:
    """Sum of squared distances to the cluster means, in float64: the cost a partition has."""
    x = x.double()
    k = int(labels.max()) + 1
    sums = torch.zeros(k, x.shape[1], dtype=torch.float64).index_add_(0, labels, x)
    means = sums / torch.bincount(labels, minlength=k).unsqueeze(1)
    return (x - means[labels]).pow(2).sum().item()


def blobs(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(8, 16, generator=g) * 5
    return centers.repeat_interleave(60, 0) + torch.randn(480, 16, generator=g)


def normal(seed: int = 0) -> torch.Tensor:
    return torch.randn(400, 32, generator=torch.Generator().manual_seed(seed))


def ffn_channels(seed: int = 0, near_duplicates: bool = False) -> torch.Tensor:
    """n=512 channels of a d_model=64 feed-forward layer: fc1 row, fc1 bias, fc2 column."""
    g = torch.Generator().manual_seed(seed)
    fc1 = torch.randn(512, 64, generator=g) * 0.02
    bias = torch.randn(512, 1, generator=g) * 0.02
    fc2 = torch.randn(512, 64, generator=g) * 0.02
    x = torch.cat([fc1, bias, fc2], 1)
    if near_duplicates:  # a quarter of the channels nearly copy another one, as trained nets have
        source = torch.randint(0, 384, (128,), generator=g)
        x[384:] = x[source] + 0.002 * torch.randn(128, 129, generator=g)
    return x


CASES = {
    "blobs k=8": (blobs, 8),
    "normal k=40": (normal, 40),
    "normal k=360": (normal, 360),
    "ffn k=461 (10%)": (ffn_channels, 461),
    "ffn k=256 (50%)": (ffn_channels, 256),
    "ffn near-duplicates k=461": (lambda: ffn_channels(near_duplicates=True), 461),
}


@pytest.mark.parametrize("case", CASES)
def test_inertia_within_two_percent_of_sklearn(case: str) -> None:
    make, k = CASES[case]
    x = make()
    ours = kmeans(x, k, n_init=3, max_iter=100, seed=0)
    theirs = sklearn_cluster.KMeans(k, n_init=3, max_iter=100, random_state=0).fit(x.numpy())
    ours_cost = within_cluster_ss(x, ours.labels)
    assert ours_cost <= 1.02 * within_cluster_ss(x, torch.from_numpy(theirs.labels_).long())
    assert ours.inertia == pytest.approx(ours_cost, rel=1e-4)
    assert torch.bincount(ours.labels, minlength=k).min() > 0  # no empty cluster
    assert ours.labels.dtype == torch.long and ours.centers.shape == (k, x.shape[1])


def test_centers_are_member_means_and_labels_a_lloyd_fixed_point() -> None:
    x = ffn_channels()
    result = kmeans(x, 256, tol=0.0, max_iter=300)
    k = 256
    sums = torch.zeros(k, x.shape[1]).index_add_(0, result.labels, x)
    means = sums / torch.bincount(result.labels, minlength=k).unsqueeze(1)
    torch.testing.assert_close(result.centers, means)
    distances = torch.cdist(x.double(), result.centers.double()).pow(2)
    own = distances.gather(1, result.labels.unsqueeze(1)).squeeze(1)
    assert torch.all(own <= distances.min(1).values + 1e-6)
    assert result.n_iter < 300


def test_same_seed_same_labels_and_seed_matters() -> None:
    x = normal()
    first = kmeans(x, 40, seed=3)
    assert torch.equal(first.labels, kmeans(x, 40, seed=3).labels)
    assert torch.equal(first.centers, kmeans(x, 40, seed=3).centers)
    assert any(not torch.equal(first.labels, kmeans(x, 40, seed=s).labels) for s in (4, 5, 6))


def test_more_inits_never_worse_and_share_the_pairwise_matrix() -> None:
    x = normal()
    best_of_three = kmeans(x, 40, n_init=3)
    assert best_of_three.inertia <= kmeans(x, 40, n_init=1).inertia
    assert best_of_three.matmuls.count((400, 32, 400)) == 1


def test_k_equals_n_keeps_every_point() -> None:
    x = normal()[:50]
    result = kmeans(x, 50)
    assert result.inertia == 0.0
    assert torch.equal(result.labels, torch.arange(50))
    assert torch.equal(result.centers, x)


def test_k_one_is_the_mean() -> None:
    x = blobs()
    result = kmeans(x, 1)
    assert torch.all(result.labels == 0)
    torch.testing.assert_close(result.centers[0], x.mean(0))
    assert result.inertia == pytest.approx(within_cluster_ss(x, result.labels), rel=1e-5)


def test_exact_duplicates_share_a_cluster() -> None:
    g = torch.Generator().manual_seed(0)
    distinct = torch.randn(30, 8, generator=g)
    repeats = torch.randint(1, 5, (30,), generator=g)
    order = torch.randperm(int(repeats.sum()), generator=g)
    source = torch.arange(30).repeat_interleave(repeats)[order]
    distinct[0, :4] = 0.0
    x = distinct[source]
    x[torch.nonzero(source == 0)[::2], :4] = -0.0  # -0.0 and 0.0 are the same point
    for k in (10, 30):  # fewer clusters than distinct points, and exactly as many
        labels = kmeans(x, k).labels
        for point in range(30):
            assert labels[source == point].unique().numel() == 1
        assert labels.unique().numel() == k
    result = kmeans(x, 30)
    assert result.inertia == 0.0
    # more clusters than distinct points: copies are split off so that no cluster is empty
    more = kmeans(x, 40)
    assert torch.bincount(more.labels, minlength=40).min() > 0 and more.inertia == 0.0
    torch.testing.assert_close(more.centers[more.labels], x, atol=0, rtol=0)


def test_empty_clusters_are_filled_without_emptying_others() -> None:
    distance = torch.tensor([0.0, 5.0, 1.0, 9.0, 0.5, 7.0])
    labels = torch.tensor([0, 0, 1, 1, 2, 2])  # clusters 3 and 4 are empty
    filled = kmeans_module._fill_empty_clusters(distance, labels, 5)
    assert torch.equal(filled, torch.tensor([0, 0, 1, 3, 2, 4]))  # farthest point, first empty
    assert kmeans_module._fill_empty_clusters(distance, labels, 3) is labels
    # the two farthest points form cluster 1: its nearest member stays, the next farthest moves
    distance = torch.tensor([0.0, 1.0, 8.0, 9.0])
    filled = kmeans_module._fill_empty_clusters(distance, torch.tensor([0, 0, 1, 1]), 4)
    assert torch.equal(filled, torch.tensor([0, 3, 1, 2]))


def test_random_init_with_outliers_leaves_no_cluster_empty() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(200, 4, generator=g), 100 + torch.randn(5, 4, generator=g)])
    for seed in range(5):
        result = kmeans(x, 180, init="random", seed=seed)
        assert torch.bincount(result.labels, minlength=180).min() > 0


def test_paths_without_the_full_distance_matrix_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    x = ffn_channels()
    cached = kmeans(x, 256)
    assert cached.matmuls[0] == (512, 129, 512)  # the pairwise matrix, computed once
    monkeypatch.setattr(kmeans_module, "MAX_DISTANCE_ELEMENTS", 512 * 100)
    chunked = kmeans(x, 256)
    assert all(rows * cols <= 512 * 100 for rows, _, cols in chunked.matmuls)
    assert chunked.inertia == pytest.approx(cached.inertia, rel=0.01)
    assert torch.bincount(chunked.labels, minlength=256).min() > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(dtype: torch.dtype) -> None:
    x = blobs().to(dtype)
    result = kmeans(x, 8)
    assert result.centers.dtype == dtype
    assert result.inertia == pytest.approx(within_cluster_ss(x.float(), result.labels), rel=1e-3)


@pytest.mark.parametrize(
    "k, kwargs",
    [(0, {}), (481, {}), (2.0, {}), (True, {}), (4, {"init": "kmeans++"}), (4, {"n_init": 0}), (4, {"tol": -1.0})],
)
def test_bad_arguments_raise(k: object, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        kmeans(blobs(), k, **kwargs)  # type: ignore[arg-type]


def test_bad_inputs_raise() -> None:
    with pytest.raises(SpeechPruneError, match="2-D"):
        kmeans(torch.randn(10), 2)
    with pytest.raises(SpeechPruneError, match="floating"):
        kmeans(torch.ones(10, 2, dtype=torch.long), 2)
    x = torch.randn(10, 2)
    x[3, 1] = float("nan")
    with pytest.raises(SpeechPruneError, match="NaN"):
        kmeans(x, 2)
    with pytest.raises(SpeechPruneError, match="1 <= k <= n = 10"):
        kmeans(torch.randn(10, 2), 11)


def test_numpy_free_labels_on_input_device() -> None:
    result = kmeans(blobs(), 8)
    assert result.labels.device == result.centers.device == torch.device("cpu")
    assert np.unique(result.labels.numpy()).size == 8


def weighted_ss(x: torch.Tensor, labels: torch.Tensor, w: torch.Tensor) -> float:
    """Weighted cost of a partition: weighted squared distances to the weighted means, float64."""
    x, w = x.double(), w.double()
    k = int(labels.max()) + 1
    sums = torch.zeros(k, x.shape[1], dtype=torch.float64).index_add_(0, labels, x * w[:, None])
    mass = torch.zeros(k, dtype=torch.float64).index_add_(0, labels, w)
    return ((x - (sums / mass[:, None])[labels]).pow(2).sum(1) * w).sum().item()


@pytest.mark.parametrize("k", [40, 360])
def test_sample_weight_matches_sklearn_and_changes_the_partition(k: int) -> None:
    x = normal()
    w = torch.exp(torch.randn(x.shape[0], generator=torch.Generator().manual_seed(3)))
    ours = kmeans(x, k, n_init=3, seed=0, sample_weight=w)
    theirs = sklearn_cluster.KMeans(k, n_init=3, max_iter=100, random_state=0).fit(x.numpy(), sample_weight=w.numpy())
    ours_cost = weighted_ss(x, ours.labels, w)
    assert ours_cost <= 1.02 * weighted_ss(x, torch.from_numpy(theirs.labels_).long(), w)
    assert ours.inertia == pytest.approx(ours_cost, rel=1e-4)
    plain = kmeans(x, k, n_init=3, seed=0)
    assert ours_cost < weighted_ss(x, plain.labels, w)  # weighting pays off on the weighted cost


def test_integer_weights_act_like_copies() -> None:
    """A point of weight 3 pulls its centre like three copies of it do."""
    x = torch.tensor([[0.0], [1.0], [10.0], [11.0]])
    w = torch.tensor([3.0, 1.0, 1.0, 1.0])
    result = kmeans(x, 2, seed=0, sample_weight=w)
    copies = kmeans(torch.tensor([[0.0], [0.0], [0.0], [1.0], [10.0], [11.0]]), 2, seed=0)
    assert sorted(result.centers.squeeze(1).tolist()) == pytest.approx(sorted(copies.centers.squeeze(1).tolist()))
    assert result.inertia == pytest.approx(copies.inertia)
    assert result.centers.squeeze(1).min().item() == pytest.approx(0.25)


def test_weights_on_duplicate_rows_add_up() -> None:
    x = torch.tensor([[0.0], [0.0], [1.0], [10.0]])
    result = kmeans(x, 2, seed=0, sample_weight=torch.tensor([1.0, 2.0, 1.0, 5.0]))
    assert result.labels[0] == result.labels[1] == result.labels[2] != result.labels[3]
    assert result.centers.squeeze(1).min().item() == pytest.approx(0.25)  # (0 * 3 + 1) / 4


@pytest.mark.parametrize("weight", [torch.ones(5), -torch.ones(4), torch.zeros(4), torch.tensor([1.0, float("nan"), 1, 1])])
@pytest.mark.parametrize("k", [2, 4])
def test_bad_sample_weight_raises(weight: torch.Tensor, k: int) -> None:
    with pytest.raises(SpeechPruneError, match="sample_weight"):
        kmeans(torch.randn(4, 2), k, sample_weight=weight)  # k = n too: checked before the shortcut


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("small_matrix", [False, True])
def test_device_counted_seeding_steps_give_the_plain_loops_seeds(
    monkeypatch: pytest.MonkeyPatch, weighted: bool, small_matrix: bool
) -> None:
    """The k-means++ step that a GPU captures in a CUDA graph, run eagerly here, picks the same seeds."""
    module = importlib.import_module("speechprune.kmeans")
    g = torch.Generator().manual_seed(3)
    x = torch.randn(300, 17, generator=g)
    weights = torch.rand(300, generator=g) + 0.5 if weighted else None
    if small_matrix:  # candidate rows from small matmuls instead of the pairwise matrix
        monkeypatch.setattr(module, "MAX_DISTANCE_ELEMENTS", 100)
    plain = kmeans(x, 200, seed=5, sample_weight=weights)
    calls = []
    seeding = importlib.import_module("speechprune.kmeans_seeding")  # where k-means++ looks it up
    monkeypatch.setattr(seeding, "_stepper_wanted", lambda x, k: calls.append(k) or True)
    stepped = kmeans(x, 200, seed=5, sample_weight=weights)
    assert calls == [200]
    assert torch.equal(plain.labels, stepped.labels) and plain.inertia == stepped.inertia
    assert plain.matmuls == stepped.matmuls  # the shapes a benchmark times are recorded alike


@pytest.mark.parametrize("weighted", [False, True])
def test_batched_seeding_of_same_shaped_problems(monkeypatch: pytest.MonkeyPatch, weighted: bool) -> None:
    """kmeans_many seeds a batch of layers in shared steps (a GPU's path, forced here on the CPU)."""
    module = importlib.import_module("speechprune.kmeans")
    g = torch.Generator().manual_seed(4)
    xs = [torch.randn(300, 17, generator=g) for _ in range(4)] + [torch.randn(200, 17, generator=g)]
    ws = [torch.rand(x.shape[0], generator=g) + 0.5 for x in xs] if weighted else None
    alone = [kmeans(x, 250 if x.shape[0] == 300 else 150, seed=2,
                    sample_weight=None if ws is None else ws[i]) for i, x in enumerate(xs)]
    monkeypatch.setattr(module, "_stepper_wanted", lambda x, k: True)  # kmeans_many's choice to batch
    monkeypatch.setattr(importlib.import_module("speechprune.kmeans_seeding"), "_stepper_wanted", lambda x, k: True)
    monkeypatch.setattr(module, "MAX_BATCH_ELEMENTS", 300 * 300 * 3)  # batches of 3, then 1: chunking too
    seeded = []
    real = module._seed_batch
    monkeypatch.setattr(module, "_seed_batch", lambda ps, pw: seeded.append(len(ps)) or real(ps, pw))
    together = module.kmeans_many(xs, [250, 250, 250, 250, 150], seed=2, sample_weights=ws)
    assert seeded == [3, 1, 1]  # four same-shaped problems in two batches, the odd one alone
    for a, b in zip(alone, together):
        assert b.labels.unique().numel() == a.labels.unique().numel()
        if weighted:  # a batch's weighted product rounds differently from one problem's
            assert b.inertia == pytest.approx(a.inertia, rel=0.05)
        else:
            assert torch.equal(a.labels, b.labels) and a.inertia == b.inertia


def test_kmeans_many_checks_its_lists() -> None:
    with pytest.raises(SpeechPruneError, match="2 inputs, 1 values of k"):
        importlib.import_module("speechprune.kmeans").kmeans_many([torch.randn(5, 2)] * 2, [2])


def test_memory_budget_is_the_cap_on_the_cpu() -> None:
    module = importlib.import_module("speechprune.kmeans")
    assert module.memory_budget("cpu", 1234) == 1234


def _closest_pairs_masked(x: torch.Tensor, k: int, w: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """closest_pairs as first written: a masked copy of the cost matrix on every pass (the reference)."""
    import math

    from speechprune.kmeans_seeding import _sq_distances

    n = x.shape[0]
    w = torch.ones(n, dtype=torch.float64) if w is None else w.to(torch.float64)
    points = x.to(torch.float64)
    labels, centers, weights = torch.arange(n), points.clone(), w.clone()
    while centers.shape[0] > k:
        m = centers.shape[0]
        sq = (centers * centers).sum(1)
        cost = _sq_distances(centers, sq, centers, sq)
        cost.mul_(weights[:, None] * weights[None, :] / (weights[:, None] + weights[None, :]))
        cost.fill_diagonal_(math.inf)
        free = torch.ones(m, dtype=torch.bool)
        partner = torch.full((m,), -1, dtype=torch.long)
        needed = m - k
        while needed > 0 and int(free.sum()) >= 2:
            masked = cost.masked_fill(~(free[:, None] & free[None, :]), math.inf)
            best_cost, nearest = masked.min(1)
            idx = torch.arange(m)
            mutual = free & (nearest[nearest] == idx) & (idx < nearest) & torch.isfinite(best_cost)
            cand = mutual.nonzero().squeeze(1)
            if cand.numel() == 0:
                break
            order = torch.argsort(best_cost[cand], stable=True)[:needed]
            a, b = cand[order], nearest[cand[order]]
            partner[a], partner[b] = b, a
            free[a], free[b] = False, False
            needed -= a.numel()
        root = torch.where((partner >= 0) & (partner < torch.arange(m)), partner, torch.arange(m))
        uniq, new_index = torch.unique(root, return_inverse=True)
        new_w = torch.zeros(uniq.numel(), dtype=torch.float64).index_add_(0, new_index, weights)
        sums = torch.zeros(uniq.numel(), centers.shape[1], dtype=torch.float64).index_add_(
            0, new_index, centers * weights[:, None])
        centers, weights = sums / new_w[:, None], new_w
        labels = new_index[labels]
    return labels, float(((points - centers[labels]).pow(2).sum(1)) @ w)


@pytest.mark.parametrize("n,d,k,weighted,duplicates", [(300, 16, 150, False, False), (257, 8, 40, True, False),
                                                       (200, 12, 120, False, True), (64, 3, 5, True, True)])
def test_closest_pairs_in_place_masking_gives_the_reference_assignments(n, d, k, weighted, duplicates):
    from speechprune.pairs import closest_pairs

    g = torch.Generator().manual_seed(n + k)
    x = torch.randn(n, d, generator=g)
    if duplicates:  # exact ties: the index order must break them the same way
        x[n // 2:] = x[: n - n // 2]
    w = torch.rand(n, generator=g) + 0.1 if weighted else None
    labels, inertia = _closest_pairs_masked(x, k, w)
    result = closest_pairs(x, k, sample_weight=w)
    assert torch.equal(result.labels, labels)
    assert result.inertia == pytest.approx(inertia, rel=1e-9, abs=1e-9)
    assert int(result.labels.max()) + 1 == k
