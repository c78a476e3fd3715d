"""How much fine-tuning makes clustering beat magnitude pruning at encoder FFN 50% (issue 20)?

At encoder FFN 50% no data-free option beats magnitude pruning on Whisper base (every one decodes
near or above 100% WER: ``screen-recipes-2``, ``recipe-final-2``). The paper's answer at that
budget is fine-tuning (3 epochs of LibriSpeech on HuBERT-large). This is its embedded form:

* Whisper base (``embedded:whisper-base``), encoder FFN 50%, uniform allocation;
* each method prunes the same dense model: magnitude pruning, ``pairs-2026`` (closest pairs first,
  uniform allocation, seed-free: the recommended recipe when the curve was measured) and, with
  ``--methods``, the recommended recipe (obs, variance allocation, refit merge),
  ``pairs-refit-2026`` (closest pairs first instead of obs), ``pairs-variance-2026`` (that with the
  mean merge) or the paper's recipe (k-means seed 0);
* each pruned model is fine-tuned once for ``--max-steps`` steps (40) on ``embedded:train`` (the
  144 clips held out of every recipe choice; disjoint from the test clips), AdamW, learning rate
  1e-4, 10 warm-up steps, then linear decay to 0 at the last step, batch 8, seed 0, the decoder only
  (the pruned encoder frozen; ``--freeze front-end`` trains the encoder too, about twice the cost);
* the weights after each of ``--steps`` (10, 20, 40; and before any, step 0) are scored on the 64 clips of the
  embedded test split: greedy decoding, Whisper English normaliser, per-utterance errors kept;
* the curve is one run per method (one schedule, snapshots along it), not a separate run per
  budget: the weights at step 10 of a 40-step run have seen a higher learning rate than a 10-step
  run would end with.

Each scored snapshot is written to the results file when it is done, and a rerun skips what is
there (a stopped run resumes from its last checkpoint, every ``SAVE_STEPS`` steps, and scores only
what is missing); a rerun with other settings into the same file is refused. The
comparisons (paired over the same utterances, ``speechprune.stats``) are printed with
``--report`` and shown in chapter 3.

    python studies/finetune_curve.py --methods magnitude,pairs-2026,pairs-refit-2026,recommended   # the saved curve
    python studies/finetune_curve.py --methods magnitude,pairs-2026,recommended,paper
    python studies/finetune_curve.py --report             # the curve and each step's comparison
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import transformers

from speechprune.book.curve import curve_comparisons, curve_sentences
from speechprune.compress import compress
from speechprune.data import load_speech
from speechprune.evaluate import evaluate
from speechprune.finetune import check_overlap, finetune
from speechprune.models import load_model
from speechprune.outputs import write_json
from speechprune.recipes import resolve
from speechprune.study import per_utterance

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "studies" / "finetune-curve-encoder-ffn50.json"
MODEL, TRAIN, TEST = "embedded:whisper-base", "embedded:train", "embedded"
SCOPE, SPARSITY = "encoder.ffn", 0.5
METHODS = {  # label -> compress options
    "magnitude": dict(method="magnitude"),
    "pairs-2026": dict(recipe="pairs-2026"),
    "pairs-variance-2026": dict(recipe="pairs-variance-2026"),
    "pairs-refit-2026": dict(recipe="pairs-refit-2026"),
    "recommended": dict(recipe="recommended"),
    "paper": dict(recipe="paper", seed=0),
}
TRAINING = dict(learning_rate=1e-4, warmup=10, batch_size=8, freeze="encoder", seed=0)
#: What a rerun must share with the saved file to add to it.
SAME_RUN = ("model", "scope", "sparsity", "allocation", "evaluation")
SAME_TRAINING = ("learning_rate", "warmup", "batch_size", "freeze", "seed", "max_steps")
EVAL_BATCH = 8
WORK = ROOT / "runs" / "finetune-curve"  # checkpoints and snapshots (not committed)
SAVE_STEPS = 10


class _Snapshots(transformers.TrainerCallback):
    """Writes the weights after each chosen step to ``folder/step-N.pt``, with the training seconds
    so far in this process (a resumed run counts from its restart)."""

    def __init__(self, model: torch.nn.Module, steps: set[int], folder: Path):
        self.model, self.steps, self.folder, self.start = model, steps, folder, time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in self.steps:
            path = self.folder / f"step-{state.global_step}.pt"
            weights = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
            torch.save(dict(weights=weights, seconds=time.perf_counter() - self.start), path.with_suffix(".tmp"))
            path.with_suffix(".tmp").replace(path)


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _record(method: str, step: int, train_seconds: float, full: dict, report) -> dict:
    return dict(label=method, method=method, step=step, seed=None, train_seconds=round(train_seconds, 1),
                wer=round(full["wer"], 4), **{k: full[k] for k in ("substitutions", "deletions", "insertions",
                                                                  "ref_words", "n_utterances")},
                decode_seconds=round(full["decode_seconds"], 1),
                parameters_removed=round(report.param_sparsity, 5), **per_utterance(full))


def _check_same_run(saved: dict, header: dict, out: Path) -> None:
    """Refuse to add runs of other settings to a saved curve (its records would mix two experiments)."""
    if not saved.get("records"):
        return
    keys = [k for k in SAME_RUN if saved.get(k) != header[k]]
    keys += [f"training.{k}" for k in SAME_TRAINING if saved["training"].get(k) != header["training"][k]]
    keys += [f"{part} speech" for part in ("train", "test")
             if (saved[part].get("name"), saved[part].get("count")) != (header[part]["name"], header[part]["count"])]
    if keys:
        raise SystemExit(f"{out} holds a curve with other settings ({', '.join(keys)}): give another --out")


def _host_note() -> str:
    """Where a method's run trained, for its training times: the cores and the load when it started."""
    return (f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} when this method's run started "
            f"({datetime.now(timezone.utc):%Y-%m-%d})")


def run(methods: list[str], steps: list[int], max_steps: int, out: Path, *, max_samples: int | None = None,
        train_samples: int | None = None, work: Path = WORK, training: dict | None = None) -> dict:
    training = training or TRAINING
    saved = _load(out)
    records = saved.get("records", [])
    done = {(r["method"], r["step"]) for r in records}
    dense, processor = load_model(MODEL)
    train, test = load_speech(TRAIN, max_samples=train_samples), load_speech(TEST, max_samples=max_samples)
    header = dict(
        description="Whisper base pruned at encoder FFN 50% by each method, fine-tuned once on embedded:train, "
                    "the weights after each listed step scored on the embedded test split",
        model=MODEL, train=train.provenance, test=test.provenance, disjoint_by=check_overlap(train, test),
        scope=SCOPE, sparsity=SPARSITY, allocation="uniform",
        # what a recipe name meant when each method first ran (kept from the saved file)
        methods={**{m: dict(METHODS[m], resolved=resolve(METHODS[m].get("recipe"), method=METHODS[m].get("method")),
                            host_note=_host_note()) for m in methods}, **saved.get("methods", {})},
        training=dict(training, max_steps=max_steps, scheduler="linear decay to 0 at max_steps",
                      optimizer="AdamW (Trainer default)", precision="fp32",
                      snapshot_steps=sorted({*saved.get("training", {}).get("snapshot_steps", []), *steps})),
        evaluation=dict(decoding="greedy", normalizer="Whisper EnglishTextNormalizer", batch_size=EVAL_BATCH),
        host=saved.get("host") or dict(device="cpu", torch_threads=torch.get_num_threads(), machine=platform.machine()),
        command="python studies/finetune_curve.py " + " ".join(sys.argv[1:]),
    )
    _check_same_run(saved, header, out)
    for method in methods:
        wanted = [s for s in [0, *steps] if (method, s) not in done]
        if not wanted:
            continue
        model = copy.deepcopy(dense)
        report = compress(model, sparsity=SPARSITY, scope=SCOPE, progress=False, **METHODS[method])
        if 0 in wanted:
            full = evaluate(model, processor, test, batch_size=EVAL_BATCH, progress=False, label=f"{method} step 0")
            records.append(_record(method, 0, 0.0, full, report))
            write_json(out, dict(header, date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                 records=records))
            print(f"{method} step 0: WER {full['wer']:.2f}%", flush=True)
        later = [s for s in wanted if s > 0]
        if not later:
            continue
        folder = work / method  # checkpoints every SAVE_STEPS and the snapshots: a stopped run resumes
        folder.mkdir(parents=True, exist_ok=True)
        missing = [s for s in later if not (folder / f"step-{s}.pt").is_file()]
        if missing:
            run_dir = folder / "run"
            resume = (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").glob("checkpoint-*"))
            finetune(model, train, processor=processor, out_dir=run_dir, max_steps=max_steps, logging_steps=5,
                     save_steps=SAVE_STEPS, resume=resume, overwrite=not resume, progress=False,
                     callbacks=[_Snapshots(model, set(missing), folder)], **training)
        for step in later:
            snap = torch.load(folder / f"step-{step}.pt", weights_only=True)
            model.load_state_dict(snap["weights"])
            full = evaluate(model, processor, test, batch_size=EVAL_BATCH, progress=False,
                            label=f"{method} step {step}")
            records.append(_record(method, step, snap["seconds"], full, report))
            write_json(out, dict(header, date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                 records=records))
            print(f"{method} step {step} ({snap['seconds'] / 60:.1f} min of training in this process): "
                  f"WER {full['wer']:.2f}%", flush=True)
    return _load(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default="magnitude,pairs-2026",
                   help=f"comma-separated, of {', '.join(METHODS)}")
    p.add_argument("--steps", default="10,20,40", help="the steps after which the weights are scored")
    p.add_argument("--max-steps", type=int, default=40)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--freeze", default=TRAINING["freeze"], choices=["front-end", "encoder"],
                   help="what stays fixed: the convolutional front-end, or the whole (pruned) encoder")
    p.add_argument("--max-samples", type=int, default=None, help="first N test clips only (a smoke check)")
    p.add_argument("--train-samples", type=int, default=None, help="first N train clips only (a smoke check)")
    p.add_argument("--work", type=Path, default=WORK, help="checkpoints and weight snapshots (several GB)")
    p.add_argument("--report", action="store_true", help="print the saved curve, measure nothing")
    args = p.parse_args(argv)
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    steps = sorted({int(s) for s in args.steps.split(",")})
    if unknown or not steps or steps[0] < 1 or steps[-1] > args.max_steps:
        p.error(f"--methods from {', '.join(METHODS)}; --steps between 1 and --max-steps ({args.max_steps})")
    saved = _load(args.out) if args.report else run(methods, steps, args.max_steps, args.out, max_samples=args.max_samples,
                                                          train_samples=args.train_samples, work=args.work,
                                                          training=dict(TRAINING, freeze=args.freeze))
    for row in curve_comparisons(saved):
        print(f"step {row['step']:4d} ({row['train_seconds'] / 60:.1f} min of training): pairs-2026 {row['wer_a']:.2f}%, "
              f"magnitude {row['wer_b']:.2f}%; {row['said']}")
    print(curve_sentences(saved)["answer"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
