"""The main job on the real embedded Whisper, at a few utterances."""

from __future__ import annotations

import json

import pytest

from speechprune.cli import main


@pytest.mark.slow
def test_compare_command_writes_results_and_figure(tmp_path, capsys):
    out = tmp_path / "main"
    code = main(["compare", "--model", "embedded:whisper-tiny.en", "--data", "embedded", "--max-samples", "4",
                 "--sparsity", "0.2", "--scope", "encoder.ffn", "--merges", "mean,projection", "--features", "both,producer", "--out", str(out)])
    assert code == 0
    result = json.loads((out / "results.json").read_text())
    labels = [r["label"] for r in result["records"]]
    assert labels == ["dense", "cluster", "cluster projection", "cluster producer", "cluster producer projection",
                      "magnitude"]
    assert [r["compression"]["features"] for r in result["records"][1:]] == ["both", "both", "producer", "producer",
                                                                             "producer"]
    dense, *pruned = result["records"]
    assert dense["compression"] is None and dense["n_utterances"] == 4
    for r in pruned:
        c = r["compression"]
        assert c["scope"] == ["encoder.ffn"] and c["sparsity"] == 0.2
        assert c["params_after"] < c["params_before"]
        assert 0 <= r["wer"] < 1000
    assert (out / "wer.png").stat().st_size > 10_000
    table = capsys.readouterr().out
    assert "magnitude" in table and "embedded:whisper-tiny.en" in table
    # a second run refuses to overwrite the results unless told to
    assert main(["compare", "--model", "embedded:whisper-tiny.en", "--max-samples", "1", "--out", str(out)]) == 2
