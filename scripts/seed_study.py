"""How much of a WER comes from the k-means seed? Cluster features compared over seeds.

One pruned WER on a few dozen utterances is a single draw: a different k-means seed gives a
different partition, and a pruned Whisper that falls into a repetition loop on one or two
clips moves the corpus WER by tens of points. This script prunes the embedded Whisper at one
setting with several seeds for each cluster feature set (and magnitude pruning, which has no
seed), evaluates every model on the same utterances and writes every record, with the
relative error of the encoder output on a few clips as a smoother second measure, to a JSON
file that the book's results page plots.

    python scripts/seed_study.py                    # the committed setting: results/seed_study.json
    python scripts/seed_study.py --seeds 2 --max-samples 8 --out /tmp/study.json   # a quick look

Runs already in --out (same model, data and setting) are kept and not run again, so a study can be
extended, e.g. with ``--allocations uniform,variance --features producer``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from speechprune.compress import compress
from speechprune.data import load_speech
from speechprune.evaluate import evaluate
from speechprune.models import load_model
from speechprune.prune import FEATURES


@torch.no_grad()
def encoder_output(model, processor, audios) -> torch.Tensor:
    features = processor.feature_extractor(audios, sampling_rate=16_000, return_tensors="pt").input_features
    return model.model.encoder(features.to(model.device)).last_hidden_state


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded:whisper-base")
    ap.add_argument("--data", default="embedded")
    ap.add_argument("--max-samples", type=int, default=None)
    ap.add_argument("--sparsity", type=float, default=0.2)
    ap.add_argument("--scope", default="encoder.ffn")
    ap.add_argument("--features", default="both,producer", help=f"comma-separated, from {', '.join(FEATURES)}")
    ap.add_argument("--allocations", default="uniform", help="comma-separated allocations (mixed sparsity)")
    ap.add_argument("--seeds", type=int, default=5, help="k-means seeds 0 .. N-1 per feature set")
    ap.add_argument("--probe-clips", type=int, default=8, help="clips for the encoder-output error")
    ap.add_argument("--out", default="results/seed_study.json")
    args = ap.parse_args()

    started = time.perf_counter()
    speech = load_speech(args.data, max_samples=args.max_samples)
    dense, processor = load_model(args.model)
    if dense.config.model_type != "whisper":
        raise SystemExit("the encoder-output probe of this study is written for Whisper models")
    probe = [u.audio for u in speech.utterances[: args.probe_clips]]
    reference = encoder_output(dense, processor, probe)

    def run(label: str, model, compression: dict | None) -> dict:
        error = (encoder_output(model, processor, probe) - reference).norm() / reference.norm()
        record = evaluate(model, processor, speech, label=label, progress=False)
        record.update(label=label, compression=compression, encoder_relative_error=round(float(error), 4))
        print(f"{label:28s} WER {record['wer']:7.2f}  S{record['substitutions']} D{record['deletions']} "
              f"I{record['insertions']}  encoder error {error:.3f}", flush=True)
        return record

    setting = dict(model=args.model, data=args.data, sparsity=args.sparsity, scope=args.scope,
                   max_samples=args.max_samples, probe_clips=args.probe_clips)
    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.is_file() else None
    if previous is not None and any(previous.get(k) != v for k, v in setting.items() if k in previous):
        raise SystemExit(f"{out} holds a study of another setting: choose another --out")
    records = previous["records"] if previous else []
    done = {r["label"] for r in records}
    if "dense" not in done:
        records.append(run("dense", dense, None))
    variants = [(a, "magnitude", "both", 0) for a in args.allocations.split(",")]
    variants += [(a, "cluster", f, s) for a in args.allocations.split(",") for f in args.features.split(",")
                 for s in range(args.seeds)]
    for allocation, method, features, seed in variants:
        suffix = "" if allocation == "uniform" else f" {allocation}"
        label = f"magnitude{suffix}" if method == "magnitude" else f"cluster {features}{suffix} seed {seed}"
        if label in done:
            continue
        model = copy.deepcopy(dense)
        report = compress(model, method=method, sparsity=args.sparsity, scope=args.scope, features=features,
                          allocation=allocation, seed=seed, progress=False)
        records.append(run(label, model, {k: v for k, v in report.to_dict().items() if k != "units"}))
        del model

    summary = {}
    for r in records:
        if r["label"].startswith("cluster "):
            summary.setdefault(r["label"].rsplit(" seed ", 1)[0].removeprefix("cluster "), []).append(r["wer"])
    summary = {group: dict(median=statistics.median(w), min=min(w), max=max(w), n=len(w))
               for group, w in summary.items()}
    for group, s in summary.items():
        print(f"cluster {group}: median {s['median']:.2f}, range {s['min']:.2f}-{s['max']:.2f} over {s['n']} seeds")
    seconds = round(time.perf_counter() - started, 1) + (previous or {}).get("seconds", 0.0)
    result = dict(
        study="k-means seed spread of pruned WER", **setting, summary=summary, seconds=seconds,
        python=platform.python_version(), date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        records=records,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
