"""A cheap diagnostic for round 3 of the recipe search: does refitting the merged feed-forward
consumers help, and on what inputs can it be fitted without data?

Whisper base at encoder FFN 20%, round 2's recipe (K, ``pairs-variance-2026``: mean merge), then
each encoder feed-forward consumer refitted by ridge least squares
(``speechprune.refit.refit_consumer``) to the dense block on inputs captured from the dense model
run on one of:

- ``recorded``: 8 recorded clips of ``embedded:train`` (not data-free: how far a refit can go);
- ``white``, ``pink``: 8 clips of 5 s of white or pink noise (data-free);
- ``babble``: the refit merge's own 16 clips of synthetic speech (``speechprune.calibration.synthetic_speech``).

For each, the ridge strength goes from 0.01 to 10. Printed, as in ``probe_function_space.py``, on
the first 8 clips of the test split: the relative error of the encoder output and the
teacher-forced cross-entropy of the reference transcripts (the uncompressed model's first). No
decoding, so neither says anything about loops; the final studies of round 3 decide
(``studies/README.md``).

    python studies/probe_refit.py
"""

import copy

import numpy as np
import torch

from speechprune.compress import compress
from speechprune.data import load_speech
from speechprune.models import load_model
from speechprune.calibration import capture_inputs, synthetic_speech
from speechprune.refit import dense_output, refit_consumer
from speechprune.structure import units_in_scope

from probe_common import teacher_forced_probe

SCOPE, SPARSITY = "encoder.ffn", 0.2
RIDGES = (0.01, 0.1, 1.0, 10.0)


def noise(kind: str, n: int = 8, seconds: float = 5.0, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    clips = []
    for _ in range(n):
        x = rng.standard_normal(int(16000 * seconds))
        if kind == "pink":  # 1/f power: the spectrum divided by sqrt(f)
            spectrum = np.fft.rfft(x)
            f = np.arange(len(spectrum), dtype=float)
            f[0] = 1.0
            x = np.fft.irfft(spectrum / np.sqrt(f), len(x))
        clips.append((0.05 * x / x.std()).astype(np.float32))
    return clips


def main(name: str = "embedded:whisper-base") -> None:
    torch.set_num_threads(2)
    model, processor = load_model(name)
    probe = teacher_forced_probe(processor)  # the first 8 test clips

    reference, dense_loss = probe(model)
    print(f"{name}: uncompressed cross-entropy {dense_loss:.3f}", flush=True)
    base = copy.deepcopy(model)
    compress(base, recipe="pairs-variance-2026", sparsity=SPARSITY, scope=SCOPE, progress=False)  # K: no refit
    enc, loss = probe(base)
    error = float((enc - reference).norm() / reference.norm())
    print(f"  {SCOPE} {SPARSITY:.0%} K (mean merge)        encoder error {error:.3f}  cross-entropy {loss:.3f}",
          flush=True)
    sources = {"recorded": [u.audio for u in load_speech("embedded:train", max_samples=8).utterances],
               "white": noise("white"), "pink": noise("pink"), "babble": synthetic_speech()}
    dense_units = units_in_scope(model, SCOPE)
    for source, audios in sources.items():
        inputs = capture_inputs(model, dense_units, audios=audios)
        wanted = {u.name: dense_output(u, inputs[u.name]) for u in dense_units}
        for ridge in RIDGES:
            pruned = copy.deepcopy(base)
            for unit in units_in_scope(pruned, SCOPE):
                refit_consumer(unit, inputs[unit.name], wanted[unit.name], ridge)
            enc, loss = probe(pruned)
            error = float((enc - reference).norm() / reference.norm())
            print(f"  {SCOPE} {SPARSITY:.0%} K + refit on {source:8s} ridge {ridge:<5g} encoder error {error:.3f}"
                  f"  cross-entropy {loss:.3f}", flush=True)


if __name__ == "__main__":
    main()
