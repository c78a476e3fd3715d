"""Benchmark: compressing a Whisper-sized model, and what the pruned model gains at run time.

    python benchmarks/bench_compress.py            # Whisper-base-sized, CPU
    python benchmarks/bench_compress.py --device cuda --large   # adds Whisper-large-v3-sized
    python benchmarks/bench_compress.py --recipes [--large]     # the recipe candidates' cost against k-means'

Random weights with Whisper's shapes (the time of k-means does not depend on the values
much; WER does, and lives in the book). For each sparsity it prints the compression time
and peak memory, the parameters removed, and the forward time of the dense and the pruned
model on one 30 s utterance (encoder + 32 decoder tokens), with the speed-up beside the
parameter reduction.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import psutil
import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration

from speechprune.compress import compress

SIZES = {
    "base": dict(d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
                 decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048, num_mel_bins=80),
    "large-v3": dict(d_model=1280, encoder_layers=32, decoder_layers=32, encoder_attention_heads=20,
                     decoder_attention_heads=20, encoder_ffn_dim=5120, decoder_ffn_dim=5120, num_mel_bins=128),
}


def build(size: str, device: str) -> WhisperForConditionalGeneration:
    torch.manual_seed(0)
    config = WhisperConfig(vocab_size=51866, max_source_positions=1500, max_target_positions=448, **SIZES[size])
    return WhisperForConditionalGeneration(config).eval().to(device)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def forward_seconds(model, device: str, repeats: int) -> float:
    feats = torch.randn(1, model.config.num_mel_bins, 3000, device=device)
    tokens = torch.randint(0, 50000, (1, 32), device=device)
    model(input_features=feats, decoder_input_ids=tokens)  # warm-up
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        model(input_features=feats, decoder_input_ids=tokens)
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


#: The second recipe screening's candidates (studies/screen-recipes-2.toml), by their labels there.
CANDIDATES = {
    "k-means, paper's features": dict(recipe="paper"),
    "G pairs producer": dict(method="pairs", features="producer"),
    "K ... variance allocation": dict(method="pairs", features="producer", allocation="variance"),
    "L ... cost allocation": dict(method="pairs", features="producer", allocation="cost"),
    "M ... corrected merge": dict(method="pairs", features="producer", merge="corrected"),
    "O pairs function": dict(method="pairs", features="function"),
    "P ... projection merge": dict(method="pairs", features="producer", merge="projection"),
}


def recipes(dense, device: str, label: str) -> None:
    """Each candidate's compression time at the book's two budgets, and its ratio to k-means' (the issue's
    bar: a recipe above 10x k-means' time needs a reason in the book)."""
    print(f"\n{label}: compression time of the recipe candidates (ratio to k-means with the paper's features)")
    head = f"{'option':28s} {'scope':12s} {'sparsity':>8s} {'compress s':>10s} {'x k-means':>9s}"
    print(head + "\n" + "-" * len(head))
    for scope, sparsity in [("encoder.ffn", 0.2), ("ffn", 0.1)]:
        base = None
        for name, options in CANDIDATES.items():
            rest = {k: v for k, v in options.items() if k != "method"}
            r = measure(dense, device, sparsity, scope, options.get("method", "cluster"), 0, **rest)
            base = base or r["seconds"]
            print(f"{name:28s} {scope:12s} {sparsity:8.0%} {r['seconds']:10.2f} {r['seconds'] / base:8.1f}x",
                  flush=True)


def measure(dense, device: str, sparsity: float, scope: str, method: str, repeats: int, **options) -> dict:
    model = copy.deepcopy(dense)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    rss0 = psutil.Process().memory_info().rss
    sync(device)
    t = time.perf_counter()
    if "recipe" not in options:  # a recipe names its own method
        options.setdefault("method", method)
    report = compress(model, sparsity=sparsity, scope=scope, progress=False, **options)
    sync(device)
    seconds = time.perf_counter() - t
    peak = (torch.cuda.max_memory_allocated() if device.startswith("cuda")
            else psutil.Process().memory_info().rss - rss0)
    return dict(method=method, sparsity=sparsity, scope=scope, seconds=seconds, peak_mb=peak / 2**20,
                params=report.params_after, param_sparsity=report.param_sparsity,
                forward=forward_seconds(model, device, repeats) if repeats else float("nan"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--large", action="store_true", help="also a Whisper-large-v3-sized model at 10%% (GPU)")
    ap.add_argument("--repeats", type=int, default=5, help="forward passes to time (median)")
    ap.add_argument("--recipes", action="store_true", help="only the recipe candidates' compression times")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    if args.recipes:
        recipes(build("base", args.device), args.device, "Whisper-base-sized")
        if args.large:
            recipes(build("large-v3", args.device), args.device, "Whisper-large-v3-sized")
        return

    dense = build("base", args.device)
    base_forward = forward_seconds(dense, args.device, args.repeats)
    n0 = sum(p.numel() for p in dense.parameters())
    print(f"\nWhisper-base-sized, {n0:,} parameters, dense forward {base_forward * 1000:.1f} ms "
          "(30 s audio + 32 decoder tokens)")
    head = (f"{'method':10s} {'scope':10s} {'sparsity':>8s} {'compress s':>10s} {'peak MB':>8s} "
            f"{'params removed':>14s} {'forward ms':>10s} {'speed-up':>8s}")
    print(head + "\n" + "-" * len(head))
    for scope, sparsity in [("ffn", 0.1), ("ffn", 0.5), ("all", 0.5)]:
        for method in ("cluster", "pairs", "magnitude"):  # pairs: closest pairs first (no seed)
            r = measure(dense, args.device, sparsity, scope, method, args.repeats)
            print(f"{method:10s} {scope:10s} {sparsity:8.0%} {r['seconds']:10.2f} {r['peak_mb']:8.0f} "
                  f"{r['param_sparsity']:14.1%} {r['forward'] * 1000:10.1f} {base_forward / r['forward']:7.2f}x")

    if args.large:
        del dense
        big = build("large-v3", args.device)
        for method in ("cluster", "pairs"):
            r = measure(big, args.device, 0.1, "ffn", method, repeats=0)
            print(f"\nWhisper-large-v3-sized (64 feed-forward layers of 5120 channels), {method} at 10%: "
                  f"{r['seconds']:.1f} s, peak {r['peak_mb']:.0f} MB (target < 10 s on one H100/H200)")


if __name__ == "__main__":
    main()
