"""Loading speech: the embedded set, arbitrary audiofolders, OpenSLR folders, and bad input."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechprune.data import EMBEDDED_DIR, SAMPLE_RATE, SpeechSet, Utterance, load_speech, to_16k_mono
from speechprune.errors import SpeechPruneError


def sine(rate: int, seconds: float, freq: float = 440.0) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_folder(root: Path, clips: dict[str, tuple[np.ndarray, int]], texts: dict[str, str] | None = None,
                 header: tuple[str, ...] = ("file_name", "text"), extra: dict[str, str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, (audio, rate) in clips.items():
        sf.write(root / name, audio, rate)
    with open(root / "metadata.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for name in clips:
            row = [name, (texts or {}).get(name, f"words of {name}")]
            writer.writerow(row + ([extra[name]] if extra else []))
    return root


# --- the embedded set ---------------------------------------------------------------------------

def test_embedded_sets_sizes_and_disjoint_split():
    default = load_speech("embedded")
    full = load_speech("embedded-full")
    train = load_speech("embedded:train")
    assert (len(default), len(train), len(full)) == (64, 144, 208)
    ids = {name: {u.id for u in s} for name, s in [("test", default), ("train", train), ("full", full)]}
    assert not ids["test"] & ids["train"]
    assert ids["test"] | ids["train"] == ids["full"]
    sources = {u.id.split("/")[0] for u in default}
    assert sources == {"asterisk", "librivox", "jfk"}  # every LibriVox clip and JFK are in the default set
    assert sum(u.id.startswith("librivox/") for u in default) == 5
    assert 4.5 < default.seconds / 60 < 5.5 and 15 < full.seconds / 60 < 17
    assert all(u.audio.dtype == np.float32 and u.audio.ndim == 1 and u.text for u in full)
    assert max(u.duration for u in full) <= 30.0


def test_embedded_aliases_and_provenance():
    assert [u.id for u in load_speech("embedded:default")] == [u.id for u in load_speech("embedded:test")]
    assert len(load_speech("embedded:full")) == 208
    speech = load_speech("embedded", max_samples=3)
    assert len(speech) == 3
    prov = speech.provenance
    assert prov["count"] == 3 and prov["hours"] > 0
    assert "CC-BY-SA-3.0" in prov["licence"] and "public domain" in prov["licence"]
    assert {"source", "licence", "path", "count", "hours"} <= prov.keys()
    assert len(load_speech("embedded-full", split="train")) == 144


def test_embedded_folder_is_a_plain_audiofolder():
    with open(EMBEDDED_DIR / "metadata.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["file_name", "text", "source", "split"]
    assert all((EMBEDDED_DIR / r["file_name"]).is_file() for r in rows)
    assert {r["split"] for r in rows} == {"train", "test"}
    readme = (EMBEDDED_DIR / "README.md").read_text()
    assert "CC-BY-SA-3.0" in readme and "Allison Smith" in readme and "build_speech_set.py" in readme
    assert sf.info(str(EMBEDDED_DIR / rows[0]["file_name"])).samplerate == 8000  # stored at native rate


def test_embedded_split_conflict_and_unknown_name():
    with pytest.raises(SpeechPruneError, match="embedded-full"):
        load_speech("embedded", split="train")
    with pytest.raises(SpeechPruneError, match="unknown embedded speech set"):
        load_speech("embedded:nope")


# --- arbitrary folders ---------------------------------------------------------------------------

def test_mixed_rates_and_stereo_load_at_16k(tmp_path):
    stereo = np.stack([sine(22050, 0.5), np.zeros(11025, np.float32)], axis=1)
    folder = write_folder(tmp_path / "mixed", {
        "a8k.wav": (sine(8000, 1.0), 8000),
        "b16k.flac": (sine(16000, 0.5), 16000),
        "c44k.wav": (sine(44100, 0.25), 44100),
        "d_stereo.wav": (stereo, 22050),
    })
    speech = load_speech(str(folder))
    lengths = {u.id: len(u.audio) for u in speech}
    assert lengths == {"a8k": 16000, "b16k": 8000, "c44k": 4000, "d_stereo": 8000}
    reference = sine(SAMPLE_RATE, 1.0)
    for u in speech:
        assert u.audio.dtype == np.float32
        middle = slice(500, len(u.audio) - 500)  # resampling filters ring at the edges
        scale = 0.5 if u.id == "d_stereo" else 1.0  # the mean of a sine and a silent channel
        assert np.abs(u.audio[middle] - scale * reference[: len(u.audio)][middle]).max() < 0.02, u.id
    assert speech.name == "mixed" and speech.provenance["count"] == 4
    assert speech[0].duration == pytest.approx(1.0)


def test_to_16k_mono_keeps_16k_untouched():
    audio = sine(16000, 0.1)
    assert np.array_equal(to_16k_mono(audio, 16000), audio)


def test_split_column_and_max_samples(tmp_path):
    clips = {f"{i}.wav": (sine(16000, 0.1), 16000) for i in range(4)}
    extra = {"0.wav": "train", "1.wav": "test", "2.wav": "train", "3.wav": "test"}
    folder = write_folder(tmp_path / "s", clips, header=("file_name", "text", "split"), extra=extra)
    assert [u.id for u in load_speech(str(folder), split="train")] == ["0", "2"]
    assert [u.id for u in load_speech(str(folder), max_samples=3)] == ["0", "1", "2"]


def test_openslr_folder(tmp_path):
    chapter = tmp_path / "LibriSpeech" / "test-clean" / "61" / "70968"
    chapter.mkdir(parents=True)
    for i in range(2):
        sf.write(chapter / f"61-70968-000{i}.flac", sine(16000, 0.2), 16000)
    (chapter / "61-70968.trans.txt").write_text("61-70968-0000 HE BEGAN A CONFUSED COMPLAINT\n61-70968-0001 GIVE NOT SO EARNEST A MIND\n")
    speech = load_speech(str(tmp_path / "LibriSpeech" / "test-clean"))
    assert speech.name == "librispeech:test-clean"
    assert [(u.id, u.text) for u in speech] == [("61-70968-0000", "HE BEGAN A CONFUSED COMPLAINT"),
                                                ("61-70968-0001", "GIVE NOT SO EARNEST A MIND")]
    assert "CC-BY-4.0" in speech.provenance["licence"]


def test_speechset_split_is_disjoint_and_seeded():
    speech = SpeechSet("x", [Utterance(str(i), np.zeros(160, np.float32), "a") for i in range(10)], {})
    train, test = speech.split(0.3, seed=1)
    assert (len(train), len(test)) == (7, 3)
    assert not {u.id for u in train} & {u.id for u in test}
    assert [u.id for u in test] == [u.id for u in speech.split(0.3, seed=1)[1]]
    assert train.provenance["count"] == 7 and speech.head(2).provenance["count"] == 2


# --- bad input: each fails early, naming the problem ---------------------------------------------

def test_missing_folder(tmp_path):
    with pytest.raises(SpeechPruneError, match="not found"):
        load_speech(str(tmp_path / "nowhere"))


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpeechPruneError, match="is empty"):
        load_speech(str(tmp_path / "empty"))


def test_folder_without_metadata(tmp_path):
    sf.write(tmp_path / "a.wav", sine(16000, 0.1), 16000)
    with pytest.raises(SpeechPruneError, match="no metadata.csv"):
        load_speech(str(tmp_path))


def test_metadata_without_text_column_suggests_rename(tmp_path):
    folder = write_folder(tmp_path / "f", {"a.wav": (sine(16000, 0.1), 16000)}, header=("file_name", "transcription"))
    with pytest.raises(SpeechPruneError, match="lacks column.*text.*rename 'transcription'"):
        load_speech(str(folder))


def test_metadata_without_file_name_column(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "metadata.csv").write_text("path,text\na.wav,hello\n")
    with pytest.raises(SpeechPruneError, match="lacks column.*file_name"):
        load_speech(str(folder))


def test_listed_audio_missing(tmp_path):
    folder = write_folder(tmp_path / "f", {"a.wav": (sine(16000, 0.1), 16000)})
    with open(folder / "metadata.csv", "a") as handle:
        handle.write("ghost.wav,boo\n")
    with pytest.raises(SpeechPruneError, match="ghost.wav"):
        load_speech(str(folder))


def test_listed_audio_unreadable(tmp_path):
    folder = write_folder(tmp_path / "f", {"a.wav": (sine(16000, 0.1), 16000)})
    (folder / "broken.wav").write_bytes(b"RIFF not really a wav file")
    with open(folder / "metadata.csv", "a") as handle:
        handle.write("broken.wav,hello\n")
    with pytest.raises(SpeechPruneError, match="cannot read audio broken.wav"):
        load_speech(str(folder))


def test_no_utterances_left(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "metadata.csv").write_text("file_name,text,split\n")
    with pytest.raises(SpeechPruneError, match="no utterances left"):
        load_speech(str(folder))
    with pytest.raises(SpeechPruneError, match="no utterances left.*split='dev'"):
        load_speech("embedded-full", split="dev")


def test_split_without_split_column(tmp_path):
    folder = write_folder(tmp_path / "f", {"a.wav": (sine(16000, 0.1), 16000)})
    with pytest.raises(SpeechPruneError, match="no split column"):
        load_speech(str(folder), split="train")


def test_bad_max_samples():
    with pytest.raises(SpeechPruneError, match="max_samples"):
        load_speech("embedded", max_samples=0)


def test_librispeech_unknown_subset_and_missing_datasets(monkeypatch):
    with pytest.raises(SpeechPruneError, match="unknown LibriSpeech subset"):
        load_speech("librispeech:test-dirty")
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(SpeechPruneError, match="needs the `datasets` package"):
        load_speech("librispeech:test-clean")
