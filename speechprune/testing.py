"""Tiny random models and processors of every supported family, built from configs.

They need no download and run in milliseconds, so the documentation's examples, the test
suite and anyone trying the API can use them. Their weights are random: they transcribe
noise. Feed-forward blocks have 64 neurons and attention blocks 4 heads of 8 dimensions.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
import transformers

from speechprune.errors import check_choice
from speechprune.structure import iter_units

#: family -> (config class, model class, extra config fields)
_CTC = {
    "hubert": ("HubertConfig", "HubertForCTC", {}),
    "wav2vec2": ("Wav2Vec2Config", "Wav2Vec2ForCTC", {}),
    "wavlm": ("WavLMConfig", "WavLMForCTC", dict(num_buckets=16, max_bucket_distance=32)),
    "data2vec_audio": ("Data2VecAudioConfig", "Data2VecAudioForCTC",
                       dict(conv_pos_kernel_size=5, num_conv_pos_embeddings=5)),
    "wav2vec2_conformer": ("Wav2Vec2ConformerConfig", "Wav2Vec2ConformerForCTC", dict(conv_depthwise_kernel_size=3)),
    "unispeech_sat": ("UniSpeechSatConfig", "UniSpeechSatForCTC", {}),
    "sew": ("SEWConfig", "SEWForCTC", dict(squeeze_factor=2)),
}
TINY_FAMILIES = ("whisper", *_CTC)
CHARACTERS = list("abcdefghijklmnopqrstuvwxyz'")


def _ctc_config(family: str, **overrides) -> transformers.PretrainedConfig:
    config_cls, _, extra = _CTC[family]
    fields = dict(
        vocab_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        conv_dim=(16, 16), conv_kernel=(10, 3), conv_stride=(5, 2), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4, do_stable_layer_norm=False, hidden_dropout=0.0,
        attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.0,
        mask_time_prob=0.0, pad_token_id=0,
    )
    return getattr(transformers, config_cls)(**{**fields, **extra, **overrides})


def _whisper_config(**overrides) -> transformers.WhisperConfig:
    fields = dict(
        vocab_size=100, num_mel_bins=8, d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_source_positions=20, max_target_positions=32, decoder_start_token_id=1, pad_token_id=0,
        bos_token_id=1, eos_token_id=2, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        begin_suppress_tokens=None, suppress_tokens=None,
    )
    return transformers.WhisperConfig(**{**fields, **overrides})


def tiny_model(family: str = "whisper", *, seed: int = 0, **config) -> torch.nn.Module:
    """A random two-layer model of ``family`` in eval mode (2+2 layers for Whisper).

    CTC models read 16 kHz audio (1600 samples make 159 frames); the tiny Whisper reads 8 mel
    bins by 40 frames. ``config`` overrides fields of the model's config (e.g.
    ``do_stable_layer_norm=True`` for the pre-LayerNorm variant).

    >>> tiny_model("hubert").hubert.encoder.layers[0].feed_forward.intermediate_dense.out_features
    64
    """
    check_choice("tiny model family", family, TINY_FAMILIES)
    torch.manual_seed(seed)
    if family == "whisper":
        return transformers.WhisperForConditionalGeneration(_whisper_config(**config)).eval()
    return getattr(transformers, _CTC[family][1])(_ctc_config(family, **config)).eval()


def tiny_input(family: str = "whisper", *, batch: int = 2, seed: int = 1) -> dict[str, torch.Tensor]:
    """Keyword arguments for one forward pass of :func:`tiny_model` (random audio or features)."""
    check_choice("tiny model family", family, TINY_FAMILIES)
    g = torch.Generator().manual_seed(seed)
    if family == "whisper":
        return dict(input_features=torch.randn(batch, 8, 40, generator=g),
                    decoder_input_ids=torch.tensor([[1, 5, 7, 9]] * batch))
    return dict(input_values=torch.randn(batch, 1600, generator=g))


def tiny_processor(family: str = "hubert"):
    """A character-level processor that fits :func:`tiny_model` (for evaluation examples).

    CTC families get a ``Wav2Vec2Processor`` whose blank ``<pad>`` is id 0; Whisper gets a
    ``WhisperProcessor`` with letters as tokens and features of 8 mel bins, 40 frames.
    """
    check_choice("tiny model family", family, TINY_FAMILIES)
    if family == "whisper":
        specials = ["<pad>", "<|startoftranscript|>", "<|endoftext|>", "<|notimestamps|>"]
        vocab = {t: i for i, t in enumerate(specials + CHARACTERS + ["Ġ"])}
        tokenizer = transformers.WhisperTokenizer(
            vocab=vocab, merges=[], unk_token="<|endoftext|>", bos_token="<|startoftranscript|>",
            eos_token="<|endoftext|>", pad_token="<pad>", additional_special_tokens=["<|notimestamps|>"])
        extractor = transformers.WhisperFeatureExtractor(feature_size=8, sampling_rate=16000, hop_length=400,
                                                         chunk_length=1, n_fft=800)
        return transformers.WhisperProcessor(feature_extractor=extractor, tokenizer=tokenizer)
    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", "|"] + CHARACTERS)}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vocab.json"
        path.write_text(json.dumps(vocab))
        tokenizer = transformers.Wav2Vec2CTCTokenizer(str(path))
    extractor = transformers.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                                      do_normalize=True, return_attention_mask=True)
    return transformers.Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer)


@torch.no_grad()
def plant_duplicate_channels(model: torch.nn.Module) -> torch.nn.Module:
    """Make the second half of every unit's channels copies of the first half (in place).

    Merging each copy with its original is exact, so a clustering at 50% sparsity must find a
    cost of zero and leave the outputs unchanged: the test of every merge rule and family.
    """
    for unit in iter_units(model):
        n, g = unit.n_channels, unit.group_size
        half = n // 2
        for lin in unit.producers:
            w = lin.weight.view(n, g, -1)
            w[half:] = w[:half]
            if lin.bias is not None:
                b = lin.bias.view(n, g)
                b[half:] = b[:half]
        c = unit.consumer.weight.view(unit.consumer.out_features, n, g)
        c[:, half:] = c[:, :half]
    return model

