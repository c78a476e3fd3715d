"""Issue 12, "nothing lost, nothing silent": one regression test per case, tiny models, generated audio."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import transformers
from conftest import make_tiny_whisper

from speechprune.checkpoint import load_checkpoint, save_pruned
from speechprune.cli import main
from speechprune.errors import SpeechPruneError, SpeechPruneWarning
from speechprune.outputs import MARKER, check_output_dir, staged_output

ROOT = Path(__file__).resolve().parents[1]


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), **extra)
    env.pop("SPEECHPRUNE_DEBUG", None)
    return env


@pytest.fixture
def tiny_folder(tmp_path):
    folder = tmp_path / "tiny-whisper"
    make_tiny_whisper().save_pretrained(folder)
    (folder / "notes.txt").write_text("my notes")
    return folder


@pytest.fixture
def no_compression(monkeypatch):
    """Fails the test if compression (or model loading) starts: proves a refusal came first."""
    def boom(*args, **kwargs):
        raise AssertionError("the work started before the refusal")

    monkeypatch.setattr("speechprune.commands.compress", boom)
    monkeypatch.setattr("speechprune.commands.load_model", boom)


def _siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}."))


# ---------------------------------------------------------------- 1. --overwrite replaces only what speechprune wrote


def test_overwrite_refuses_a_folder_with_a_foreign_file_and_keeps_it(tmp_path, tiny_folder, capsys):
    out = tmp_path / "pruned"
    assert main(["compress", str(tiny_folder), "--sparsity", "0.5", "--out", str(out)]) == 0
    written = json.loads((out / MARKER).read_text())["files"]
    assert "config.json" in written and "model.safetensors" in written and "speechprune_report.json" in written
    (out / "thesis.txt").write_text("three years of work")
    (out / "sub").mkdir()
    (out / "sub" / "data.csv").write_text("a,b\n")
    capsys.readouterr()
    assert main(["compress", str(tiny_folder), "--sparsity", "0.2", "--out", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "did not write" in err and "sub/data.csv" in err and "thesis.txt" in err and len(err.splitlines()) == 1
    assert (out / "thesis.txt").read_text() == "three years of work" and (out / "sub" / "data.csv").is_file()
    assert load_checkpoint(out).model.encoder.layers[0].fc1.out_features == 32  # still the 50% model
    # without the foreign files, --overwrite replaces the speechprune output
    (out / "thesis.txt").unlink()
    (out / "sub" / "data.csv").unlink()
    (out / "sub").rmdir()
    assert main(["compress", str(tiny_folder), "--sparsity", "0.25", "--out", str(out), "--overwrite"]) == 0
    assert load_checkpoint(out).model.encoder.layers[0].fc1.out_features == 48
    assert _siblings(out) == []


def test_overwrite_refuses_a_model_folder_speechprune_did_not_write(tmp_path, tiny_folder, capsys, no_compression):
    other = tmp_path / "other-model"
    make_tiny_whisper(seed=3).save_pretrained(other)
    assert main(["compress", str(tiny_folder), "--sparsity", "0.5", "--out", str(other), "--overwrite"]) == 2
    assert "holds a model that speechprune did not write" in capsys.readouterr().err
    assert (other / "model.safetensors").is_file() and not (other / MARKER).exists()


@pytest.mark.parametrize("where", ["same", "inside", "symlink-to-same", "holds"])
def test_out_equal_to_inside_or_holding_the_input_is_always_refused(tmp_path, tiny_folder, capsys, no_compression,
                                                                   where):
    before = sorted(p.name for p in tiny_folder.iterdir())
    out = {"same": tiny_folder, "inside": tiny_folder / "pruned", "holds": tmp_path}.get(where)
    model = str(tiny_folder)
    if where == "symlink-to-same":  # the model named through a link, --out the real folder
        link = tmp_path / "link"
        link.symlink_to(tiny_folder)
        model, out = str(link), tiny_folder
    assert main(["compress", model, "--sparsity", "0.5", "--out", str(out), "--overwrite"]) == 2
    assert "input" in capsys.readouterr().err
    assert sorted(p.name for p in tiny_folder.iterdir()) == before
    assert (tiny_folder / "notes.txt").read_text() == "my notes"


def test_out_dot_and_a_symlinked_out_are_refused_before_the_work(tmp_path, tiny_folder, capsys, no_compression,
                                                                 monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["compress", str(tiny_folder), "--sparsity", "0.5", "--out", ".", "--overwrite"]) == 2
    assert "current folder" in capsys.readouterr().err
    real = tmp_path / "real"
    real.mkdir()
    (real / "mine.txt").write_text("x")
    link = tmp_path / "linked"
    link.symlink_to(real)
    assert main(["compress", str(tiny_folder), "--sparsity", "0.5", "--out", str(link), "--overwrite"]) == 2
    assert "symbolic link" in capsys.readouterr().err
    assert [p.name for p in real.iterdir()] == ["mine.txt"] and not list(tmp_path.glob(".*"))


def test_a_hand_edited_marker_cannot_make_overwrite_delete_outside_the_folder(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "x.txt").write_text("keep me too")
    out = tmp_path / "out"
    with staged_output(out, command="test") as staging:
        (staging / "a.txt").write_text("old")
    (out / "sub").symlink_to(elsewhere)
    marker = json.loads((out / MARKER).read_text())
    marker["files"] += ["../victim.txt", str(victim), "sub", "sub/x.txt"]
    marker["folders"] = ["..", "sub"]
    (out / MARKER).write_text(json.dumps(marker))
    with staged_output(out, overwrite=True, command="test") as staging:
        (staging / "a.txt").write_text("new")
    assert (out / "a.txt").read_text() == "new" and not (out / "sub").exists()
    assert victim.read_text() == "keep me" and (elsewhere / "x.txt").read_text() == "keep me too"


# ---------------------------------------------------------------- 2. atomic, exclusive publication


@pytest.mark.parametrize("overwrite", [False, True])
def test_two_compress_runs_racing_for_one_out_exactly_one_wins(tmp_path, tiny_folder, overwrite):
    out = tmp_path / "raced"
    if overwrite:  # both replace the same earlier output: still only one may
        assert main(["compress", str(tiny_folder), "--sparsity", "0.75", "--out", str(out)]) == 0
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    # both runs pass the check before the work, then wait for each other just before publishing
    env = _env(SPEECHPRUNE_TEST_BARRIER=f"staged:2:{barrier}")
    flags = ["--overwrite"] if overwrite else []
    runs = [subprocess.Popen([sys.executable, "-m", "speechprune", "compress", str(tiny_folder), "--sparsity", s,
                              "--out", str(out), *flags], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
            for s in ("0.25", "0.5")]
    results = [(r.wait(timeout=300), *r.communicate()) for r in runs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    winner = next(i for i, (code, _, _) in enumerate(results) if code == 0)
    loser_err = results[1 - winner][2]
    assert "Traceback" not in loser_err
    assert loser_err.strip().splitlines()[-1].startswith("speechprune compress: error: ")
    assert "another speechprune process" in loser_err or "while this run worked" in loser_err
    report = json.loads((out / "speechprune_report.json").read_text())
    assert report["sparsity"] == (0.25, 0.5)[winner]  # the winner's model, not replaced
    assert load_checkpoint(out).model.encoder.layers[0].fc1.out_features == (48, 32)[winner]
    assert _siblings(out) == []


_WRITER = textwrap.dedent("""
    import sys
    import speechprune.outputs as outputs
    if sys.argv[3] == "no-exchange":
        outputs._exchange = lambda a, b: False
    with outputs.staged_output(sys.argv[1], overwrite=True, command="test") as staging:
        (staging / "sub").mkdir()
        for name in ("a.txt", "sub/b.txt", "c.bin"):
            (staging / name).write_text(sys.argv[2])
""")


def _complete(out: Path) -> str:
    """The tag of a complete test folder (every file there, the same tag in each)."""
    tags = {(out / name).read_text() for name in ("a.txt", "sub/b.txt", "c.bin")}
    assert len(tags) == 1 and json.loads((out / MARKER).read_text())["files"] == ["a.txt", "c.bin", "sub/b.txt"]
    return tags.pop()


@pytest.mark.parametrize("swap", ["exchange", "no-exchange"])
@pytest.mark.parametrize("step", ["staged", "locked", "moved-aside", "swapped"])
def test_kill_9_during_publication_leaves_old_or_new_and_junk_is_cleaned(tmp_path, step, swap):
    if step == "moved-aside" and swap == "exchange":
        pytest.skip("an atomic exchange has no moved-aside step")
    out = tmp_path / "out"
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    run = lambda tag, **env: subprocess.run([sys.executable, str(script), str(out), tag, swap],  # noqa: E731
                                            env=_env(**env), capture_output=True, text=True, timeout=120)
    assert run("old").returncode == 0 and _complete(out) == "old"
    killed = run("new", SPEECHPRUNE_TEST_KILL_AT=step)
    assert killed.returncode == -9
    assert _siblings(out)  # junk was left
    if step != "moved-aside":  # the atomic steps: a complete folder at --out at every moment
        assert _complete(out) in ("old", "new")
    with pytest.warns(SpeechPruneWarning, match="killed"):
        check_output_dir(out, overwrite=True)  # the next run cleans up (and puts back a folder moved aside)
    assert _siblings(out) == [] and _complete(out) in ("old", "new")
    assert run("third").returncode == 0 and _complete(out) == "third" and _siblings(out) == []


def test_kill_9_in_a_real_save_keeps_a_loadable_model(tmp_path, tiny_folder):
    out = tmp_path / "pruned"
    assert main(["compress", str(tiny_folder), "--sparsity", "0.5", "--out", str(out)]) == 0
    killed = subprocess.run([sys.executable, "-m", "speechprune", "compress", str(tiny_folder), "--sparsity", "0.25",
                             "--out", str(out), "--overwrite"], env=_env(SPEECHPRUNE_TEST_KILL_AT="locked"),
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9 and _siblings(out)
    assert load_checkpoint(out).model.encoder.layers[0].fc1.out_features == 32  # the old model, whole
    assert main(["compress", str(tiny_folder), "--sparsity", "0.25", "--out", str(out), "--overwrite"]) == 0
    assert load_checkpoint(out).model.encoder.layers[0].fc1.out_features == 48 and _siblings(out) == []


def test_a_result_that_appeared_meanwhile_is_not_replaced(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(SpeechPruneError, match="while this run worked"):
        with staged_output(out, command="test") as staging:
            (staging / "mine.txt").write_text("late")
            out.mkdir()
            (out / "theirs.txt").write_text("first")
    assert [p.name for p in out.iterdir()] == ["theirs.txt"] and _siblings(out) == []


# ---------------------------------------------------------------- 3. checked before the work


def test_read_only_out_is_refused_before_any_compression(tmp_path, tiny_folder, capsys, no_compression):
    places = [Path("/proc/speechprune-out")]  # read-only even for root
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        places.append(ro / "out")
    for out in places:
        assert main(["compress", str(tiny_folder), "--sparsity", "0.5", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "not writable" in err and len(err.splitlines()) == 1


def test_out_under_a_file_is_refused_and_a_missing_parent_is_created(tmp_path, tiny_folder, capsys, monkeypatch):
    (tmp_path / "afile").write_text("x")
    with monkeypatch.context() as m:
        m.setattr(sys.modules["speechprune.commands"], "compress", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran")))
        assert main(["compress", str(tiny_folder), "--sparsity", "0.5", "--out", str(tmp_path / "afile" / "o")]) == 2
    assert "is a file" in capsys.readouterr().err
    out = tmp_path / "new" / "deeper" / "pruned"
    assert main(["compress", str(tiny_folder), "--sparsity", "0.5", "--out", str(out)]) == 0
    assert (out / "model.safetensors").is_file()


@pytest.mark.parametrize("device,message", [("bogus", "unknown --device 'bogus'"),
                                            ("cuda", "no usable CUDA GPU"), ("cuda:7", "CUDA")])
def test_devices_this_machine_lacks_are_one_line_errors(tmp_path, tiny_folder, capsys, no_compression, device,
                                                        message):
    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 7:
        pytest.skip("this machine has the device")
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["compress", str(tiny_folder), "--sparsity", "0.5", "--device", device,
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.splitlines()) == 1


def test_max_iter_0_names_only_what_the_user_set(tmp_path, tiny_folder, capsys, no_compression):
    assert main(["compress", str(tiny_folder), "--sparsity", "0.5", "--max-iter", "0", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--max-iter must be at least 1, got 0" in err and "n_init" not in err and "tol" not in err


# ---------------------------------------------------------------- 6. a failed fine-tuning run can be restarted


def _finetune_options():
    from test_finetune import _whisper_processor

    return dict(processor=_whisper_processor(), batch_size=4, max_steps=1, save_steps=1, progress=False)


class _FailFirstStep(transformers.TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        raise RuntimeError("diverged")


@pytest.mark.parametrize("lr", ["-1", "nan", "inf", "0"])
def test_bad_learning_rate_is_one_line_before_any_work(tmp_path, monkeypatch, capsys, lr):
    monkeypatch.setattr("speechprune.commands.load_training_speech",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("data loaded")))
    out = tmp_path / "tuned"
    assert main(["finetune", "embedded:whisper-tiny.en", "--data", "embedded:train", "--lr", lr, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--lr must be a positive finite number" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_finetune_failing_before_its_first_checkpoint_leaves_out_restartable(tmp_path):
    from test_finetune import _speech, _tiny_whisper

    from speechprune.finetune import finetune

    out = tmp_path / "tuned"
    with pytest.raises(RuntimeError, match="diverged"):
        finetune(_tiny_whisper(), _speech(8), out_dir=out, callbacks=[_FailFirstStep()], **_finetune_options())
    assert not out.exists()  # cleaned: a plain rerun starts
    # a kill -9 before the first checkpoint cannot clean up: the next run (even with --resume) starts again
    from speechprune.outputs import write_marker

    for resume in (False, True):
        killed = tmp_path / f"killed-{resume}"
        (killed / "checkpoints").mkdir(parents=True)
        (killed / "finetune_run.json").write_text("{}")
        write_marker(killed, "finetune", files=["finetune_run.json"], folders=["checkpoints"])
        with pytest.warns(SpeechPruneWarning, match="stopped before its first checkpoint"):
            record = finetune(_tiny_whisper(), _speech(8), out_dir=killed, resume=resume, **_finetune_options())
        assert record["results"]["global_step"] == 1 and (killed / "config.json").is_file()
        assert record["settings"]["resumed_from_step"] == 0


def test_an_unmarked_stopped_run_names_the_command_that_clears_it(tmp_path):
    from speechprune.finetune import prepare_out_dir

    out = tmp_path / "old run"
    out.mkdir()
    (out / "finetune_run.json").write_text("{}")  # written by a speechprune before the marker existed
    with pytest.raises(SpeechPruneError, match=r"clear it with `rm -r '.*old run'`"):
        prepare_out_dir(out, resume=False)


def test_finetune_overwrite_replaces_only_its_own_run(tmp_path, capsys):
    from test_finetune import _speech, _tiny_whisper

    from speechprune.finetune import finetune, prepare_out_dir

    out = tmp_path / "tuned"
    finetune(_tiny_whisper(), _speech(8), out_dir=out, **_finetune_options())
    marker = json.loads((out / MARKER).read_text())
    assert {"config.json", "model.safetensors", "finetune.json", "finetune_run.json"} <= set(marker["files"])
    assert marker["folders"] == [".model-partial", "checkpoints"]
    with pytest.raises(SpeechPruneError, match="finished fine-tuning run.*--overwrite"):
        prepare_out_dir(out, resume=False)
    (out / "thesis.txt").write_text("mine")
    with pytest.raises(SpeechPruneError, match="did not write: thesis.txt"):
        finetune(_tiny_whisper(), _speech(8), out_dir=out, overwrite=True, **_finetune_options())
    (out / "thesis.txt").unlink()
    record = finetune(_tiny_whisper(), _speech(8), out_dir=out, overwrite=True, **_finetune_options())
    assert record["results"]["global_step"] == 1 and (out / "model.safetensors").is_file()


def test_finetune_out_equal_to_the_input_model_is_refused(tmp_path, tiny_folder, capsys):
    assert main(["finetune", str(tiny_folder), "--data", "embedded:train", "--out", str(tiny_folder)]) == 2
    assert "input folder" in capsys.readouterr().err
    assert (tiny_folder / "notes.txt").read_text() == "my notes"


# ---------------------------------------------------------------- 4. nothing cut or accepted silently: audio


def _whisper_30s_processor():
    """The tests' toy Whisper tokenizer with a 30 s window over the tiny Whisper's 40 frames, as real Whisper."""
    from test_evaluate import whisper_processor
    from transformers import WhisperFeatureExtractor

    processor = whisper_processor()
    processor.feature_extractor = WhisperFeatureExtractor(feature_size=8, sampling_rate=16_000, hop_length=12_000,
                                                          chunk_length=30, n_fft=24_000)
    return processor


def _clips(*seconds: float):
    from speechprune.data import SpeechSet, Utterance

    rng = np.random.default_rng(0)
    utterances = [Utterance(f"c{i}", 0.1 * rng.standard_normal(int(s * 16_000)).astype(np.float32), "hello world")
                  for i, s in enumerate(seconds)]
    return SpeechSet("clips", utterances, {"name": "clips"})


def test_a_35_s_clip_warns_on_the_console_and_long_form_decodes_it_whole(monkeypatch, capsys):
    ev = sys.modules["speechprune.evaluate"]

    model, processor, speech = make_tiny_whisper(), _whisper_30s_processor(), _clips(35.0, 2.0)
    model.generation_config.no_timestamps_token_id = 3  # the toy vocabulary's <|notimestamps|>
    with pytest.warns(SpeechPruneWarning, match=r"1 of 2 clip\(s\) in clips are longer than Whisper's 30 s window "
                                                r"and are cut.*--long-form"):
        cut = ev.evaluate(model, processor, speech, progress=False, batch_size=2)
    assert cut["decoding"]["clips_over_30s"] == 1 and cut["decoding"]["over_window"] == "cut to the window"
    assert cut["decoding"]["long_form"] is False

    frames = []
    real_generate = model.generate
    monkeypatch.setattr(model, "generate", lambda features, **kw: frames.append(features.shape[-1])
                        or real_generate(features, **kw))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", SpeechPruneWarning)  # no warning: nothing is cut
        whole = ev.evaluate(model, processor, speech, progress=False, batch_size=2, long_form=True)
    assert whole["decoding"]["long_form"] is True and whole["decoding"]["over_window"].startswith("sequential long-form")
    assert max(frames) > 40  # the 35 s of features reached generate uncut (40 frames = 30 s)


def test_long_form_without_timestamp_tokens_is_a_clear_refusal():
    from speechprune.evaluate import evaluate

    with pytest.raises(SpeechPruneError, match="--long-form needs a Whisper generation config with timestamp tokens"):
        evaluate(make_tiny_whisper(), _whisper_30s_processor(), _clips(35.0), progress=False, long_form=True)


def test_the_console_shows_the_warning_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys.modules["speechprune.commands"], "load_model",
                        lambda spec, device="cpu", **_: (make_tiny_whisper(), _whisper_30s_processor()))
    folder = tmp_path / "speech"
    folder.mkdir()
    sf.write(folder / "long.wav", 0.1 * np.random.default_rng(0).standard_normal(35 * 16_000), 16_000)
    (folder / "metadata.csv").write_text("file_name,text\nlong.wav,hello world\n")
    assert main(["evaluate", "tiny", "--data", str(folder)]) == 0
    err = capsys.readouterr().err
    assert "speechprune: warning: 1 of 1 clip(s) in speech are longer than Whisper's 30 s window" in err


def _audiofolder(tmp_path, audio, rate=16_000, text="hello world", metadata: bytes | None = None):
    folder = tmp_path / "speech"
    folder.mkdir(exist_ok=True)
    sf.write(folder / "a.wav", audio, rate, subtype="FLOAT")
    (folder / "metadata.csv").write_bytes(metadata or f"file_name,text\na.wav,{text}\n".encode())
    return folder


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_audio_is_refused_naming_the_file(tmp_path, bad):
    from speechprune.data import load_speech

    audio = np.random.default_rng(0).standard_normal(16_000).astype(np.float32)
    audio[100:110] = bad
    with pytest.raises(SpeechPruneError, match=r"audio a.wav has 10 NaN or infinite sample"):
        load_speech(str(_audiofolder(tmp_path, audio)))


def test_stereo_channels_that_cancel_in_the_downmix_warn(tmp_path):
    from speechprune.data import load_speech

    tone = 0.3 * np.sin(2 * np.pi * 220 * np.arange(16_000) / 16_000)
    with pytest.warns(SpeechPruneWarning, match="a.wav: its 2 channels cancel in the mono downmix"):
        load_speech(str(_audiofolder(tmp_path, np.stack([tone, -tone], axis=1))))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", SpeechPruneWarning)
        load_speech(str(_audiofolder(tmp_path, np.stack([tone, 0.5 * tone], axis=1))))  # ordinary stereo: silent


def test_latin1_metadata_is_one_line_naming_the_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys.modules["speechprune.commands"], "load_model",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("model loaded")))
    audio = np.zeros(16_000, np.float32)
    metadata = "file_name,text\na.wav,hello\na.wav,caf\u00e9 cr\u00e8me\n".encode("latin-1")
    folder = _audiofolder(tmp_path, audio, metadata=metadata)
    assert main(["evaluate", "tiny", "--data", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "metadata.csv line 3 is not UTF-8" in err and "iconv" in err and len(err.splitlines()) == 1


# ---------------------------------------------------------------- 3. evaluate: checked before the work


def test_json_naming_a_folder_is_refused_before_the_evaluation(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys.modules["speechprune.commands"], "load_speech",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("data loaded")))
    assert main(["evaluate", "tiny", "--json", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is a folder; name a file" in err and len(err.splitlines()) == 1
    assert main(["evaluate", "tiny", "--json", "/proc/result.json"]) == 2
    assert "not writable" in capsys.readouterr().err
    assert main(["evaluate", "tiny", "--device", "bogus"]) == 2
    assert "unknown --device 'bogus'" in capsys.readouterr().err


# ---------------------------------------------------------------- 4./6. allocations: budget and rounding


def _two_head_whisper():
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    model = make_tiny_whisper()
    config = WhisperConfig(**{**model.config.to_dict(), "encoder_attention_heads": 2, "decoder_attention_heads": 2})
    torch.manual_seed(0)
    return WhisperForConditionalGeneration(config).eval()


def test_variance_allocation_that_cannot_reach_the_budget_is_refused_like_cost():
    from speechprune.compress import compress
    from speechprune.structure import widths

    for allocation, message in (("variance", "variance allocation cannot reach sparsity 0.97"),
                                ("cost", "cost allocation: the grid cannot reach")):
        model = make_tiny_whisper()
        before = widths(model)
        with pytest.raises(SpeechPruneError, match=message):
            compress(model, sparsity=0.97, allocation=allocation, progress=False)
        assert widths(model) == before  # refused before any layer changed
    # below the floor it still removes exactly the uniform number
    model = make_tiny_whisper()
    report = compress(model, sparsity=0.9, allocation="variance", progress=False)
    assert sum(u.channels_after for u in report.units) == 4 * round(64 * 0.1)


def test_a_scope_where_rounding_removes_nothing_warns_with_the_numbers():
    from speechprune.compress import compress

    with pytest.warns(SpeechPruneWarning, match=r"sparsity 0.2 removes no attention heads: round\(2 x 0.8\) = 2 of 2 "
                                                r"heads kept in each of the 6 attention unit\(s\); a sparsity above 0.25"):
        report = compress(_two_head_whisper(), sparsity=0.2, scope="attention", progress=False)
    assert report.channel_sparsity() == 0
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", SpeechPruneWarning)
        compress(make_tiny_whisper(), sparsity=0.2, scope="all", progress=False)  # removes some everywhere: quiet


def test_rounding_warning_reaches_the_console(tmp_path, capsys):
    folder = tmp_path / "two-heads"
    _two_head_whisper().save_pretrained(folder)
    assert main(["compress", str(folder), "--sparsity", "0.2", "--scope", "attention", "--out", str(tmp_path / "o")]) == 0
    assert "speechprune: warning: sparsity 0.2 removes no attention heads" in capsys.readouterr().err


# ---------------------------------------------------------------- compare: checked before loading anything


@pytest.fixture
def no_comparison(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("data or a model was loaded before the refusal")

    monkeypatch.setattr("speechprune.commands.run_comparison", boom)
    monkeypatch.setattr("speechprune.commands.run_main_job", boom)
    monkeypatch.setattr("speechprune.data.load_speech", boom)


@pytest.mark.parametrize("args,message", [
    (["--allocations", "foo"], "unknown allocation 'foo'"),
    (["--allocations", "uniform,bar"], "unknown allocation 'bar'"),
    (["--merges", "median"], "unknown merge rule 'median'"),
    (["--features", ","], "--features names nothing"),
    (["--device", "bogus"], "unknown --device 'bogus'"),
    (["--sparsity", "2"], "sparsity must be in"),
    (["--out", "/proc/runs/main"], "not writable"),
])
def test_compare_refuses_bad_flags_before_loading_anything(tmp_path, capsys, no_comparison, args, message):
    assert main(["compare", "--out", str(tmp_path / "main"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.splitlines()) == 1


def _fake_result(wer: float) -> dict:
    record = dict(label="dense", wer=wer, substitutions=1, deletions=0, insertions=0, model=dict(parameters=100),
                  rtf=0.1, data=dict(name="toy"), n_utterances=2, compression=None)
    pruned = dict(record, label="cluster", compression=dict(params_after=80, param_sparsity=0.2))
    roles = [dict(record, role="dense"), dict(pruned, role="paper"), dict(pruned, role="paper", wer=wer + 1),
             dict(pruned, role="recommended", label="pairs"), dict(pruned, role="magnitude", label="magnitude")]
    return dict(model="tiny", data="toy", sparsity=0.2, scope="encoder.ffn", seed=0, seeds=2, records=roles,
                sentences=["The recommended recipe is lower than magnitude pruning on the same utterances."])


def test_compare_results_are_published_with_the_marker_and_overwrite_keeps_foreign_files(tmp_path, monkeypatch,
                                                                                         capsys):
    results = iter([_fake_result(10.0), _fake_result(20.0), _fake_result(30.0)])
    monkeypatch.setattr("speechprune.commands.run_main_job", lambda *a, **k: next(results))
    out = tmp_path / "runs" / "main"
    assert main(["compare", "--out", str(out)]) == 0
    assert json.loads((out / MARKER).read_text())["files"] == ["results.json", "wer.png"]
    assert main(["compare", "--out", str(out)]) == 2 and "not empty" in capsys.readouterr().err
    (out / "notes.md").write_text("mine")
    assert main(["compare", "--out", str(out), "--overwrite"]) == 2
    assert "notes.md" in capsys.readouterr().err and json.loads((out / "results.json").read_text())["records"][0]["wer"] == 10.0
    (out / "notes.md").unlink()
    assert main(["compare", "--out", str(out), "--overwrite"]) == 0
    # the two refusals came before the work: the second result computed is the one published
    assert json.loads((out / "results.json").read_text())["records"][0]["wer"] == 20.0
    assert _siblings(out) == []


# ---------------------------------------------------------------- 5. no traceback for a user's mistake


def test_an_oserror_is_one_line_with_exit_2_and_debug_shows_the_traceback(tmp_path, tiny_folder, monkeypatch,
                                                                          capsys):
    import errno

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "o" / "model.safetensors"))

    monkeypatch.setattr("speechprune.checkpoint.write_pruned", full_disk)
    args = ["compress", str(tiny_folder), "--sparsity", "0.5", "--out", str(tmp_path / "o")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"speechprune compress: error: No space left on device: {tmp_path / 'o' / 'model.safetensors'}; "
                       "free some space or choose another place")
    assert not any("Traceback" in line for line in err)
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.*"))  # nothing half-written left
    monkeypatch.setenv("SPEECHPRUNE_DEBUG", "1")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "No space left on device" in err


def test_a_real_bug_keeps_its_traceback(tmp_path, tiny_folder, monkeypatch):
    monkeypatch.setattr(sys.modules["speechprune.commands"], "compress", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        main(["compress", str(tiny_folder), "--sparsity", "0.5", "--out", str(tmp_path / "o")])


def test_undecodable_text_elsewhere_is_one_line(tmp_path, monkeypatch, capsys):
    def bad_text(*args, **kwargs):
        return b"caf\xe9".decode("utf-8")

    monkeypatch.setattr(sys.modules["speechprune.commands"], "load_speech", bad_text)
    assert main(["evaluate", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "cannot read a text file as UTF-8" in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_long_form_transcribes_a_35_s_clip_of_real_speech_whole():
    """The embedded whisper-tiny.en on two embedded clips joined into one of at least 35 s."""
    from speechprune.data import SpeechSet, Utterance, load_speech
    from speechprune.evaluate import evaluate
    from speechprune.models import load_model

    clips = sorted(load_speech("embedded-full"), key=lambda u: -u.duration)
    first = clips[0]
    second = min((u for u in clips[1:] if first.duration + u.duration >= 35), key=lambda u: u.duration)
    joined = Utterance("joined", np.concatenate([first.audio, second.audio]), f"{first.text} {second.text}")
    speech = SpeechSet("joined", [joined], {"name": "joined"})
    model, processor = load_model("embedded:whisper-tiny.en")
    with pytest.warns(SpeechPruneWarning, match="longer than Whisper's 30 s window"):
        cut = evaluate(model, processor, speech, progress=False)
    whole = evaluate(model, processor, speech, progress=False, long_form=True)
    assert whole["decoding"]["long_form"] and cut["decoding"]["over_window"] == "cut to the window"
    assert whole["deletions"] < cut["deletions"] and whole["wer"] < cut["wer"]


def test_finetune_out_that_cannot_be_written_is_refused_before_loading(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("speechprune.commands.load_training_speech",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("data loaded")))
    assert main(["finetune", "embedded:whisper-tiny.en", "--data", "embedded:train", "--out", "/proc/tuned"]) == 2
    assert "not writable" in capsys.readouterr().err
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    assert main(["finetune", "embedded:whisper-tiny.en", "--data", "embedded:train", "--out", str(link)]) == 2
    assert "symbolic link" in capsys.readouterr().err
