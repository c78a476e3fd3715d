"""What the diagnostics in ``studies/`` share: a teacher-forced probe of a Whisper model on test clips.

``probe_function_space.py``, ``probe_refit.py`` and ``probe_sequential.py`` measure a pruned model
without decoding: the relative error of its encoder
output against the dense model's, and the cross-entropy of the reference transcripts read by its
decoder (teacher forcing), on the first clips of the embedded test split.
"""

from __future__ import annotations

import torch

from speechprune.data import load_speech


def teacher_forced_probe(processor, n_clips: int = 8):
    """``probe(model) -> (encoder output, cross-entropy)`` on the first ``n_clips`` clips of ``embedded``.

    The transcripts are tokenised with ``processor``'s tokenizer (``<|startoftranscript|> ... <|endoftext|>``),
    padded positions ignored by the loss.
    """
    speech = load_speech("embedded", max_samples=n_clips)
    feats = processor.feature_extractor([u.audio for u in speech.utterances], sampling_rate=16000,
                                        return_tensors="pt").input_features
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    tok = processor.tokenizer([u.text for u in speech.utterances], return_tensors="pt", padding=True)
    ids, mask = tok.input_ids, tok.attention_mask
    targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)

    @torch.no_grad()
    def probe(model):
        enc = model.model.encoder(feats).last_hidden_state
        logits = model(encoder_outputs=(enc,), decoder_input_ids=ids[:, :-1]).logits
        return enc, float(torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100))

    return probe
