"""A cheap diagnostic before round 4 of the recipe search: choose the channels by their refit error.

R (the recommended recipe) chooses which feed-forward channels to merge from the weights alone (K:
closest pairs of producer rows, layer budgets by variance) and only then refits each consumer on the
synthetic speech's activations. The refit knows, for every channel, how well the other channels can
stand in for it; the choice never asks. The ``obs`` method (``speechprune/obs.py``, structured
optimal brain surgeon) asks: it removes channels greedily by the output error that re-solving the
consumer cannot recover, on the same synthetic speech (data-free, seed-free).

Variants, Whisper base at encoder FFN 20% (or the sparsity given), printed like ``probe_refit.py``
on the first 8 test clips (encoder-output error, teacher-forced cross-entropy):

- ``O``: the candidate, R with ``method="obs"`` (variance allocation, refit merge, ridge 1);
- ``O, one channel a round``: the same with ``speechprune.obs.STEPS`` large enough that every round
  removes one channel (the exact greedy; ``STEPS = 64`` rounds is what makes it fast at 5120 channels);
- ``O, uniform allocation``: every layer loses the same share.

No decoding, so it decides nothing; a study with a rule written before its runs would.

    python studies/probe_obs.py [SPARSITY]
"""

import copy
import sys
import time

import torch

import speechprune.obs as obs
from speechprune.compress import compress
from speechprune.models import load_model

from probe_common import teacher_forced_probe

SCOPE = "encoder.ffn"
R = dict(method="pairs", features="producer", allocation="variance", merge="refit")
O = dict(R, method="obs")


def main(sparsity: float = 0.2, name: str = "embedded:whisper-base") -> None:
    torch.set_num_threads(2)
    model, processor = load_model(name)
    probe = teacher_forced_probe(processor)  # the first 8 test clips
    reference, dense_loss = probe(model)
    print(f"{name}: uncompressed cross-entropy {dense_loss:.3f}", flush=True)

    def run(label, options, steps=None):
        pruned = copy.deepcopy(model)
        old, obs.STEPS = obs.STEPS, steps or obs.STEPS
        try:
            t0 = time.perf_counter()
            compress(pruned, sparsity=sparsity, scope=SCOPE, progress=False, **options)
            seconds = time.perf_counter() - t0
        finally:
            obs.STEPS = old
        enc, loss = probe(pruned)
        error = float((enc - reference).norm() / reference.norm())
        print(f"  {SCOPE} {sparsity:.0%} {label:30s} encoder error {error:.3f}  cross-entropy {loss:.3f}"
              f"  ({seconds:.0f} s)", flush=True)

    run("K (mean merge)", dict(R, merge="mean"))
    run("R (refit)", R)
    run("O (obs, refit)", O)
    run("O, one channel a round", O, steps=10**6)
    run("O, uniform allocation", dict(O, allocation="uniform"))


if __name__ == "__main__":
    main(*(float(a) for a in sys.argv[1:2]))
