"""Every supported family through the whole matrix: shrink, forward, save, strict load, plain load."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from speechprune import compress, load_checkpoint, save_pruned
from speechprune.errors import SpeechPruneError
from speechprune.hub import plain_loadable
from speechprune.structure import FAMILIES, FAMILY_SPECS, iter_units, model_family, widths
from speechprune.testing import TINY_FAMILIES, plant_duplicate_channels, tiny_input, tiny_model

NEW = ("wavlm", "data2vec_audio", "wav2vec2_conformer", "unispeech_sat", "sew")
ARCH = {family: cls for cls, family in FAMILIES.items()}


def _logits(model, family):
    with torch.no_grad():
        return model(**tiny_input(family)).logits


def _scopes(family):
    return ["ffn", "all"] if FAMILY_SPECS[family].heads else ["ffn"]


def test_every_family_has_a_tiny_model():
    assert set(TINY_FAMILIES) == set(FAMILIES.values()) == set(FAMILY_SPECS)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_units_describe_the_layers(family):
    model = tiny_model(family)
    assert model_family(model) == family
    units = list(iter_units(model))
    ffn = [u for u in units if u.kind == "ffn"]
    per_layer = 2 if family == "wav2vec2_conformer" else 1
    stacks = 2 if family == "whisper" else 1
    assert len(ffn) == 2 * per_layer * stacks and all(u.n_channels == 64 for u in ffn)
    heads = [u for u in units if u.kind == "attention"]
    assert bool(heads) == FAMILY_SPECS[family].heads
    assert all(u.n_channels == 4 and u.group_size == 8 for u in heads)
    for u in units:  # the producers and consumer really are the block's linear layers
        assert all(p.out_features == u.n_channels * u.group_size for p in u.producers)
        assert u.consumer.in_features == u.n_channels * u.group_size
        assert all(isinstance(n, torch.nn.LayerNorm) for n in u.input_norms)


@pytest.mark.parametrize("family", NEW)
@pytest.mark.parametrize("method", ["cluster", "magnitude"])
def test_new_families_shrink_run_save_and_load_strictly(tmp_path, family, method):
    for scope in _scopes(family):
        model = tiny_model(family)
        before, params = widths(model), sum(p.numel() for p in model.parameters())
        report = compress(model, method=method, sparsity=0.5, scope=scope, allocation="variance", progress=False)
        after = widths(model)
        assert sum(after.values()) < sum(before.values())
        assert report.params_after == sum(p.numel() for p in model.parameters()) < params
        logits = _logits(model, family)
        assert logits.shape == _logits(tiny_model(family), family).shape and torch.isfinite(logits).all()
        folder = save_pruned(model, tmp_path / f"{method}-{scope}", report=report)
        loaded = load_checkpoint(folder)
        assert widths(loaded) == after
        assert torch.equal(_logits(loaded, family), logits)
        ffn = {w for name, w in after.items() if ".ffn" in name}
        heads_kept = all(w == 4 for name, w in after.items() if name.endswith("attention"))
        assert plain_loadable(json.loads((folder / "config.json").read_text())) == (len(ffn) == 1 and heads_kept)


@pytest.mark.parametrize("family", NEW)
def test_new_families_merge_duplicate_channels_exactly(family):
    model = plant_duplicate_channels(tiny_model(family))
    ref = _logits(model, family)
    report = compress(model, sparsity=0.5, scope=_scopes(family)[-1], progress=False)
    assert all(u.cost < 1e-6 for u in report.units)
    torch.testing.assert_close(_logits(model, family), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_uniform_widths_load_with_plain_transformers(tmp_path, family):
    model = tiny_model(family)
    compress(model, sparsity=0.25, scope="ffn", progress=False)
    folder = save_pruned(model, tmp_path / "pruned")
    assert plain_loadable(json.loads((folder / "config.json").read_text()))
    plain = getattr(transformers, ARCH[family]).from_pretrained(folder).eval()
    assert widths(plain) == widths(model)
    assert torch.equal(_logits(plain, family), _logits(load_checkpoint(folder), family))
    assert torch.equal(_logits(plain, family), _logits(model, family))


@pytest.mark.parametrize("family", ["wavlm", "wav2vec2_conformer"])
def test_attention_that_cannot_lose_heads_is_refused_with_the_reason(family):
    model = tiny_model(family)
    with pytest.raises(SpeechPruneError, match="attention heads cannot be pruned: .*(multi_head_attention|rotary)"):
        compress(model, sparsity=0.5, scope="attention", progress=False)
    report = compress(model, sparsity=0.5, scope="all", progress=False)  # "all" takes what there is
    assert report.scope == ["encoder.ffn"]


def test_unsupported_models_get_the_list_of_supported_ones(tmp_path):
    model = transformers.SpeechT5ForSpeechToText(transformers.SpeechT5Config(
        hidden_size=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=32, decoder_ffn_dim=32, vocab_size=40))
    with pytest.raises(SpeechPruneError, match="SpeechT5ForSpeechToText: speechprune prunes .*WavLMForCTC.*SEWForCTC"):
        compress(model, progress=False)
    model.save_pretrained(tmp_path / "t5")
    with pytest.raises(SpeechPruneError, match="supports .*Data2VecAudioForCTC"):
        load_checkpoint(tmp_path / "t5")


@pytest.mark.parametrize("family", NEW)
def test_new_families_with_per_layer_widths_refuse_plain_loading(tmp_path, family):
    model = tiny_model(family)
    keep = {u.name: 40 + 5 * i for i, u in enumerate(iter_units(model)) if u.kind == "ffn"}
    compress(model, budget=keep, progress=False)
    folder = save_pruned(model, tmp_path / "pruned")
    with pytest.raises(Exception, match="intermediate_size.*widths differ per layer.*speechprune.load_checkpoint"):
        getattr(transformers, ARCH[family]).from_pretrained(folder, ignore_mismatched_sizes=True)
    assert torch.equal(_logits(load_checkpoint(folder), family), _logits(model, family))


@pytest.mark.parametrize("family", ["wavlm", "unispeech_sat", "wav2vec2_conformer"])
def test_pre_layernorm_variants_read_their_own_norms_and_round_trip(tmp_path, family):
    model = tiny_model(family, do_stable_layer_norm=True)
    encoder = getattr(model, family).encoder
    for unit in iter_units(model):
        layer = encoder.layers[unit.layer]
        expected = "layer_norm" if unit.kind == "attention" else {
            "ffn": "final_layer_norm", "ffn1": "ffn1_layer_norm", "ffn2": "ffn2_layer_norm"}[unit.block]
        assert all(n is getattr(layer, expected) for n in unit.input_norms)
    report = compress(model, sparsity=0.5, scope="all", features="normalized", allocation="variance", progress=False)
    folder = save_pruned(model, tmp_path / "pruned", report=report)
    assert torch.equal(_logits(load_checkpoint(folder), family), _logits(model, family))
