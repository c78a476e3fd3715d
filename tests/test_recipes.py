"""Closest pairs first (the seed-free clustering against runaway merges) and the named recipes."""

import copy

import pytest
import torch

from speechprune.compress import compress
from speechprune.kmeans import kmeans
from speechprune.pairs import closest_pairs
from speechprune.study import make_run, parse_study


def test_closest_pairs_merges_only_pairs_when_k_is_at_least_half_of_n():
    torch.manual_seed(0)
    x = torch.randn(300, 20)
    for k in (299, 240, 150):
        r = closest_pairs(x, k)
        sizes = torch.bincount(r.labels)
        assert sizes.numel() == k and int(sizes.min()) >= 1 and int(sizes.max()) <= 2
    r = closest_pairs(x, 60)  # 80% removed: several rounds, clusters of up to 8
    assert torch.bincount(r.labels).numel() == 60


def test_closest_pairs_is_deterministic_and_exact_on_duplicates():
    torch.manual_seed(1)
    base = torch.randn(40, 6)
    x = torch.cat([base, base[:15]])
    r = closest_pairs(x, 40)
    assert r.inertia == 0.0
    assert torch.equal(r.labels[:15], r.labels[40:])
    assert torch.equal(closest_pairs(x, 33).labels, closest_pairs(x, 33).labels)


def test_closest_pairs_takes_the_globally_closest_pair_first():
    x = torch.tensor([[0.0], [10.0], [10.1], [20.0], [35.0]])
    r = closest_pairs(x, 4)
    assert r.labels[1] == r.labels[2] and len(set(r.labels.tolist())) == 4
    assert r.inertia == pytest.approx(2 * 0.05 ** 2, rel=1e-4)
    # a heavy point pulls the merged mean: Ward cost with weights
    w = torch.tensor([1.0, 1.0, 100.0, 1.0, 1.0])
    assert closest_pairs(x, 4, sample_weight=w).centers[r.labels[1]].item() == pytest.approx((10 + 10.1 * 100) / 101)


def test_closest_pairs_is_no_worse_than_kmeans_near_k_equals_n():
    torch.manual_seed(2)
    x = torch.randn(400, 64)
    assert closest_pairs(x, 360).inertia <= kmeans(x, 360, seed=0).inertia * 1.02


def test_pairs_method_compresses_and_has_no_seed(tiny_whisper):
    a = copy.deepcopy(tiny_whisper)
    report = compress(a, method="pairs", sparsity=0.25, scope="ffn", features="producer", progress=False)
    assert report.method == "pairs" and report.features == "producer"
    assert all(u.channels_after == 48 for u in report.units)
    b = copy.deepcopy(tiny_whisper)
    compress(b, method="pairs", sparsity=0.25, scope="ffn", features="producer", seed=7, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    run = make_run("m", "d", method="pairs", scope="ffn", sparsity=0.25, seed=3)
    assert run.seed is None
    runs = parse_study(dict(name="s", models=["m"], data=["d"], seeds=3, settings=[dict(scope="ffn", sparsity=0.1)],
                            options=[dict(method="pairs")])).runs
    assert [r.method for r in runs] == ["dense", "pairs"]
