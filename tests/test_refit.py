"""The refit merge (speechprune.refit): synthetic speech, the captured inputs, the ridge refit, and
``compress(merge="refit")`` on tiny random models."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import speechprune.calibration as calibration
from speechprune.compress import compress
from speechprune.errors import SpeechPruneError
from speechprune.methods import assign
from speechprune.prune import Assignment, merge
from speechprune.calibration import babble, capture_inputs, synthetic_speech
from speechprune.refit import dense_output, refit_consumer, refittable
from speechprune.structure import units_in_scope
from speechprune.synthetic import activation_fn
from speechprune.testing import tiny_model


@pytest.fixture
def few_clips(monkeypatch):
    """Two synthetic clips instead of 16: the CTC tiny model reads raw audio, and 16 clips take a minute."""
    monkeypatch.setattr(calibration, "CALIBRATION_CLIPS", 2)


def _block(unit, x):
    return activation_fn(unit)(unit.producers[0](x)) @ unit.consumer.weight.T + unit.consumer.bias


def test_synthetic_speech_is_deterministic_speech_like_audio():
    clips = synthetic_speech(3)
    again = synthetic_speech(3)
    assert all(np.array_equal(a, b) for a, b in zip(clips, again))
    assert not np.array_equal(synthetic_speech(1, seed=1)[0][:16000], clips[0][:16000])
    for clip in clips:
        assert clip.dtype == np.float32 and 3 * 16000 <= len(clip) <= 12 * 16000
        assert 0.01 < np.abs(clip).max() <= 0.5 + 1e-6
    # voiced: most of the energy below 4 kHz, as in speech (white noise would put half above it)
    spectrum = np.abs(np.fft.rfft(babble(2.0, np.random.default_rng(5)))) ** 2
    freqs = np.fft.rfftfreq(32000, 1 / 16000)
    assert spectrum[freqs < 4000].sum() > 0.6 * spectrum.sum()


def test_capture_records_every_feed_forward_unit_of_both_whisper_stacks():
    model = tiny_model("whisper")
    units = [u for u in units_in_scope(model, "all") if refittable(u)]
    assert {u.kind for u in units} == {"ffn"} and {u.stack for u in units} == {"encoder", "decoder"}
    inputs = capture_inputs(model, units)
    assert set(inputs) == {u.name for u in units}
    again = capture_inputs(model, units)
    for u in units:
        assert inputs[u.name].shape[1] == u.producers[0].in_features
        assert 0 < inputs[u.name].shape[0] <= calibration.CALIBRATION_ROWS
        assert torch.equal(inputs[u.name], again[u.name]), "the calibration is deterministic"
    # the decoder reads the model's own transcript, one row per token of every clip
    decoder = [u for u in units if u.stack == "decoder"][0]
    assert inputs[decoder.name].shape[0] % calibration.CALIBRATION_CLIPS == 0


def test_the_rows_kept_do_not_depend_on_the_batch_size():
    """Batching is a cost knob (one clip a pass on a CPU, eight on a GPU), never a change of the fit."""
    model = tiny_model("whisper")
    units = [u for u in units_in_scope(model, "all") if refittable(u)]
    one = capture_inputs(model, units, n_clips=5, max_rows=500, batch_size=1)
    three = capture_inputs(model, units, n_clips=5, max_rows=500, batch_size=3)
    for u in units:
        assert one[u.name].shape == three[u.name].shape
        assert torch.allclose(one[u.name], three[u.name], rtol=1e-4, atol=1e-5), u.name
    # each clip gives at most max_rows // clips rows of the encoder's positions
    encoder = next(u for u in units if u.stack == "encoder")
    positions = model.config.max_source_positions
    assert one[encoder.name].shape[0] == 5 * min(100, positions)
    few = capture_inputs(model, [encoder], n_clips=5, max_rows=5 * (positions // 2))[encoder.name]
    assert few.shape[0] == 5 * (positions // 2)


def test_an_encoder_only_scope_skips_the_transcript_and_keeps_the_same_rows(monkeypatch):
    """Without decoder units only the encoder runs: the same rows, bit for bit, and no ``generate``."""
    model = tiny_model("whisper")
    units = [u for u in units_in_scope(model, "all") if refittable(u)]
    encoder = [u for u in units if u.stack == "encoder"]
    full = capture_inputs(model, units, n_clips=3)

    def no_transcript(*args, **kwargs):
        raise AssertionError("an encoder-only capture wrote a transcript")

    monkeypatch.setattr(model, "generate", no_transcript)
    alone = capture_inputs(model, encoder, n_clips=3)
    assert set(alone) == {u.name for u in encoder}
    for u in encoder:
        assert torch.equal(alone[u.name], full[u.name]), u.name
    with pytest.raises(AssertionError, match="transcript"):
        capture_inputs(model, units[-1:], n_clips=1)  # a decoder unit needs the transcript


def test_capture_keeps_at_most_the_row_limit():
    model = tiny_model("whisper")
    unit = units_in_scope(model, "encoder.ffn")[0]
    rows = capture_inputs(model, [unit], max_rows=64)[unit.name]
    assert rows.shape[0] <= 64


def test_the_refit_reproduces_the_dense_block_better_than_the_mean_merge():
    model = tiny_model("whisper")
    inputs = capture_inputs(model, units_in_scope(model, "encoder.ffn"))
    unit = units_in_scope(model, "encoder.ffn")[0]
    x = inputs[unit.name]
    dense = copy.deepcopy(unit.owner)
    with torch.no_grad():
        reference = _block(unit, x)
    a = assign(unit, unit.n_channels // 2, "pairs", features="producer")
    twin = copy.deepcopy(model)
    twin_unit = units_in_scope(twin, "encoder.ffn")[0]
    merge(twin_unit, a, "mean")
    merge(unit, a, "refit", inputs=x)
    assert unit.n_channels == twin_unit.n_channels == a.k
    assert torch.equal(unit.producers[0].weight, twin_unit.producers[0].weight), "producers: the mean merge's"
    with torch.no_grad():
        err_refit = float((_block(unit, x) - reference).norm())
        err_mean = float((_block(twin_unit, x) - reference).norm())
    assert err_refit < 0.9 * err_mean
    assert dense is not unit.owner


def test_refit_consumer_solves_the_ridge_problem():
    model = tiny_model("whisper")
    unit = units_in_scope(model, "encoder.ffn")[0]
    torch.manual_seed(0)
    x = torch.randn(500, unit.producers[0].in_features)
    target = dense_output(unit, x)
    w0, b0 = unit.consumer.weight.detach().clone(), unit.consumer.bias.detach().clone()
    refit_consumer(unit, x, target, ridge=0.0)  # nothing merged and no ridge: the dense consumer again
    assert torch.allclose(unit.consumer.weight, w0, atol=1e-4) and torch.allclose(unit.consumer.bias, b0, atol=1e-4)
    with torch.no_grad():
        unit.consumer.weight.zero_()
    refit_consumer(unit, x, target, ridge=1e6)  # an overwhelming ridge keeps the consumer where it is
    assert float(unit.consumer.weight.detach().abs().max()) < 1e-3


def test_merge_refit_needs_the_inputs_and_leaves_attention_to_the_mean_merge():
    model = tiny_model("whisper")
    unit = units_in_scope(model, "encoder.ffn")[0]
    with pytest.raises(SpeechPruneError, match="synthetic speech"):
        merge(unit, Assignment(torch.arange(unit.n_channels) // 2, unit.n_channels // 2, 0.0), "refit")
    attention, twin = units_in_scope(model, "encoder.attention")[0], units_in_scope(
        copy.deepcopy(model), "encoder.attention")[0]
    k = attention.n_channels - 1
    labels = torch.arange(attention.n_channels).clamp_max(k - 1)
    merge(attention, Assignment(labels, k, 0.0), "refit")
    merge(twin, Assignment(labels, k, 0.0), "mean")
    assert torch.equal(attention.consumer.weight, twin.consumer.weight)


@pytest.mark.parametrize("family", ["whisper", "hubert"])
def test_compress_with_the_refit_merge_shrinks_records_and_is_deterministic(family, few_clips):
    model = tiny_model(family)
    again = copy.deepcopy(model)
    plain = copy.deepcopy(model)
    report = compress(model, recipe="pairs-refit-2026", sparsity=0.25, scope="ffn", progress=False)
    assert (report.method, report.merge, report.seed) == ("pairs", "refit", None), "round 3's recipe refits"
    assert report.options.label() != compress(plain, recipe="pairs-variance-2026", sparsity=0.25, scope="ffn",
                                              progress=False).options.label()
    compress(again, recipe="pairs-variance-2026", merge="refit", sparsity=0.25, scope="ffn", progress=False)
    for a, b, c in zip(model.parameters(), again.parameters(), plain.parameters()):
        assert torch.equal(a, b), "no seed: the same model twice"
    consumers = [u.consumer.weight for u in units_in_scope(model, "ffn")]
    plain_consumers = [u.consumer.weight for u in units_in_scope(plain, "ffn")]
    assert all(a.shape == b.shape for a, b in zip(consumers, plain_consumers))
    assert any(not torch.equal(a, b) for a, b in zip(consumers, plain_consumers)), "the refit changed the consumers"
    assert report.param_sparsity > 0


def test_capture_runs_in_eval_mode_and_gives_the_mode_back():
    model = tiny_model("whisper")
    model.train()
    unit = units_in_scope(model, "encoder.ffn")[0]
    first = capture_inputs(model, [unit])[unit.name]
    assert model.training, "the caller's mode is restored"
    assert torch.equal(first, capture_inputs(model, [unit])[unit.name]), "no dropout during the capture"
