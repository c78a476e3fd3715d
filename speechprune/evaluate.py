"""Word error rate of a speech model on a speech set: greedy decoding, Whisper normaliser, jiwer.

CTC models (HuBERT, wav2vec2, ...) decode by argmax and collapse; Whisper by greedy ``generate``
on 30 s padded log-mel features with ``speechprune.models.english_generate_kwargs`` (language
"en" and task "transcribe" for multilingual checkpoints, nothing for English-only ones, no
timestamps). References and hypotheses are normalised with transformers' Whisper
``EnglishTextNormalizer``; the WER is corpus-level (total errors / total reference words).
"""

from __future__ import annotations

import importlib.metadata
import math
import platform
import sys
import time
from datetime import datetime, timezone
from typing import Callable, Sequence

import jiwer
import numpy as np
import torch
import transformers
from tqdm.auto import tqdm
from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

from speechprune.gpu import out_of_memory_as_error
from speechprune._version import __version__
from speechprune.checkpoint import transformers_quiet
from speechprune.data import SAMPLE_RATE, SpeechSet
from speechprune.errors import SpeechPruneError, check_choice, warn
from speechprune.models import english_generate_kwargs, english_spelling_map
from speechprune.structure import model_family

WHISPER_SECONDS = 30.0
TOKENS_PER_SECOND = 8
MAX_WHISPER_NEW_TOKENS = 440  # Whisper's 448 positions less the 4-token prompt and a margin
DECODINGS = ("greedy", "fallback")
# Whisper's temperature fallback (as in openai-whisper's transcribe): decode greedily, and decode
# again at the next temperature when the text compresses too well (a loop) or is too unlikely.
FALLBACK = dict(temperature=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0), compression_ratio_threshold=2.4,
                logprob_threshold=-1.0)


def english_normalizer(tokenizer=None) -> EnglishTextNormalizer:
    """Whisper's English normaliser with a British-to-American spelling map.

    The map is the tokenizer's (hub Whisper tokenizers carry ``normalizer.json``) when it has a
    non-empty one, else the copy shipped with speechprune (transformers ships none of its own).
    ``describe_normalizer`` records its size.
    """
    mapping = getattr(tokenizer, "english_spelling_normalizer", None)
    return EnglishTextNormalizer(mapping or english_spelling_map())


def describe_normalizer(normalizer: EnglishTextNormalizer) -> str:
    """A one-line description of the normaliser for result records."""
    entries = len(normalizer.standardize_spellings.mapping)
    return f"transformers Whisper EnglishTextNormalizer, English spelling map: {entries} entries"


def wer_details(refs: Sequence[str], hyps: Sequence[str], *,
                normalizer: Callable[[str], str] | None = None) -> dict:
    """Corpus WER (percent) and its error counts, from jiwer.

    With ``normalizer``, both sides are normalised first. References that are empty (after
    normalising) cannot be scored: they are left out and counted in ``n_dropped_empty``.
    ``per_utterance_errors`` lists S+D+I for each input pair (None where dropped).
    """
    if len(refs) != len(hyps):
        raise SpeechPruneError(f"{len(refs)} references but {len(hyps)} hypotheses")
    norm = normalizer or (lambda s: s)
    refs = [" ".join(norm(r).split()) for r in refs]
    hyps = [" ".join(norm(h).split()) for h in hyps]
    kept = [i for i, r in enumerate(refs) if r]
    if not kept:
        raise SpeechPruneError("every reference is empty after normalising: nothing to score")
    out = jiwer.process_words([refs[i] for i in kept], [hyps[i] for i in kept])
    per_utterance: list[int | None] = [None] * len(refs)
    for i, chunks in zip(kept, out.alignments):
        per_utterance[i] = sum(
            (c.hyp_end_idx - c.hyp_start_idx) if c.type == "insert" else (c.ref_end_idx - c.ref_start_idx)
            for c in chunks if c.type != "equal"
        )
    ref_words = out.substitutions + out.deletions + out.hits
    errors = out.substitutions + out.deletions + out.insertions
    return dict(
        wer=100.0 * errors / ref_words,
        substitutions=out.substitutions,
        deletions=out.deletions,
        insertions=out.insertions,
        hits=out.hits,
        ref_words=ref_words,
        n_scored=len(kept),
        n_dropped_empty=len(refs) - len(kept),
        references=refs,
        hypotheses=hyps,
        per_utterance_errors=per_utterance,
    )


def decoding_kind(model: torch.nn.Module) -> str:
    """``"ctc"`` (HuBERT, wav2vec2) or ``"whisper"``; anything else is refused by name."""
    return "whisper" if model_family(model) == "whisper" else "ctc"


def max_new_tokens(seconds: float) -> int:
    """Token budget for a clip: generous for real speech, a bound for a pruned model's runaway loop.

    Read English runs at about 3 tokens a second; a pruned model that repeats itself would
    otherwise decode all 448 positions, which costs minutes and adds nothing to what its
    WER already says.
    """
    return min(MAX_WHISPER_NEW_TOKENS, math.ceil(TOKENS_PER_SECOND * seconds) + 16)


def decoding_settings(model: torch.nn.Module, batch_size: int, decoding: str = "greedy") -> dict:
    """The decoding choices that a WER depends on, for the result record."""
    if decoding_kind(model) == "ctc":
        return dict(method="greedy CTC: argmax per frame, collapse repeats, drop blanks", batch_size=batch_size)
    kwargs = english_generate_kwargs(model)
    fallback = dict(decoding="fallback", **{k: list(v) if isinstance(v, tuple) else v for k, v in FALLBACK.items()},
                    sampling_seed=0)
    return dict(
        method="greedy generate (num_beams=1, no sampling)" if decoding == "greedy" else
        "greedy generate with Whisper's temperature fallback (sampling at the next temperature when the "
        "compression ratio exceeds 2.4 or the mean log-probability is below -1.0)",
        **(fallback if decoding == "fallback" else dict(decoding="greedy")),
        language=kwargs.get("language"),
        task=kwargs.get("task"),
        timestamps=kwargs["return_timestamps"],
        input=f"log-mel features padded to {WHISPER_SECONDS:.0f} s (longer audio is cut, unless long_form)",
        max_new_tokens=f"min({MAX_WHISPER_NEW_TOKENS}, {TOKENS_PER_SECOND} per second of the batch's longest clip "
                       "(at most the window) + 16), per window with long_form",
        batch_size=batch_size,
    )


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _model_dtype(model: torch.nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


@torch.inference_mode()
def _transcribe_ctc(model, processor, audios: list[np.ndarray], device: torch.device) -> list[str]:
    features = processor.feature_extractor(audios, sampling_rate=SAMPLE_RATE, padding=True, return_tensors="pt")
    inputs = {k: v.to(device) for k, v in features.items() if k in ("input_values", "attention_mask")}
    inputs["input_values"] = inputs["input_values"].to(_model_dtype(model))
    ids = model(**inputs).logits.argmax(dim=-1).cpu()
    lengths = model._get_feat_extract_output_lengths(torch.tensor([len(a) for a in audios]))
    # No skip_special_tokens: transformers would drop the blank before collapsing repeats ("hel<pad>lo"
    # -> "helo"). Leftover <s>/<unk> tokens are removed by the normaliser (text in angle brackets).
    return processor.tokenizer.batch_decode([row[:n].tolist() for row, n in zip(ids, lengths.tolist())])


def _token_budget(model, seconds: float) -> int:
    """:func:`max_new_tokens`, within the positions of the model's decoder (448 for real Whisper)."""
    return min(max_new_tokens(seconds), model.config.max_target_positions - 8)


def whisper_window(processor) -> float:
    """Seconds of audio Whisper reads at once (30 for real checkpoints): longer clips are cut."""
    extractor = getattr(processor, "feature_extractor", None)
    return getattr(extractor, "n_samples", WHISPER_SECONDS * SAMPLE_RATE) / SAMPLE_RATE


@torch.inference_mode()
def _transcribe_long(model, processor, audios: list[np.ndarray], device: torch.device) -> list[str]:
    """transformers' sequential long-form Whisper decoding (timestamps, window after window), greedy."""
    features = processor.feature_extractor(audios, sampling_rate=SAMPLE_RATE, truncation=False, padding="longest",
                                           return_attention_mask=True, return_tensors="pt")
    kwargs = dict(english_generate_kwargs(model), return_timestamps=True)
    with transformers_quiet():  # generation notices on every batch are noise on a book page
        ids = model.generate(features.input_features.to(device=device, dtype=_model_dtype(model)),
                             attention_mask=features.attention_mask.to(device), num_beams=1, do_sample=False,
                             condition_on_prev_tokens=False,
                             max_new_tokens=_token_budget(model, whisper_window(processor)), **kwargs)
    return processor.tokenizer.batch_decode(ids, skip_special_tokens=True)




@torch.inference_mode()
def _transcribe_whisper(model, processor, audios: list[np.ndarray], device: torch.device,
                        long_form: bool = False, decoding: str = "greedy") -> list[str]:
    if long_form and max(len(a) for a in audios) > processor.feature_extractor.n_samples:
        return _transcribe_long(model, processor, audios, device)
    features = processor.feature_extractor(audios, sampling_rate=SAMPLE_RATE, return_tensors="pt",
                                           return_attention_mask=decoding == "fallback")
    input_features = features.input_features.to(device=device, dtype=_model_dtype(model))
    longest = min(max(len(a) for a in audios) / SAMPLE_RATE, whisper_window(processor))  # the rest is cut
    extra = {}
    if decoding == "fallback":
        torch.manual_seed(0)  # the sampled retries are reproducible
        extra = dict(FALLBACK, attention_mask=features.attention_mask.to(device))
    with transformers_quiet():  # generation notices on every batch are noise on a book page
        ids = model.generate(input_features, num_beams=1, do_sample=False,
                             max_new_tokens=_token_budget(model, longest), **english_generate_kwargs(model), **extra)
    return processor.tokenizer.batch_decode(ids, skip_special_tokens=True)


def transcribe(model: torch.nn.Module, processor, audios: Sequence[np.ndarray], *, batch_size: int = 8,
               device: str | torch.device | None = None, progress: bool = True, long_form: bool = False,
               decoding: str = "greedy") -> list[str]:
    """Greedy transcripts of 16 kHz mono float32 clips, in input order.

    Clips are batched by length (less padding); ``device`` moves the model there (default: where
    it already is). Whisper cuts clips to its window unless ``long_form``, which decodes batches
    holding a longer clip with transformers' sequential long-form generation.
    """
    if batch_size < 1:
        raise SpeechPruneError(f"batch size must be at least 1, got {batch_size}")
    if processor is None:
        raise SpeechPruneError("no processor: the model folder holds weights only; save its processor beside it")
    if not hasattr(processor, "feature_extractor") or not hasattr(processor, "tokenizer"):
        raise SpeechPruneError(f"expected a processor with a feature extractor and a tokenizer, got {type(processor).__name__}")
    check_choice("decoding", decoding, DECODINGS)
    if decoding_kind(model) == "ctc":
        decode = _transcribe_ctc  # CTC has no fallback: argmax is its only decoding
    else:
        def decode(model, processor, batch, device):
            return _transcribe_whisper(model, processor, batch, device, long_form=long_form, decoding=decoding)
    if device is not None:
        model.to(device)
    device = _model_device(model)
    model.eval()
    order = sorted(range(len(audios)), key=lambda i: len(audios[i]))
    texts: list[str] = [""] * len(audios)
    with tqdm(total=len(audios), desc="transcribing", unit="utt", disable=not progress, file=sys.stderr) as bar:
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            with out_of_memory_as_error(f"transcribing a batch of {len(batch)} utterances",
                                        f"lower the batch size (--batch-size, BATCH_SIZE in the chapters; now "
                                        f"{batch_size})"):
                decoded = decode(model, processor, [audios[i] for i in batch], device)
            for i, text in zip(batch, decoded):
                texts[i] = text.strip()
            bar.update(len(batch))
    return texts


def evaluate(model: torch.nn.Module, processor, speech: SpeechSet, *, batch_size: int = 8,
             device: str | torch.device | None = None, max_samples: int | None = None,
             progress: bool = True, label: str | None = None, long_form: bool = False,
             decoding: str = "greedy") -> dict:
    """Transcribe ``speech`` and score it; returns a JSON-ready record (WER in percent).

    CTC models decode by argmax and collapse; Whisper by greedy ``generate`` (or Whisper's
    temperature fallback, ``decoding="fallback"``) in English
    without timestamps; Whisper clips longer than its 30 s window are cut to it, with a warning
    giving the count, unless ``long_form`` (sequential long-form decoding), and the record says
    which. Both sides are normalised with Whisper's English normaliser and the
    WER is corpus-level (total errors over total reference words).

    Parameters
    ----------
    model : transformers model
        A supported model, dense or pruned.
    processor : transformers processor
        Its processor (``Wav2Vec2Processor`` or ``WhisperProcessor``).
    speech : SpeechSet
        Utterances with references, from :func:`speechprune.data.load_speech`.
    batch_size : int, default 8
        Clips decoded together (batched by length).
    device : str or torch.device, optional
        Move the model here first; default: where it is. (The command line's default is the
        package-wide rule: cuda when available, else cpu.)
    max_samples : int, optional
        Only the first ``max_samples`` utterances.
    progress : bool, default True
        Show a progress bar.
    label : str, optional
        The model's name in the record.
    long_form : bool, default False
        Whisper only: transcribe clips longer than 30 s whole, with transformers' sequential
        long-form generation, instead of cutting them to the window.
    decoding : {"greedy", "fallback"}, default "greedy"
        ``greedy`` is the paper's protocol; ``fallback`` is Whisper's temperature fallback
        (compression-ratio threshold 2.4, log-probability threshold -1.0), which separates what
        pruning removed from loops in decoding. CTC models always decode greedily.

    Returns
    -------
    dict
        ``wer`` (percent), substitutions, deletions, insertions, hits, reference words,
        speed, the model, data, normaliser, decoding settings, versions, and every
        utterance's reference and hypothesis.

    Raises
    ------
    SpeechPruneError
        For an unsupported model, an empty speech set, or references that are all empty
        after normalising.

    Examples
    --------
    >>> from speechprune import evaluate
    >>> from speechprune.data import load_speech
    >>> from speechprune.testing import tiny_model, tiny_processor
    >>> speech = load_speech("embedded", max_samples=2)  # real speech shipped with the package
    >>> record = evaluate(tiny_model("hubert"), tiny_processor("hubert"), speech, progress=False)
    >>> record["n_utterances"], record["model"]["family"], record["wer"] > 0  # random weights
    (2, 'hubert', True)
    """
    utterances = speech.utterances[:max_samples]
    if not utterances:
        raise SpeechPruneError(f"{speech.name} has no utterances to evaluate")
    whisper = decoding_kind(model) == "whisper"
    window = whisper_window(processor) if whisper else None
    over = sum(u.duration > window for u in utterances) if whisper else 0
    if over and long_form and getattr(model.generation_config, "no_timestamps_token_id", None) is None:
        raise SpeechPruneError(
            f"--long-form needs a Whisper generation config with timestamp tokens (no_timestamps_token_id), "
            f"which {label or type(model).__name__} lacks; {over} clip(s) are longer than its {window:g} s window")
    if over and not long_form:
        warn(f"{over} of {len(utterances)} clip(s) in {speech.name} are longer than Whisper's {window:g} s window "
             f"and are cut to it (the words after it count as deletions); pass --long-form to transcribe them whole")
    normalizer = english_normalizer(getattr(processor, "tokenizer", None))
    started = time.perf_counter()
    hyps = transcribe(model, processor, [u.audio for u in utterances], batch_size=batch_size,
                      device=device, progress=progress, long_form=long_form, decoding=decoding)
    decode_seconds = time.perf_counter() - started
    refs = [u.text for u in utterances]
    scores = wer_details(refs, hyps, normalizer=normalizer)
    audio_seconds = float(sum(u.duration for u in utterances))
    data = dict(speech.provenance)
    if len(utterances) < len(speech):
        data.update(max_samples=max_samples, count=len(utterances), hours=round(audio_seconds / 3600, 4))
    settings = decoding_settings(model, batch_size, decoding)
    if whisper:
        settings["clips_over_30s"] = over  # over the window: 30 s for real checkpoints
        settings["long_form"] = bool(long_form)
        settings["over_window"] = ("none" if not over else "sequential long-form generation (transformers, "
                                   "timestamps, no conditioning on the previous window)" if long_form
                                   else "cut to the window")
    return dict(
        wer=round(scores["wer"], 4),
        substitutions=scores["substitutions"],
        deletions=scores["deletions"],
        insertions=scores["insertions"],
        hits=scores["hits"],
        ref_words=scores["ref_words"],
        n_utterances=len(utterances),
        n_dropped_empty=scores["n_dropped_empty"],
        audio_seconds=round(audio_seconds, 3),
        decode_seconds=round(decode_seconds, 3),
        seconds_per_utterance=round(decode_seconds / len(utterances), 4),
        rtf=round(decode_seconds / audio_seconds, 4),
        model=dict(
            name=label or getattr(model, "name_or_path", "") or type(model).__name__,
            family=model.config.model_type,
            architecture=type(model).__name__,
            parameters=sum(p.numel() for p in model.parameters()),
        ),
        data=data,
        normalizer=describe_normalizer(normalizer),
        dtype=str(_model_dtype(model)).removeprefix("torch."),
        device=str(_model_device(model)),
        decoding=settings,
        versions=dict(
            speechprune=__version__,
            torch=torch.__version__,
            transformers=transformers.__version__,
            jiwer=importlib.metadata.version("jiwer"),
            python=platform.python_version(),
        ),
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        utterances=[
            dict(id=u.id, duration=round(u.duration, 3), reference=u.text, hypothesis=hyp,
                 reference_normalized=ref_n, hypothesis_normalized=hyp_n, errors=err)
            for u, hyp, ref_n, hyp_n, err in zip(utterances, hyps, scores["references"],
                                                  scores["hypotheses"], scores["per_utterance_errors"])
        ],
    )


def summary(record: dict) -> str:
    """One paragraph: WER, S/D/I, speed, model and data."""
    model, data = record["model"], record["data"]
    dropped = f", {record['n_dropped_empty']} empty reference(s) dropped" if record["n_dropped_empty"] else ""
    return (
        f"WER {record['wer']:.2f}% (S {record['substitutions']}, D {record['deletions']}, "
        f"I {record['insertions']} over {record['ref_words']} reference words, "
        f"{record['n_utterances']} utterances{dropped}) for {model['name']} ({model['family']}, "
        f"{model['parameters'] / 1e6:.1f}M parameters, {record['dtype']}, {record['device']}) on "
        f"{data.get('name')} ({record['audio_seconds'] / 60:.1f} min of audio). Decoding took "
        f"{record['decode_seconds']:.1f} s ({record['seconds_per_utterance']:.2f} s per utterance, "
        f"RTF {record['rtf']:.3f}); normaliser: {record['normalizer']}."
    )
