"""ONNX export of a loaded model, for :func:`speechprune.export.export` (``to="onnx"``).

The graphs are exported with ``torch.onnx.export`` (the TorchScript exporter) from the model
:func:`speechprune.load_checkpoint` built, so pruned heads and per-layer widths export as they are.
Whisper: ``encoder_model.onnx`` (log-mel features to every decoder layer's cross-attention keys and
values, `_WhisperEncoderGraph`) and ``decoder_model.onnx`` (tokens and past self-attention keys and
values to the last position's logits and the new keys and values, `_WhisperDecoderGraph`). CTC
families: ``model.onnx``, the encoder with its CTC head. ``quantize="int8"`` quantises the weights
dynamically with ``onnxruntime.quantization``. The files are written into the staging folder that
:func:`speechprune.export.export` publishes; ``onnxruntime`` is imported only when quantising.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from speechprune.errors import SpeechPruneError

ONNX_OPSET = 17


def _heads(x: torch.Tensor, n: int, d: int) -> torch.Tensor:
    return x.reshape(x.shape[0], -1, n, d).transpose(1, 2)


class _WhisperEncoderGraph(nn.Module):
    """Log-mel features -> each decoder layer's cross-attention keys and values, [B, heads, frames, head_dim]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.encoder = model.model.encoder
        self.decoder_layers = model.model.decoder.layers

    def forward(self, input_features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        hidden = self.encoder(input_features).last_hidden_state
        out = []
        for layer in self.decoder_layers:
            attn = layer.encoder_attn
            out += [_heads(attn.k_proj(hidden), attn.num_heads, attn.head_dim),
                    _heads(attn.v_proj(hidden), attn.num_heads, attn.head_dim)]
        return tuple(out)


class _WhisperDecoderGraph(nn.Module):
    """Tokens, past self-attention keys/values and cross keys/values -> last logits and new keys/values.

    The arithmetic of ``transformers``' Whisper decoder written out, with each layer's own head count,
    so that pruned heads and per-layer widths export as they are.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.decoder = model.model.decoder
        self.proj_out = model.proj_out
        if getattr(model.config, "scale_embedding", False):
            raise SpeechPruneError("Whisper variants with scaled embeddings are not supported by the ONNX export")

    @staticmethod
    def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        scores = q @ k.transpose(-1, -2)
        if bias is not None:
            scores = scores + bias
        return torch.softmax(scores, dim=-1) @ v

    def forward(self, input_ids: torch.Tensor, *caches: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = len(self.decoder.layers)
        past, cross = caches[:2 * n], caches[2 * n:]
        steps = input_ids.shape[1]
        offset = past[0].shape[2]
        positions = torch.arange(steps, device=input_ids.device) + offset
        hidden = self.decoder.embed_tokens(input_ids) + nn.functional.embedding(positions, self.decoder.embed_positions.weight)
        keys = torch.arange(steps, device=input_ids.device).unsqueeze(1) + offset
        allowed = torch.arange(offset + steps, device=input_ids.device).unsqueeze(0) <= keys
        bias = torch.zeros(allowed.shape, dtype=hidden.dtype).masked_fill(~allowed, torch.finfo(hidden.dtype).min)
        presents = []
        for i, layer in enumerate(self.decoder.layers):
            attn = layer.self_attn
            x = layer.self_attn_layer_norm(hidden)
            q = _heads(attn.q_proj(x) * attn.scaling, attn.num_heads, attn.head_dim)
            k = torch.cat([past[2 * i], _heads(attn.k_proj(x), attn.num_heads, attn.head_dim)], dim=2)
            v = torch.cat([past[2 * i + 1], _heads(attn.v_proj(x), attn.num_heads, attn.head_dim)], dim=2)
            presents += [k, v]
            y = self._attend(q, k, v, bias).transpose(1, 2).reshape(hidden.shape[0], steps, -1)
            hidden = hidden + attn.out_proj(y)
            attn = layer.encoder_attn
            x = layer.encoder_attn_layer_norm(hidden)
            q = _heads(attn.q_proj(x) * attn.scaling, attn.num_heads, attn.head_dim)
            y = self._attend(q, cross[2 * i], cross[2 * i + 1], None).transpose(1, 2).reshape(hidden.shape[0], steps, -1)
            hidden = hidden + attn.out_proj(y)
            x = layer.final_layer_norm(hidden)
            hidden = hidden + layer.fc2(layer.activation_fn(layer.fc1(x)))
        hidden = self.decoder.layer_norm(hidden[:, -1])
        # W @ h^T rather than h @ W^T: the exporter would fold W^T into a second copy of the (tied)
        # embedding table, the largest tensor of the decoder
        logits = (self.proj_out.weight @ hidden.transpose(0, 1)).transpose(0, 1)
        if self.proj_out.bias is not None:
            logits = logits + self.proj_out.bias
        return (logits, *presents)


def _eager(model: nn.Module) -> None:
    """Plain attention arithmetic for tracing (no SDPA or flash kernels in the graph)."""
    setter = getattr(model, "set_attn_implementation", None)
    if setter is not None:
        setter("eager")
    else:
        model.config._attn_implementation = "eager"


def _onnx_export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
                 dynamic: dict[str, dict[int, str]]) -> None:
    import inspect
    import warnings

    # the TorchScript exporter (torch.onnx's default before 2.9, and dynamo=False since)
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs, dynamic_axes=dynamic,
                          opset_version=ONNX_OPSET, do_constant_folding=True, **legacy)


def _quantize_onnx(path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = path.with_name(path.stem + ".fp32.onnx")
    path.rename(tmp)
    quantize_dynamic(str(tmp), str(path), weight_type=QuantType.QInt8)
    tmp.unlink()


def _export_onnx_whisper(model: nn.Module, staging: Path, quantize: str) -> list[str]:
    _eager(model)
    layers = model.model.decoder.layers
    cfg = model.config
    frames = 2 * cfg.max_source_positions
    features = torch.zeros(1, cfg.num_mel_bins, frames)
    cross_names = [f"cross.{i}.{kv}" for i in range(len(layers)) for kv in ("key", "value")]
    encoder = _WhisperEncoderGraph(model).eval()
    _onnx_export(encoder, (features,), staging / "encoder_model.onnx", ["input_features"], cross_names,
                 {"input_features": {0: "batch"}, **{n: {0: "batch"} for n in cross_names}})
    with torch.no_grad():
        cross = encoder(features)
    past_names = [f"past.{i}.{kv}" for i in range(len(layers)) for kv in ("key", "value")]
    present_names = [f"present.{i}.{kv}" for i in range(len(layers)) for kv in ("key", "value")]
    past = tuple(torch.zeros(1, l.self_attn.num_heads, 3, l.self_attn.head_dim) for l in layers for _ in (0, 1))
    dynamic = {"input_ids": {0: "batch", 1: "steps"}, "logits": {0: "batch"},
               **{n: {0: "batch", 2: "past"} for n in past_names},
               **{n: {0: "batch", 2: "total"} for n in present_names},
               **{n: {0: "batch"} for n in cross_names}}
    ids = torch.tensor([[int(model.generation_config.decoder_start_token_id)] * 2])
    _onnx_export(_WhisperDecoderGraph(model).eval(), (ids, *past, *cross), staging / "decoder_model.onnx",
                 ["input_ids", *past_names, *cross_names], ["logits", *present_names], dynamic)
    files = ["encoder_model.onnx", "decoder_model.onnx"]
    if quantize == "int8":
        for name in files:
            _quantize_onnx(staging / name)
    return files


class _CTCGraph(nn.Module):
    def __init__(self, model: nn.Module, mask: bool):
        super().__init__()
        self.model, self.mask = model, mask

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(input_values, attention_mask=attention_mask).logits


def _export_onnx_ctc(model: nn.Module, processor, staging: Path, quantize: str) -> list[str]:
    _eager(model)
    mask = bool(getattr(getattr(processor, "feature_extractor", None), "return_attention_mask", False))
    audio = torch.zeros(1, 16000)
    args = (audio, torch.ones(1, 16000, dtype=torch.long)) if mask else (audio,)
    names = ["input_values", "attention_mask"] if mask else ["input_values"]
    dynamic = {n: {0: "batch", 1: "samples"} for n in names}
    dynamic["logits"] = {0: "batch", 1: "frames"}
    _onnx_export(_CTCGraph(model, mask).eval(), args, staging / "model.onnx", names, ["logits"], dynamic)
    if quantize == "int8":
        _quantize_onnx(staging / "model.onnx")
    return ["model.onnx"]
