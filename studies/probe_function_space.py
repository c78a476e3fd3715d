"""A cheap diagnostic before the second recipe screening (issue 20): which data-free ideas disturb
the model least, before any WER is measured.

For both embedded Whisper models and the book's three settings, prunes with the recommended
recipe of the time, G (``--recipe pairs-2026`` since round 2 renamed it), and the candidate ideas
(function-space features on synthetic LayerNorm inputs, the corrected merge, the existing
allocations with closest pairs, other merges), and prints two smooth signals on the first 8 clips
of the test split (the same clips as
``probe_encoder_error.py``): the relative error of the encoder output, and the teacher-forced
cross-entropy of the reference transcripts (nats per token; the uncompressed model's first). No
decoding, so neither says anything about loops; they rank ideas cheaply, and the screening
(``studies/screen-recipes-2.toml``, rule in ``studies/README.md``) decides.

    python studies/probe_function_space.py            # prints one line per model, setting and option
"""

import copy
import sys
import time

import torch

from speechprune.compress import compress
from speechprune.models import load_model

from probe_common import teacher_forced_probe

OPTIONS = [
    ("magnitude", dict(method="magnitude")),
    ("G pairs producer (pairs-2026)", dict(recipe="pairs-2026")),
    ("pairs producer, variance", dict(recipe="pairs-2026", allocation="variance")),
    ("pairs producer, cost", dict(recipe="pairs-2026", allocation="cost")),
    ("pairs producer, projection", dict(recipe="pairs-2026", merge="projection")),
    ("pairs producer, corrected", dict(recipe="pairs-2026", merge="corrected")),
    ("pairs function", dict(recipe="pairs-2026", features="function")),
    ("pairs function, corrected", dict(recipe="pairs-2026", features="function", merge="corrected")),
    ("pairs function, consumer-weighted", dict(recipe="pairs-2026", features="function", weighting="consumer",
                                               merge="weighted")),
    ("pairs normalized", dict(recipe="pairs-2026", features="normalized")),
]
SETTINGS = [("encoder.ffn", 0.2), ("ffn", 0.1), ("encoder.ffn", 0.5)]


def main(models=("embedded:whisper-tiny.en", "embedded:whisper-base")) -> None:
    torch.set_num_threads(1)
    for name in models:
        model, processor = load_model(name)
        probe = teacher_forced_probe(processor)  # the first 8 test clips

        reference, dense_loss = probe(model)
        print(f"{name}: uncompressed cross-entropy {dense_loss:.3f}", flush=True)
        for scope, sparsity in SETTINGS:
            for label, opts in OPTIONS:
                pruned = copy.deepcopy(model)
                t0 = time.perf_counter()
                compress(pruned, sparsity=sparsity, scope=scope, progress=False, **opts)
                seconds = time.perf_counter() - t0
                enc, loss = probe(pruned)
                error = float((enc - reference).norm() / reference.norm())
                print(f"  {scope} {sparsity:.0%} {label:36s} encoder error {error:.3f}  cross-entropy {loss:.3f}"
                      f"  (compress {seconds:.1f} s)", flush=True)


if __name__ == "__main__":
    main(tuple(sys.argv[1:]) or ("embedded:whisper-tiny.en", "embedded:whisper-base"))
