"""speechprune.stats on synthetic records whose answers are known."""

import numpy as np
import pytest

from speechprune import stats


def record(errors, words, seed=None, label="x", **extra):
    return dict(utterance_ids=[f"u{i}" for i in range(len(errors))], utterance_errors=list(errors),
                utterance_words=list(words), seed=seed, label=label,
                wer=100.0 * sum(errors) / sum(words), **extra)


def seeded(rate_by_seed, n=100, words=10, rng=None):
    """One record per seed with a per-utterance error count of round(rate * words) (plus noise)."""
    out = []
    for s, rate in enumerate(rate_by_seed):
        e = np.full(n, rate * words)
        if rng is not None:
            e = rng.binomial(words, rate, size=n)
        out.append(record(e.astype(int).tolist(), [words] * n, seed=s))
    return out


def test_summary_median_and_range_over_seeds():
    recs = seeded([0.1, 0.3, 0.2, 0.5, 0.4])
    s = stats.summarize(recs, n_boot=200)
    assert (s.median, s.low, s.high, s.n_seeds, s.n_utterances) == (30.0, 10.0, 50.0, 5, 100)


def test_interval_is_a_point_when_nothing_varies():
    recs = seeded([0.2] * 5)
    s = stats.summarize(recs, n_boot=300)
    assert s.interval == pytest.approx((20.0, 20.0))


def test_interval_widens_with_seed_spread_and_covers_the_truth():
    rng = np.random.default_rng(1)
    narrow = stats.summarize(seeded([0.2] * 5, rng=rng), n_boot=500)
    wide = stats.summarize(seeded([0.05, 0.1, 0.2, 0.4, 0.6], rng=rng), n_boot=500)
    assert narrow.interval[0] < 20.0 < narrow.interval[1]
    assert (wide.interval[1] - wide.interval[0]) > 3 * (narrow.interval[1] - narrow.interval[0])


def test_bootstrap_coverage_is_near_95_percent():
    # utterance-level noise only: the true corpus WER is 20%; the interval should cover it ~95% of the time
    rng = np.random.default_rng(0)
    covered = 0
    trials = 100
    for t in range(trials):
        recs = seeded([0.2] * 5, n=60, rng=rng)
        lo, hi = stats.summarize(recs, n_boot=400, seed=t).interval
        covered += lo <= 20.0 <= hi
    assert 85 <= covered <= 100


def test_paired_difference_is_exact_for_a_constant_shift():
    b = seeded([0.5] * 5)
    a = [record([e - 2 for e in r["utterance_errors"]], r["utterance_words"], seed=r["seed"]) for r in b]
    d = stats.paired_difference(a, b, n_boot=300)
    assert d.median == pytest.approx(-20.0)
    assert d.interval == pytest.approx((-20.0, -20.0))
    assert (d.lower, d.n_seeds) == (5, 5)


def test_paired_difference_pairs_seeds_and_broadcasts_a_seedless_baseline():
    a = seeded([0.1, 0.2, 0.3, 0.4, 0.9])
    magnitude = [record([6] * 100, [10] * 100)]  # 60%, no seed
    d = stats.paired_difference(a, magnitude, n_boot=200)
    assert d.differences == pytest.approx([-50, -40, -30, -20, 30])
    assert d.lower == 4 and d.median == pytest.approx(-30.0)
    # seed-by-seed pairing: A = B - 1 error per utterance in every seed
    b = seeded([0.3, 0.5, 0.2, 0.6, 0.4])
    a2 = [record([e - 1 for e in r["utterance_errors"]], r["utterance_words"], seed=r["seed"]) for r in b]
    assert stats.paired_difference(a2, b, n_boot=100).differences == pytest.approx([-10] * 5)


def test_identical_methods_cannot_be_told_apart():
    rng = np.random.default_rng(3)
    a = seeded([0.3, 0.2, 0.4, 0.25, 0.35], rng=rng)
    b = seeded([0.25, 0.35, 0.3, 0.4, 0.2], rng=rng)
    d = stats.paired_difference(a, b, n_boot=500)
    assert d.interval[0] < 0 < d.interval[1]
    text = stats.sentence(d, "cluster", "magnitude")
    assert text.startswith("the data cannot decide between cluster and magnitude: the 95% interval contains 0")


def test_sentence_names_the_winner_only_when_the_data_decide():
    rng = np.random.default_rng(4)
    magnitude = [record(rng.binomial(10, 0.8, 100).tolist(), [10] * 100)]
    cluster = seeded([0.3, 0.35, 0.4, 0.38, 0.33], rng=rng)
    d = stats.paired_difference(cluster, magnitude, n_boot=500)
    text = stats.sentence(d, "cluster", "magnitude")
    assert text.startswith("cluster is lower than magnitude in 5 of 5 seeds, median difference −")
    assert "points [−" in text
    # the same data with 3 seeds, or 20 utterances, cannot decide
    few = stats.paired_difference(cluster[:3], magnitude, n_boot=200)
    assert "only 3 seeds (at least 5 needed)" in stats.sentence(few, "cluster", "magnitude")
    small = [dict(r, utterance_ids=r["utterance_ids"][:20], utterance_errors=r["utterance_errors"][:20],
                  utterance_words=r["utterance_words"][:20]) for r in cluster]
    small_m = [dict(magnitude[0], utterance_ids=magnitude[0]["utterance_ids"][:20],
                    utterance_errors=magnitude[0]["utterance_errors"][:20],
                    utterance_words=magnitude[0]["utterance_words"][:20])]
    text = stats.sentence(stats.paired_difference(small, small_m, n_boot=200), "cluster", "magnitude")
    assert "cannot decide" in text and "only 20 utterances" in text


def test_higher_is_said_when_a_loses():
    b = seeded([0.2] * 5)
    a = [record([e + 3 for e in r["utterance_errors"]], r["utterance_words"], seed=r["seed"]) for r in b]
    text = stats.sentence(stats.paired_difference(a, b, n_boot=100), "A", "B")
    assert text == "A is higher than B in 5 of 5 seeds, median difference +30.0 points [+30.0, +30.0]"


def test_different_utterances_are_refused():
    a = [record([1, 2], [5, 5], seed=0)]
    b = [dict(record([1, 2], [5, 5]), utterance_ids=["x", "y"])]
    with pytest.raises(ValueError, match="same utterances"):
        stats.paired_difference(a, b)


def test_comparisons_group_a_study_and_pair_with_magnitude():
    base = dict(model="m", data="d", max_samples=None, decoding="greedy", scope="encoder.ffn", sparsity=0.2,
                features=None, allocation="uniform", merge=None, weighting=None)
    dense = record([0] * 40, [10] * 40, **{**base, "scope": None, "sparsity": 0.0, "allocation": None},
                   method="dense", label="dense")
    mag = record([8] * 40, [10] * 40, **base, method="magnitude", label="magnitude")
    clus = [record([2 + s % 2] * 40, [10] * 40, seed=s, **{**base, "features": "both", "merge": "mean",
                                                            "weighting": "none"}, method="cluster", label="cluster")
            for s in range(5)]
    rows = stats.comparisons([dense, mag] + clus, n_boot=100)
    row = next(r for r in rows if r["method"] == "cluster")
    assert row["summary"].median == 20.0 and row["dense"] == 0.0
    assert row["sentence"] == "cluster is lower than magnitude in 5 of 5 seeds, median difference −60.0 points [−60.0, −50.0]" or \
        row["sentence"].startswith("cluster is lower than magnitude in 5 of 5 seeds, median difference −60.0 points")
    assert "cluster" in stats.study_summary([dense, mag] + clus, n_boot=100)


def _study_records():
    base = dict(model="m", data="d", max_samples=None, decoding="greedy", features="both", merge="mean",
                weighting="none", method="cluster")
    out = []
    for sparsity, (uniform_rate, variance_rate) in {0.2: (4, 2), 0.5: (6, 6)}.items():
        for s in range(5):
            out.append(record([uniform_rate] * 40, [10] * 40, seed=s, label="uniform", scope="encoder.ffn",
                              sparsity=sparsity, allocation="uniform", **base))
            out.append(record([variance_rate + (s == 0)] * 40, [10] * 40, seed=s, label="variance",
                              scope="encoder.ffn", sparsity=sparsity, allocation="variance", **base))
    return out


def test_versus_compares_any_two_options_in_the_setting_that_has_both():
    recs = _study_records()
    d, said = stats.versus(recs, "variance", "uniform", sparsity=0.2)
    assert d.median == -20.0 and d.lower == 5 and d.n_seeds == 5
    assert said.startswith("variance is lower than uniform in 5 of 5 seeds, median difference −20.0 points")
    d, said = stats.versus(recs, "variance", "uniform", sparsity=0.5)
    assert d.median == 0.0 and said.startswith("the data cannot decide between variance and uniform")
    assert stats.versus(recs, "variance", "magnitude") is None  # no setting has both
    with pytest.raises(ValueError, match="2 settings have both"):
        stats.versus(recs, "variance", "uniform")  # two settings: it must be told which


def test_a_seeded_option_with_one_seed_pairs_one_seed_not_five():
    """One saved seed of a k-means option is not a seedless baseline: it pairs with seed 0 only."""
    five = seeded([0.5] * 5)
    one = [record([2] * 100, [10] * 100, seed=0)]
    d = stats.paired_difference(one, five, n_boot=100)
    assert d.n_seeds == 1 and d.seeded and d.median == -30.0
    assert stats.sentence(d, "new", "old").startswith("the data cannot decide between new and old: only 1 seed")
    later = [record([2] * 100, [10] * 100, seed=7)]
    with pytest.raises(ValueError, match="share no seed"):
        stats.paired_difference(later, five, n_boot=100)


def test_decodings_pair_each_option_with_itself_under_the_other_decoding():
    base = dict(model="m", data="d", max_samples=None, scope="encoder.ffn", sparsity=0.2, features="both",
                allocation="uniform", merge="mean", weighting="none", method="cluster", deletions=0)
    recs = []
    loops, plain = [12] * 20 + [1] * 20, [2] * 20 + [1] * 20  # half the utterances loop under greedy
    for s in range(5):  # fallback removes 10 insertions from each looping utterance
        recs.append(record(loops, [10] * 40, seed=s, decoding="greedy", substitutions=60, insertions=200, **base))
        recs.append(record(plain, [10] * 40, seed=s, decoding="fallback", substitutions=60, insertions=0, **base))
    recs.append(record(plain, [10] * 40, seed=5, decoding="fallback", substitutions=60, insertions=0,
                       **base))  # a seed with no greedy run is left out of the pairing
    (row,) = stats.decodings(recs, n_boot=100)
    assert row["n_seeds"] == 5 and row["greedy"].median == 65.0 and row["fallback"].median == 15.0
    assert row["difference"].median == -50.0 and row["difference"].lower == 5
    assert row["insertions_greedy"] == pytest.approx(100 * 200 / 260) and row["insertions_fallback"] == 0.0
    assert row["sentence"].startswith("fallback decoding is lower than greedy decoding in 5 of 5 seeds, "
                                      "median difference −50.0 points")
    assert stats.decodings([r for r in recs if r["decoding"] == "greedy"]) == []  # nothing to pair


def test_versus_dense_says_whether_the_increase_is_significant():
    """Chapter 4's claim, tested over seeds: a pruned option against its own uncompressed model."""
    ids, words = [f"u{i}" for i in range(40)], [10] * 40

    def rec(label, method, seed, errors):
        return dict(label=label, method=method, seed=seed, model="m", data="d", decoding="greedy", scope="ffn",
                    sparsity=0.1 if method != "dense" else 0.0, wer=100 * sum(errors) / 400,
                    utterance_ids=ids, utterance_errors=errors, utterance_words=words)

    dense = rec("dense", "dense", None, [1] * 40)
    worse = [rec("cluster", "cluster", s, [2 + (i + s) % 2 for i in range(40)]) for s in range(5)]
    same = [rec("pairs", "pairs", None, [1 + (i % 3 == 0) - (i % 3 == 1) for i in range(40)])]
    d, said = stats.versus_dense([dense, *worse, *same], "cluster", scope="ffn")
    assert d.interval[0] > 0 and said.startswith("cluster has a significant WER increase") and "5 seeds" in said
    d, said = stats.versus_dense([dense, *worse, *same], "pairs")
    assert d.interval[0] <= 0 <= d.interval[1] and "no significant WER increase" in said and "one run" in said
    assert stats.versus_dense([dense], "cluster") is None
