"""A cheap diagnostic before any WER study: relative error of the encoder output after pruning.

Prunes the embedded Whisper base's encoder feed-forward channels (20% and 50%) by magnitude,
k-means clustering (paper's and producer features, seeds 0-1) and closest pairs first, and prints
|enc(pruned) - enc(dense)| / |enc(dense)| on the first 8 clips of the test split. No decoding, so
it says nothing about loops; it is a smooth signal of how much each assignment disturbs the encoder.

    PYTHONPATH=. python studies/probe_encoder_error.py
"""

import copy

import torch

from speechprune.compress import compress
from speechprune.data import load_speech
from speechprune.models import load_model


def main() -> None:
    model, processor = load_model("embedded:whisper-base")
    speech = load_speech("embedded", max_samples=8)
    feats = processor.feature_extractor([u.audio for u in speech.utterances], sampling_rate=16000,
                                        return_tensors="pt").input_features

    @torch.no_grad()
    def encode(m):
        return m.model.encoder(feats).last_hidden_state

    reference = encode(model)
    variants = [("magnitude", "both", 0), ("cluster", "both", 0), ("cluster", "both", 1), ("cluster", "producer", 0),
                ("cluster", "producer", 1), ("pairs", "both", 0), ("pairs", "producer", 0)]
    for sparsity in (0.2, 0.5):
        for method, features, seed in variants:
            pruned = copy.deepcopy(model)
            report = compress(pruned, method=method, sparsity=sparsity, scope="encoder.ffn", features=features,
                              seed=seed, progress=False)
            error = float((encode(pruned) - reference).norm() / reference.norm())
            what = f"seed {seed}" if method == "cluster" else "no seed"
            print(f"encoder.ffn {sparsity:.0%} {method:9s} {features:8s} {what:8s}: encoder relative error "
                  f"{error:.3f}, cost {sum(u.cost for u in report.units):.4g}", flush=True)


if __name__ == "__main__":
    main()
