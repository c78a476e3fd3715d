"""`speechprune compress` end to end on a tiny local model folder."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny_whisper
from test_compress import _forward, _input

from speechprune.checkpoint import load_checkpoint
from speechprune.cli import main


@pytest.fixture
def tiny_folder(tmp_path):
    folder = tmp_path / "tiny-whisper"
    make_tiny_whisper().save_pretrained(folder)
    return folder


def test_compress_writes_a_folder_that_reloads(tmp_path, tiny_folder, capsys):
    out = tmp_path / "pruned"
    code = main(["compress", str(tiny_folder), "--method", "cluster", "--sparsity", "0.5",
                 "--scope", "encoder.ffn,decoder.attention", "--allocation", "variance", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "encoder.layers.0.ffn" in printed and "removed" in printed
    report = json.loads((out / "speechprune_report.json").read_text())
    assert report["scope"] == ["encoder.ffn", "decoder.attention"] and report["allocation"] == "variance"
    model = load_checkpoint(out)
    assert sum(l.fc1.out_features for l in model.model.encoder.layers) == 64  # 2 layers x 64 channels, half kept
    assert torch.isfinite(_forward(model, _input("whisper"))).all()


def test_compress_recipe_flags_reach_the_report_and_the_config(tmp_path, tiny_folder):
    out = tmp_path / "pruned"
    assert main(["compress", str(tiny_folder), "--sparsity", "0.25", "--scope", "ffn", "--features", "normalized",
                 "--weighting", "consumer", "--merge", "weighted", "--out", str(out)]) == 0
    report = json.loads((out / "speechprune_report.json").read_text())
    assert (report["features"], report["weighting"], report["merge"]) == ("normalized", "consumer", "weighted")
    config = json.loads((out / "config.json").read_text())
    assert config["speechprune"]["compressions"][-1]["features"] == "normalized"
    assert load_checkpoint(out).model.encoder.layers[0].fc1.out_features == 48


@pytest.mark.parametrize("args,message", [
    (["--sparsity", "1.0"], "sparsity must be in"),
    (["--sparsity", "0.3", "--scope", "middle"], "unknown scope part"),
    (["--sparsity", "0.95", "--scope", "attention"], "zero"),
])
def test_bad_input_exits_2_with_a_message_and_writes_nothing(tmp_path, tiny_folder, capsys, args, message):
    out = tmp_path / "pruned"
    assert main(["compress", str(tiny_folder), *args, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_refuses_non_empty_out_before_loading_anything(tmp_path, tiny_folder, capsys):
    out = tmp_path / "pruned"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["compress", str(tiny_folder), "--sparsity", "0.2", "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_an_unknown_scope_part_is_refused_before_the_model_is_loaded(tmp_path, tiny_folder, capsys, monkeypatch):
    import speechprune.models

    def never(*args, **kwargs):
        raise AssertionError("loaded a model before checking --scope")

    monkeypatch.setattr(speechprune.models, "load_checkpoint", never)
    for argv in (["compress", str(tiny_folder), "--sparsity", "0.2", "--out", str(tmp_path / "o")],
                 ["compare", "--model", str(tiny_folder), "--out", str(tmp_path / "o")]):
        assert main([*argv, "--scope", "encoder.fnn"]) == 2
        err = capsys.readouterr().err
        assert "unknown scope part 'encoder.fnn'" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_missing_model_and_unreadable_folder(tmp_path, capsys):
    assert main(["compress", str(tmp_path / "nope"), "--sparsity", "0.2", "--out", str(tmp_path / "o")]) == 2
    assert "nope" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{}")
    assert main(["compress", str(bad), "--sparsity", "0.2", "--out", str(tmp_path / "o")]) == 2
    assert "bad" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
