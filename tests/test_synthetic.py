"""Function space without data (speechprune.synthetic): the ``function`` features and the
``corrected`` merge on tiny random models."""

from __future__ import annotations

import copy

import pytest
import torch

from speechprune.compress import compress
from speechprune.methods import assign
from speechprune.prune import Assignment, channel_features, merge
from speechprune.structure import units_in_scope
from speechprune.synthetic import activation_fn, function_features, mean_activations, synthetic_inputs
from speechprune.testing import tiny_model


def _ffn_unit(family="whisper"):
    model = tiny_model(family)
    return model, units_in_scope(model, "encoder.ffn" if family == "whisper" else "ffn")[0]


def _block_output(unit, x):
    """The feed-forward block's output (before the residual) on inputs x."""
    z = unit.producers[0](x)
    return unit.consumer(activation_fn(unit)(z))


@pytest.mark.parametrize("family", ["whisper", "hubert"])
def test_feed_forward_units_have_their_nonlinearity_and_attention_units_none(family):
    model = tiny_model(family)
    ffn = units_in_scope(model, "ffn")[0]
    attention = units_in_scope(model, "attention")[0]
    assert activation_fn(ffn) is not None and activation_fn(attention) is None
    x = torch.linspace(-3, 3, 7)
    assert torch.allclose(activation_fn(ffn)(x), torch.nn.functional.gelu(x), atol=1e-3)


def test_synthetic_inputs_follow_the_layernorm_and_are_deterministic():
    _, unit = _ffn_unit()
    norm = unit.input_norms[0]
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, norm.weight.numel()))
        norm.bias.copy_(torch.linspace(-1.0, 1.0, norm.bias.numel()))
    x = synthetic_inputs(unit, 20000)
    assert torch.equal(x, synthetic_inputs(unit, 20000))
    assert torch.allclose(x.mean(0), norm.bias, atol=0.05)
    assert torch.allclose(x.std(0), norm.weight, rtol=0.05)


def test_function_features_are_activations_and_see_through_the_nonlinearity():
    _, unit = _ffn_unit()
    lin = unit.producers[0]
    with torch.no_grad():  # channels 0 and 1: different weights, both always off (bias far below zero)
        lin.weight[1] = -lin.weight[0]
        lin.bias[0], lin.bias[1] = -1e4, -1e4
    f = function_features(unit, 256)
    assert f.shape == (unit.n_channels, 256)
    assert torch.allclose(f[0], f[1], atol=1e-6), "two channels that never fire compute the same thing"
    p = channel_features(unit, "producer")
    typical = torch.cdist(p[2:, :-1], p[2:, :-1]).median()  # weight rows only (the biases are planted)
    assert (p[0, :-1] - p[1, :-1]).norm() > typical, "their weights are further apart than a typical pair's"
    assert torch.equal(channel_features(unit, "function"), function_features(unit))
    # closest pairs on function features merges them first
    labels = assign(unit, unit.n_channels - 1, "pairs", features="function").labels
    assert labels[0] == labels[1]
    assert len(set(labels.tolist())) == unit.n_channels - 1


def test_attention_function_features_are_the_linear_q_k_v_outputs():
    model = tiny_model("whisper")
    unit = units_in_scope(model, "encoder.attention")[0]
    f = function_features(unit, 64)
    assert f.shape == (unit.n_channels, 3 * unit.group_size * 64)
    assert torch.isfinite(f).all()


@pytest.mark.parametrize("family", ["whisper", "hubert"])
def test_the_corrected_merge_keeps_the_mean_output_on_synthetic_inputs(family):
    model, unit = _ffn_unit(family)
    n = unit.n_channels
    labels = torch.arange(n)
    labels[n // 2:] = torch.arange(n - n // 2) % (n // 2)  # pairs: channel i and i + n/2
    a = Assignment(labels, n // 2, 0.0)
    x = synthetic_inputs(unit, 4096)
    with torch.no_grad():
        before = _block_output(unit, x).mean(0)
    plain = copy.deepcopy(model)
    plain_unit = units_in_scope(plain, "encoder.ffn" if family == "whisper" else "ffn")[0]
    merge(plain_unit, a, "mean")
    merge(unit, a, "corrected")
    with torch.no_grad():
        after_plain = _block_output(plain_unit, x).mean(0)
        after = _block_output(unit, x).mean(0)
    assert torch.allclose(unit.producers[0].weight, plain_unit.producers[0].weight)
    assert torch.allclose(unit.consumer.weight, plain_unit.consumer.weight)
    shift_plain = float((after_plain - before).norm())
    assert shift_plain > 1e-4
    assert float((after - before).norm()) < 1e-3 * shift_plain + 1e-6


def test_the_corrected_merge_is_exact_for_identical_members_and_mean_for_attention():
    model, unit = _ffn_unit()
    bias = unit.consumer.bias.detach().clone()
    n = unit.n_channels
    with torch.no_grad():
        unit.producers[0].weight[1] = unit.producers[0].weight[0]
        unit.producers[0].bias[1] = unit.producers[0].bias[0]
    labels = torch.cat([torch.tensor([0, 0]), torch.arange(1, n - 1)])
    merge(unit, Assignment(labels, n - 1, 0.0), "corrected")
    assert torch.allclose(unit.consumer.bias, bias, atol=1e-5)
    attention = units_in_scope(model, "encoder.attention")[0]
    twin = copy.deepcopy(model)
    k = attention.n_channels - 1
    labels = torch.tensor([0, 0] + list(range(1, k)))
    merge(attention, Assignment(labels, k, 0.0), "corrected")
    twin_attention = units_in_scope(twin, "encoder.attention")[0]
    merge(twin_attention, Assignment(labels, k, 0.0), "mean")
    for got, want in zip(model.state_dict().values(), twin.state_dict().values()):
        assert torch.equal(got, want)


def test_compress_takes_the_new_options_and_records_them():
    model = tiny_model("whisper")
    report = compress(model, method="pairs", features="function", merge="corrected", sparsity=0.25, scope="ffn",
                      progress=False)
    assert (report.features, report.merge) == ("function", "corrected")
    assert report.seed is None
    again = tiny_model("whisper")
    compress(again, method="pairs", features="function", merge="corrected", sparsity=0.25, scope="ffn", progress=False)
    for got, want in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(got, want), "seed-free: the synthetic inputs come from a fixed generator"


def test_mean_activations_average_over_inputs():
    _, unit = _ffn_unit()
    x = synthetic_inputs(unit, 32)
    m = mean_activations(unit, x)
    with torch.no_grad():
        want = activation_fn(unit)(unit.producers[0](x)).mean(0)
    assert torch.allclose(m, want, atol=1e-5)
