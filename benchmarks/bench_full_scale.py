"""Benchmark: what the paper's real model sizes cost, on the stand-ins of ``scripts/standins.py``.

    python scripts/standins.py /tmp/standins            # once: HuBERT-large and Whisper-large-v3 stand-ins
    python benchmarks/bench_full_scale.py --standins /tmp/standins

For each stand-in (``facebook/hubert-large-ls960-ft``, ``openai/whisper-large-v3``, loaded by
their unchanged ids from the stand-ins' offline hub cache), each method (``--recipe paper``:
k-means on the paper's features; ``--recipe recommended``: the obs method (structured brain
surgeon on synthetic speech) with the variance allocation and the refit merge, whose calibration
runs the dense model on 16 synthetic clips; ``--recipe pairs-refit-2026``: closest pairs first on
producer features instead of obs; ``--recipe pairs-variance-2026``: that with the mean merge;
``--recipe pairs-2026``: closest pairs with the uniform allocation; magnitude pruning; each
record keeps the options the method resolved to) at the paper's settings (HuBERT-large: encoder
feed-forward 50%; Whisper-large-v3: both stacks' feed-forward 10%), on each device:

- compression time and peak memory (CPU: the process's resident memory, sampled every 20 ms,
  and the part above the loaded model; CUDA: ``torch.cuda.max_memory_allocated``);
- evaluation seconds per utterance and peak memory, on the stand-in LibriSpeech test-clean
  (random weights: Whisper's decoder runs to the length limit that ``evaluate`` sets from each
  clip's duration, so the per-utterance time is an upper bound for that clip length).

Devices: ``cpu``; with a GPU also ``cuda`` and ``cuda-15GB`` (the process capped to a T4's 15 GB
with ``torch.cuda.set_per_process_memory_fraction``, so that ``kmeans_many``'s memory guard
sees a T4's budget). Every case runs in a fresh process (peak memory is per case) and is written
to ``--out`` (default ``results/benchmarks/full_scale.json``) as soon as it finishes; a rerun
skips the cases already there (``--redo`` measures them again).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from speechprune.outputs import write_file

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "benchmarks" / "full_scale.json"
MODELS = {
    "hubert-large": dict(id="facebook/hubert-large-ls960-ft", scope="encoder.ffn", sparsity=0.5,
                         setting="encoder feed-forward 50% (the paper's HuBERT-large setting)"),
    "whisper-large-v3": dict(id="openai/whisper-large-v3", scope="ffn", sparsity=0.1,
                             setting="both stacks' feed-forward 10% (the paper's Whisper-large-v3 setting)"),
}
METHODS = {"paper": dict(recipe="paper"), "recommended": dict(recipe="recommended"),
           "pairs-refit-2026": dict(recipe="pairs-refit-2026"),
           "pairs-variance-2026": dict(recipe="pairs-variance-2026"), "pairs-2026": dict(recipe="pairs-2026"),
           "magnitude": dict(method="magnitude")}
T4_BYTES = 15 * 2**30
DATA = "librispeech:test-clean"


class PeakRSS:
    """The process's peak resident memory between start() and stop(), sampled on a thread."""

    def __init__(self, interval: float = 0.02):
        import psutil

        self.process, self.interval, self.peak, self._stop = psutil.Process(), interval, 0, threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self.peak = self.process.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def run_case(model_key: str, method_key: str, device_key: str, utterances: int, batch_size: int) -> dict:
    """One case, in this process: load, compress (timed), evaluate (timed). Returns the record."""
    import psutil
    import torch

    from speechprune.compress import compress
    from speechprune.data import load_speech
    from speechprune.evaluate import evaluate
    from speechprune.models import load_model
    from speechprune.options import RECIPE_FIELDS

    device = "cuda" if device_key.startswith("cuda") else "cpu"
    spec = MODELS[model_key]
    if device_key == "cuda-15GB":
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, T4_BYTES / total))
    gib = 2**30
    start = time.perf_counter()
    dense, processor = load_model(spec["id"], device=device)
    load_seconds = time.perf_counter() - start
    speech = load_speech(DATA, max_samples=utterances)
    model = dense  # compressed in place: the process then holds one model, and the peak above it is the method's
    rss_loaded = psutil.Process().memory_info().rss
    record = dict(model=model_key, model_id=spec["id"], method=method_key, device=device_key,
                  scope=spec["scope"], sparsity=spec["sparsity"], dtype=str(next(model.parameters()).dtype),
                  params=sum(p.numel() for p in model.parameters()), load_seconds=round(load_seconds, 2))

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as rss:
        sync()
        start = time.perf_counter()
        report = compress(model, sparsity=spec["sparsity"], scope=spec["scope"], progress=False,
                          **METHODS[method_key])
        sync()
        seconds = time.perf_counter() - start
    reported = report.to_dict()
    record.update(compress_seconds=round(seconds, 2), compress_peak_rss_gib=round(rss.peak / gib, 3),
                  compress_rss_above_model_gib=round((rss.peak - rss_loaded) / gib, 3),
                  params_after=report.params_after, param_sparsity=round(report.param_sparsity, 4),
                  assignment=reported.get("method"),
                  options={k: reported.get(k) for k in RECIPE_FIELDS})
    if device == "cuda":
        record["compress_peak_cuda_gib"] = round(torch.cuda.max_memory_allocated() / gib, 3)
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as rss:
        start = time.perf_counter()
        result = evaluate(model, processor, speech, batch_size=batch_size, device=device, progress=False)
        sync()
        seconds = time.perf_counter() - start
    record.update(eval_utterances=len(speech), eval_audio_seconds=round(speech.seconds, 2),
                  eval_seconds=round(seconds, 2), eval_seconds_per_utterance=round(seconds / len(speech), 2),
                  eval_peak_rss_gib=round(rss.peak / gib, 3), eval_batch_size=batch_size,
                  eval_hypothesis_words=sum(len(u["hypothesis_normalized"].split()) for u in result["utterances"]),
                  wer_random_weights=round(result["wer"], 2))
    if device == "cuda":
        record["eval_peak_cuda_gib"] = round(torch.cuda.max_memory_allocated() / gib, 3)
        record["gpu"] = torch.cuda.get_device_name(0)
    record["torch_threads"] = torch.get_num_threads()
    return record


def machine() -> dict:
    import psutil
    import torch

    return dict(cpu=platform.processor() or platform.machine(), cores=os.cpu_count(),
                memory_gib=round(psutil.virtual_memory().total / 2**30, 1), python=platform.python_version(),
                torch=torch.__version__, load_average=[round(x, 2) for x in os.getloadavg()],
                gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)


def load_results(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {"cases": []}


def save_results(path: Path, results: dict) -> None:
    write_file(path, json.dumps(results, indent=1) + "\n")  # atomic, parents made: the package's own writer


PAGE_MODELS = {"hubert-large": "HuBERT-large, encoder FFN 50%", "whisper-large-v3": "Whisper-large-v3, both stacks' FFN 10%"}
PAGE_METHODS = {"paper": "`--recipe paper` (k-means)",
                "recommended": "`--recipe recommended` (obs, variance allocation, refit merge)",
                "pairs-refit-2026": "`--recipe pairs-refit-2026` (closest pairs, variance allocation, refit merge)",
                "pairs-variance-2026": "`--recipe pairs-variance-2026` (closest pairs, variance allocation)",
                "pairs-2026": "`--recipe pairs-2026` (closest pairs, uniform allocation)",
                "magnitude": "magnitude pruning"}
#: Where book/full_scale.md keeps the table that page_table writes (tests/test_full_scale.py checks it).
PAGE_MARKERS = ("<!-- COSTS_TABLE: from results/benchmarks/full_scale.json, by benchmarks/bench_full_scale.py --page -->",
                "<!-- /COSTS_TABLE -->")


def page_table(results: dict) -> str:
    """The table of book/full_scale.md: each case's costs, in the book's words, with its device, dtype and the
    machine's load when it ran (the load changes CPU times severalfold: compare rows of similar load)."""
    head = ("| stand-in, setting | method | device | compression (s) | compression peak memory, GiB (above the model) | "
            "transcription (s per clip) | transcription peak memory (GiB) | load |\n|---|---|---|---|---|---|---|---|")
    order = {k: i for i, k in enumerate([*MODELS, *METHODS, "cpu", "cuda", "cuda-15GB"])}
    rows = []
    for c in sorted(results["cases"], key=lambda c: (order.get(c["model"], 99), order.get(c["device"], 99),
                                                     order.get(c["method"], 99))):
        model, method = PAGE_MODELS.get(c["model"], c["model"]), PAGE_METHODS.get(c["method"], c["method"])
        if "error" in c:
            rows.append(f"| {model} | {method} | {c['device']} | failed: {c['error']} | | | | |")
            continue
        if c.get("dtype") == "torch.float16" and c["device"] == "cpu":
            method += ", float16"
        cuda = "cuda" in c["device"]
        cpeak = (f"{c['compress_peak_cuda_gib']:.1f}" if cuda
                 else f"{c['compress_peak_rss_gib']:.1f} ({c['compress_rss_above_model_gib']:.1f})")
        epeak = c["eval_peak_cuda_gib"] if cuda else c["eval_peak_rss_gib"]
        load = c.get("machine", {}).get("load_average", [None])[0]
        rows.append(f"| {model} | {method} | {c['device']} | {c['compress_seconds']:.0f} | {cpeak} | "
                    f"{c['eval_seconds_per_utterance']:.1f} | {epeak:.1f} | "
                    f"{'' if load is None else f'{load:.1f}'} |")
    return "\n".join([head, *rows])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--standins", type=Path, default=os.environ.get("SPEECHPRUNE_STANDINS"),
                    help="the folder scripts/standins.py wrote (default: $SPEECHPRUNE_STANDINS)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--devices", default=None, help="cpu,cuda,cuda-15GB (default: cpu, plus both cuda with a GPU)")
    ap.add_argument("--utterances", type=int, default=2, help="stand-in test-clean utterances to evaluate")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--redo", action="store_true", help="measure cases already in --out again")
    ap.add_argument("--page", action="store_true",
                    help="print the table of book/full_scale.md from --out and measure nothing")
    ap.add_argument("--case", nargs=3, metavar=("MODEL", "METHOD", "DEVICE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.page:
        print(page_table(load_results(args.out)))
        return 0
    if args.case:  # a child process: one case, the record as the last line of stdout
        print(json.dumps(run_case(*args.case, args.utterances, args.batch_size)))
        return 0
    if not args.standins or not (args.standins / "standins.json").is_file():
        ap.error("--standins must name a folder written by scripts/standins.py")
    import torch

    devices = (args.devices.split(",") if args.devices
               else ["cpu"] + (["cuda", "cuda-15GB"] if torch.cuda.is_available() else []))
    env = dict(os.environ, HF_HOME=str(args.standins.resolve()), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1")
    for key in ("HF_HUB_CACHE", "HF_DATASETS_CACHE"):
        env.pop(key, None)
    results = load_results(args.out)
    for model_key in args.models.split(","):
        for device_key in devices:
            for method_key in args.methods.split(","):
                case = (model_key, method_key, device_key)
                done = [c for c in results["cases"] if (c["model"], c["method"], c["device"]) == case]
                if done and not args.redo:
                    print(f"{' / '.join(case)}: done before, skipped", flush=True)
                    continue
                print(f"{' / '.join(case)} ...", flush=True)
                start = time.perf_counter()
                child = subprocess.run([sys.executable, __file__, "--case", *case, "--utterances",
                                        str(args.utterances), "--batch-size", str(args.batch_size)],
                                       capture_output=True, text=True, env=env, cwd=ROOT)
                if child.returncode == 0:
                    record = json.loads(child.stdout.strip().splitlines()[-1])
                else:
                    tail = (child.stderr.strip().splitlines() or ["no output"])[-1]
                    record = dict(model=model_key, method=method_key, device=device_key, error=tail[:300])
                record.update(wall_seconds=round(time.perf_counter() - start, 1),
                              date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), machine=machine())
                results["cases"] = [c for c in results["cases"]
                                    if (c["model"], c["method"], c["device"]) != case] + [record]
                save_results(args.out, results)
                print(f"  {json.dumps({k: v for k, v in record.items() if k != 'machine'})}", flush=True)
    print(page_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
