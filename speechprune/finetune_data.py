"""The data side of :func:`speechprune.finetune.finetune`: checks of the sets, label ids and batches.

:func:`check_overlap` refuses an evaluation set that shares utterances with the train set;
:func:`encode_labels` turns transcripts into label ids (CTC: the characters of the model's own
vocabulary; Whisper: its tokens after the decoder start token) and refuses the ones that cannot be
used; :class:`LabelledSpeech` and :class:`SpeechCollator` are the ``Trainer``'s dataset and collator.
"""

from __future__ import annotations

import copy
import hashlib
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from speechprune.data import SAMPLE_RATE, SpeechSet, StreamedSpeech
from speechprune.errors import SpeechPruneError
from speechprune.models import is_multilingual
from speechprune.structure import model_family

_DASHES = re.compile(r"[-\u2010-\u2015]")


def _ids_and_texts(speech: SpeechSet | StreamedSpeech) -> tuple[list[str], list[str]]:
    if isinstance(speech, StreamedSpeech):
        return speech.ids, speech.texts
    return [u.id for u in speech], [u.text for u in speech]


def _audio_hash(audio: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(audio, dtype=np.float32).tobytes()).hexdigest()


def check_overlap(train: SpeechSet | StreamedSpeech, eval: SpeechSet | StreamedSpeech) -> str:
    """Refuse an evaluation set that shares an utterance id or identical audio with the train set.

    Returns what was compared (audio is compared only where both sets hold it in memory).
    """
    train_ids, _ = _ids_and_texts(train)
    eval_ids, _ = _ids_and_texts(eval)
    shared = sorted(set(train_ids) & set(eval_ids))
    if shared:
        raise SpeechPruneError(
            f"the evaluation set {eval.name} overlaps the train set {train.name}: {len(shared)} shared "
            f"utterance id(s), e.g. {', '.join(shared[:3])}; use disjoint sets (for the embedded speech: "
            "train on embedded:train, evaluate on embedded)"
        )
    if isinstance(train, StreamedSpeech) or isinstance(eval, StreamedSpeech):
        return "utterance ids (audio not hashed: a streamed set)"
    train_hashes = {_audio_hash(u.audio): u.id for u in train}
    same = [(u.id, train_hashes[h]) for u in eval if (h := _audio_hash(u.audio)) in train_hashes]
    if same:
        pairs = ", ".join(f"{e} = {t}" for e, t in same[:3])
        raise SpeechPruneError(
            f"the evaluation set {eval.name} overlaps the train set {train.name}: {len(same)} utterance(s) "
            f"with identical audio under other ids ({pairs})"
        )
    return "utterance ids and SHA-1 of the 16 kHz audio"


# ---------------------------------------------------------------- labels


def _kind(model: nn.Module) -> str:
    return "whisper" if model_family(model) == "whisper" else "ctc"


def _ctc_text(text: str, vocab: set[str]) -> str:
    """Fit a transcript to a character vocabulary: its letter case, dashes as spaces, and
    punctuation the vocabulary lacks dropped. Other missing characters are left for the caller to refuse."""
    letters = [t for t in vocab if len(t) == 1 and t.isalpha()]
    if letters and all(c.isupper() for c in letters):
        text = text.upper()
    elif letters and all(c.islower() for c in letters):
        text = text.lower()
    text = _DASHES.sub(" ", text)
    text = "".join(c for c in text if c in vocab or not unicodedata.category(c).startswith("P"))
    return " ".join(text.split())


def _ctc_labels(model: nn.Module, tokenizer, ids: list[str], texts: list[str]) -> list[list[int]]:
    vocab = set(tokenizer.get_vocab())
    delimiter = getattr(tokenizer, "word_delimiter_token", None)
    if delimiter not in vocab:
        raise SpeechPruneError(
            f"{type(tokenizer).__name__} has no word delimiter token: not a CTC character vocabulary")
    labels, bad, missing = [], [], set()
    for uid, text in zip(ids, texts):
        fitted = _ctc_text(text, vocab)
        chars = {c for c in fitted if c != " " and c not in vocab}
        if chars or not fitted:
            bad.append((uid, text))
            missing |= chars
            continue
        labels.append(tokenizer(fitted).input_ids)
    if bad:
        what = f"characters not in its vocabulary: {', '.join(repr(c) for c in sorted(missing)[:10])}" if missing \
            else "empty transcripts"
        examples = "; ".join(f"{u}: {t!r}" for u, t in bad[:3])
        raise SpeechPruneError(
            f"the model's tokenizer cannot encode {len(bad)} of {len(ids)} transcripts ({what}); e.g. {examples}. "
            "Spell numbers and symbols out in words, or use a model whose vocabulary covers them"
        )
    if tokenizer.unk_token_id is not None and any(tokenizer.unk_token_id in row for row in labels):
        raise SpeechPruneError("the model's tokenizer maps some transcript characters to its unknown token")
    return labels


def _whisper_labels(model: nn.Module, tokenizer, ids: list[str], texts: list[str], language: str) -> list[list[int]]:
    """Token ids after the decoder start token: ``[<|notimestamps|>, text..., <|endoftext|>]`` for
    English-only models (with language and task tokens first for multilingual ones), the sequence
    that ``generate`` produces after the start token. Text gets Whisper's leading space."""
    tokenizer = copy.deepcopy(tokenizer)
    if is_multilingual(model):  # decoded with language and task tokens
        tokenizer.set_prefix_tokens(language=language, task="transcribe", predict_timestamps=False)
    else:
        tokenizer.set_prefix_tokens(predict_timestamps=False)
    start = model.config.decoder_start_token_id
    limit = model.config.max_target_positions
    labels, bad = [], []
    for uid, text in zip(ids, texts):
        text = " ".join(text.split())
        row = tokenizer(" " + text).input_ids
        row = row[1:] if row and row[0] == start else row
        if not text or tokenizer.decode(row, skip_special_tokens=True).strip() != text:
            bad.append((uid, text, "cannot be encoded and decoded back"))
        elif len(row) > limit:
            bad.append((uid, text, f"{len(row)} tokens, over the decoder's {limit}"))
        labels.append(row)
    if bad:
        examples = "; ".join(f"{u}: {t[:60]!r} ({why})" for u, t, why in bad[:3])
        raise SpeechPruneError(f"the model's tokenizer cannot encode {len(bad)} of {len(ids)} transcripts: {examples}")
    return labels


def _check_lengths(model: nn.Module, processor, speech, labels: list[list[int]]) -> None:
    """Refuse clips that Whisper would cut, or CTC transcripts longer than the model's output frames."""
    if isinstance(speech, StreamedSpeech):
        return  # checked batch by batch in the collator
    lengths = np.array([len(u.audio) for u in speech])
    if _kind(model) == "whisper":
        window = processor.feature_extractor.n_samples
        over = [u.id for u, n in zip(speech, lengths) if n > window]
        if over:
            raise SpeechPruneError(
                f"{len(over)} clip(s) in {speech.name} are longer than Whisper's {window / SAMPLE_RATE:g} s "
                f"window and would be cut against their full transcripts: {', '.join(over[:3])}"
            )
        return
    frames = model._get_feat_extract_output_lengths(torch.as_tensor(lengths)).tolist()
    short = [u.id for u, f, row in zip(speech, frames, labels) if len(row) > f]
    if short:
        raise SpeechPruneError(
            f"{len(short)} transcript(s) in {speech.name} have more characters than the model has output "
            f"frames for their audio (CTC cannot align them): {', '.join(short[:3])}")


def encode_labels(model: nn.Module, processor, speech: SpeechSet | StreamedSpeech, *,
                  language: str = "en") -> list[list[int]]:
    """Label ids of every transcript, or a :class:`SpeechPruneError` naming the ones that cannot be used."""
    ids, texts = _ids_and_texts(speech)
    if _kind(model) == "whisper":
        labels = _whisper_labels(model, processor.tokenizer, ids, texts, language)
    else:
        labels = _ctc_labels(model, processor.tokenizer, ids, texts)
    _check_lengths(model, processor, speech, labels)
    return labels


# ---------------------------------------------------------------- batches


class LabelledSpeech(torch.utils.data.Dataset):
    """Items ``{"audio": float32 16 kHz, "labels": ids}``; audio read from the speech set on access."""

    def __init__(self, speech: SpeechSet | StreamedSpeech, labels: list[list[int]]):
        self.speech, self.labels = speech, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        utterance = self.speech[index]
        return {"id": utterance.id, "audio": utterance.audio, "labels": self.labels[index]}


def _pad_labels(rows: list[list[int]]) -> torch.Tensor:
    out = torch.full((len(rows), max(len(r) for r in rows)), -100, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    return out


@dataclass
class SpeechCollator:
    """Pads a batch: raw audio (CTC) or 30 s log-mel features (Whisper), labels with -100."""

    processor: Any
    whisper: bool

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        extractor = self.processor.feature_extractor
        audios = [item["audio"] for item in items]
        batch = {"labels": _pad_labels([item["labels"] for item in items])}
        if self.whisper:
            over = [item["id"] for item in items if len(item["audio"]) > extractor.n_samples]
            if over:
                raise SpeechPruneError(f"clip(s) longer than Whisper's window would be cut: {', '.join(over)}")
            batch["input_features"] = extractor(audios, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
            return batch
        features = extractor(audios, sampling_rate=SAMPLE_RATE, padding=True, return_tensors="pt",
                             return_attention_mask=bool(extractor.return_attention_mask))
        batch["input_values"] = features.input_values
        if "attention_mask" in features:
            batch["attention_mask"] = features.attention_mask
        return batch
