"""Synthetic inputs for a unit, drawn from its LayerNorm's own weights: function space without data.

A feed-forward block reads ``x = LayerNorm(h) = gamma * x_hat + beta``, where ``x_hat`` has zero
mean and unit variance over the features of every frame. Modelling ``x_hat`` as a standard normal
vector (the only distribution that the weights alone suggest) gives, for every channel ``i`` with
producer row ``w_i`` and bias ``b_i``, a pre-activation ``z_i = w_i . x + b_i`` that is Gaussian
with mean ``w_i . beta + b_i`` and standard deviation ``|w_i * gamma|``. Channels can then be
compared by what they compute (their activations after the nonlinearity on the same synthetic
inputs) instead of by their weights, and the mean output that merging or dropping channels shifts
can be put back into the consumer's bias. No speech is used: the inputs are drawn from a fixed
generator (seed 0), so the results are deterministic and the methods that use them stay seed-free.

ZipIt! and model folding compare activations on real data; this module is their data-free
stand-in. It is an approximation: real LayerNorm outputs are not isotropic (a few features carry
most of the variance), which is why the book measures whether it helps rather than assuming it.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from speechprune.structure import Unit

#: Synthetic inputs drawn per unit (rows of the activation matrix); the generator's seed is fixed.
SYNTHETIC_INPUTS = 1024
SYNTHETIC_SEED = 0


def activation_fn(unit: Unit) -> Callable[[Tensor], Tensor] | None:
    """The elementwise nonlinearity between a feed-forward unit's producer and consumer, if any.

    Whisper layers keep it as ``activation_fn``, the wav2vec2 family's feed-forward blocks as
    ``intermediate_act_fn``. Attention units have none (their channels are heads, mixed by a
    softmax over positions, not by an elementwise function): None.
    """
    if unit.kind != "ffn":
        return None
    for name in ("activation_fn", "intermediate_act_fn", "act_fn", "activation"):
        fn = getattr(unit.owner, name, None)
        if callable(fn):
            return fn
    return None


@torch.no_grad()
def synthetic_inputs(unit: Unit, n_inputs: int = SYNTHETIC_INPUTS, *, seed: int = SYNTHETIC_SEED) -> Tensor:
    """``n_inputs`` synthetic inputs of the unit's first producer, [n_inputs, d_in] in float32.

    ``gamma * x_hat + beta`` with ``x_hat`` standard normal, where ``gamma`` and ``beta`` are the
    weight and bias of the LayerNorm that feeds the producer (``x_hat`` alone where there is none).
    The draw is made on the CPU with a fixed seed, so every device gets the same inputs.
    """
    lin = unit.producers[0]
    d_in = lin.weight.shape[1]
    generator = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(n_inputs, d_in, generator=generator).to(lin.weight.device)
    norm = unit.input_norms[0] if unit.input_norms else None
    gamma, beta = getattr(norm, "weight", None), getattr(norm, "bias", None)
    if gamma is not None:
        x = x * gamma.detach().float()
    if beta is not None:
        x = x + beta.detach().float()
    return x


@torch.no_grad()
def unit_activations(unit: Unit, x: Tensor) -> Tensor:
    """Every channel's output on the inputs ``x``: [n_channels, n_inputs * group * producers].

    For a feed-forward unit, the activation after the nonlinearity; for an attention unit, the
    head's q, k and v outputs (linear in the input, so comparing them on isotropic inputs is
    comparing the LayerNorm-folded weights, as ``features="normalized"`` does).
    """
    n, g = unit.n_channels, unit.group_size
    act = activation_fn(unit)
    parts = []
    for lin in unit.producers:
        z = x @ lin.weight.detach().float().T  # [N, n * g]
        if lin.bias is not None:
            z = z + lin.bias.detach().float()
        if act is not None:
            z = act(z)
        parts.append(z.T.reshape(n, g * x.shape[0]))
    return torch.cat(parts, dim=1)


@torch.no_grad()
def function_features(unit: Unit, n_inputs: int = SYNTHETIC_INPUTS) -> Tensor:
    """Function-space features: each channel's activations on the unit's synthetic inputs, [n, D].

    Scaled by ``1 / sqrt(n_inputs)`` so that a squared distance between two channels is the mean
    squared difference of their outputs (independent of how many inputs were drawn).
    """
    x = synthetic_inputs(unit, n_inputs)
    return unit_activations(unit, x) / float(n_inputs) ** 0.5


@torch.no_grad()
def mean_activations(unit: Unit, x: Tensor) -> Tensor:
    """Each channel's mean output over the inputs ``x`` (feed-forward units): [n_channels]."""
    return unit_activations(unit, x).mean(dim=1)
