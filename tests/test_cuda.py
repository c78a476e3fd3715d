"""The GPU path: CUDA against CPU on the same random models, and the large-model run.

Every test here carries the ``cuda`` marker and is skipped where ``torch.cuda.is_available()``
is false. ``scripts/gpu_check.sh`` runs them (``pytest -m cuda``) with the benchmarks in one go.
Timings are recorded, never asserted: set ``SPEECHPRUNE_GPU_OUT`` to a folder and every test
adds its figures to ``cuda_figures.json`` there.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration

from speechprune import compress, kmeans
from speechprune.structure import widths

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_check.sh runs these)"),
]

SIZES = {  # Whisper's shapes; random weights
    "base": dict(d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
                 decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048, num_mel_bins=80),
    "large-v3": dict(d_model=1280, encoder_layers=32, decoder_layers=32, encoder_attention_heads=20,
                     decoder_attention_heads=20, encoder_ffn_dim=5120, decoder_ffn_dim=5120, num_mel_bins=128),
}


def _record(name: str, figures: dict) -> None:
    """Add ``figures`` under ``name`` to $SPEECHPRUNE_GPU_OUT/cuda_figures.json (when set)."""
    out = os.environ.get("SPEECHPRUNE_GPU_OUT")
    figures = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, **figures}
    print(name, json.dumps(figures))
    if not out:
        return
    path = Path(out) / "cuda_figures.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[name] = figures
    path.write_text(json.dumps(data, indent=2) + "\n")


def _whisper(size: str, device: str = "cpu") -> WhisperForConditionalGeneration:
    torch.manual_seed(0)
    config = WhisperConfig(vocab_size=51866, max_source_positions=1500, max_target_positions=448, **SIZES[size])
    with torch.device(device):  # built in place: the large model's random init is slow on the CPU
        return WhisperForConditionalGeneration(config).eval()


def _sync() -> None:
    torch.cuda.synchronize()


@torch.no_grad()
def _runs(model, device) -> torch.Tensor:
    feats = torch.randn(1, model.config.num_mel_bins, 3000, generator=torch.Generator().manual_seed(1)).to(device)
    tokens = torch.tensor([[50258, 50259, 50359, 50363]], device=device)
    logits = model(input_features=feats, decoder_input_ids=tokens).logits
    assert logits.shape == (1, 4, model.config.vocab_size) and bool(torch.isfinite(logits).all())
    return logits.float().cpu()


def test_kmeans_on_cuda_matches_cpu():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 1025, generator=g) * 0.02
    x[1500:] = x[:548] + 1e-3 * torch.randn(548, 1025, generator=g)  # near-copies, as trained layers have
    results = {}
    for device in ("cpu", "cuda"):
        _sync()
        t = time.perf_counter()
        r = kmeans(x.to(device), 1843, seed=0)
        _sync()
        results[device] = (r, time.perf_counter() - t)
        assert r.labels.device.type == device and r.labels.unique().numel() == 1843
    cpu, cuda = results["cpu"][0], results["cuda"][0]
    assert abs(cuda.inertia - cpu.inertia) <= 0.01 * cpu.inertia
    _record("kmeans_2048x1025_k1843", dict(cpu_s=results["cpu"][1], cuda_s=results["cuda"][1],
                                           inertia_cpu=cpu.inertia, inertia_cuda=cuda.inertia))


def test_graphed_seeding_matches_eager_on_cuda(monkeypatch):
    """k-means++ steps replayed from CUDA graphs pick the seeds the eager loop picks, faster."""
    module = sys.modules["speechprune.kmeans_seeding"]  # where k-means++ looks _stepper_wanted up
    x = (0.02 * torch.randn(5120, 2561, generator=torch.Generator().manual_seed(2))).cuda()
    results, seconds = {}, {}
    for name, wanted in (("eager", False), ("graphed", True)):
        monkeypatch.setattr(module, "_stepper_wanted", lambda x, k, wanted=wanted: wanted)
        kmeans(x[:1024], 900)  # warm-up
        _sync()
        t = time.perf_counter()
        results[name] = kmeans(x, 4608, seed=0)
        _sync()
        seconds[name] = time.perf_counter() - t
    assert torch.equal(results["eager"].labels, results["graphed"].labels)
    assert results["eager"].inertia == results["graphed"].inertia
    _record("kmeans_large_v3_layer_k4608", dict(eager_s=seconds["eager"], graphed_s=seconds["graphed"],
                                                speedup=seconds["eager"] / seconds["graphed"]))


def test_batched_seeding_on_cuda_agrees_with_lone_calls():
    """kmeans_many: eight Whisper-large-v3-sized layers share their k-means++ steps; costs as alone."""
    module = sys.modules["speechprune.kmeans"]
    xs = [(0.02 * torch.randn(5120, 2561, generator=torch.Generator().manual_seed(i))).cuda() for i in range(8)]
    module.kmeans_many(xs[:2], 4608)  # warm-up
    _sync()
    t = time.perf_counter()
    alone = [kmeans(x, 4608, seed=0) for x in xs]
    _sync()
    alone_s = time.perf_counter() - t
    t = time.perf_counter()
    together = module.kmeans_many(xs, 4608, seed=0)
    _sync()
    together_s = time.perf_counter() - t
    for a, b in zip(alone, together):
        assert b.labels.unique().numel() == 4608
        assert abs(b.inertia - a.inertia) <= 0.01 * a.inertia
    _record("kmeans_many_8_large_v3_layers", dict(
        alone_s=alone_s, together_s=together_s, speedup=alone_s / together_s,
        same_labels=sum(bool(torch.equal(a.labels, b.labels)) for a, b in zip(alone, together)),
        inertia_ratio=sum(b.inertia for b in together) / sum(a.inertia for a in alone)))


@pytest.mark.parametrize("method", ["cluster", "magnitude"])
def test_whisper_base_sized_compresses_alike_on_cuda_and_cpu(method):
    dense = _whisper("base")
    reports, models = {}, {}
    for device in ("cpu", "cuda"):
        model = copy.deepcopy(dense).to(device)
        _sync()
        reports[device] = compress(model, method=method, sparsity=0.1, scope="ffn", seed=0, progress=False)
        _sync()
        models[device] = model
    assert widths(models["cpu"]) == widths(models["cuda"])
    cost = {d: sum(u.cost for u in r.units) for d, r in reports.items()}
    assert abs(cost["cuda"] - cost["cpu"]) <= 0.01 * cost["cpu"], cost
    logits = {d: _runs(m, d) for d, m in models.items()}  # both pruned models run
    dense_logits = _runs(dense, "cpu")
    drift = {d: float((v - dense_logits).abs().mean() / dense_logits.abs().mean()) for d, v in logits.items()}
    _record(f"whisper_base_ffn10_{method}", dict(
        summed_cost_cpu=cost["cpu"], summed_cost_cuda=cost["cuda"],
        relative_gap=abs(cost["cuda"] - cost["cpu"]) / cost["cpu"],
        seconds_cpu=reports["cpu"].seconds, seconds_cuda=reports["cuda"].seconds,
        output_drift_from_dense=drift))


def test_whisper_large_v3_sized_ffn_at_10_percent():
    model = _whisper("large-v3", "cuda")
    torch.cuda.reset_peak_memory_stats()
    _sync()
    t = time.perf_counter()
    report = compress(model, sparsity=0.1, scope="ffn", progress=False)
    _sync()
    seconds = time.perf_counter() - t
    assert all(u.channels_after == 4608 for u in report.units) and len(report.units) == 64
    _runs(model, "cuda")
    _record("whisper_large_v3_ffn10_cluster", dict(
        seconds=seconds, peak_gib=torch.cuda.max_memory_allocated() / 2**30, target_seconds=10,
        param_sparsity=report.param_sparsity))
