"""Benchmark speechprune.kmeans against scikit-learn's KMeans on feed-forward channel features.

    python benchmarks/bench_kmeans.py [--quick] [--device cuda [--large-only]] [--threads N] [--repeats R]

Builds the channel features of a Whisper-base-sized feed-forward stack with random weights
(d_model 512, width 2048, 12 layers; channel i = fc1 row i, fc1 bias i, fc2 column i: n = 2048,
d = 1025) and clusters every layer at 10% sparsity (k = 1843) and 50% (k = 1024) with both
implementations: same k, n_init, max_iter, tol, float32 input, k-means++ init, Lloyd. Two weight
sets: "init" (Whisper's init, N(0, 0.02)) and "structured" (per-channel scales and a third of
the channels near-copies of others, as trained layers have; slower to converge). Prints total
times, peak memory, time and inertia ratios, what dominates each side (seeding or iterations),
and how much of our time the bare distance matmuls would take at the measured GFLOP/s.
With --device cuda, also a Whisper-large-v3-sized stack (d_model 1280, width 5120, 64 layers)
at 10% sparsity, ours only. Results are printed, not saved.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import psutil
import torch
from sklearn.cluster import KMeans, kmeans_plusplus
from threadpoolctl import threadpool_info, threadpool_limits

from speechprune.kmeans import kmeans, kmeans_many

kmeans_module = importlib.import_module("speechprune.kmeans")  # the module: speechprune.kmeans is the function

MAX_ITER, N_INIT, TOL, SEED = 100, 1, 1e-4, 0


def channel_features(d_model: int, width: int, layer: int, structured: bool, device: str) -> torch.Tensor:
    """[width, 2 d_model + 1] features of one random feed-forward layer (fc1 row, bias, fc2 column)."""
    g = torch.Generator().manual_seed(1000 + layer)
    fc1 = torch.randn(width, d_model, generator=g) * 0.02
    bias = torch.randn(width, 1, generator=g) * 0.02
    fc2 = torch.randn(width, d_model, generator=g) * 0.02
    x = torch.cat([fc1, bias, fc2], 1)
    if structured:
        x *= torch.exp(0.5 * torch.randn(width, 1, generator=g))  # uneven channel norms
        copies = width // 3
        source = torch.randint(0, width - copies, (copies,), generator=g)
        noise = 0.1 * x[source].norm(dim=1, keepdim=True) / x.shape[1] ** 0.5
        x[width - copies :] = x[source] + noise * torch.randn(copies, x.shape[1], generator=g)
    return x.to(device)


def within_cluster_ss(x: torch.Tensor, labels: torch.Tensor) -> float:
    """Cost of a partition: squared distances to the member means, in float64 (same for both)."""
    x, labels = x.double().cpu(), labels.cpu()
    k = int(labels.max()) + 1
    sums = torch.zeros(k, x.shape[1], dtype=torch.float64).index_add_(0, labels, x)
    means = sums / torch.bincount(labels, minlength=k).unsqueeze(1)
    return (x - means[labels]).pow(2).sum().item()


class PeakMemory:
    """Peak extra memory during a block: CUDA allocator peak, or process RSS sampled every 1 ms."""

    def __init__(self, device: str) -> None:
        self.device, self.peak = device, 0

    def __enter__(self) -> PeakMemory:
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.process = psutil.Process()
            self.base = self.high = self.process.memory_info().rss
            self.running = True
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.high = max(self.high, self.process.memory_info().rss)
            time.sleep(0.001)

    def __exit__(self, *exc: object) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.running = False
            self.thread.join()
            self.peak = self.high - self.base


@dataclass
class Run:
    seconds: float
    cpu_seconds: float
    labels: list[torch.Tensor]
    n_iter: list[int]
    matmuls: list[tuple[int, int, int]]


#: One layer's clustering: labels, iterations, distance-matmul shapes (centers are dropped).
Fit = Callable[[object], tuple[torch.Tensor, int, list[tuple[int, int, int]]]]


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run_layers(fit: Fit, layers: list, device: str, repeats: int) -> Run:
    """Cluster every layer with `fit`; the fastest of `repeats` passes (wall and process CPU time)."""
    best: Run | None = None
    for _ in range(repeats):
        gc.collect()
        sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        results = [fit(x) for x in layers]
        sync(device)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        run = Run(seconds, cpu_seconds, [labels for labels, _, _ in results],
                  [n_iter for _, n_iter, _ in results], [m for _, _, shapes in results for m in shapes])
        if best is None or run.seconds < best.seconds:
            best = run
    assert best is not None
    return best


def fit_ours(k: int) -> Fit:
    def fit(x: torch.Tensor) -> tuple[torch.Tensor, int, list[tuple[int, int, int]]]:
        result = kmeans(x, k, n_init=N_INIT, max_iter=MAX_ITER, tol=TOL, seed=SEED)
        return result.labels, result.n_iter, result.matmuls

    return fit


def fit_sklearn(k: int) -> Fit:
    def fit(x: np.ndarray) -> tuple[torch.Tensor, int, list[tuple[int, int, int]]]:
        model = KMeans(k, init="k-means++", n_init=N_INIT, max_iter=MAX_ITER, tol=TOL, random_state=SEED,
                       algorithm="lloyd").fit(x)
        return torch.from_numpy(model.labels_).long(), model.n_iter_, []

    return fit


def best_time(fn: Callable[[], object], device: str, repeats: int = 3) -> float:
    """Fastest of `repeats` timed calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_seconds(shapes: list[tuple[int, int, int]], device: str) -> float:
    """Time of the bare [m, d] @ [d, p] matmuls of these shapes (each distinct shape timed once)."""
    total = 0.0
    counts: dict[tuple[int, int, int], int] = {}
    for shape in shapes:
        counts[shape] = counts.get(shape, 0) + 1
    for (m, d, p), count in counts.items():
        a = torch.randn(m, d, device=device)
        b = torch.randn(d, p, device=device)
        total += count * best_time(lambda: a @ b, device, repeats=5)
    return total


def measured_gflops(device: str) -> float:
    """GFLOP/s of one float32 matmul the size of the pairwise distance matrix."""
    a = torch.randn(2048, 1025, device=device)
    return 2 * 2048 * 1025 * 2048 / best_time(lambda: a @ a.T, device, repeats=5) / 1e9


def seeding_share(x: torch.Tensor, k: int, device: str) -> tuple[float, float]:
    """(ours, sklearn) fraction of one layer's time spent in k-means++ seeding."""
    sq_norms = (x * x).sum(1)

    def ours_seeding() -> None:
        pairwise = kmeans_module._sq_distances(x, sq_norms, x, sq_norms).fill_diagonal_(0.0)
        kmeans_module._kmeans_plus_plus(x, sq_norms, None, k, torch.Generator().manual_seed(SEED), pairwise, [])

    ours = best_time(ours_seeding, device) / best_time(lambda: kmeans(x, k, seed=SEED), device)
    xn = x.cpu().numpy()
    start = time.perf_counter()
    seeds, _ = kmeans_plusplus(xn, k, random_state=SEED)
    seeding = time.perf_counter() - start
    start = time.perf_counter()  # the Lloyd iterations alone, from those seeds
    KMeans(k, init=seeds, n_init=1, max_iter=MAX_ITER, tol=TOL, algorithm="lloyd").fit(xn)
    return ours, seeding / (seeding + time.perf_counter() - start)


def print_environment(device: str) -> None:
    print(f"torch {torch.__version__}, device {device}, torch threads {torch.get_num_threads()}, "
          f"cpu cores {os.cpu_count()}, load average {os.getloadavg()}")
    blas_env = {key: value for key, value in os.environ.items()
                if key.startswith(("OPENBLAS", "OMP", "MKL", "GOTO"))}
    print(f"BLAS/OpenMP environment variables: {blas_env or 'none set'}")
    for pool in threadpool_info():
        print(f"  threadpool {pool['user_api']}/{pool['internal_api']} {pool.get('version')}: "
              f"{pool['num_threads']} threads ({os.path.basename(pool['filepath'])})")
    if device == "cuda":
        print(f"  GPU: {torch.cuda.get_device_name()}, TF32 matmul {torch.backends.cuda.matmul.allow_tf32}")


def peak_memory(method: str, k: int, structured: bool, args: argparse.Namespace) -> int:
    """Peak extra bytes of one layer's call, measured in a fresh process.

    The child runs with glibc's mmap threshold fixed at 128 KiB, so every array is returned to the
    OS when freed and the RSS delta is the true peak; the timed runs keep the default allocator.
    """
    command = [sys.executable, __file__, "--memory-probe", method, str(k), "--device", args.device]
    if structured:
        command.append("--structured")
    if args.threads:
        command += ["--threads", str(args.threads)]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1])


def memory_probe(args: argparse.Namespace) -> None:
    """Child of peak_memory: print the peak extra bytes of clustering layer 0 once."""
    x = channel_features(512, 2048, 0, args.structured, args.device)
    method, k = args.memory_probe
    if method == "ours":
        fit, data, device = fit_ours(int(k)), x, args.device
    else:
        fit, data, device = fit_sklearn(int(k)), x.cpu().numpy(), "cpu"
    gc.collect()
    with PeakMemory(device) as memory:
        fit(data)
    print(memory.peak)


def benchmark_base(args: argparse.Namespace) -> None:
    """Whisper-base-sized stack at 10% and 50% sparsity: ours against scikit-learn."""
    n_layers = 3 if args.quick else 12
    gflops = measured_gflops(args.device)
    print(f"\nWhisper-base-sized stack: {n_layers} layers, n = 2048 channels, d = 1025; "
          f"float32 matmul {gflops:.0f} GFLOP/s", flush=True)
    rows: list[str | tuple[str, str]] = []
    memory_probes = []
    for structured in (False, True):
        name = "structured" if structured else "init"
        layers = [channel_features(512, 2048, i, structured, args.device) for i in range(n_layers)]
        for k in (1843, 1024):
            kmeans(layers[0], k)  # warm up kernels and thread pools outside the timing
            ours = run_layers(fit_ours(k), layers, args.device, args.repeats)
            theirs = run_layers(fit_sklearn(k), [x.cpu().numpy() for x in layers], "cpu", args.sklearn_repeats)
            costs = [(within_cluster_ss(x, a), within_cluster_ss(x, b))
                     for x, a, b in zip(layers, ours.labels, theirs.labels)]
            bare = matmul_seconds(ours.matmuls, args.device)
            rows.append((
                f"{name:<11}{k:>5} | {ours.seconds:>6.2f}{theirs.seconds:>7.1f}"
                f"{theirs.seconds / ours.seconds:>7.1f}x | {ours.cpu_seconds:>8.2f}{theirs.cpu_seconds:>7.1f}"
                f"{theirs.cpu_seconds / ours.cpu_seconds:>7.1f}x | "
                f"{sum(a for a, _ in costs) / sum(b for _, b in costs):>11.4f}{max(a / b for a, b in costs):>7.3f} | ",
                f" | {np.mean(ours.n_iter):>4.1f}/{np.mean(theirs.n_iter):<4.1f} | {100 * bare / ours.seconds:>5.0f}%",
            ))
            memory_probes.append((structured, k))
            print(f"  timed {name} k = {k}", flush=True)
        share = seeding_share(layers[0], 1843, args.device)
        rows.append(f"  {name} weights, one layer at k = 1843: k-means++ seeding is {share[0]:.0%} of our time, "
                    f"{share[1]:.0%} of scikit-learn's")
    peaks = [(peak_memory("ours", k, structured, args), peak_memory("sklearn", k, structured, args))
             for structured, k in memory_probes]
    print(f"{'weights':<11}{'k':>5} | {'ours s':>6}{'sk s':>7}{'sk/ours':>8} | {'ours cpu':>8}{'sk cpu':>7}"
          f"{'sk/ours':>8} | {'inertia o/s':>11}{'worst':>7} | {'ours MB':>7}{'sk MB':>6} | {'iters o/s':>9}"
          f" | {'matmul':>6}")
    peak_iter = iter(peaks)
    for row in rows:
        if isinstance(row, str):
            print(row)
        else:
            ours_peak, sk_peak = next(peak_iter)
            print(f"{row[0]}{ours_peak / 2**20:>7.0f}{sk_peak / 2**20:>6.0f}{row[1]}")
    print("\ns: wall time for all layers, fastest pass (sk: scikit-learn, on the CPU); cpu: process CPU time "
          "(all threads; robust to other load when --threads 1); inertia o/s: summed within-cluster cost, "
          "ours / sklearn, worst: largest per-layer ratio; MB: peak extra memory of one layer's call (RSS on "
          "CPU, allocator on CUDA); matmul: time the bare distance matmuls of our run take, share of our wall time.")


def benchmark_large(args: argparse.Namespace) -> None:
    """Whisper-large-v3-sized stack at 10% sparsity on the GPU, ours only."""
    n_layers, width, d_model = 64, 5120, 1280
    k = round(width * 0.9)
    kmeans(channel_features(d_model, width, 0, False, args.device), k)  # warm-up
    for structured in (False, True):
        seconds, n_iter, shapes = 0.0, [], []
        with PeakMemory(args.device) as memory:
            for i in range(n_layers):
                x = channel_features(d_model, width, i, structured, args.device)
                sync(args.device)
                start = time.perf_counter()
                result = kmeans(x, k, n_init=N_INIT, max_iter=MAX_ITER, tol=TOL, seed=SEED)
                sync(args.device)
                seconds += time.perf_counter() - start
                n_iter.append(result.n_iter)
                shapes += result.matmuls
        bare = matmul_seconds(shapes, args.device)
        print(f"Whisper-large-v3-sized, {'structured' if structured else 'init'} weights: {n_layers} layers, "
              f"n = {width}, d = {2 * d_model + 1}, k = {k}: {seconds:.1f} s, peak {memory.peak / 2**20:.0f} MB, "
              f"mean iterations {np.mean(n_iter):.1f}, bare matmuls {100 * bare / seconds:.0f}% of the time",
              flush=True)
        layers = [channel_features(d_model, width, i, structured, args.device) for i in range(n_layers)]
        sync(args.device)
        start = time.perf_counter()
        results = kmeans_many(layers, k, n_init=N_INIT, max_iter=MAX_ITER, tol=TOL, seed=SEED)
        sync(args.device)
        together = time.perf_counter() - start
        shapes = [m for r in results for m in r.matmuls]
        bare = matmul_seconds(shapes, args.device)
        print(f"  the same {n_layers} layers through kmeans_many (k-means++ steps shared by same-shaped layers): "
              f"{together:.1f} s ({seconds / together:.1f}x), bare matmuls {100 * bare / together:.0f}% of the time, "
              f"k-means {together / bare:.1f}x its bare matmuls", flush=True)
        del layers, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 layers, as a smoke check")
    parser.add_argument("--large-only", action="store_true",
                        help="only the Whisper-large-v3-sized stack (needs --device cuda); no scikit-learn")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (ours only; sklearn runs on the CPU)")
    parser.add_argument("--threads", type=int, default=None,
                        help="limit both sides to this many threads (default: all cores)")
    parser.add_argument("--repeats", type=int, default=3, help="passes of ours; the fastest counts")
    parser.add_argument("--sklearn-repeats", type=int, default=1, help="passes of scikit-learn")
    parser.add_argument("--memory-probe", nargs=2, metavar=("METHOD", "K"), help=argparse.SUPPRESS)
    parser.add_argument("--structured", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    if args.large_only and args.device != "cuda":
        parser.error("--large-only needs --device cuda")
    if args.threads:
        torch.set_num_threads(args.threads)
    with threadpool_limits(args.threads):
        if args.memory_probe:
            memory_probe(args)
            return
        print_environment(args.device)
        if not args.large_only:
            benchmark_base(args)
        if args.device == "cuda":
            benchmark_large(args)
        print(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
