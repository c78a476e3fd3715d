"""The ``refit`` merge: merged feed-forward blocks refitted to the dense ones on synthetic speech.

Merging channels (producers averaged, consumers summed) changes what a feed-forward block
computes, and the mean merge leaves the consumer as it was summed. ``merge="refit"`` keeps the
mean merge's producers and then chooses the consumer (``fc2`` weight and bias) that makes the
shrunk block reproduce the dense block best, by ridge least squares on the block's own inputs:

    minimise  |Y - H' C'^T - 1 b'^T|^2 + ridge * mean(diag(H'^T H')) * |C' - C_mean|^2

where ``Y`` is the dense block's output (without its bias) and ``H'`` the shrunk block's
activations, on the same inputs, and the penalty pulls toward the mean merge's consumer
``C_mean`` (``b'`` is the change of the bias). This is the layer-wise reconstruction that
data-driven pruners (OBS-style compensation, FLAP, SliceGPT) fit on recorded speech or text.

**No recordings are used.** The inputs come from the model itself run on synthetic, speech-like
audio drawn from a formula (:func:`speechprune.calibration.synthetic_speech`: a source-filter
"babble" of vowels with formants from textbook vowel charts, fricative noise and pauses, with a
fixed seed): the encoder sees it as it would see speech, and the decoder reads the model's own
greedy transcript of it (teacher forcing on what the dense model says it hears, 48 tokens a clip).
Everything is deterministic, so a method with the refit merge stays seed-free. The inputs of every
block are captured from the dense model in one pass before anything is merged
(:func:`speechprune.calibration.capture_inputs`, called by :func:`speechprune.compress`).

Why synthetic speech and not random vectors: a block's real inputs are far from isotropic (a few
features of the residual stream carry most of the variance), which is why function features on
isotropic inputs (``features="function"``) ranked channels badly in the second recipe screening.
White or pink noise through the real encoder gets part of that structure; the babble gets more
(a diagnostic on 8 test clips, ``studies/probe_refit.py``).

Attention units are merged with the mean merge (their channels are heads, mixed by a softmax over
positions; a refit of ``out_proj`` alone is not what this module fits).
"""

from __future__ import annotations

import torch
from torch import Tensor

from speechprune.structure import Unit
from speechprune.synthetic import activation_fn, unit_activations

#: Ridge strength, relative to the mean squared activation (see the module docstring).
RIDGE = 1.0


def refittable(unit: Unit) -> bool:
    """Whether the refit merge refits this unit: a feed-forward unit with one producer and a nonlinearity."""
    return unit.kind == "ffn" and len(unit.producers) == 1 and activation_fn(unit) is not None


@torch.no_grad()
def dense_output(unit: Unit, x: Tensor) -> Tensor:
    """The unit's output on ``x`` before any merge, without the consumer's bias: [rows, d_out] float32."""
    return unit_activations(unit, x).T @ unit.consumer.weight.detach().float().T


@torch.no_grad()
def refit_consumer(unit: Unit, x: Tensor, target: Tensor, ridge: float = RIDGE) -> None:
    """Refit the (already shrunk) unit's consumer so that it reproduces ``target`` on ``x`` (ridge least squares).

    ``target`` is :func:`dense_output` of the unit before its merge. The penalty pulls the consumer
    toward its present (mean-merge) value; the consumer's bias moves by the fitted offset.
    """
    consumer = unit.consumer
    h = unit_activations(unit, x).T  # [rows, k]: one producer, one row per channel
    w0 = consumer.weight.detach().float()
    if consumer.bias is not None:  # the offset is fitted too, as one more input that is always 1
        h = torch.cat([h, torch.ones(h.shape[0], 1, device=h.device)], dim=1)
        w0 = torch.cat([w0, torch.zeros(w0.shape[0], 1, device=w0.device)], dim=1)  # [d_out, k + 1]
    gram = (h.T @ h).double()
    penalty = ridge * float(gram.diagonal().mean().clamp_min(1e-12))
    rhs = (h.T @ target).double() + penalty * w0.T.double()
    gram.diagonal().add_(penalty)
    solution = torch.linalg.solve(gram, rhs).T  # [d_out, k (+ 1)]
    k = consumer.weight.shape[1]
    consumer.weight.copy_(solution[:, :k].to(consumer.weight.dtype))
    if consumer.bias is not None:
        consumer.bias.add_(solution[:, k].to(consumer.bias.dtype))
