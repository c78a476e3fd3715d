"""Where the prunable channels of a speech transformer live, and how to resize them.

Supported: HuBERT, wav2vec2, Whisper, WavLM, data2vec-audio, Wav2Vec2-Conformer, UniSpeech-SAT
and SEW (the ``...ForCTC`` / ``...ForConditionalGeneration`` classes of ``FAMILIES``).

A *unit* is one layer's set of interchangeable channels: the intermediate neurons of a
feed-forward block (producer ``fc1`` rows, consumer ``fc2`` columns) or the heads of an
attention block (producer q/k/v row blocks, consumer ``out_proj`` column blocks). The
residual width, LayerNorms, convolutional front ends, embeddings and output heads are
never touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from speechprune.errors import SpeechPruneError

PARTS = ("encoder.ffn", "encoder.attention", "decoder.ffn", "decoder.attention")
SHORTHANDS = {
    "all": PARTS,
    "encoder": ("encoder.ffn", "encoder.attention"),
    "decoder": ("decoder.ffn", "decoder.attention"),
    "ffn": ("encoder.ffn", "decoder.ffn"),
    "attention": ("encoder.attention", "decoder.attention"),
}

#: model class name -> family (for the CTC families, also the attribute holding the base model)
FAMILIES = {
    "HubertForCTC": "hubert",
    "Wav2Vec2ForCTC": "wav2vec2",
    "WhisperForConditionalGeneration": "whisper",
    "WavLMForCTC": "wavlm",
    "Data2VecAudioForCTC": "data2vec_audio",
    "Wav2Vec2ConformerForCTC": "wav2vec2_conformer",
    "UniSpeechSatForCTC": "unispeech_sat",
    "SEWForCTC": "sew",
}


@dataclass(frozen=True)
class FamilySpec:
    """Where one family keeps its prunable blocks.

    ``ffn_blocks`` names each encoder layer's feed-forward modules (the Conformer has two per
    layer, ``ffn1`` and ``ffn2``), each with its input LayerNorm in ``ffn_norms`` (``None``: the
    wav2vec2 rule of :func:`_wav2vec2_norms`). ``heads`` says whether attention heads can be
    removed: WavLM's attention passes its head count to ``F.multi_head_attention_forward`` and
    shares one position bias of fixed head count across layers, and the Conformer's rotary
    embedding reshapes the full hidden state by head count, so neither allows fewer heads.
    """

    ffn_blocks: tuple[str, ...] = ("feed_forward",)
    ffn_norms: tuple[str | None, ...] = (None,)
    heads: bool = True
    why_no_heads: str = ""


FAMILY_SPECS = {
    "whisper": FamilySpec(ffn_blocks=(), ffn_norms=()),
    "hubert": FamilySpec(),
    "wav2vec2": FamilySpec(),
    "data2vec_audio": FamilySpec(),
    "unispeech_sat": FamilySpec(),
    "sew": FamilySpec(),
    "wavlm": FamilySpec(heads=False, why_no_heads="WavLM's attention calls F.multi_head_attention_forward "
                        "with the full hidden size and shares layer 0's per-head position bias"),
    "wav2vec2_conformer": FamilySpec(ffn_blocks=("ffn1", "ffn2"), ffn_norms=("ffn1_layer_norm", "ffn2_layer_norm"),
                                     heads=False, why_no_heads="the Conformer's rotary and relative position "
                                     "embeddings reshape the full hidden state by the head count"),
}


@dataclass
class Unit:
    """One layer's prunable channels.

    ``kind`` is ``"ffn"`` (channels are intermediate neurons) or ``"attention"`` (channels
    are heads); ``stack`` is ``"encoder"`` or ``"decoder"``; ``block`` names the attention
    block (``self_attn``, ``encoder_attn``) or ``ffn``. ``input_norms`` names, per producer,
    the LayerNorm that feeds it, so that channels can be compared as the layer sees them.
    """

    name: str
    stack: str
    kind: str
    layer: int
    block: str
    owner: nn.Module
    producer_names: tuple[str, ...]
    consumer_name: str
    #: the LayerNorm whose output each producer reads (None where it is not a LayerNorm)
    input_norms: tuple[nn.Module | None, ...] = ()

    @property
    def part(self) -> str:
        """``<stack>.<kind>``, e.g. ``encoder.ffn``: what a scope selects."""
        return f"{self.stack}.{self.kind}"

    @property
    def producers(self) -> list[nn.Linear]:
        """The linear layers whose output rows are the channels (``fc1``; or q, k and v)."""
        return [getattr(self.owner, n) for n in self.producer_names]

    @property
    def consumer(self) -> nn.Linear:
        """The linear layer whose input columns are the channels (``fc2``; or ``out_proj``)."""
        return getattr(self.owner, self.consumer_name)

    @property
    def group_size(self) -> int:
        """Rows of each producer that make up one channel (1, or the head dimension)."""
        return self.owner.head_dim if self.kind == "attention" else 1

    @property
    def n_channels(self) -> int:
        """Channels now: neurons of a feed-forward block, heads of an attention block."""
        return self.consumer.in_features // self.group_size

    def num_parameters(self) -> int:
        """Weights and biases of the producers and the consumer."""
        mods = self.producers + [self.consumer]
        return sum(p.numel() for m in mods for p in m.parameters())

    def resize(self, n: int) -> None:
        """Replace producer and consumer with uninitialised layers for ``n`` channels.

        Keeps device, dtype and bias layout, and updates the module's own bookkeeping
        (``num_heads``) so that ``forward`` and ``generate`` need no patching.
        """
        if n < 1:
            raise SpeechPruneError(f"{self.name}: cannot keep {n} channels (at least 1 is needed)")
        width = n * self.group_size
        for pname in self.producer_names:
            setattr(self.owner, pname, _like(getattr(self.owner, pname), out_features=width))
        setattr(self.owner, self.consumer_name, _like(self.consumer, in_features=width))
        if self.kind == "attention":
            self.owner.num_heads = n


def _like(linear: nn.Linear, *, in_features: int | None = None, out_features: int | None = None) -> nn.Linear:
    w = linear.weight
    return nn.Linear(
        in_features if in_features is not None else linear.in_features,
        out_features if out_features is not None else linear.out_features,
        bias=linear.bias is not None,
        device=w.device,
        dtype=w.dtype,
    )


def model_family(model: nn.Module) -> str:
    """The family name of ``model`` (``"whisper"``, ``"hubert"``, ...); anything else is a clear error."""
    for cls in type(model).__mro__:
        if cls.__name__ in FAMILIES:
            return FAMILIES[cls.__name__]
    supported = ", ".join(FAMILIES)
    raise SpeechPruneError(
        f"unsupported model type {type(model).__name__}: speechprune prunes {supported}"
    )


def _stacks(model: nn.Module) -> dict[str, nn.ModuleList]:
    family = model_family(model)
    if family == "whisper":
        return {"encoder": model.model.encoder.layers, "decoder": model.model.decoder.layers}
    return {"encoder": getattr(model, family).encoder.layers}


def iter_units(model: nn.Module) -> Iterator[Unit]:
    """Every prunable unit of ``model``, in forward order (encoder before decoder)."""
    family = model_family(model)
    spec = FAMILY_SPECS[family]
    for stack, layers in _stacks(model).items():
        for i, layer in enumerate(layers):
            if family == "whisper":
                blocks = ["self_attn"] + (["encoder_attn"] if stack == "decoder" else [])
                for block in blocks:
                    attn = getattr(layer, block)
                    if block == "self_attn":
                        norms = (layer.self_attn_layer_norm,) * 3
                    else:  # queries read the decoder, keys and values the encoder's output
                        encoder_norm = model.model.encoder.layer_norm
                        norms = (layer.encoder_attn_layer_norm, encoder_norm, encoder_norm)
                    yield Unit(f"{stack}.layers.{i}.{block}", stack, "attention", i, block, attn,
                               ("q_proj", "k_proj", "v_proj"), "out_proj", norms)
                yield Unit(f"{stack}.layers.{i}.ffn", stack, "ffn", i, "ffn", layer, ("fc1",), "fc2",
                           (layer.final_layer_norm,))
                continue
            if family == "wav2vec2_conformer":
                yield from _conformer_units(layer, stack, i, spec)
                continue
            attention_norm, ffn_norm = _wav2vec2_norms(model, family, layers, i)
            if spec.heads:
                yield Unit(f"{stack}.layers.{i}.attention", stack, "attention", i, "self_attn",
                           layer.attention, ("q_proj", "k_proj", "v_proj"), "out_proj", (attention_norm,) * 3)
            yield Unit(f"{stack}.layers.{i}.ffn", stack, "ffn", i, "ffn", layer.feed_forward,
                       ("intermediate_dense",), "output_dense", (ffn_norm,))


def _conformer_units(layer: nn.Module, stack: str, i: int, spec: FamilySpec) -> Iterator[Unit]:
    """The Conformer's two half-step feed-forward blocks, each behind its own LayerNorm."""
    for block, norm in zip(spec.ffn_blocks, spec.ffn_norms):
        yield Unit(f"{stack}.layers.{i}.{block}", stack, "ffn", i, block, getattr(layer, block),
                   ("intermediate_dense",), "output_dense", (getattr(layer, norm),))


def _wav2vec2_norms(model: nn.Module, family: str, layers: nn.ModuleList, i: int) -> tuple[nn.Module, nn.Module]:
    """The LayerNorms feeding layer ``i``'s attention and feed-forward block (HuBERT, wav2vec2, ...).

    Pre-LN ("stable", the large models): each block reads its own norm. Post-LN (the base
    models, and always data2vec-audio and SEW): attention reads the previous layer's final
    norm (the encoder's norm for layer 0), and the feed-forward block reads the norm after
    attention.
    """
    layer = layers[i]
    if getattr(model.config, "do_stable_layer_norm", False):
        return layer.layer_norm, layer.final_layer_norm
    previous = getattr(model, family).encoder.layer_norm if i == 0 else layers[i - 1].final_layer_norm
    return previous, layer.layer_norm


def parse_scope(scope: str | list[str] | tuple[str, ...], model: nn.Module | None = None) -> tuple[str, ...]:
    """Expand a scope such as ``"encoder.ffn,decoder"`` into parts, checked against ``model``."""
    items = scope.split(",") if isinstance(scope, str) else list(scope)
    parts: list[str] = []
    for item in (s.strip() for s in items):
        if not item:
            continue
        if item in SHORTHANDS:
            expanded = SHORTHANDS[item]
        elif item in PARTS:
            expanded = (item,)
        else:
            raise SpeechPruneError(
                f"unknown scope part {item!r}: use {', '.join(PARTS)} or {', '.join(SHORTHANDS)}"
            )
        parts.extend(p for p in expanded if p not in parts)
    if not parts:
        raise SpeechPruneError("empty scope: name at least one of " + ", ".join(PARTS))
    if model is not None:
        present = {u.part for u in iter_units(model)}
        kept = tuple(p for p in PARTS if p in parts and p in present)
        if not kept:
            spec = FAMILY_SPECS[model_family(model)]
            why = "" if spec.heads else f"; its attention heads cannot be pruned: {spec.why_no_heads}"
            raise SpeechPruneError(
                f"scope {scope!r} matches nothing in this {model_family(model)} model "
                f"(it has {', '.join(sorted(present))}){why}"
            )
        return kept
    return tuple(p for p in PARTS if p in parts)


def units_in_scope(model: nn.Module, scope: str | tuple[str, ...]) -> list[Unit]:
    """The units of ``model`` in ``scope`` (see :func:`parse_scope`), in forward order."""
    parts = parse_scope(scope, model)
    return [u for u in iter_units(model) if u.part in parts]


def widths(model: nn.Module) -> dict[str, int]:
    """Channels (feed-forward neurons or heads) of every unit, by unit name."""
    return {u.name: u.n_channels for u in iter_units(model)}


def apply_widths(model: nn.Module, target: dict[str, int]) -> None:
    """Resize every unit named in ``target`` to its channel count (weights uninitialised)."""
    units = {u.name: u for u in iter_units(model)}
    unknown = set(target) - set(units)
    if unknown:
        raise SpeechPruneError(f"pruned widths name units this model does not have: {sorted(unknown)}")
    for name, n in target.items():
        if units[name].n_channels != n:
            units[name].resize(int(n))


def record_widths(model: nn.Module, compression: dict | None = None) -> None:
    """Store every unit's channel count (and what produced it) in ``model.config.speechprune``.

    This is what lets a saved folder be rebuilt in its pruned shapes without the original.
    """
    previous = getattr(model.config, "speechprune", None) or {}
    history = list(previous.get("compressions", [])) + ([compression] if compression else [])
    model.config.speechprune = {"format": 1, "widths": widths(model), "compressions": history}


@torch.no_grad()
def count_parameters(model: nn.Module) -> int:
    """All parameters of ``model`` (tied weights once)."""
    return sum(p.numel() for p in model.parameters())
