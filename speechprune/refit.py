"""The ``refit`` merge: merged feed-forward blocks refitted to the dense ones on synthetic speech.

Merging channels (producers averaged, consumers summed) changes what a feed-forward block
computes, and the mean merge leaves the consumer as it was summed. ``merge="refit"`` keeps the
mean merge's producers and then chooses the consumer (``fc2`` weight and bias) that makes the
shrunk block reproduce the dense block best, by ridge least squares on the block's own inputs:

    minimise  |Y - H' C'^T - 1 b'^T|^2 + ridge * mean(diag(H'^T H')) * |C' - C_mean|^2

where ``Y`` is the dense block's output (without its bias) and ``H'`` the shrunk block's
activations, on the same inputs, and the penalty pulls toward the mean merge's consumer
``C_mean`` (``b'`` is the change of the bias). This is the layer-wise reconstruction that
data-driven pruners (OBS-style compensation, FLAP, SliceGPT) fit on recorded speech or text.

**No recordings are used.** The inputs come from the model itself run on synthetic, speech-like
audio drawn from a formula (:func:`synthetic_speech`: a source-filter "babble" of vowels with
formants from textbook vowel charts, fricative noise and pauses, with a fixed seed): the encoder
sees it as it would see speech, and the decoder reads the model's own greedy transcript of it
(teacher forcing on what the dense model says it hears, :data:`DECODER_TOKENS` tokens a clip). Everything is deterministic, so a
method with the refit merge stays seed-free. The inputs of every block are captured from the
dense model in one pass before anything is merged.

Why synthetic speech and not random vectors: a block's real inputs are far from isotropic (a few
features of the residual stream carry most of the variance), which is why function features on
isotropic inputs (``features="function"``) ranked channels badly in the second recipe screening.
White or pink noise through the real encoder gets part of that structure; the babble gets more
(a diagnostic on 8 test clips, ``studies/probe_refit.py``).

Attention units are merged with the mean merge (their channels are heads, mixed by a softmax over
positions; a refit of ``out_proj`` alone is not what this module fits).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from speechprune.structure import Unit, model_family
from speechprune.synthetic import activation_fn

#: Synthetic clips the calibration draws (their seconds are uniform in CLIP_SECONDS).
CALIBRATION_CLIPS = 16
#: The generator's seed: fixed, so the refit is deterministic and the method stays seed-free.
CALIBRATION_SEED = 0
CLIP_SECONDS = (3.0, 12.0)
#: At most this many input rows (frames or tokens) are kept per unit, a fixed random subset.
CALIBRATION_ROWS = 8192
#: Ridge strength, relative to the mean squared activation (see the module docstring).
RIDGE = 1.0
#: New tokens the decoder writes for each synthetic clip (its own transcript, read back).
DECODER_TOKENS = 48
#: Clips per forward pass during calibration.
CALIBRATION_BATCH = 8

SAMPLE_RATE = 16000
#: (F1, F2, F3) in Hz of ten English vowels (Peterson and Barney's averages for adult speakers).
VOWELS = ((730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (660, 1720, 2410),
          (490, 1350, 1690), (640, 1190, 2390), (570, 840, 2410), (440, 1020, 2240), (390, 1990, 2550))
FORMANT_BANDWIDTHS = (80.0, 100.0, 150.0)


def _resonator(x: np.ndarray, freq: float, bandwidth: float) -> np.ndarray:
    """A two-pole resonance at ``freq`` Hz (Klatt's formant filter)."""
    from scipy.signal import lfilter

    r = math.exp(-math.pi * bandwidth / SAMPLE_RATE)
    theta = 2 * math.pi * freq / SAMPLE_RATE
    return lfilter([1 - r], [1, -2 * r * math.cos(theta), r * r], x)


def babble(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """``seconds`` of speech-like audio at 16 kHz: voiced vowels, fricatives and pauses, float32.

    Segments of 60-250 ms: three in five a vowel (a glottal pulse train at a drifting pitch of
    80-260 Hz through three formant resonators of a random vowel), one a fricative (noise through
    one resonance at 2.5-6.5 kHz), one a pause; each with a smooth envelope and its own level.
    """
    from scipy.signal import lfilter

    n_total = int(seconds * SAMPLE_RATE)
    segments, length = [], 0
    f0 = rng.uniform(90, 220)
    while length < n_total:
        n = int(rng.uniform(0.06, 0.25) * SAMPLE_RATE)
        kind = rng.integers(5)
        if kind == 4:
            seg = np.zeros(n)
        elif kind == 3:
            seg = _resonator(rng.standard_normal(n), rng.uniform(2500, 6500), rng.uniform(500, 2000))
        else:
            f0 = float(np.clip(f0 * math.exp(rng.normal(0, 0.08)), 80, 260))
            pitch = f0 * (1 + np.linspace(0, rng.normal(0, 0.1), n))
            phase = np.cumsum(pitch / SAMPLE_RATE)
            pulses = (np.diff(np.floor(phase), prepend=0) > 0).astype(float)
            seg = lfilter([1], [1, -0.97], pulses) + 0.02 * rng.standard_normal(n)
            for freq, bandwidth in zip(VOWELS[rng.integers(len(VOWELS))], FORMANT_BANDWIDTHS):
                seg = _resonator(seg, freq * rng.uniform(0.9, 1.1), bandwidth)
        seg = seg * np.sin(np.linspace(0, math.pi, n)) ** 0.5
        seg = seg / (np.abs(seg).max() + 1e-9) * rng.uniform(0.05, 0.5)
        segments.append(seg)
        length += n
    return np.concatenate(segments)[:n_total].astype(np.float32)


def synthetic_speech(n_clips: int = CALIBRATION_CLIPS, seed: int = CALIBRATION_SEED) -> list[np.ndarray]:
    """``n_clips`` clips of :func:`babble`, 3-12 s each, from a generator with ``seed``."""
    rng = np.random.default_rng(seed)
    return [babble(rng.uniform(*CLIP_SECONDS), rng) for _ in range(n_clips)]


def refittable(unit: Unit) -> bool:
    """Whether the refit merge refits this unit: a feed-forward unit with one producer and a nonlinearity."""
    return unit.kind == "ffn" and len(unit.producers) == 1 and activation_fn(unit) is not None


class _Rows:
    """Input rows of one unit: a fixed random subset of at most ``limit`` rows per forward pass."""

    def __init__(self, limit: int, generator: torch.Generator):
        self.limit, self.generator, self.parts = limit, generator, []

    def add(self, x: Tensor) -> None:
        x = x.reshape(-1, x.shape[-1])
        if x.shape[0] > self.limit:
            pick = torch.randperm(x.shape[0], generator=self.generator)[: self.limit]
            x = x[pick.to(x.device)]
        self.parts.append(x.detach().float())

    def rows(self) -> Tensor:
        return torch.cat(self.parts)


@torch.no_grad()
def capture_inputs(model: torch.nn.Module, units: list[Unit], *, n_clips: int = CALIBRATION_CLIPS,
                   seed: int = CALIBRATION_SEED, max_rows: int = CALIBRATION_ROWS) -> dict[str, Tensor]:
    """Each unit's inputs on synthetic speech, {unit name: [rows, d_in] float32}, from one dense pass.

    Whisper: log-mel features of the clips (as Whisper's feature extractor computes them for this
    model's number of mel bins), the encoder run on them, the decoder teacher-forced on the dense
    model's own greedy transcript of them (:data:`DECODER_TOKENS` tokens).
    CTC models: each clip's normalised waveform.
    """
    if not units:
        return {}
    audios = synthetic_speech(n_clips, seed)
    batches = [audios[i:i + CALIBRATION_BATCH] for i in range(0, len(audios), CALIBRATION_BATCH)]
    per_pass = max(1, max_rows // (len(batches) if model_family(model) == "whisper" else len(audios)))
    generator = torch.Generator(device="cpu").manual_seed(seed)
    store = {u.name: _Rows(per_pass, generator) for u in units}
    recording = {"encoder": True, "decoder": True}

    def record(name: str, stack: str, x: Tensor) -> None:
        if recording.get(stack, True):
            store[name].add(x)

    hooks = [u.producers[0].register_forward_hook(
        lambda module, inputs, output, name=u.name, stack=u.stack: record(name, stack, inputs[0])) for u in units]
    param = next(model.parameters())
    try:
        if model_family(model) == "whisper":
            _whisper_pass(model, batches, recording, param)
        else:
            for audio in audios:
                x = torch.from_numpy((audio - audio.mean()) / (audio.std() + 1e-7))[None]
                model(input_values=x.to(device=param.device, dtype=param.dtype))
    finally:
        for hook in hooks:
            hook.remove()
    return {name: rows.rows() for name, rows in store.items() if rows.parts}


def _whisper_pass(model, batches: list, recording: dict, param: Tensor) -> None:
    """Encoder on the clips' log-mel features; decoder teacher-forced on the model's own transcript.

    ``generate`` runs the encoder once (its blocks' inputs are recorded then) and writes
    :data:`DECODER_TOKENS` tokens (end-of-text suppressed until then, so every clip gives as many
    decoder rows); its step-by-step decoder passes are not recorded. One teacher-forced pass of the
    decoder over the whole transcript, on the same encoder output, gives the decoder's rows.
    """
    from transformers import WhisperFeatureExtractor

    from speechprune.checkpoint import transformers_quiet
    from speechprune.models import english_generate_kwargs

    extractor = WhisperFeatureExtractor(feature_size=model.config.num_mel_bins)
    encoder = model.get_encoder()
    kept: dict = {}
    grab = encoder.register_forward_hook(lambda module, inputs, output: kept.__setitem__("encoded", output[0]))
    try:
        for batch in batches:
            features = extractor(batch, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
            features = features.to(device=param.device, dtype=param.dtype)
            recording.update(encoder=True, decoder=False)
            with transformers_quiet():
                ids = model.generate(features, num_beams=1, do_sample=False, max_new_tokens=DECODER_TOKENS,
                                     min_new_tokens=DECODER_TOKENS, return_dict_in_generate=True,
                                     **english_generate_kwargs(model)).sequences  # with the prompt tokens
            recording.update(encoder=False, decoder=True)
            model(encoder_outputs=(kept.pop("encoded"),), decoder_input_ids=ids)
    finally:
        grab.remove()
        recording.update(encoder=True, decoder=True)


@torch.no_grad()
def dense_output(unit: Unit, x: Tensor) -> Tensor:
    """The unit's output on ``x`` before any merge, without the consumer's bias: [rows, d_out] float32."""
    return _activations(unit, x) @ unit.consumer.weight.detach().float().T


def _activations(unit: Unit, x: Tensor) -> Tensor:
    lin = unit.producers[0]
    z = x @ lin.weight.detach().float().T
    if lin.bias is not None:
        z = z + lin.bias.detach().float()
    return activation_fn(unit)(z)


@torch.no_grad()
def refit_consumer(unit: Unit, x: Tensor, target: Tensor, ridge: float = RIDGE) -> None:
    """Refit the (already shrunk) unit's consumer so that it reproduces ``target`` on ``x`` (ridge least squares).

    ``target`` is :func:`dense_output` of the unit before its merge. The penalty pulls the consumer
    toward its present (mean-merge) value; the consumer's bias moves by the fitted offset.
    """
    consumer = unit.consumer
    h = _activations(unit, x)
    w0 = consumer.weight.detach().float()
    if consumer.bias is not None:  # the offset is fitted too, as one more input that is always 1
        h = torch.cat([h, torch.ones(h.shape[0], 1, device=h.device)], dim=1)
        w0 = torch.cat([w0, torch.zeros(w0.shape[0], 1, device=w0.device)], dim=1)  # [d_out, k + 1]
    gram = (h.T @ h).double()
    penalty = ridge * float(gram.diagonal().mean().clamp_min(1e-12))
    rhs = (h.T @ target).double() + penalty * w0.T.double()
    gram.diagonal().add_(penalty)
    solution = torch.linalg.solve(gram, rhs).T  # [d_out, k (+ 1)]
    k = consumer.weight.shape[1]
    consumer.weight.copy_(solution[:, :k].to(consumer.weight.dtype))
    if consumer.bias is not None:
        consumer.bias.add_(solution[:, k].to(consumer.bias.dtype))
