"""The offline fine-tuning demonstration: prune, fine-tune for 3 epochs, measure the recovery.

Prunes the embedded Whisper with each method at one scope and sparsity, fine-tunes each pruned
model on the embedded train part (``embedded:train``) and evaluates the dense, pruned and
fine-tuned models on the disjoint test part (``embedded``). Everything goes through the package
API (compress, finetune, evaluate); the record, with full provenance, goes to
``speechprune/data/results/finetune_demo.json``: package data, so that chapter 5 finds it when opened
alone (Colab). ``results/finetune_demo.json`` links to it.

    python scripts/finetune_demo.py                  # the committed setting (under 25 min on 2 shared CPU cores)
    python scripts/finetune_demo.py --train-samples 0  # all of the train part (slower)
    python scripts/finetune_demo.py --smoke --out /tmp/demo.json   # a few steps on a few clips
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from speechprune.checkpoint import load_checkpoint
from speechprune.compress import compress
from speechprune.data import load_speech
from speechprune.evaluate import evaluate
from speechprune.finetune import check_overlap, finetune
from speechprune.models import load_model
from speechprune.stats import summarize
from speechprune.study import per_utterance

WARMUP = 0.1  # fraction of the steps


def _bootstrap_ci(record: dict, *, resamples: int = 2000, seed: int = 0) -> list[float]:
    """95% interval of the corpus WER over utterances resampled with replacement (one run: no seeds to resample)."""
    low, high = summarize([per_utterance(record)], n_boot=resamples, seed=seed).interval
    return [round(low, 2), round(high, 2)]


def _score(model, processor, speech, label: str, batch_size: int) -> dict:
    """The parts of an evaluation record that the demo keeps: WER, its errors, spread and transcripts."""
    record = evaluate(model, processor, speech, batch_size=batch_size, progress=False, label=label)
    keep = ("wer", "substitutions", "deletions", "insertions", "ref_words", "n_utterances", "decode_seconds")
    out = {k: record[k] for k in keep}
    out["wer_ci95"] = _bootstrap_ci(record)
    out["parameters"] = record["model"]["parameters"]
    out["utterances"] = [dict(id=u["id"], words=len(u["reference_normalized"].split()), errors=u["errors"],
                              hypothesis=u["hypothesis"]) for u in record["utterances"]]
    print(f"  {label}: WER {record['wer']:.2f}% (95% interval {out['wer_ci95']}) in {record['decode_seconds']:.0f} s",
          flush=True)
    return out


def run_demo(model_spec: str, *, train_spec: str, test_spec: str, scope: str, sparsity: float,
             methods: list[str], epochs: float, learning_rate: float, batch_size: int, freeze: str,
             train_samples: int | None, test_samples: int | None, max_steps: int | None,
             eval_batch_size: int, seed: int, work_dir: Path) -> dict:
    """Dense, pruned and fine-tuned WER on the test part for each method, with provenance."""
    started = time.perf_counter()
    dense, processor = load_model(model_spec)
    train = load_speech(train_spec, max_samples=train_samples)
    test = load_speech(test_spec)
    test_selection = f"all {len(test)} utterances"
    if test_samples is not None and test_samples < len(test):
        test_selection = f"a random {test_samples} of the {len(test)} utterances (SpeechSet.split, seed {seed})"
        test = test.split(test_samples / len(test), seed=seed)[1]
    overlap = check_overlap(train, test)
    print(f"{model_spec}: train {len(train)} utterances ({train.seconds / 60:.1f} min), "
          f"test {len(test)} ({test.seconds / 60:.1f} min), disjoint by {overlap}", flush=True)
    results = {"dense": _score(dense, processor, test, "dense", eval_batch_size), "methods": {}}
    versions = {}
    for method in methods:
        print(f"{method}, {scope} at {sparsity:.0%}:", flush=True)
        model = copy.deepcopy(dense)
        report = compress(model, method=method, sparsity=sparsity, scope=scope, seed=seed, progress=False)
        pruned = _score(model, processor, test, f"{method} pruned", eval_batch_size)
        out = work_dir / method
        run = finetune(model, train, processor=processor, out_dir=out, epochs=epochs, max_steps=max_steps,
                       learning_rate=learning_rate, warmup=WARMUP, batch_size=batch_size, freeze=freeze,
                       seed=seed, logging_steps=1, progress=False)
        versions = run["versions"]
        tuned = _score(load_checkpoint(out), processor, test, f"{method} fine-tuned", eval_batch_size)
        r = run["results"]
        print(f"  fine-tuning: {r['global_step']} steps, {r['seconds_per_epoch']} s per epoch, "
              f"train loss {r['train_loss']:.4f}", flush=True)
        results["methods"][method] = dict(
            compression=dict(parameters_before=report.params_before, parameters_after=report.params_after,
                             parameter_fraction_removed=round(report.param_sparsity, 5),
                             channel_sparsity=round(report.channel_sparsity(), 5), seconds=round(report.seconds, 2)),
            pruned=pruned,
            finetuned=tuned,
            training=dict(global_step=r["global_step"], epochs=r["epoch"], train_loss=r["train_loss"],
                          losses=r["losses"], train_seconds=r["train_seconds"],
                          seconds_per_epoch=r["seconds_per_epoch"], frozen=run["model"]["frozen"]),
        )
    return dict(
        description="Whisper pruned by magnitude pruning and by channel clustering, then fine-tuned on the "
                    "embedded train part and evaluated on the disjoint embedded test part (greedy decoding, "
                    "Whisper English normaliser, corpus WER in %).",
        model=dict(spec=model_spec, architecture=type(dense).__name__, parameters=sum(p.numel() for p in dense.parameters())),
        data=dict(train=dict(train.provenance, seconds=round(train.seconds, 1)),
                  test=dict(test.provenance, seconds=round(test.seconds, 1), selection=test_selection),
                  disjoint_by=overlap),
        pruning=dict(scope=scope, sparsity=sparsity, allocation="uniform", seed=seed, methods=methods),
        finetuning=dict(epochs=epochs, max_steps=max_steps, learning_rate=learning_rate, warmup=WARMUP,
                        scheduler="linear", optimizer="AdamW (Trainer default)", batch_size=batch_size,
                        grad_accum=1, freeze=freeze, precision="fp32", engine="transformers Seq2SeqTrainer",
                        seed=seed),
        evaluation=dict(decoding="greedy generate, no timestamps", normalizer="Whisper EnglishTextNormalizer",
                        batch_size=eval_batch_size, interval="bootstrap over utterances, 2000 resamples"),
        results=results,
        host=dict(device="cpu", torch_threads=torch.get_num_threads(), cpu_count=os.cpu_count(),
                  machine=platform.machine(), note="2 CPU cores shared with other jobs; timings are indicative"),
        versions=versions,
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        wall_seconds=round(time.perf_counter() - started, 1),
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="embedded:whisper-tiny.en")
    p.add_argument("--train", default="embedded:train")
    p.add_argument("--test", default="embedded")
    p.add_argument("--scope", default="decoder.ffn")
    p.add_argument("--sparsity", type=float, default=0.4)
    p.add_argument("--methods", default="magnitude,cluster")
    p.add_argument("--epochs", type=float, default=3)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--eval-batch-size", type=int, default=8)
    p.add_argument("--freeze", default="encoder", help="front-end, encoder or none (see speechprune finetune)")
    p.add_argument("--train-samples", type=int, default=40, help="first N train utterances only (0: all)")
    p.add_argument("--test-samples", type=int, default=None, help="a random (seeded) N of the test utterances")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="8 train and 8 test clips, 2 steps: checks the pipeline only")
    p.add_argument("--out", type=Path,
                   default=Path(__file__).resolve().parents[1] / "speechprune" / "data" / "results" / "finetune_demo.json")
    args = p.parse_args(argv)
    if args.smoke:
        args.train_samples, args.test_samples, args.max_steps, args.batch_size = 8, 8, 2, 4
    args.train_samples = args.train_samples or None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="finetune-demo-") as work:
        record = run_demo(args.model, train_spec=args.train, test_spec=args.test, scope=args.scope,
                          sparsity=args.sparsity, methods=args.methods.split(","), epochs=args.epochs,
                          learning_rate=args.lr, batch_size=args.batch_size, freeze=args.freeze,
                          train_samples=args.train_samples, test_samples=args.test_samples,
                          max_steps=args.max_steps, eval_batch_size=args.eval_batch_size, seed=args.seed,
                          work_dir=Path(work))
    record["command"] = "python scripts/finetune_demo.py " + " ".join(argv if argv is not None else sys.argv[1:])
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out} ({record['wall_seconds'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
