"""A cheap diagnostic before round 4 of the recipe search: does a *sequential* refit help?

R (the recommended recipe: K with the refit merge) refits every merged feed-forward consumer to the
dense block on inputs captured from the dense model, all blocks at once. By the time a later block
runs in the pruned model, its inputs carry the error of every block before it, which its refit never
saw. Data-driven pruners (SparseGPT, GPTQ, FLAP) fit block after block on the inputs of the partly
compressed model instead. Two sequential variants, both on the refit merge's synthetic speech
(``speechprune.calibration.synthetic_speech``), ridge 1, Whisper base at encoder FFN 20%:

- ``sequential``: block ``l``'s consumer is fitted on block ``l``'s inputs in the model whose blocks
  before ``l`` are already refitted, to what the dense block gives on those same inputs;
- ``corrective``: the same inputs, but the target is what the dense block gives on the *dense*
  model's inputs (the rows are the same positions of the same clips), so each block also absorbs
  the error that reaches it.

Printed, as in ``probe_refit.py``, on the first 8 clips of the test split: the relative error of the
encoder output and the teacher-forced cross-entropy of the reference transcripts. No decoding, so it
decides nothing; a study with a rule written before its runs would.

    python studies/probe_sequential.py
"""

import copy
import time

import torch

from speechprune.calibration import capture_inputs
from speechprune.compress import compress
from speechprune.models import load_model
from speechprune.refit import dense_output, refit_consumer
from speechprune.structure import units_in_scope

from probe_common import teacher_forced_probe

SCOPE, SPARSITY = "encoder.ffn", 0.2


def main(name: str = "embedded:whisper-base") -> None:
    torch.set_num_threads(2)
    model, processor = load_model(name)
    probe = teacher_forced_probe(processor)  # the first 8 test clips

    def report(label, m):
        enc, loss = probe(m)
        error = float((enc - reference).norm() / reference.norm())
        print(f"  {SCOPE} {SPARSITY:.0%} {label:28s} encoder error {error:.3f}  cross-entropy {loss:.3f}", flush=True)

    reference, dense_loss = probe(model)
    print(f"{name}: uncompressed cross-entropy {dense_loss:.3f}", flush=True)
    dense_units = units_in_scope(model, SCOPE)
    dense_inputs = capture_inputs(model, dense_units)
    wanted = {u.name: dense_output(u, dense_inputs[u.name]) for u in dense_units}
    start = time.perf_counter()
    base = copy.deepcopy(model)
    compress(base, recipe="pairs-variance-2026", sparsity=SPARSITY, scope=SCOPE, progress=False)  # K: no refit
    report("K (mean merge)", base)
    parallel = copy.deepcopy(base)
    for unit in units_in_scope(parallel, SCOPE):
        refit_consumer(unit, dense_inputs[unit.name], wanted[unit.name])
    report("R (refit, all at once)", parallel)
    for variant in ("sequential", "corrective"):
        t0 = time.perf_counter()
        pruned = copy.deepcopy(base)
        for unit, dense_unit in zip(units_in_scope(pruned, SCOPE), dense_units):
            x = capture_inputs(pruned, [unit])[unit.name]
            assert x.shape == dense_inputs[unit.name].shape
            target = dense_output(dense_unit, x) if variant == "sequential" else wanted[unit.name]
            refit_consumer(unit, x, target)
        report(f"R {variant} ({time.perf_counter() - t0:.0f} s)", pruned)
    print(f"  ({time.perf_counter() - start:.0f} s in all)")


if __name__ == "__main__":
    main()
