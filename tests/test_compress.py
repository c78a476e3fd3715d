"""The pruning core on tiny random HuBERT, wav2vec2 and Whisper models."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_tiny_hubert, make_tiny_wav2vec2, make_tiny_whisper

from speechprune.allocation import allocate
from speechprune.compress import compress
from speechprune.errors import SpeechPruneError
from speechprune.methods import assign
from speechprune.prune import magnitude_scores, merge
from speechprune.structure import iter_units, model_family, parse_scope, units_in_scope, widths
from speechprune.testing import plant_duplicate_channels

MAKERS = {"hubert": make_tiny_hubert, "wav2vec2": make_tiny_wav2vec2, "whisper": make_tiny_whisper}


def _forward(model, x):
    with torch.no_grad():
        if model_family(model) == "whisper":
            dec = torch.tensor([[1, 5, 7, 9]] * x.shape[0])
            return model(input_features=x, decoder_input_ids=dec).logits
        return model(x).logits


def _input(family):
    torch.manual_seed(1)
    return torch.randn(2, 8, 40) if family == "whisper" else torch.randn(2, 1600)


@pytest.mark.parametrize("family", list(MAKERS))
@pytest.mark.parametrize("method", ["cluster", "magnitude"])
@pytest.mark.parametrize("scope", ["ffn", "attention", "all"])
def test_shapes_shrink_exactly_and_model_still_runs(family, method, scope):
    model = MAKERS[family]()
    x = _input(family)
    before = widths(model)
    report = compress(model, method=method, sparsity=0.5, scope=scope, progress=False)
    parts = parse_scope(scope, model)
    for unit in iter_units(model):
        n0 = before[unit.name]
        expected = round(n0 * 0.5) if unit.part in parts else n0
        assert unit.n_channels == expected, unit.name
        width = expected * unit.group_size
        assert unit.consumer.in_features == width
        assert all(p.out_features == width for p in unit.producers)
        if unit.kind == "attention":
            assert unit.owner.num_heads == expected
    assert report.params_after < report.params_before
    assert report.params_after == sum(p.numel() for p in model.parameters())
    assert report.channel_sparsity() == pytest.approx(0.5)
    out = _forward(model, x)
    assert torch.isfinite(out).all()
    if family == "whisper":
        ids = model.generate(x, max_new_tokens=4)
        assert ids.shape[0] == 2
    else:
        assert out.argmax(-1).shape == out.shape[:2]  # CTC greedy decoding input


@pytest.mark.parametrize("family", list(MAKERS))
@pytest.mark.parametrize("method", ["cluster", "magnitude"])
def test_zero_sparsity_leaves_outputs_unchanged(family, method):
    model = MAKERS[family]()
    x = _input(family)
    ref = _forward(model, x)
    compress(model, method=method, sparsity=0.0, scope="all", progress=False)
    torch.testing.assert_close(_forward(model, x), ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", list(MAKERS))
@pytest.mark.parametrize("recipe", [dict(merge="mean"), dict(merge="projection"),
                                    dict(features="normalized", weighting="consumer", merge="weighted")],
                         ids=["mean", "projection", "normalized-weighted"])
def test_duplicate_channels_and_heads_merge_exactly(family, recipe):
    model = MAKERS[family]()
    x = _input(family)
    plant_duplicate_channels(model)
    ref = _forward(model, x)
    report = compress(model, method="cluster", sparsity=0.5, scope="all", progress=False, **recipe)
    assert all(u.cost < 1e-6 for u in report.units)
    torch.testing.assert_close(_forward(model, x), ref, rtol=1e-4, atol=1e-5)


def test_magnitude_keeps_the_highest_norm_channels(tiny_whisper):
    unit = next(u for u in iter_units(tiny_whisper) if u.kind == "ffn")
    with torch.no_grad():
        unit.producers[0].weight.mul_(torch.linspace(0.1, 2.0, unit.n_channels).flip(0)[torch.randperm(unit.n_channels)].unsqueeze(1))
    scores = magnitude_scores(unit)
    top = set(torch.topk(scores, 16).indices.tolist())
    rows = unit.producers[0].weight.detach().clone()
    merge(unit, assign(unit, 16, "magnitude"))
    kept = unit.producers[0].weight.detach()
    assert kept.shape[0] == 16
    for row in kept:
        i = int(torch.nonzero((rows == row).all(dim=1))[0])
        assert i in top


def test_same_seed_same_result_and_seed_matters():
    results = []
    for seed in (0, 0, 1):
        model = make_tiny_whisper()
        compress(model, method="cluster", sparsity=0.5, scope="all", seed=seed, progress=False)
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(results[0], results[1])
    assert not torch.equal(results[0], results[2])


@pytest.mark.parametrize("allocation", ["variance", "cost"])
def test_mixed_allocations_keep_the_uniform_budget(allocation):
    model = make_tiny_whisper()
    with torch.no_grad():  # give the layers different spreads so allocations differ
        for i, unit in enumerate(u for u in iter_units(model) if u.kind == "ffn"):
            unit.producers[0].weight.mul_(0.5 + i)
            unit.consumer.weight.mul_(0.5 + i)
    units = units_in_scope(model, "all")
    uniform = allocate(units, 0.5, "uniform")
    cost = lambda u, k: assign(u, k, "cluster").cost  # noqa: E731
    mixed = allocate(units, 0.5, allocation, cost_fn=cost)
    for kind in ("ffn", "attention"):
        names = [u.name for u in units if u.kind == kind]
        assert sum(mixed[n] for n in names) == sum(uniform[n] for n in names)
    assert all(k >= 1 for k in mixed.values())
    assert mixed != uniform
    report = compress(model, sparsity=0.5, scope="all", allocation=allocation, progress=False)
    assert {u.name: u.channels_after for u in report.units} == mixed


def test_cost_allocation_measures_only_the_grid_points_its_greedy_reaches():
    """The greedy is lazy: it measures fewer costs than the whole grid, each once, and chooses
    what the greedy over the whole grid, measured in advance, chooses."""
    units = units_in_scope(make_tiny_whisper(), "ffn")
    slope = {u.name: 1.0 + 3 * i for i, u in enumerate(units)}  # later layers cost more per channel
    calls = []

    def cost(unit, k):
        calls.append((unit.name, k))
        return slope[unit.name] * (unit.n_channels - k) ** 1.5

    lazy = allocate(units, 0.2, "cost", cost_fn=cost)
    assert len(calls) == len(set(calls))
    # the whole grid, measured in advance: step 5% from each width down to 40% kept
    grid = {u.name: sorted({max(1, round(u.n_channels * (1 - 0.05 * s))) for s in range(13)}, reverse=True)
            for u in units}
    assert len(calls) < sum(len(ks) - 1 for ks in grid.values())
    keep = {u.name: u.n_channels for u in units}
    to_remove = sum(keep.values()) - sum(allocate(units, 0.2, "uniform").values())
    while to_remove > 0:  # remove a grid step where the cost grows least per channel
        def rate(u):
            ks = grid[u.name]
            j = ks.index(keep[u.name])
            return (cost(u, ks[j + 1]) - cost(u, ks[j])) / (ks[j] - ks[j + 1]) if j + 1 < len(ks) else float("inf")

        u = min(units, key=rate)
        ks = grid[u.name]
        step = min(keep[u.name] - ks[ks.index(keep[u.name]) + 1], to_remove)
        keep[u.name] -= step
        to_remove -= step
    assert lazy == keep
    assert lazy != allocate(units, 0.2, "uniform")


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5, float("nan"), "abc"])
def test_sparsity_out_of_range_is_refused_before_any_change(tiny_hubert, sparsity):
    before = copy.deepcopy(tiny_hubert.state_dict())
    with pytest.raises(SpeechPruneError, match="sparsity"):
        compress(tiny_hubert, sparsity=sparsity, progress=False)
    assert all(torch.equal(before[k], v) for k, v in tiny_hubert.state_dict().items())


def test_scope_errors(tiny_hubert):
    with pytest.raises(SpeechPruneError, match="matches nothing"):
        compress(tiny_hubert, sparsity=0.2, scope="decoder", progress=False)
    with pytest.raises(SpeechPruneError, match="unknown scope part"):
        compress(tiny_hubert, sparsity=0.2, scope="encoder.mlp", progress=False)


def test_sparsity_that_empties_a_layer_is_refused(tiny_whisper):
    before = widths(tiny_whisper)
    with pytest.raises(SpeechPruneError, match="zero"):
        compress(tiny_whisper, sparsity=0.9, scope="attention", progress=False)  # 4 heads -> 0
    assert widths(tiny_whisper) == before


def test_unsupported_model_is_named():
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))
    with pytest.raises(SpeechPruneError, match="BertModel.*HubertForCTC"):
        compress(bert, sparsity=0.2, progress=False)


def test_report_records_every_unit_and_widths_in_config(tiny_whisper):
    report = compress(tiny_whisper, sparsity=0.25, scope="encoder.ffn,decoder.attention", progress=False)
    assert [u.part for u in report.units] == ["encoder.ffn"] * 2 + ["decoder.attention"] * 4
    assert tiny_whisper.config.speechprune["widths"] == widths(tiny_whisper)
    text = report.table()
    assert "encoder.layers.0.ffn" in text and "removed" in text


def test_projection_merge_weights_members_by_their_share_of_the_merged_consumer(tiny_whisper):
    unit = next(u for u in iter_units(tiny_whisper) if u.kind == "ffn")
    p = unit.producers[0].weight.detach().clone()
    b = unit.producers[0].bias.detach().clone()
    c = unit.consumer.weight.detach().clone()
    with torch.no_grad():  # channel 1's consumer is twice channel 0's: weights 1/3 and 2/3
        unit.consumer.weight[:, 1] = 2 * c[:, 0]
    labels = torch.arange(unit.n_channels) - 1
    labels[0] = 0
    from speechprune.prune import Assignment

    merge(unit, Assignment(labels, unit.n_channels - 1, 0.0), "projection")
    torch.testing.assert_close(unit.producers[0].weight[0], p[0] / 3 + 2 * p[1] / 3)
    torch.testing.assert_close(unit.producers[0].bias[0], b[0] / 3 + 2 * b[1] / 3)
    torch.testing.assert_close(unit.consumer.weight[:, 0], 3 * c[:, 0])
    torch.testing.assert_close(unit.producers[0].weight[1:], p[2:])


def test_weighted_merge_weights_members_by_consumer_power(tiny_whisper):
    unit = next(u for u in iter_units(tiny_whisper) if u.kind == "ffn")
    p = unit.producers[0].weight.detach().clone()
    c = unit.consumer.weight.detach().clone()
    with torch.no_grad():  # channel 1 writes twice as strongly as channel 0: weights 1/5 and 4/5
        unit.consumer.weight[:, 1] = -2 * c[:, 0]
    labels = torch.arange(unit.n_channels) - 1
    labels[0] = 0
    from speechprune.prune import Assignment

    merge(unit, Assignment(labels, unit.n_channels - 1, 0.0), "weighted")
    torch.testing.assert_close(unit.producers[0].weight[0], p[0] / 5 + 4 * p[1] / 5)
    torch.testing.assert_close(unit.consumer.weight[:, 0], -c[:, 0])


def make_tiny_stable_hubert():
    from transformers import HubertConfig, HubertForCTC

    from conftest import _ctc_kwargs

    torch.manual_seed(0)
    return HubertForCTC(HubertConfig(**{**_ctc_kwargs(), "do_stable_layer_norm": True})).eval()


@pytest.mark.parametrize("make", [make_tiny_hubert, make_tiny_stable_hubert, make_tiny_wav2vec2, make_tiny_whisper],
                         ids=["hubert", "hubert-stable", "wav2vec2", "whisper"])
def test_input_norms_are_what_each_producer_reads(make):
    """Hooks on every LayerNorm and producer: each producer's input is its named norm's output."""
    model = make()
    family = model_family(model)
    outputs, inputs, hooks = {}, {}, []
    units = list(iter_units(model))

    def keep_input(key):
        def hook(module, args, out):
            inputs.setdefault(key, args[0])
        return hook

    for unit in units:
        assert len(unit.input_norms) == len(unit.producers)
        for name, lin, norm in zip(unit.producer_names, unit.producers, unit.input_norms):
            assert isinstance(norm, torch.nn.LayerNorm), (unit.name, name)
            hooks.append(norm.register_forward_hook(lambda m, a, out: outputs.setdefault(id(m), []).append(out)))
            hooks.append(lin.register_forward_hook(keep_input((unit.name, name))))
    _forward(model, _input(family))
    for h in hooks:
        h.remove()
    for unit in units:
        for name, norm in zip(unit.producer_names, unit.input_norms):
            seen = inputs[(unit.name, name)]
            assert any(o.shape == seen.shape and torch.equal(o, seen) for o in outputs[id(norm)]), (unit.name, name)


def test_normalized_features_see_through_the_layernorm(tiny_whisper):
    """Rescaling a LayerNorm's coordinates and undoing it in fc1 changes nothing the layer
    computes: normalized features, the clustering and the pruned model stay the same, while
    raw producer features change."""
    from speechprune.prune import channel_features

    x = _input("whisper")
    scale = torch.exp(torch.randn(32, generator=torch.Generator().manual_seed(5)))
    with torch.no_grad():
        for layer in tiny_whisper.model.encoder.layers:
            layer.final_layer_norm.bias.normal_(0, 0.5)
        twin = copy.deepcopy(tiny_whisper)
        for layer in twin.model.encoder.layers:
            layer.final_layer_norm.weight.mul_(scale)
            layer.final_layer_norm.bias.mul_(scale)
            layer.fc1.weight.div_(scale)
    torch.testing.assert_close(_forward(twin, x), _forward(tiny_whisper, x), rtol=1e-4, atol=1e-5)
    a = units_in_scope(tiny_whisper, "encoder.ffn")[0]
    b = units_in_scope(twin, "encoder.ffn")[0]
    torch.testing.assert_close(channel_features(a, "normalized"), channel_features(b, "normalized"), rtol=1e-4, atol=1e-6)
    assert not torch.allclose(channel_features(a, "producer"), channel_features(b, "producer"), atol=1e-3)
    twin2 = copy.deepcopy(twin)
    recipe = dict(method="cluster", sparsity=0.5, scope="encoder.ffn", features="normalized", weighting="consumer",
                  merge="weighted", progress=False)
    compress(twin, **recipe)
    compress(tiny_whisper, **recipe)
    torch.testing.assert_close(_forward(twin, x), _forward(tiny_whisper, x), rtol=1e-4, atol=1e-5)
    compress(twin2, **{**recipe, "features": "producer"})  # raw rows: a different partition
    assert not torch.allclose(_forward(twin2, x), _forward(twin, x), atol=1e-4)


def test_normalized_features_with_a_plain_layernorm_are_the_producer_rows(tiny_whisper):
    from speechprune.prune import channel_features

    unit = units_in_scope(tiny_whisper, "encoder.ffn")[0]
    with torch.no_grad():
        unit.input_norms[0].weight.fill_(1.0)
        unit.input_norms[0].bias.zero_()
    torch.testing.assert_close(channel_features(unit, "normalized"), channel_features(unit, "producer"))


@pytest.mark.parametrize("option", [dict(features="output"), dict(weighting="inputs"), dict(merge="median")])
def test_unknown_recipe_options_are_named(tiny_whisper, option):
    before = widths(tiny_whisper)
    with pytest.raises(SpeechPruneError, match=str(next(iter(option.values())))):
        compress(tiny_whisper, sparsity=0.5, progress=False, **option)
    assert widths(tiny_whisper) == before


def test_old_option_names_warn_and_still_work():
    """``merge_rule`` and ``keep`` are the names of 0.3: they work for one more release, with a warning."""
    with pytest.warns(DeprecationWarning, match="merge_rule= is deprecated"):
        old = compress(make_tiny_whisper(), sparsity=0.25, merge_rule="weighted", progress=False)
    new = compress(make_tiny_whisper(), sparsity=0.25, merge="weighted", progress=False)
    assert old.merge == new.merge == "weighted"
    with pytest.warns(DeprecationWarning, match="keep= is deprecated"):
        report = compress(make_tiny_whisper(), keep={"decoder.layers.1.ffn": 10}, progress=False)
    assert report.allocation == "explicit" and report.options.budget == {"decoder.layers.1.ffn": 10}
    with pytest.raises(SpeechPruneError, match="give merge= or its old name merge_rule=, not both"):
        compress(make_tiny_whisper(), merge="mean", merge_rule="mean", progress=False)


def test_a_report_from_0_3_still_loads():
    """A saved report of 0.3 (``merge_rule``, seed 0 for magnitude) reads back."""
    from speechprune import CompressionReport

    report = compress(make_tiny_whisper(), method="magnitude", sparsity=0.25, progress=False)
    old = report.to_dict()
    old["merge_rule"] = old.pop("merge")
    old["seed"] = 0
    del old["recipe"]
    back = CompressionReport.from_dict(old)
    assert back.merge == "none" and back.options.seed is None and back.options.method == "magnitude"


@pytest.mark.parametrize("method", ["magnitude", "pairs"])
def test_a_seed_free_method_records_no_seed(method):
    """A seed given to a method that takes none is recorded as None ("no seed"), not as the seed."""
    report = compress(make_tiny_whisper(), method=method, sparsity=0.25, seed=7, progress=False)
    assert report.seed is None and report.options.seed is None
    assert compress(make_tiny_whisper(), method="cluster", sparsity=0.25, seed=7, progress=False).seed == 7


def test_options_object_and_keywords_give_the_same_model():
    from speechprune.options import CompressionOptions

    a, b = make_tiny_whisper(), make_tiny_whisper()
    ra = compress(a, CompressionOptions(recipe="recommended", sparsity=0.25, scope="encoder.ffn"), progress=False)
    rb = compress(b, recipe="recommended", sparsity=0.25, scope="encoder.ffn", progress=False)
    assert ra.options == rb.options and ra.method == "obs" and ra.recipe == "recommended"
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(SpeechPruneError, match="not both"):
        compress(make_tiny_whisper(), CompressionOptions(), sparsity=0.3, progress=False)


def test_a_gpu_out_of_memory_is_one_line_that_says_what_to_lower(monkeypatch):
    """Out of GPU memory while clustering: one line naming the step, the size asked and the parameter to
    lower, and the model as it was (every assignment comes before the first layer changes)."""
    import speechprune.methods as methods

    def boom(units, ks, **options):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 14.75 GiB total)")

    cluster = methods.get_method("cluster")
    monkeypatch.setitem(methods._REGISTRY, "cluster", methods.Method("cluster", cluster.fn, cluster.reads, {}, boom))
    model = make_tiny_whisper()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(SpeechPruneError) as err:
        compress(model, sparsity=0.25, progress=False)
    message = str(err.value)
    assert "ran out of memory while assigning the channels" in message and "2.00 GiB" in message
    assert "MAX_BATCH_ELEMENTS" in message and "--device cpu" in message and "\n" not in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_out_of_memory_while_transcribing_names_the_batch_size(monkeypatch):
    import sys

    from speechprune.evaluate import transcribe

    evaluate_module = sys.modules["speechprune.evaluate"]  # the package attribute is the function

    def boom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 512.00 MiB")

    monkeypatch.setattr(evaluate_module, "_transcribe_whisper", boom)
    from types import SimpleNamespace

    import numpy as np

    with pytest.raises(SpeechPruneError, match=r"transcribing a batch of 2 utterances \(it asked for 512.00 MiB.*"
                                               r"--batch-size.*now 4"):
        transcribe(make_tiny_whisper(), SimpleNamespace(feature_extractor=None, tokenizer=None),
                   [np.zeros(1600, dtype=np.float32)] * 2, batch_size=4, progress=False)
