"""Tiny random speech models built from configs: no network, a second or less each."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    HubertConfig,
    HubertForCTC,
    Wav2Vec2Config,
    Wav2Vec2ForCTC,
    WhisperConfig,
    WhisperForConditionalGeneration,
)


def _ctc_kwargs() -> dict:
    return dict(
        vocab_size=32,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        conv_dim=(16, 16),
        conv_kernel=(10, 3),
        conv_stride=(5, 2),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        do_stable_layer_norm=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        layerdrop=0.0,
        mask_time_prob=0.0,
        pad_token_id=0,
    )


def make_tiny_hubert(seed: int = 0) -> HubertForCTC:
    torch.manual_seed(seed)
    return HubertForCTC(HubertConfig(**_ctc_kwargs())).eval()


def make_tiny_wav2vec2(seed: int = 0) -> Wav2Vec2ForCTC:
    torch.manual_seed(seed)
    return Wav2Vec2ForCTC(Wav2Vec2Config(**_ctc_kwargs())).eval()


def make_tiny_whisper(seed: int = 0) -> WhisperForConditionalGeneration:
    torch.manual_seed(seed)
    config = WhisperConfig(
        vocab_size=100,
        num_mel_bins=8,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_source_positions=20,
        max_target_positions=32,
        decoder_start_token_id=1,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        begin_suppress_tokens=None,
        suppress_tokens=None,
    )
    return WhisperForConditionalGeneration(config).eval()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``full_scale`` tests (hours of CPU, gigabytes of stand-ins) run only when ``-m`` names them."""
    if "full_scale" in (config.getoption("markexpr", "") or ""):
        return
    skip = pytest.mark.skip(reason="full-scale run on the stand-ins: select it with pytest -m full_scale")
    for item in items:
        if "full_scale" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def tiny_hubert() -> HubertForCTC:
    return make_tiny_hubert()


@pytest.fixture
def tiny_wav2vec2() -> Wav2Vec2ForCTC:
    return make_tiny_wav2vec2()


@pytest.fixture
def tiny_whisper() -> WhisperForConditionalGeneration:
    return make_tiny_whisper()


@pytest.fixture
def ctc_input() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 1600)


@pytest.fixture
def whisper_input() -> torch.Tensor:
    torch.manual_seed(1)
    # Whisper's encoder halves the frame count once: 2 * max_source_positions frames.
    return torch.randn(2, 8, 40)
