"""Nothing lost, round two: every file the package writes, every file it reads, every number it accepts.

One regression test per case found by the hostile-user pass (each fails on the code before it),
the enumeration of every writer (a new one without the rule fails here), and a table-driven fuzz
of the command line: every numeric or choice option of every sub-command, given a bad value,
exits 2 with one line on stderr, no traceback and no file changed.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import make_tiny_whisper
from safetensors.torch import load_file, save_file

from speechprune.checkpoint import load_checkpoint
from speechprune.cli import build_parser, main
from speechprune.compress import compress
from speechprune.data import load_speech
from speechprune.errors import SpeechPruneError, SpeechPruneWarning
from speechprune.outputs import check_output_file, written_by_speechprune
from speechprune.study import check_record, load_records, parse_study

ROOT = Path(__file__).resolve().parents[1]


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (links not followed) with a hash of its bytes."""
    found = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = Path(root, name)
            found[path.relative_to(folder).as_posix()] = (
                "link:" + os.readlink(path) if path.is_symlink() else hashlib.sha1(path.read_bytes()).hexdigest())
    return found


@pytest.fixture
def model_folder(tmp_path) -> Path:
    folder = tmp_path / "model"
    make_tiny_whisper().save_pretrained(folder)
    return folder


def _audiofolder(root: Path, metadata: str, names=("a.wav", "b.wav")) -> Path:
    folder = root / "speech"
    folder.mkdir()
    for name in names:
        sf.write(folder / name, np.zeros(16_000, np.float32), 16_000)
    (folder / "metadata.csv").write_text(metadata, encoding="utf-8")
    return folder


@pytest.fixture
def nothing_loaded(monkeypatch):
    """Fails the test if a model or speech is loaded: proves the refusal came before the work."""
    def boom(*args, **kwargs):
        raise AssertionError("the work started before the refusal")

    for name in ("load_model", "load_speech", "load_training_speech", "compress", "evaluate", "run_comparison",
                 "run_main_job"):
        monkeypatch.setattr(f"speechprune.commands.{name}", boom)


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------- data loss: --json and study --out


@pytest.mark.parametrize("victim", ["config.json", "model.safetensors", "metadata.csv"])
def test_evaluate_json_never_writes_into_the_model_or_the_speech_folder(tmp_path, model_folder, capsys,
                                                                          nothing_loaded, victim):
    speech = _audiofolder(tmp_path, "file_name,text\na.wav,hello\n")
    target = (speech if victim == "metadata.csv" else model_folder) / victim
    before = _snapshot(tmp_path)
    assert main(["evaluate", str(model_folder), "--data", str(speech), "--json", str(target)]) == 2
    err = _one_line(capsys)
    assert "input" in err
    assert _snapshot(tmp_path) == before


def test_evaluate_json_through_a_link_to_an_input_is_refused(tmp_path, model_folder, capsys, nothing_loaded):
    (tmp_path / "record.json").symlink_to(model_folder / "config.json")
    (tmp_path / "alias").symlink_to(model_folder, target_is_directory=True)
    before = _snapshot(tmp_path)
    assert main(["evaluate", str(model_folder), "--json", str(tmp_path / "record.json")]) == 2
    assert "symbolic link" in _one_line(capsys)
    assert main(["evaluate", str(model_folder), "--json", str(tmp_path / "alias" / "config.json")]) == 2
    assert "input" in _one_line(capsys)
    assert _snapshot(tmp_path) == before


def test_evaluate_json_keeps_a_file_speechprune_did_not_write_unless_overwrite(tmp_path, capsys, nothing_loaded):
    mine = tmp_path / "settings.json"
    mine.write_text('{"my": "settings"}')
    assert main(["evaluate", "tiny", "--json", str(mine)]) == 2
    assert "did not write" in _one_line(capsys) and mine.read_text() == '{"my": "settings"}'
    # a record speechprune wrote is replaced as before; --overwrite lets any other file go
    assert check_output_file(mine, overwrite=True, flag="--json") == mine.resolve()
    (tmp_path / "old.json").write_text(json.dumps({"written_by": "speechprune 0.3.0", "wer": 1.0}))
    assert check_output_file(tmp_path / "old.json", flag="--json") == (tmp_path / "old.json").resolve()


STUDY = """
name = "tiny"
models = ["{model}"]
data = ["embedded"]
max_samples = 1
seeds = 1
settings = [{{scope = "ffn", sparsity = 0.5}}]
options = [{{method = "magnitude"}}]
"""


def test_study_out_never_replaces_a_foreign_json_or_the_study_file(tmp_path, model_folder, capsys):
    study = tmp_path / "tiny.toml"
    study.write_text(STUDY.format(model=model_folder))
    config = model_folder / "config.json"
    settings = tmp_path / "settings.json"
    settings.write_text('{"theme": "dark"}')
    before = _snapshot(tmp_path)
    for out in (settings, study, config):
        assert main(["study", str(study), "--out", str(out)]) == 2
        _one_line(capsys)
    assert _snapshot(tmp_path) == before


def test_dry_run_and_summary_change_nothing(tmp_path, model_folder, capsys):
    study = tmp_path / "tiny.toml"
    study.write_text(STUDY.format(model=model_folder))
    out = tmp_path / "results.json"
    out.write_text('{"study": "tiny", "records": [')  # truncated
    before = _snapshot(tmp_path)
    assert main(["study", str(study), "--out", str(out), "--dry-run"]) == 0
    capsys.readouterr()
    assert main(["study", str(study), "--out", str(out), "--summary"]) == 2
    assert "not valid JSON" in _one_line(capsys)
    out.write_text("[1, 2]")
    before = _snapshot(tmp_path)
    assert main(["study", str(study), "--out", str(out), "--summary"]) == 2
    assert "no 'records' list" in _one_line(capsys)
    assert main(["study", str(study), "--out", str(out), "--scores"]) == 2
    _one_line(capsys)
    assert _snapshot(tmp_path) == before
    with pytest.raises(SpeechPruneError, match="not a study's results file"):
        load_records(out)


# ---------------------------------------------------------------- wrong results without a word


def test_an_unquoted_comma_in_a_transcript_is_refused_naming_the_line(tmp_path):
    folder = _audiofolder(tmp_path, "file_name,text\na.wav,hello there\n"
                                    "b.wav,agent number, followed by the pound key.\n")
    with pytest.raises(SpeechPruneError, match=r"metadata.csv line 3 has 3 fields but the header has 2.*quotes"):
        load_speech(str(folder))
    (folder / "metadata.csv").write_text('file_name,text\na.wav,hello\nb.wav,"agent number, followed by the pound '
                                         'key."\n')
    assert load_speech(str(folder))[1].text == "agent number, followed by the pound key."


def test_a_row_with_fewer_fields_than_the_header_is_refused(tmp_path):
    folder = _audiofolder(tmp_path, "file_name,text,split\na.wav,hello,test\nb.wav,bye\n")
    with pytest.raises(SpeechPruneError, match="line 3 has fewer fields"):
        load_speech(str(folder))


def test_one_audio_file_listed_twice(tmp_path):
    folder = _audiofolder(tmp_path, "file_name,text\na.wav,hello\na.wav,goodbye\n")
    with pytest.raises(SpeechPruneError, match="'a.wav' twice with different transcripts"):
        load_speech(str(folder))
    (folder / "metadata.csv").write_text("file_name,text\na.wav,hello\nb.wav,bye\na.wav,hello\n")
    with pytest.warns(SpeechPruneWarning, match="twice with the same transcript"):
        speech = load_speech(str(folder))
    assert [u.id for u in speech] == ["a", "b"]


@pytest.mark.parametrize("name", ["../outside.wav", "sub/../../outside.wav", "/etc/passwd"])
def test_paths_in_metadata_stay_inside_the_speech_folder(tmp_path, name):
    sf.write(tmp_path / "outside.wav", np.zeros(16_000, np.float32), 16_000)
    folder = _audiofolder(tmp_path, f"file_name,text\n{name},secret\n")
    with pytest.raises(SpeechPruneError, match="outside the speech folder"):
        load_speech(str(folder))


@pytest.mark.parametrize("change", ["missing", "extra", "misshaped"])
def test_a_dense_folder_with_a_wrong_tensor_set_is_refused_unless_allowed(model_folder, change):
    weights = load_file(model_folder / "model.safetensors")
    name = "model.decoder.layers.0.fc1.weight"
    if change == "missing":
        del weights[name]
    elif change == "extra":
        weights["model.decoder.layers.0.fc9.weight"] = torch.zeros(2, 2)
    else:
        weights[name] = torch.zeros(3, 3)
    save_file(weights, model_folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(SpeechPruneError, match="do not fit its config"):
        load_checkpoint(model_folder)
    if change != "misshaped":  # transformers itself refuses a mis-shaped tensor without ignore_mismatched_sizes
        with pytest.warns(SpeechPruneWarning, match="allow-new-weights"):
            load_checkpoint(model_folder, allow_new_weights=True)


def test_a_folder_with_only_pickled_weights_is_one_line(tmp_path, capsys):
    folder = tmp_path / "pickled"
    folder.mkdir()
    model = make_tiny_whisper()
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    assert main(["compress", str(folder), "--sparsity", "0.5", "--out", str(tmp_path / "out")]) == 2
    assert "pickled" in _one_line(capsys)
    assert not (tmp_path / "out").exists()


def test_two_options_under_one_label_are_refused():
    spec = dict(name="x", models=["m"], data=["embedded"], seeds=1, settings=[dict(scope="ffn", sparsity=0.5)],
                options=[dict(method="cluster", label="ours"), dict(method="cluster", features="producer",
                                                                    label="ours")])
    with pytest.raises(SpeechPruneError, match="label 'ours' is already used by options\\[0\\]"):
        parse_study(spec)
    spec["options"][1]["label"] = "ours, producer"
    assert len(parse_study(spec).runs) == 3


def _record() -> dict:
    from speechprune.study import make_run, run_key

    run = make_run("m", "d", method="magnitude", scope="ffn", sparsity=0.5)
    record = dict(run.settings(), key=run.key, label=run.label, n_utterances=2, wer=50.0, substitutions=1,
                  deletions=1, insertions=0, ref_words=4, utterance_ids=["a", "b"], utterance_errors=[2, 0],
                  utterance_words=[2, 2], hypotheses=["x", "a b"], param_sparsity=0.3, date="2026-12-04",
                  versions={}, seconds=1.0)
    assert record["key"] == run_key(record)
    return record


@pytest.mark.parametrize("field,value,why", [
    ("utterance_errors", [-2, 0], "non-negative"),
    ("wer", -100.0, "does not match"),
    ("substitutions", -1, "non-negative"),
    ("ref_words", 5, "not the sum"),
    ("utterance_ids", ["a", "a"], "the same utterance id twice"),
    ("seconds", -3.0, "run time"),
    ("param_sparsity", 1.5, "sparsity outside"),
])
def test_saved_records_are_checked_for_sign_range_and_consistency(field, value, why):
    assert check_record(_record()) is None
    assert why in check_record({**_record(), field: value})


def test_options_a_method_ignores_are_named_and_the_report_says_what_ran(capsys):
    with pytest.warns(SpeechPruneWarning, match="method 'magnitude' ignores features='normalized'"):
        report = compress(make_tiny_whisper(), recipe="recommended", method="magnitude", features="normalized",
                          sparsity=0.5, progress=False)
    assert report.features == "producer" and report.method == "magnitude"


def test_finetune_max_steps_0_is_refused_not_run(tmp_path, capsys, nothing_loaded):
    assert main(["finetune", "x", "--data", "embedded:train", "--max-steps", "0", "--out", str(tmp_path / "o")]) == 2
    assert "--max-steps must be at least 1" in _one_line(capsys)


# ---------------------------------------------------------------- numbers at the boundary (library)


@pytest.mark.parametrize("kwargs,message", [
    (dict(scope=123), "scope must be a string"),
    (dict(seed="a"), "seed must be a whole number"),
    (dict(seed=-1), "seed must be between 0 and"),
    (dict(seed=2**64), "seed must be between 0 and"),
    (dict(max_iter=0), "max_iter must be at least 1"),
    (dict(sparsity=float("nan")), "sparsity must be in"),
])
def test_compress_refuses_numbers_it_cannot_use_and_leaves_the_model(kwargs, message):
    model = make_tiny_whisper()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(SpeechPruneError, match=message):
        compress(model, **{"sparsity": 0.5, **kwargs}, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("kwargs,message", [
    (dict(epochs=float("nan")), "epochs must be a finite number"),
    (dict(epochs=float("inf")), "epochs must be a finite number"),
    (dict(warmup=float("nan")), "warmup must be a finite number"),
    (dict(warmup=-1), "warmup must be at least 0"),
    (dict(max_steps=0), "max_steps must be at least 1"),
    (dict(seed=-5), "seed must be between"),
])
def test_finetune_refuses_a_schedule_it_cannot_run(tmp_path, kwargs, message):
    from speechprune.finetune import finetune

    with pytest.raises(SpeechPruneError, match=message):
        finetune(make_tiny_whisper(), [], out_dir=tmp_path / "o", **kwargs)
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- every writer follows the rule

#: Every CLI option that names a place to write, and what it is. A new one must be added here
#: (and so be given the safe-output rule and a test below).
CLI_OUTPUTS = {
    ("compress", "--out"): "folder",
    ("evaluate", "--json"): "file",
    ("finetune", "--out"): "folder",
    ("compare", "--out"): "folder",
    ("study", "--out"): "file",
    ("export", "--out"): "folder",
}
#: How to call each sub-command with its output inside the input model folder.
CLI_INTO_INPUT = {
    ("compress", "--out"): ["compress", "{model}", "--sparsity", "0.5", "--out", "{model}/pruned"],
    ("evaluate", "--json"): ["evaluate", "{model}", "--json", "{model}/record.json"],
    ("finetune", "--out"): ["finetune", "{model}", "--data", "embedded:train", "--out", "{model}/tuned"],
    ("compare", "--out"): ["compare", "--model", "{model}", "--out", "{model}/runs"],
    ("study", "--out"): ["study", "{study}", "--out", "{model}/results.json"],
    ("export", "--out"): ["export", "{model}", "--to", "onnx", "--out", "{model}/onnx"],
}


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _looks_like_output(action: argparse.Action) -> bool:
    text = f"{action.dest} {action.metavar or ''} {action.help or ''}".lower()
    return action.dest in ("out", "json", "output") or any(w in text for w in ("write", "save to", "results file"))


def test_every_cli_option_that_writes_is_known_and_checked():
    found = set()
    for name, sub in _subcommands().items():
        for action in sub._actions:
            if action.option_strings and action.nargs != 0 and _looks_like_output(action):
                found.add((name, action.option_strings[0]))
    unknown = found - set(CLI_OUTPUTS)
    assert not unknown, f"new writer(s) {unknown}: add them to CLI_OUTPUTS and CLI_INTO_INPUT, with the rule"
    assert set(CLI_INTO_INPUT) == set(CLI_OUTPUTS)


@pytest.mark.parametrize("writer", sorted(CLI_OUTPUTS))
def test_no_cli_writer_writes_inside_its_input(tmp_path, model_folder, capsys, writer):
    if writer[0] not in _subcommands():
        pytest.skip(f"no `speechprune {writer[0]}` in this build")
    study = tmp_path / "tiny.toml"
    study.write_text(STUDY.format(model=model_folder))
    if writer[0] == "export":  # export takes only folders speechprune wrote
        from speechprune.checkpoint import save_pruned
        from speechprune.testing import tiny_model, tiny_processor

        model = tiny_model("whisper")
        model_folder = save_pruned(model, tmp_path / "pruned", processor=tiny_processor("whisper"),
                                   report=compress(model, sparsity=0.5, progress=False))
    argv = [a.format(model=model_folder, study=study) for a in CLI_INTO_INPUT[writer]]
    capsys.readouterr()
    before = _snapshot(tmp_path)
    assert main(argv) == 2
    err = _one_line(capsys)
    assert "input" in err or "inside" in err or "speechprune did not write" in err
    assert _snapshot(tmp_path) == before


#: Functions of the package that may call a low-level writer, and why each is safe. Everything else
#: must go through speechprune.outputs (write_file / write_json / save_figure / staged_output).
LOW_LEVEL_WRITERS = {
    "outputs.py": "the rule itself: staged folders, atomic files, markers",
    "checkpoint.py:write_pruned": "writes into the staging folder of staged_output",
    "hub.py:finish_folder": "the card and config of a folder being staged (or a speechprune folder)",
    "hub.py:processor_view": "a private temporary folder",
    "book/figure_log.py:log_figure": "appends a line per saved figure to the log the book's build names in "
                                     "SPEECHPRUNE_FIGURE_LOG (its own _build/figures/ file); nothing without it",
    "models.py:_convert_embedded": "the embedded models' own cache, published by rename",
    "models.py:ensure_embedded": "the embedded models' own cache, published by rename",
    "ct2.py:save_whisper": "called on the embedded cache's temporary folder (models._convert_embedded)",
    "study/store.py:_locked": "the study's own lock file beside its results (opened to append, never truncated)",
    "study/store.py:_write_claims": "the study's own hidden claims file beside its results, atomic",
    "study/store.py:read_results": "moves a corrupt results file aside (never with --dry-run)",
    "finetune.py": "writes only inside its run folder, planned by plan_out_dir and published staged",
    "testing.py": "test helpers writing into folders the caller made",
    "export.py": "writes into the staging folder of staged_output",
    "onnx_export.py:_quantize_onnx": "renames an ONNX file within the staging folder of export's staged_output",
}
_WRITE_CALLS = {"write_text", "write_bytes", "savefig", "save_pretrained", "rename", "replace", "dump", "save"}


def _low_level_writes(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []

    def visit(node, where):
        for child in ast.iter_child_nodes(node):
            name = where
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = child.name if where is None else where
            if isinstance(child, ast.Call):
                f = child.func
                called = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
                mode = child.args[1] if called == "open" and len(child.args) > 1 else None
                writes_open = isinstance(mode, ast.Constant) and any(c in str(mode.value) for c in "wax")
                if called in _WRITE_CALLS or writes_open:
                    owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
                    if called in ("dump", "save") and owner not in ("json", "torch"):
                        continue
                    if called == "replace" and owner != "os":  # str.replace, not os.replace
                        continue
                    found.append(f"{name}:{called}:{child.lineno}")
            visit(child, name)

    visit(tree, None)
    return found


def test_every_library_writer_is_known():
    unknown = []
    for path in sorted((ROOT / "speechprune").rglob("*.py")):
        name = path.relative_to(ROOT / "speechprune").as_posix()  # study/store.py in a subpackage
        for hit in _low_level_writes(path):
            function = hit.split(":")[0]
            if name not in LOW_LEVEL_WRITERS and f"{name}:{function}" not in LOW_LEVEL_WRITERS:
                unknown.append(f"{name}:{hit}")
    assert not unknown, ("files written outside speechprune.outputs' rule (use write_file/write_json/save_figure/"
                         f"staged_output, or list the function in LOW_LEVEL_WRITERS with a reason): {unknown}")


def test_files_speechprune_writes_are_recognised_and_others_are_not(tmp_path):
    from speechprune.outputs import save_figure, write_json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure()
    assert written_by_speechprune(save_figure(fig, tmp_path / "a.png"))
    plt.close(fig)
    assert written_by_speechprune(write_json(tmp_path / "a.json", {"x": 1}))
    fig = plt.figure()
    fig.savefig(tmp_path / "theirs.png")
    plt.close(fig)
    (tmp_path / "config.json").write_text('{"model_type": "whisper"}')
    assert not written_by_speechprune(tmp_path / "theirs.png")
    assert not written_by_speechprune(tmp_path / "config.json")


# ---------------------------------------------------------------- fuzz: every option, bad values

BAD_NUMBERS = ["nan", "inf", "-inf", "-1", "1e999", "abc", "", "0x10", "1.5.2"]
#: Positional arguments that parse (the bad option must be what stops the command).
POSITIONAL = {"compress": ["m", "--sparsity", "0.5", "--out", "{tmp}/o"],
              "evaluate": ["m"],
              "finetune": ["m", "--data", "embedded:train", "--out", "{tmp}/o"],
              "compare": ["--out", "{tmp}/o"],
              "study": ["{tmp}/s.toml"],
              "export": ["m", "--to", "onnx", "--out", "{tmp}/o"]}
ACCEPTS = {("finetune", "--warmup"): {"0"}, ("finetune", "--num-workers"): {"0"}}


def _fuzz_cases():
    cases = []
    for name, sub in _subcommands().items():
        for action in sub._actions:
            if not action.option_strings or action.nargs == 0 or action.dest == "help":
                continue
            flag = action.option_strings[0]
            if action.choices:
                cases.append((name, flag, "no-such-choice"))
            elif action.type not in (None, str, Path) or action.dest in ("sparsity", "lr"):
                cases += [(name, flag, value) for value in BAD_NUMBERS if value not in ACCEPTS.get((name, flag), ())]
            elif flag == "--device":
                cases.append((name, flag, "tpu:9"))
    return cases


def test_the_fuzz_covers_every_numeric_option():
    flags = {(n, f) for n, f, _ in _fuzz_cases()}
    for expected in [("compress", "--seed"), ("compress", "--sparsity"), ("finetune", "--epochs"),
                     ("finetune", "--warmup"), ("finetune", "--max-steps"), ("evaluate", "--batch-size"),
                     ("compare", "--max-samples"), ("study", "--limit"), ("finetune", "--lr")]:
        assert expected in flags


@pytest.mark.parametrize("command,flag,value", _fuzz_cases())
def test_fuzz_a_bad_value_is_one_line_exit_2_and_changes_nothing(tmp_path, capsys, nothing_loaded, monkeypatch,
                                                                   command, flag, value):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.toml").write_text(STUDY.format(model="m"))
    before = _snapshot(tmp_path)
    argv = [command] + [a.format(tmp=tmp_path) for a in POSITIONAL.get(command, [])] + [f"{flag}={value}"]
    assert main(argv) == 2, argv
    err = _one_line(capsys)
    assert f"speechprune {command}" in err or "speechprune" in err
    assert _snapshot(tmp_path) == before


def test_the_cli_says_its_usage_errors_in_one_line(capsys):
    for argv in (["compress"], ["bogus"], ["evaluate", "m", "--no-such-flag"]):
        assert main(argv) == 2
        assert "--help" in _one_line(capsys)


def test_a_refusal_runs_no_python_in_a_subprocess_either(tmp_path):
    """The console script: one line, exit 2, no traceback (a real process, not main())."""
    import subprocess

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("SPEECHPRUNE_DEBUG", None)
    done = subprocess.run([sys.executable, "-m", "speechprune", "compress", "m", "--sparsity", "0.5", "--out",
                           str(tmp_path / "o"), "--seed", "99999999999999999999"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_an_openslr_transcript_cannot_point_outside_its_folder(tmp_path):
    chapter = tmp_path / "LibriSpeech" / "test-clean" / "1" / "2"
    chapter.mkdir(parents=True)
    sf.write(tmp_path / "secret.flac", np.zeros(16_000, np.float32), 16_000)
    (chapter / "1-2.trans.txt").write_text("../../../../secret HELLO\n")
    with pytest.raises(SpeechPruneError, match="not an utterance id"):
        load_speech(str(tmp_path / "LibriSpeech" / "test-clean"))
