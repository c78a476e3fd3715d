"""Fine-tuning pruned models: loss goes down, pruned shapes survive, two processes, resume, bad input."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import transformers
from conftest import make_tiny_hubert
from tokenizers.pre_tokenizers import ByteLevel
from transformers import (
    Wav2Vec2CTCTokenizer,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Processor,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizer,
)

import speechprune
from speechprune.checkpoint import load_checkpoint
from speechprune.cli import main as cli_main
from speechprune.compress import compress
from speechprune.data import SpeechSet, Utterance
from speechprune.errors import SpeechPruneError
from speechprune.finetune import (
    SpeechCollator,
    StreamedSpeech,
    check_overlap,
    encode_labels,
    finetune,
    prepare_out_dir,
)
from speechprune.models import load_processor
from speechprune.structure import widths
from speechprune.testing import tiny_model

PHRASES = ["yes.", "no!", "Hello, world.", "Good day", "please hold", "thank you", "good-bye", "one more time"]


def _speech(n: int = 8, name: str = "toy", offset: int = 0, seconds: float = 1.0) -> SpeechSet:
    """Tones with a little noise, one pitch per phrase: learnable, and distinct audio per utterance."""
    rng = np.random.default_rng(offset)
    t = np.arange(int(16_000 * seconds)) / 16_000
    utterances = []
    for i in range(n):
        k = (i + offset) % len(PHRASES)
        audio = 0.3 * np.sin(2 * np.pi * (200 + 40 * k) * t) + 0.01 * rng.standard_normal(t.size)
        utterances.append(Utterance(f"{name}-{i}", audio.astype(np.float32), PHRASES[k]))
    return SpeechSet(name, utterances, {"name": name})


def _ctc_processor(folder: Path) -> Wav2Vec2Processor:
    """An uppercase LibriSpeech-style character vocabulary of 32 entries (the tiny HuBERT's size)."""
    chars = ["<pad>", "<s>", "</s>", "<unk>", "|", *map(chr, range(65, 91)), "'"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({c: i for i, c in enumerate(chars)}))
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16_000, padding_value=0.0,
                                         do_normalize=True, return_attention_mask=False)
    return Wav2Vec2Processor(feature_extractor=extractor, tokenizer=Wav2Vec2CTCTokenizer(str(folder / "vocab.json")))


SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|translate|>", "<|notimestamps|>"]


def _whisper_processor() -> WhisperProcessor:
    """Byte-level Whisper tokenizer without merges (262 tokens); 40 log-mel frames of 8 bins for 2 s."""
    tokenizer = WhisperTokenizer(vocab={ch: i for i, ch in enumerate(sorted(ByteLevel.alphabet()))}, merges=[])
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIALS})
    tokenizer.set_prefix_tokens()
    extractor = WhisperFeatureExtractor(feature_size=8, sampling_rate=16_000, hop_length=800, chunk_length=2, n_fft=1600)
    return WhisperProcessor(feature_extractor=extractor, tokenizer=tokenizer)


def _tiny_whisper() -> WhisperForConditionalGeneration:
    # speechprune.testing's tiny Whisper, with a vocabulary that covers _processor()'s byte tokenizer
    return tiny_model("whisper", vocab_size=262, max_target_positions=64, decoder_start_token_id=257,
                      pad_token_id=256, bos_token_id=256, eos_token_id=256)


def _pruned(family: str, tmp_path: Path):
    if family == "whisper":
        model, processor = _tiny_whisper(), _whisper_processor()
        compress(model, method="cluster", sparsity=0.5, scope="all", progress=False)
    else:
        model, processor = make_tiny_hubert(), _ctc_processor(tmp_path / "vocab")
        compress(model, method="magnitude", sparsity=0.5, scope="ffn", progress=False)
    return model, processor


@torch.no_grad()
def _loss(model, processor, speech: SpeechSet) -> float:
    labels = encode_labels(model, processor, speech)
    batch = SpeechCollator(processor, whisper=model.config.model_type == "whisper")(
        [{"id": u.id, "audio": u.audio, "labels": row} for u, row in zip(speech, labels)])
    model.eval()
    return float(model(**batch).loss)


@pytest.mark.parametrize("family", ["whisper", "hubert"])
def test_training_lowers_the_loss_and_pruned_shapes_survive_reload(family, tmp_path):
    model, processor = _pruned(family, tmp_path)
    shapes = widths(model)
    seconds = 1.0 if family == "whisper" else 0.5
    train = _speech(8, seconds=seconds)
    before = _loss(model, processor, train)
    record = finetune(model, train, processor=processor, eval=_speech(4, "held-out", offset=3, seconds=seconds),
                      out_dir=tmp_path / "out", epochs=4, batch_size=4, learning_rate=1e-2, warmup=0,
                      logging_steps=1, progress=False)
    after = _loss(model, processor, train)
    assert after < 0.9 * before, (before, after)
    assert record["results"]["global_step"] == 8 and record["model"]["widths"] == shapes
    assert len(record["results"]["eval_losses"]) == 4
    assert record["results"]["seconds_per_epoch"] > 0

    reloaded = load_checkpoint(tmp_path / "out")
    assert widths(reloaded) == shapes
    for key, value in model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[key], value, rtol=0, atol=0)
    assert type(load_processor(tmp_path / "out")).__name__ == type(processor).__name__
    saved = json.loads((tmp_path / "out" / "finetune.json").read_text())
    assert saved["results"]["train_loss"] == pytest.approx(record["results"]["train_loss"])
    assert any((tmp_path / "out" / "checkpoints").glob("checkpoint-*"))


class _Interrupt(Exception):
    pass


class _StopAt(transformers.TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise _Interrupt


def test_resume_continues_where_it_stopped(tmp_path):
    options = dict(processor=_whisper_processor(), epochs=2, batch_size=4, learning_rate=1e-2, warmup=0,
                   save_steps=1, logging_steps=1, progress=False)
    straight = finetune(_tiny_whisper(), _speech(8), out_dir=tmp_path / "straight", **options)

    with pytest.raises(_Interrupt):
        finetune(_tiny_whisper(), _speech(8), out_dir=tmp_path / "run", callbacks=[_StopAt(2)], **options)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["checkpoint-2"]
    with pytest.raises(SpeechPruneError, match="--resume"):
        finetune(_tiny_whisper(), _speech(8), out_dir=tmp_path / "run", **options)
    resumed = finetune(_tiny_whisper(), _speech(8), out_dir=tmp_path / "run", resume=True, **options)

    assert resumed["settings"]["resumed_from_step"] == 2
    assert [h["step"] for h in resumed["results"]["losses"]] == [1, 2, 3, 4]  # history carried over
    assert [h["loss"] for h in resumed["results"]["losses"]] == pytest.approx(
        [h["loss"] for h in straight["results"]["losses"]])
    a, b = load_checkpoint(tmp_path / "straight").state_dict(), load_checkpoint(tmp_path / "run").state_dict()
    for key in a:
        torch.testing.assert_close(b[key], a[key])


def test_resume_refuses_another_model(tmp_path):
    options = dict(processor=_whisper_processor(), batch_size=4, max_steps=1, save_steps=1, progress=False)
    finetune(_tiny_whisper(), _speech(8), out_dir=tmp_path / "run", **options)
    other = _tiny_whisper()
    compress(other, method="magnitude", sparsity=0.5, scope="ffn", progress=False)
    with pytest.raises(SpeechPruneError, match="other widths"):
        finetune(other, _speech(8), out_dir=tmp_path / "run", resume=True, **options)


def test_the_card_of_a_fine_tuned_folder_says_so(tmp_path):
    model = _tiny_whisper()
    compress(model, method="magnitude", sparsity=0.5, scope="ffn", progress=False)
    finetune(model, _speech(8), processor=_whisper_processor(), out_dir=tmp_path / "run", batch_size=4, max_steps=1,
             save_steps=1, progress=False)
    card = (tmp_path / "run" / "README.md").read_text(encoding="utf-8")
    assert "fine-tuned with `speechprune finetune`: `finetune.json`" in card
    assert "magnitude pruning" in card  # still the card of the pruned model


def test_fine_tuning_keeps_the_models_special_token_ids(tmp_path):
    """``Trainer.train`` aligns the config's pad/bos/eos ids with the tokenizer's. On transformers 5.15
    (Colab's) a tokenizer without a pad token set ``pad_token_id`` to None and Whisper's loss stopped
    ("pad_token_id has to be defined"); later versions copy the tokenizer's bos (256) over the model's."""
    processor = _whisper_processor()
    assert processor.tokenizer.pad_token_id is None and processor.tokenizer.bos_token_id == 256
    model = tiny_model("whisper", vocab_size=262, max_target_positions=64, decoder_start_token_id=257,
                       pad_token_id=256, bos_token_id=257, eos_token_id=256)
    ids = dict(pad_token_id=256, bos_token_id=257, eos_token_id=256)
    record = finetune(model, _speech(2), processor=processor, out_dir=tmp_path / "run", batch_size=2, max_steps=1,
                      progress=False)
    assert record["results"]["global_step"] == 1 and np.isfinite(record["results"]["train_loss"])
    for config in (model.config, model.generation_config, load_checkpoint(tmp_path / "run").config):
        assert {name: getattr(config, name) for name in ids} == ids
    saved = json.loads((tmp_path / "run" / "generation_config.json").read_text())
    assert {name: saved.get(name) for name in ids} == ids


@pytest.mark.slow
def test_two_processes_on_cpu_with_torchrun(tmp_path):
    model_dir, data_dir, out = tmp_path / "model", tmp_path / "speech", tmp_path / "out"
    model = make_tiny_hubert()
    compress(model, method="cluster", sparsity=0.5, scope="ffn", progress=False)
    from speechprune.checkpoint import save_pruned

    save_pruned(model, model_dir, processor=_ctc_processor(tmp_path / "vocab"))
    data_dir.mkdir()
    with open(data_dir / "metadata.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "text", "split"])
        for i, u in enumerate(_speech(10)):
            sf.write(data_dir / f"{u.id}.wav", u.audio, 16_000)
            writer.writerow([f"{u.id}.wav", u.text, "train" if i < 8 else "test"])
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "speechprune", "finetune",
               str(model_dir), "--data", str(data_dir), "--split", "train", "--eval-data", str(data_dir),
               "--eval-split", "test", "--batch-size", "2", "--max-steps", "3", "--logging-steps", "1",
               "--out", str(out)]
    root = str(Path(speechprune.__file__).resolve().parents[1])  # this checkout, installed or not
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    record = json.loads((out / "finetune.json").read_text())
    assert record["settings"]["processes"] == 2 and record["settings"]["parallel"] == "distributed"
    assert record["settings"]["effective_batch"] == 4 and record["results"]["global_step"] == 3
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]
    assert [p.name for p in out.glob(".*")] == [".speechprune-output.json"]  # the marker; no leftover staging
    assert widths(load_checkpoint(out)) == widths(model)


# ---------------------------------------------------------------- bad input, before any training


def test_too_little_data_for_one_batch(tmp_path):
    with pytest.raises(SpeechPruneError, match="too little for one batch"):
        finetune(_tiny_whisper(), _speech(3), processor=_whisper_processor(), out_dir=tmp_path / "out", batch_size=4)
    assert not (tmp_path / "out").exists()


def test_overlapping_validation_set_is_refused():
    train = _speech(6)
    with pytest.raises(SpeechPruneError, match="shared utterance id"):
        check_overlap(train, train.head(2))
    copy = SpeechSet("copy", [Utterance("other-id", train[1].audio.copy(), train[1].text)], {})
    with pytest.raises(SpeechPruneError, match=r"identical audio.*other-id = toy-1"):
        check_overlap(train, copy)
    assert "SHA-1" in check_overlap(train, _speech(2, "held-out", offset=3))


def test_overlap_refused_before_training(tmp_path):
    with pytest.raises(SpeechPruneError, match="overlaps the train set"):
        finetune(_tiny_whisper(), _speech(8), eval=_speech(8).head(1), processor=_whisper_processor(),
                 out_dir=tmp_path / "out", batch_size=4)
    assert not (tmp_path / "out").exists()


def test_out_dir_that_holds_something_else(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(SpeechPruneError, match=r"holds something else \(notes.txt\)"):
        prepare_out_dir(tmp_path / "out", resume=False)
    with pytest.raises(SpeechPruneError, match="holds no speechprune fine-tuning run"):
        prepare_out_dir(tmp_path / "out", resume=True)
    (tmp_path / "file").write_text("")
    with pytest.raises(SpeechPruneError, match="is a file"):
        prepare_out_dir(tmp_path / "file", resume=False)
    assert prepare_out_dir(tmp_path / "new", resume=False) == tmp_path / "new"


def test_ctc_tokenizer_that_cannot_encode_the_transcripts(tmp_path):
    model, processor = make_tiny_hubert(), _ctc_processor(tmp_path)
    speech = _speech(4)
    speech.utterances[2] = Utterance("digits", speech[2].audio, "Press 1 for café")
    with pytest.raises(SpeechPruneError, match=r"cannot encode 1 of 4 .*'1', 'É'.*digits: 'Press 1 for café'"):
        encode_labels(model, processor, speech)
    with pytest.raises(SpeechPruneError, match="cannot encode"):
        finetune(model, speech, processor=processor, out_dir=tmp_path / "out", batch_size=2)
    assert not (tmp_path / "out").exists()


def test_ctc_labels_follow_the_vocabulary(tmp_path):
    processor = _ctc_processor(tmp_path)
    speech = SpeechSet("s", [Utterance("a", np.zeros(16_000, np.float32), "Good-bye, it's   me!")], {})
    labels = encode_labels(make_tiny_hubert(), processor, speech)
    assert "".join(processor.tokenizer.convert_ids_to_tokens(labels[0])) == "GOOD|BYE|IT'S|ME"


def test_whisper_labels_match_what_generate_decodes():
    processor = _whisper_processor()
    speech = SpeechSet("s", [Utterance("a", np.zeros(800, np.float32), "Hi.")], {})
    labels = encode_labels(_tiny_whisper(), processor, speech)[0]
    tokens = processor.tokenizer.convert_ids_to_tokens(labels)
    # the model prepends <|startoftranscript|> itself; text carries Whisper's leading space
    assert tokens[0] == "<|notimestamps|>" and tokens[-1] == "<|endoftext|>"
    assert processor.tokenizer.decode(labels, skip_special_tokens=True) == " Hi."


def test_whisper_clip_longer_than_the_window(tmp_path):
    speech = _speech(4, seconds=3.0)  # the tiny extractor's window is 2 s
    with pytest.raises(SpeechPruneError, match="longer than Whisper's 2 s window"):
        encode_labels(_tiny_whisper(), _whisper_processor(), speech)


def test_streamed_speech_decodes_on_access():
    rows, ids = [], []
    for u in _speech(3):
        buffer = io.BytesIO()
        sf.write(buffer, u.audio, 16_000, format="FLAC")
        rows.append({"audio": {"bytes": buffer.getvalue(), "path": None}})
        ids.append(u.id)
    streamed = StreamedSpeech("streamed", rows, ids, [u.text for u in _speech(3)], {"name": "streamed"})
    assert len(streamed) == 3 and streamed[1].text == PHRASES[1]
    np.testing.assert_allclose(streamed[1].audio, _speech(3)[1].audio, atol=1e-4)
    assert check_overlap(streamed, _speech(2, "held-out")) == "utterance ids (audio not hashed: a streamed set)"
    with pytest.raises(SpeechPruneError, match="shared utterance id"):
        check_overlap(streamed, _speech(1))


def test_cli_reports_bad_input_without_traceback(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("")
    code = cli_main(["finetune", "embedded:whisper-tiny.en", "--data", "embedded:train", "--out", str(tmp_path / "out")])
    assert code == 2
    assert "holds something else" in capsys.readouterr().err


def test_a_language_the_model_cannot_use_is_refused_not_ignored():
    from speechprune.finetune import check_language
    from speechprune.testing import tiny_model

    ctc, whisper = tiny_model("hubert"), tiny_model("whisper")
    assert check_language(ctc, None) is None
    with pytest.raises(SpeechPruneError, match="'en' is for multilingual Whisper checkpoints; this hubert model has no "
                                               "language tokens"):
        check_language(ctc, "en")
    whisper.generation_config.is_multilingual = False
    assert check_language(whisper, None) == check_language(whisper, "English") == "en"
    with pytest.raises(SpeechPruneError, match="'de' is for multilingual Whisper checkpoints; this one is English-only"):
        check_language(whisper, "de")
    whisper.generation_config.is_multilingual = True
    assert (check_language(whisper, None), check_language(whisper, "German"), check_language(whisper, "fr")) == (
        "en", "de", "fr")
    with pytest.raises(SpeechPruneError, match="unknown --language 'xx': use a Whisper language code"):
        check_language(whisper, "xx")
