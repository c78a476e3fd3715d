"""Hub-ready folders: plain transformers loading where widths are uniform, a loud refusal where not, the card."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from huggingface_hub.repocard import metadata_load

from speechprune import compress, load_checkpoint, save_pruned
from speechprune.cli import main
from speechprune.errors import SpeechPruneError
from speechprune.hub import add_evaluation, plain_loadable
from speechprune.testing import tiny_input, tiny_model, tiny_processor

CLASSES = {"whisper": transformers.WhisperForConditionalGeneration, "hubert": transformers.HubertForCTC}


def _logits(model, family):
    with torch.no_grad():
        return model(**tiny_input(family)).logits


@pytest.mark.parametrize("family", ["whisper", "hubert"])
def test_uniform_folder_loads_with_plain_transformers_with_the_same_outputs(tmp_path, family):
    model = tiny_model(family)
    report = compress(model, sparsity=0.25, scope="ffn", progress=False)
    folder = save_pruned(model, tmp_path / "pruned", report=report)
    config = json.loads((folder / "config.json").read_text())
    fields = ("encoder_ffn_dim", "decoder_ffn_dim") if family == "whisper" else ("intermediate_size",)
    assert [config[f] for f in fields] == [48] * len(fields)
    assert plain_loadable(config)
    plain = CLASSES[family].from_pretrained(folder).eval()
    ours = load_checkpoint(folder)
    assert torch.equal(_logits(plain, family), _logits(ours, family))
    assert torch.equal(_logits(plain, family), _logits(model, family))
    assert metadata_load(folder / "README.md")["library_name"] == "transformers"


@pytest.mark.parametrize("family,kwargs,field", [
    ("whisper", dict(sparsity=0.3, scope="ffn", allocation="variance"), "encoder_ffn_dim"),
    ("hubert", dict(sparsity=0.3, scope="ffn", allocation="variance"), "intermediate_size"),
    ("whisper", dict(sparsity=0.25, scope="encoder.attention"), "encoder_attention_heads"),
    ("hubert", dict(sparsity=0.25, scope="attention"), "num_attention_heads"),
])
def test_non_uniform_folder_refuses_plain_loading_loudly(tmp_path, family, kwargs, field):
    model = tiny_model(family)
    report = compress(model, progress=False, **kwargs)
    folder = save_pruned(model, tmp_path / "pruned", report=report)
    config = json.loads((folder / "config.json").read_text())
    assert "speechprune.load_checkpoint" in config[field] and not plain_loadable(config)
    for load in (lambda: CLASSES[family].from_pretrained(folder),
                 lambda: CLASSES[family].from_pretrained(folder, ignore_mismatched_sizes=True),
                 lambda: transformers.AutoModel.from_pretrained(folder)):
        with pytest.raises(Exception, match=f"{field}.*speechprune.load_checkpoint"):
            load()
    ours = load_checkpoint(folder)  # the guard is only for plain transformers
    assert torch.equal(_logits(ours, family), _logits(model, family))
    assert getattr(ours.config, field) == getattr(tiny_model(family).config, field)
    card = (folder / "README.md").read_text()
    assert metadata_load(folder / "README.md")["library_name"] == "speechprune"
    assert "load_checkpoint" in card and "refuses this folder on purpose" in card


def test_pruned_folder_saved_again_keeps_its_guard_and_base_model(tmp_path):
    model = tiny_model("whisper")
    model.config._name_or_path = "openai/whisper-tiny"
    compress(model, sparsity=0.3, allocation="variance", progress=False)
    first = save_pruned(model, tmp_path / "a")
    again = load_checkpoint(first)
    second = save_pruned(again, tmp_path / "b")
    config = json.loads((second / "config.json").read_text())
    assert not plain_loadable(config)
    assert config["speechprune"]["base_model"] == "openai/whisper-tiny"
    assert config["speechprune"]["dense_fields"]["encoder_ffn_dim"] == 64
    assert torch.equal(_logits(load_checkpoint(second), "whisper"), _logits(model, "whisper"))


def test_card_metadata_and_body(tmp_path):
    model = tiny_model("hubert")
    model.config._name_or_path = "facebook/hubert-large-ls960-ft"
    report = compress(model, method="magnitude", sparsity=0.5, progress=False)
    folder = save_pruned(model, tmp_path / "hubert-half", report=report)
    meta = metadata_load(folder / "README.md")
    assert meta["pipeline_tag"] == "automatic-speech-recognition"
    assert {"speechprune", "pruning", "hubert", "magnitude-pruning"} <= set(meta["tags"])
    assert meta["base_model"] == "facebook/hubert-large-ls960-ft"
    card = (folder / "README.md").read_text()
    assert ("speechprune compress facebook/hubert-large-ls960-ft --method magnitude --sparsity 0.5 --scope "
            "encoder.ffn --allocation uniform --out hubert-half") in card  # magnitude takes no seed
    assert f"{report.params_before:,} -> {report.params_after:,}" in card
    assert "| encoder.ffn | 32 neurons |" in card
    assert "upload_folder(" in card and "Not measured yet" in card
    assert str(tmp_path) not in card


def test_card_command_reproduces_closest_pairs_on_producer_features():
    """The card's command for a non-k-means method carries the options that shaped the model, so
    running it gives the same weights (it once left out ``--features producer``)."""
    import copy
    import shlex

    from speechprune.cli import build_parser
    from speechprune.hub import command_line

    dense = tiny_model("whisper")
    first = copy.deepcopy(dense)
    report = compress(first, method="pairs", features="producer", sparsity=0.25, scope="ffn", progress=False)
    command = command_line(report.to_dict(), model="m", out="o")
    assert "--method pairs" in command and "--features producer" in command
    args = build_parser().parse_args(shlex.split(command)[1:])
    again = copy.deepcopy(dense)
    compress(again, method=args.method, sparsity=args.sparsity, scope=args.scope, allocation=args.allocation,
             seed=args.seed, features=args.features, weighting=args.weighting, merge=args.merge,
             recipe=args.recipe, progress=False)
    a, b = first.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    plain = compress(copy.deepcopy(dense), method="pairs", sparsity=0.25, scope="ffn", progress=False)
    assert "--features both" in command_line(plain.to_dict(), model="m", out="o")


def test_embedded_checkpoint_names_its_hub_origin(tmp_path):
    source = tmp_path / "cache" / "whisper-base"
    tiny_model("whisper").save_pretrained(source)
    (source / "speechprune_source.json").write_text(json.dumps({"model": "embedded:whisper-base"}))
    model = load_checkpoint(source)
    compress(model, sparsity=0.25, progress=False)
    folder = save_pruned(model, tmp_path / "out")
    assert metadata_load(folder / "README.md")["base_model"] == "openai/whisper-base"


def test_unknown_base_model_is_left_out(tmp_path):
    model = tiny_model("whisper")
    compress(model, sparsity=0.25, progress=False)
    folder = save_pruned(model, tmp_path / "out")
    assert "base_model" not in metadata_load(folder / "README.md")


def test_cli_compress_card_has_the_command(tmp_path):
    src = tmp_path / "tiny"
    tiny_model("whisper").save_pretrained(src)
    out = tmp_path / "pruned"
    assert main(["compress", str(src), "--sparsity", "0.25", "--max-iter", "7", "--out", str(out), "--device", "cpu"]) == 0
    card = (out / "README.md").read_text()
    assert "speechprune compress tiny --method cluster --sparsity 0.25 --scope encoder.ffn,decoder.ffn" in card
    assert "--out pruned --max-iter 7" in card and str(tmp_path) not in card
    assert json.loads((out / "config.json").read_text())["encoder_ffn_dim"] == 48


def test_evaluate_card_records_the_wer(tmp_path, capsys):
    model = tiny_model("hubert")
    report = compress(model, sparsity=0.5, progress=False)
    folder = save_pruned(model, tmp_path / "pruned", processor=tiny_processor("hubert"), report=report)
    out = tmp_path / "wer.json"
    assert main(["evaluate", str(folder), "--data", "embedded", "--max-samples", "2", "--batch-size", "2",
                 "--json", str(out), "--card", "--device", "cpu"]) == 0
    record = json.loads(out.read_text())
    assert "recorded the WER in" in capsys.readouterr().out
    card = (folder / "README.md").read_text()
    assert f"| {record['data']['name']} | 2 | {record['ref_words']} | {record['wer']:.2f} |" in card
    meta = metadata_load(folder / "README.md")
    metric = meta["model-index"][0]["results"][0]["metrics"][0]
    assert metric["type"] == "wer" and metric["value"] == record["wer"]
    # a second measurement on the same data replaces the row; other data adds one
    add_evaluation(folder, {**record, "wer": 12.5})
    add_evaluation(folder, {**record, "data": {"name": "other"}, "wer": 50.0})
    rows = json.loads((folder / "speechprune_evaluations.json").read_text())
    assert [(r["data"], r["wer"]) for r in rows] == [(record["data"]["name"], 12.5), ("other", 50.0)]
    assert "| 12.50 |" in (folder / "README.md").read_text()


def test_evaluate_card_needs_a_speechprune_folder(tmp_path, capsys):
    plain = tmp_path / "dense"
    tiny_model("hubert").save_pretrained(plain)
    assert main(["evaluate", str(plain), "--max-samples", "1", "--card"]) == 2
    assert "--card needs MODEL to be a folder saved by speechprune" in capsys.readouterr().err
    with pytest.raises(SpeechPruneError, match="not saved by speechprune"):
        add_evaluation(plain, {"n_utterances": 1, "ref_words": 1, "wer": 0.0})


def test_non_uniform_folder_still_gives_its_processor_through_speechprune(tmp_path):
    from transformers import AutoProcessor

    from speechprune import load_model

    model = tiny_model("whisper")
    compress(model, sparsity=0.5, scope="attention", progress=False)
    folder = save_pruned(model, tmp_path / "pruned", processor=tiny_processor("whisper"))
    with pytest.raises(Exception, match="speechprune.load_checkpoint"):
        AutoProcessor.from_pretrained(folder)
    loaded, processor = load_model(folder)
    assert type(processor).__name__ == "WhisperProcessor"
    assert processor.tokenizer.convert_tokens_to_ids("a") == tiny_processor("whisper").tokenizer.convert_tokens_to_ids("a")
    assert "load_model" in (folder / "README.md").read_text()
