"""The ``obs`` method (speechprune.obs): structured OBS costs, the greedy removal, and ``compress(method="obs")``."""

from __future__ import annotations

import copy

import pytest
import torch

import speechprune.calibration as calibration
from speechprune.compress import compress
from speechprune.errors import SpeechPruneError
from speechprune.methods import assign, get_method, register_method, unregister_method
from speechprune.obs import assign_obs, obs_order
from speechprune.prune import assign_pairs
from speechprune.structure import units_in_scope
from speechprune.testing import tiny_model


@pytest.fixture
def few_clips(monkeypatch):
    """Two synthetic clips instead of 16 (the calibration's cost, not what is tested)."""
    monkeypatch.setattr(calibration, "CALIBRATION_CLIPS", 2)


def _refit_error(h, c, keep):
    """The squared output error when only the columns ``keep`` of ``h`` remain and the consumer is re-solved
    (least squares, with a bias column), against the full block ``h @ c.T``."""
    ones = torch.ones(h.shape[0], 1, dtype=torch.float64)
    target = h @ c.T
    a = torch.cat([h[:, keep], ones], 1)
    solution = torch.linalg.lstsq(a, target).solution
    return float((a @ solution - target).pow(2).sum())


def _problem(rows=400, n=24, d_out=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(n, n, generator=g, dtype=torch.float64) * torch.linspace(0.05, 1.0, n, dtype=torch.float64)
    h = torch.relu(torch.randn(rows, n, generator=g, dtype=torch.float64) @ mix)  # correlated, non-negative
    c = torch.randn(d_out, n, generator=g, dtype=torch.float64)
    return h, c


def test_one_at_a_time_its_cost_is_the_refit_error_it_leaves():
    """With one channel a round and almost no damping, the summed OBS cost is the least-squares error of
    re-solving the consumer on the channels kept: the quantity the removal is greedy in."""
    h, c = _problem()
    gone, cost = obs_order(h, c, 8, steps=8, damp=1e-10)
    keep = [i for i in range(h.shape[1]) if i not in set(gone.tolist())]
    assert len(gone) == 8 and len(set(gone.tolist())) == 8
    assert cost == pytest.approx(_refit_error(h, c, keep), rel=1e-4)


def test_it_removes_a_channel_that_another_can_stand_in_for_first():
    """A channel whose activations are another's, scaled: removing it costs nothing once the consumer is
    re-solved, however large its consumer column; magnitude would keep it."""
    h, c = _problem()
    h[:, 5] = 3.0 * h[:, 11]
    c[:, 5] *= 50
    gone, cost = obs_order(h, c, 1, steps=1, damp=1e-10)
    assert int(gone[0]) in (5, 11) and cost == pytest.approx(0.0, abs=1e-6 * float((h @ c.T).pow(2).sum()))


def test_its_choice_leaves_less_error_than_keeping_the_largest_channels():
    h, c = _problem(seed=3)
    for steps in (1, 4, 64):
        gone, _ = obs_order(h, c, 12, steps=steps)
        keep = sorted(set(range(24)) - set(gone.tolist()))
        largest = torch.argsort((c * c).sum(0) * (h * h).sum(0), descending=True)[:12].tolist()
        assert _refit_error(h, c, keep) < _refit_error(h, c, sorted(largest))


def test_a_gram_that_rounding_left_not_positive_definite_is_inverted_by_lu(monkeypatch):
    """The inverse goes through a Cholesky factor; where that fails, LU gives the same removals."""
    h, c = _problem(seed=5)
    fast = obs_order(h, c, 10, steps=5)
    failed = []

    def not_positive_definite(gram):
        failed.append(gram.shape)
        return torch.zeros_like(gram), torch.tensor(3, dtype=torch.int32)

    monkeypatch.setattr(torch.linalg, "cholesky_ex", not_positive_definite)
    slow = obs_order(h, c, 10, steps=5)
    assert failed == [(25, 25)]  # the Gram with the bias column
    assert torch.equal(fast[0], slow[0]) and slow[1] == pytest.approx(fast[1], rel=1e-9)


def test_a_budget_it_cannot_meet_is_an_error():
    h, c = _problem()
    with pytest.raises(SpeechPruneError, match="cannot remove 24 of 24"):
        obs_order(h, c, 24)


def test_without_inputs_a_feed_forward_unit_is_an_error_that_names_it():
    unit = units_in_scope(tiny_model("whisper"), "encoder.ffn")[0]
    with pytest.raises(SpeechPruneError, match=r"encoder.layers.0.ffn: the obs method needs the unit's inputs"):
        assign_obs(unit, 40)


def test_attention_heads_are_assigned_by_closest_pairs():
    unit = units_in_scope(tiny_model("whisper"), "encoder.attention")[0]
    ours, pairs = assign_obs(unit, 2), assign_pairs(unit, 2, features="producer")
    assert torch.equal(ours.labels, pairs.labels)


def test_compress_feeds_it_the_calibration_and_really_shrinks(few_clips):
    model = tiny_model("whisper")
    before = copy.deepcopy(model)
    report = compress(model, method="obs", merge="refit", sparsity=0.25, scope="ffn", progress=False)
    assert report.method == "obs" and report.seed is None
    for unit in units_in_scope(model, "ffn"):
        assert unit.producers[0].out_features == unit.consumer.in_features == 48
    again = copy.deepcopy(before)
    compress(again, method="obs", merge="refit", sparsity=0.25, scope="ffn", progress=False)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    # the kept producers are the dense model's rows, unchanged (no merge)
    for dense, pruned in zip(units_in_scope(before, "ffn"), units_in_scope(model, "ffn")):
        rows = pruned.producers[0].weight
        hits = (rows[:, None, :] == dense.producers[0].weight[None]).all(-1).any(1)
        assert bool(hits.all())


def test_a_method_whose_signature_names_inputs_gets_each_units_calibration(few_clips):
    seen = {}

    def spy(unit, k, inputs=None):
        seen[unit.name] = None if inputs is None else tuple(inputs.shape)
        labels = torch.full((unit.n_channels,), -1)
        labels[:k] = torch.arange(k)
        return labels

    register_method("spy-calibrated", spy)
    try:
        assert get_method("spy-calibrated").calibrated and not get_method("pairs").calibrated
        compress(tiny_model("whisper"), method="spy-calibrated", sparsity=0.25, scope="encoder", progress=False)
    finally:
        unregister_method("spy-calibrated")
    ffn = [name for name in seen if name.endswith("ffn")]
    assert ffn and all(seen[name] is not None and seen[name][1] == 32 for name in ffn)  # d_model of the tiny model
    assert all(seen[name] is None for name in seen if name.endswith("attn"))


def test_assign_passes_inputs_through_the_registry(few_clips):
    model = tiny_model("whisper")
    unit = units_in_scope(model, "encoder.ffn")[0]
    x = calibration.capture_inputs(model, [unit])[unit.name]
    a = assign(unit, 40, "obs", inputs=x)
    assert a.k == 40 and int((a.labels == -1).sum()) == 24 and a.cost >= 0
