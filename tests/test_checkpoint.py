"""Pruned models save to a folder and load back strictly, without the original model."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny_hubert, make_tiny_wav2vec2, make_tiny_whisper
from test_compress import _forward, _input

from speechprune.checkpoint import check_output_dir, load_checkpoint, save_pruned
from speechprune.compress import compress
from speechprune.errors import SpeechPruneError
from speechprune.structure import widths

MAKERS = {"hubert": make_tiny_hubert, "wav2vec2": make_tiny_wav2vec2, "whisper": make_tiny_whisper}


@pytest.mark.parametrize("family", list(MAKERS))
@pytest.mark.parametrize("scope,allocation", [("ffn", "uniform"), ("attention", "uniform"), ("all", "variance")])
def test_save_then_strict_load_gives_identical_outputs(tmp_path, family, scope, allocation):
    model = MAKERS[family]()
    report = compress(model, sparsity=0.5, scope=scope, allocation=allocation, progress=False)
    out = save_pruned(model, tmp_path / "pruned", report=report)
    assert (out / "model.safetensors").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["speechprune"]["widths"] == widths(model)
    assert json.loads((out / "speechprune_report.json").read_text())["method"] == "cluster"
    loaded = load_checkpoint(out)
    assert widths(loaded) == widths(model)
    assert {k: v.shape for k, v in loaded.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    x = _input(family)
    torch.testing.assert_close(_forward(loaded, x), _forward(model, x), rtol=0, atol=0)
    if family == "whisper":
        assert torch.equal(loaded.generate(x, max_new_tokens=4), model.generate(x, max_new_tokens=4))
        assert loaded.proj_out.weight.data_ptr() == loaded.model.decoder.embed_tokens.weight.data_ptr()


def test_dense_model_round_trips_too(tmp_path, tiny_hubert):
    out = save_pruned(tiny_hubert, tmp_path / "dense")
    x = _input("hubert")
    torch.testing.assert_close(_forward(load_checkpoint(out), x), _forward(tiny_hubert, x))


def test_non_empty_out_is_refused_and_left_alone(tmp_path, tiny_whisper):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    with pytest.raises(SpeechPruneError, match="not empty"):
        save_pruned(tiny_whisper, out)
    assert (out / "notes.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no partial folder left
    with pytest.raises(SpeechPruneError, match="did not write.*notes.txt"):
        save_pruned(tiny_whisper, out, overwrite=True)  # --overwrite replaces only what speechprune wrote
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
    (out / "notes.txt").unlink()
    save_pruned(tiny_whisper, out)
    save_pruned(tiny_whisper, out, overwrite=True)  # a speechprune output is replaced
    assert (out / "config.json").is_file() and (out / ".speechprune-output.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_out_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(SpeechPruneError, match="is a file"):
        check_output_dir(f)


def test_unreadable_checkpoints_get_clear_errors(tmp_path, tiny_whisper):
    with pytest.raises(SpeechPruneError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SpeechPruneError, match="no config.json"):
        load_checkpoint(empty)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    with pytest.raises(SpeechPruneError, match="cannot read"):
        load_checkpoint(bad)

    compress(tiny_whisper, sparsity=0.5, progress=False)
    out = save_pruned(tiny_whisper, tmp_path / "pruned")
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated download
    with pytest.raises(SpeechPruneError, match="cannot load|does not match"):
        load_checkpoint(out)


def test_widths_that_disagree_with_weights_are_refused(tmp_path, tiny_whisper):
    compress(tiny_whisper, sparsity=0.5, progress=False)
    out = save_pruned(tiny_whisper, tmp_path / "pruned")
    config = json.loads((out / "config.json").read_text())
    config["speechprune"]["widths"]["encoder.layers.0.ffn"] = 10
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(SpeechPruneError, match="does not match"):
        load_checkpoint(out)


def test_other_architectures_are_refused(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)).save_pretrained(tmp_path / "bert")
    with pytest.raises(SpeechPruneError, match="BertModel.*supports"):
        load_checkpoint(tmp_path / "bert")


def test_a_config_without_architectures_is_refused_naming_the_field(tmp_path, tiny_whisper):
    out = save_pruned(tiny_whisper, tmp_path / "pruned")
    config = json.loads((out / "config.json").read_text())
    del config["architectures"]
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(SpeechPruneError, match=r"config.json names no architecture \(model_type 'whisper'\): add "
                                               r"\"architectures\", one of HubertForCTC, .*WhisperForConditional"):
        load_checkpoint(out)


def test_half_precision_checkpoints_load_as_float32_on_a_cpu(tmp_path):
    """Hub checkpoints such as Whisper-large-v3 are stored in float16, which crawls on a CPU."""
    import torch
    from conftest import make_tiny_whisper

    from speechprune.models import load_model

    make_tiny_whisper().half().save_pretrained(tmp_path / "half")
    model, _ = load_model(tmp_path / "half")
    assert next(model.parameters()).dtype == torch.float32
    model, _ = load_model(tmp_path / "half", dtype=torch.float16)
    assert next(model.parameters()).dtype == torch.float16
