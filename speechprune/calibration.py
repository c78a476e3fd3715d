"""Synthetic speech and the blocks' inputs on it: what the ``refit`` merge is fitted on, without data.

:func:`synthetic_speech` draws speech-like audio from a formula (no recording): a source-filter
"babble" of vowels (a glottal pulse train through formant resonators at the formants of textbook
vowel charts), fricative noise and pauses, from a generator with a fixed seed.
:func:`capture_inputs` runs the dense model on it and keeps each feed-forward block's inputs (a
fixed random subset of rows): Whisper's encoder on the clips' log-mel features, its decoder
teacher-forced on the model's own greedy transcript of them; a CTC model on the waveforms. The refit
itself is :mod:`speechprune.refit`.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import torch
from torch import Tensor

from speechprune.checkpoint import transformers_quiet
from speechprune.data import SAMPLE_RATE
from speechprune.models import english_generate_kwargs
from speechprune.structure import Unit, model_family

#: Synthetic clips the calibration draws (their seconds are uniform in CLIP_SECONDS).
CALIBRATION_CLIPS = 16
#: The generator's seed: fixed, so the refit is deterministic and the method stays seed-free.
CALIBRATION_SEED = 0
CLIP_SECONDS = (3.0, 12.0)
#: At most this many input rows (frames or tokens) are kept per unit: ``CALIBRATION_ROWS // clips``
#: rows of each clip, a fixed random subset drawn for each unit and clip (so the rows kept do not
#: depend on how the clips are batched).
CALIBRATION_ROWS = 8192
#: New tokens the decoder writes for each synthetic clip (its own transcript, read back).
DECODER_TOKENS = 48
#: Clips per forward pass during calibration: {device type: clips}. Batching changes the cost, not
#: the rows kept. One clip at a time on a CPU keeps Whisper-large-v3's pass within a Colab host's
#: RAM (``benchmarks/bench_full_scale.py``); eight on a GPU.
CALIBRATION_BATCH = {"cpu": 1, "cuda": 8}
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


class _Rows:
    """Input rows of one unit: at most ``per_clip`` rows of each clip, a fixed random subset.

    The unit has its own generator, and its clips arrive in the same order however they are
    batched, so the rows kept do not depend on the batch size.
    """

    def __init__(self, per_clip: int, seed: int):
        self.per_clip, self.parts = per_clip, []
        self.generator = torch.Generator(device="cpu").manual_seed(seed)

    def add(self, x: Tensor) -> None:
        x = x.detach()
        for clip in (x if x.dim() == 3 else x[None]):  # [batch, positions, features]: one clip at a time
            if clip.shape[0] > self.per_clip:
                pick = torch.randperm(clip.shape[0], generator=self.generator)[: self.per_clip]
                clip = clip[pick.to(clip.device)]
            self.parts.append(clip.float())

    def rows(self) -> Tensor:
        return torch.cat(self.parts)


@torch.no_grad()
def capture_inputs(model: torch.nn.Module, units: list[Unit], *, n_clips: int | None = None,
                   seed: int = CALIBRATION_SEED, max_rows: int | None = None,
                   audios: list[np.ndarray] | None = None, batch_size: int | None = None) -> dict[str, Tensor]:
    """Each unit's inputs on synthetic speech, {unit name: [rows, d_in] float32}, from one dense pass.

    Whisper: log-mel features of the clips (as Whisper's feature extractor computes them for this
    model's number of mel bins), the encoder run on them, the decoder teacher-forced on the dense
    model's own greedy transcript of them (:data:`DECODER_TOKENS` tokens).
    CTC models: each clip's normalised waveform. ``audios`` (16 kHz float32 clips) replaces the
    synthetic speech, for diagnostics (``studies/probe_refit.py`` compares it with recordings and noise).
    ``batch_size`` (Whisper's clips per pass; default :data:`CALIBRATION_BATCH` for the model's
    device) changes the memory and time it takes, not the rows kept.
    """
    if not units:
        return {}
    n_clips = CALIBRATION_CLIPS if n_clips is None else n_clips
    max_rows = CALIBRATION_ROWS if max_rows is None else max_rows
    audios = synthetic_speech(n_clips, seed) if audios is None else list(audios)
    whisper = model_family(model) == "whisper"
    param = next(model.parameters())
    size = batch_size or CALIBRATION_BATCH.get(param.device.type, 1)
    batches = [audios[i:i + size] for i in range(0, len(audios), size)]
    per_clip = max(1, max_rows // len(audios))
    store = {u.name: _Rows(per_clip, seed * 2**32 + zlib.crc32(u.name.encode())) for u in units}  # a unit's own rows
    recording = {"encoder": True, "decoder": True}

    def record(name: str, stack: str, x: Tensor) -> None:
        if recording.get(stack, True):
            store[name].add(x)

    hooks = [u.producers[0].register_forward_hook(
        lambda module, inputs, output, name=u.name, stack=u.stack: record(name, stack, inputs[0])) for u in units]
    training = model.training
    model.eval()  # no dropout: the same inputs every time
    try:
        if whisper:
            _whisper_pass(model, batches, recording, param, decoder=any(u.stack == "decoder" for u in units))
        else:
            for audio in audios:  # one clip at a time: no padding to mask
                x = torch.from_numpy((audio - audio.mean()) / (audio.std() + 1e-7))[None]
                model(input_values=x.to(device=param.device, dtype=param.dtype))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(training)
    return {name: rows.rows() for name, rows in store.items() if rows.parts}


def _whisper_pass(model, batches: list, recording: dict, param: Tensor, *, decoder: bool = True) -> None:
    """Encoder on the clips' log-mel features; decoder teacher-forced on the model's own transcript.

    ``generate`` runs the encoder once (its blocks' inputs are recorded then) and writes
    :data:`DECODER_TOKENS` tokens (end-of-text suppressed until then, so every clip gives as many
    decoder rows); its step-by-step decoder passes are not recorded. One teacher-forced pass of the
    decoder over the whole transcript, on the same encoder output, gives the decoder's rows.
    Without decoder units (``decoder=False``: an encoder-only scope) only the encoder runs, on the
    same features, so its rows are those of the full pass; the transcript, most of the time on a CPU
    (about two thirds for Whisper base), is skipped.
    """
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(feature_size=model.config.num_mel_bins)
    frames = 2 * model.config.max_source_positions  # the model's window: 3000 frames (30 s) for every Whisper
    tokens = min(DECODER_TOKENS, model.config.max_target_positions // 2)  # 48 for every Whisper (448 positions)
    encoder = model.get_encoder()
    kept: dict = {}
    grab = encoder.register_forward_hook(lambda module, inputs, output: kept.__setitem__("encoded", output[0]))
    try:
        for batch in batches:
            features = extractor(batch, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features[..., :frames]
            features = features.to(device=param.device, dtype=param.dtype)
            if not decoder:
                encoder(input_features=features)
                kept.clear()
                continue
            recording.update(encoder=True, decoder=False)
            with transformers_quiet():
                ids = model.generate(features, num_beams=1, do_sample=False, max_new_tokens=tokens,
                                     min_new_tokens=tokens, return_dict_in_generate=True,
                                     **english_generate_kwargs(model)).sequences  # with the prompt tokens
            recording.update(encoder=False, decoder=True)
            model(encoder_outputs=(kept.pop("encoded"),), decoder_input_ids=ids)
    finally:
        grab.remove()
        recording.update(encoder=True, decoder=True)
