"""The study runner: grid order, checks before any run, resume, corrupt records, Ctrl-C, reproducibility."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from conftest import make_tiny_hubert, make_tiny_whisper
from speechprune import study as st
from speechprune.study import runner
from speechprune.errors import SpeechPruneError

ROOT = Path(__file__).resolve().parents[1]


def spec(**changes):
    base = dict(name="t", models=["m"], data=["d"], seeds=3,
                settings=[dict(scope="encoder.ffn", sparsity=0.2), dict(scope="ffn", sparsity=0.1)],
                options=[dict(method="magnitude"), dict(method="cluster", features="both"),
                         dict(method="cluster", features="producer")])
    base.update(changes)
    return base


def test_grid_is_seed_major_with_one_dense_and_one_magnitude_run_per_setting():
    runs = st.parse_study(spec()).runs
    assert len(runs) == 1 + 2 + 2 * 2 * 3
    first = runs[:7]  # a partial study covers every setting and option
    assert [r.method for r in first] == ["dense", "magnitude", "cluster", "cluster", "magnitude", "cluster", "cluster"]
    assert {r.seed for r in first} == {None, 0}
    assert [r.seed for r in runs[7:]] == [1, 1, 1, 1, 2, 2, 2, 2]
    magnitude = [r for r in runs if r.method == "magnitude"]
    assert all(r.seed is None and r.features is None and r.merge is None for r in magnitude)
    assert len({r.key for r in runs}) == len(runs)


def test_key_depends_on_settings_not_on_labels():
    a = st.make_run("m", "d", method="cluster", scope="ffn", sparsity=0.1, seed=2, label="one")
    b = st.make_run("m", "d", method="cluster", scope="ffn", sparsity=0.1, seed=2, label="two")
    c = st.make_run("m", "d", method="cluster", scope="ffn", sparsity=0.1, seed=3)
    assert a.key == b.key != c.key
    # magnitude ignores the cluster options, so they do not make a different run
    m1 = st.make_run("m", "d", method="magnitude", scope="ffn", sparsity=0.1, seed=4, features="producer")
    m2 = st.make_run("m", "d", method="magnitude", scope="ffn", sparsity=0.1)
    assert m1.key == m2.key


@pytest.mark.parametrize("change, message", [
    (dict(colour="red"), "unknown key 'colour'"),
    (dict(seeds=0), "'seeds' must be between 1 and 1000"),
    (dict(seeds=[1, 1]), "'seeds' must be distinct"),
    (dict(decoding=["beam"]), "'decoding' = 'beam'"),
    (dict(settings=[dict(scope="ffn", sparsity=1.5)]), "settings[0]: 'sparsity' must be a number in [0, 1)"),
    (dict(settings=[dict(scope="ffn", sparsity=0.1, spars=0.2)]), "settings[0]: unknown key 'spars'"),
    (dict(settings=[dict(scope="encoder.fnn", sparsity=0.1)]),
     "settings[0]: 'scope' = 'encoder.fnn': unknown scope part 'encoder.fnn'"),
    (dict(options=[dict(method="prune")]), "options[0]: unknown method 'prune'"),
    (dict(options=[dict(features="all")]), "options[0]: unknown feature set 'all'"),
    (dict(options=[dict(recipe="best")]), "options[0]: 'recipe' = 'best'"),
    (dict(options=[dict(method="cluster", seed=3)]), "options[0]: unknown key 'seed'"),
    (dict(max_samples=0), "'max_samples' must be a positive integer"),
    (dict(name="../x"), "'name' must be a plain file name"),
])
def test_bad_study_files_are_refused_naming_the_key(change, message):
    with pytest.raises(SpeechPruneError) as err:
        st.parse_study(spec(**change))
    assert message in str(err.value)


def test_missing_key_and_bad_toml_are_refused(tmp_path):
    s = spec()
    del s["settings"]
    with pytest.raises(SpeechPruneError, match="missing key 'settings'"):
        st.parse_study(s)
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [")
    with pytest.raises(SpeechPruneError, match="not valid TOML"):
        st.load_study(bad)


def test_recipe_sets_options_and_explicit_options_override():
    runs = st.parse_study(spec(options=[dict(recipe="paper"), dict(recipe="paper", features="producer")])).runs
    clusters = [r for r in runs if r.method == "cluster" and r.seed == 0 and r.scope == "ffn"]
    assert [(r.features, r.allocation, r.merge, r.recipe) for r in clusters] == [
        ("both", "uniform", "mean", "paper"), ("producer", "uniform", "mean", "paper")]


def test_saved_study_files_parse():
    files = sorted((ROOT / "studies").glob("*.toml"))
    assert files
    for path in files:
        study = st.load_study(path)
        assert study.runs and study.name == path.stem


def test_dump_study_writes_back_every_shipped_study_file():
    for path in sorted((ROOT / "studies").glob("*.toml")):
        spec = tomllib.loads(path.read_text(encoding="utf-8"))
        study = st.load_study(path)
        text = st.dump_study(study)
        assert text == st.dump_study(spec) and tomllib.loads(text) == spec, path.name
        again = st.parse_study(tomllib.loads(text))
        assert again.runs == study.runs and again.name == study.name and again.description == study.description
        assert [(r.label, r.recipe) for r in again.runs] == [(r.label, r.recipe) for r in study.runs]


def test_dump_study_escapes_strings_and_refuses_a_bad_study():
    awkward = 'a "quoted" \\ back\tslash\nnew line, \x7f, ümlaut'
    s = spec(description=awkward, max_samples=4, dense=False, seeds=[0, 3],
             options=[dict(recipe="paper", label=awkward), dict(method="magnitude")])
    text = st.dump_study(s, comment="first line\nsecond line")
    assert text.startswith("# first line\n# second line\nname = ")
    assert tomllib.loads(text) == s
    assert st.parse_study(tomllib.loads(text)).runs == st.parse_study(s).runs
    with pytest.raises(SpeechPruneError, match="unknown key 'colour'"):
        st.dump_study(spec(colour="red"))


# --- running, with the evaluation replaced by a stand-in -----------------------------------------

class FakeSpeech:
    name = "fake"


def fake_full_record(run: st.Run) -> dict:
    n = 4
    base = 1 if run.method == "dense" else 3 + (run.seed or 0)
    errors = [base, 0, 1, 2]
    return dict(wer=100.0 * sum(errors) / 40, substitutions=sum(errors), deletions=0, insertions=0, ref_words=40,
                decode_seconds=0.1, model=dict(parameters=100), decoding={}, normalizer="n", dtype="float32",
                device="cpu", date="2026-01-01T00:00:00+00:00",
                versions=dict(speechprune="0", torch="0", transformers="0"),
                compression=None if run.method == "dense" else dict(param_sparsity=0.1, params_after=90, seconds=0.1),
                utterances=[dict(id=f"u{i}", errors=e, hypothesis="h", reference_normalized="a b c d e f g h i j")
                            for i, e in enumerate(errors)])


@pytest.fixture
def fake(monkeypatch):
    calls = []

    def execute(run, dense, processor, speech, **kwargs):
        calls.append(run)
        if getattr(execute, "interrupt_at", None) == len(calls):
            raise KeyboardInterrupt
        return fake_full_record(run)

    monkeypatch.setattr(runner, "execute", execute)  # where run_study looks them up
    monkeypatch.setattr(runner, "load_model", lambda name, device=None: (make_tiny_whisper(), None))
    monkeypatch.setattr(runner, "load_speech", lambda name, max_samples=None: FakeSpeech())
    monkeypatch.setattr(runner, "check_sources", lambda study: None)  # the fakes stand for models 'm' and data 'd'
    return execute, calls


def test_study_records_resumes_and_reruns_only_when_asked(fake, tmp_path):
    execute, calls = fake
    study = st.parse_study(spec(seeds=2))
    out = tmp_path / "r.json"
    records = st.run_study(study, out, progress=False, log=lambda *_: None)
    assert len(records) == len(study.runs) == len(calls) == 1 + 2 + 2 * 2 * 2
    saved = json.loads(out.read_text())
    assert saved["n_done"] == saved["n_runs"] == len(study.runs)
    r = saved["records"][1]
    for field in ("model", "data", "n_utterances", "scope", "sparsity", "method", "features", "allocation", "merge",
                  "weighting", "seed", "decoding", "wer", "substitutions", "deletions", "insertions", "ref_words",
                  "utterance_errors", "utterance_words", "hypotheses", "param_sparsity", "date", "versions", "seconds"):
        assert field in r
    calls.clear()
    st.run_study(study, out, progress=False, log=lambda *_: None)
    assert calls == []  # nothing measured twice
    bigger = st.parse_study(spec(seeds=3))
    st.run_study(bigger, out, progress=False, log=lambda *_: None)
    assert [c.seed for c in calls] == [2, 2, 2, 2]
    calls.clear()
    st.run_study(study, out, progress=False, rerun=True, log=lambda *_: None)
    assert len(calls) == len(study.runs)
    assert len(json.loads(out.read_text())["records"]) == len(bigger.runs)


def test_corrupt_records_are_reported_and_measured_again(fake, tmp_path):
    execute, calls = fake
    study = st.parse_study(spec(seeds=1))
    out = tmp_path / "r.json"
    st.run_study(study, out, progress=False, log=lambda *_: None)
    saved = json.loads(out.read_text())
    saved["records"][2]["wer"] = 1.5  # does not match its per-utterance counts
    del saved["records"][3]["utterance_errors"]
    out.write_text(json.dumps(saved))
    calls.clear()
    lines = []
    st.run_study(study, out, progress=False, log=lines.append)
    assert len(calls) == 2
    assert any("does not match its per-utterance counts" in l for l in lines)
    assert any("missing utterance_errors" in l for l in lines)
    # a file that is not JSON at all is moved aside and every run measured again
    out.write_text('{"records": [')
    calls.clear()
    lines.clear()
    st.run_study(study, out, progress=False, log=lines.append)
    assert len(calls) == len(study.runs) and any("not valid JSON" in l for l in lines)
    assert list(tmp_path.glob("r.json.corrupt-*"))


def test_interrupt_loses_at_most_the_run_in_progress(fake, tmp_path):
    execute, calls = fake
    study = st.parse_study(spec(seeds=1))
    out = tmp_path / "r.json"
    execute.interrupt_at = 4
    with pytest.raises(KeyboardInterrupt):
        st.run_study(study, out, progress=False, log=lambda *_: None)
    assert len(json.loads(out.read_text())["records"]) == 3
    execute.interrupt_at = None
    calls.clear()
    st.run_study(study, out, progress=False, log=lambda *_: None)
    assert len(calls) == len(study.runs) - 3
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_model_or_speech_set_that_does_not_exist_is_refused_before_anything_loads(monkeypatch, tmp_path):
    def never(*args, **kwargs):
        raise AssertionError("loaded before the names were checked")

    monkeypatch.setattr(runner, "load_model", never)
    monkeypatch.setattr(runner, "load_speech", never)
    (tmp_path / "m").mkdir()
    for models, data, message in [(["m-nowhere"], ["embedded"], "t: models: model 'm-nowhere' is not an existing"),
                                  ([str(tmp_path / "m")], ["d-nowhere"], "t: data: speech folder not found")]:
        study = st.parse_study(spec(models=models, data=data))
        with pytest.raises(SpeechPruneError, match=message):
            st.run_study(study, tmp_path / "r.json", progress=False, log=lambda *_: None)
    assert not (tmp_path / "r.json").exists()


def test_scope_matching_no_unit_is_refused_before_any_run(fake, monkeypatch, tmp_path):
    execute, calls = fake
    monkeypatch.setattr(runner, "load_model", lambda name, device=None: (make_tiny_hubert(), None))
    study = st.parse_study(spec(settings=[dict(scope="decoder.ffn", sparsity=0.2)]))
    with pytest.raises(SpeechPruneError, match="'scope' = 'decoder.ffn' matches no unit of m"):
        st.run_study(study, tmp_path / "r.json", progress=False, log=lambda *_: None)
    assert calls == [] and not (tmp_path / "r.json").exists()


def test_cli_dry_run_lists_runs(tmp_path, capsys):
    from speechprune.cli import main

    path = tmp_path / "s.toml"
    (tmp_path / "m").mkdir()  # a model folder and a speech folder: --dry-run checks that they exist
    (tmp_path / "d").mkdir()

    def write(model, data):
        path.write_text(f'name = "s"\nmodels = ["{model}"]\ndata = ["{data}"]\nseeds = 2\n'
                        '[[settings]]\nscope = "ffn"\nsparsity = 0.1\n[[options]]\nmethod = "magnitude"\n'
                        '[[options]]\nrecipe = "paper"\n')

    for model, data, message in [(tmp_path / "m", tmp_path / "nowhere", "s.toml: data: speech folder not found"),
                                 ("embedded:whisper-small", tmp_path / "d", "s.toml: models: unknown embedded model"),
                                 (tmp_path / "m", "librispeech:test-cleen", "unknown LibriSpeech subset 'test-cleen'")]:
        write(model, data)
        assert main(["study", str(path), "--dry-run", "--out", str(tmp_path / "o.json")]) == 2
        assert message in capsys.readouterr().err
    write(tmp_path / "m", tmp_path / "d")
    assert main(["study", str(path), "--dry-run", "--out", str(tmp_path / "o.json")]) == 0
    out = capsys.readouterr().out
    assert "4 runs, 0 saved" in out
    assert main(["study", str(path), "--dry-run", "--recipe", "recommended", "--out", str(tmp_path / "o.json")]) == 0
    out = capsys.readouterr().out
    from speechprune.recipes import resolve

    method = resolve("recommended")["method"]
    assert f"{method} (recommended)" in out and "magnitude" in out
    from speechprune.methods import get_method

    seeded = get_method(method).takes_seed  # closest pairs and obs have no seed: one run
    assert ("4 runs" if seeded else "3 runs") in out
    path.write_text('name = "s"\nmodel = ["m"]\n')
    assert main(["study", str(path)]) == 2
    assert "unknown key 'model'" in capsys.readouterr().err


# --- reproducibility ---------------------------------------------------------------------------

HASH_SCRIPT = """
import hashlib, sys, torch
torch.set_num_threads(int(sys.argv[1]))
sys.path.insert(0, sys.argv[2])
from conftest import make_tiny_whisper
from transformers import WhisperConfig, WhisperForConditionalGeneration
from speechprune.compress import compress
torch.manual_seed(0)
cfg = make_tiny_whisper().config
cfg.encoder_ffn_dim = cfg.decoder_ffn_dim = 768
cfg.d_model = 192
model = WhisperForConditionalGeneration(cfg).eval()
compress(model, method="cluster", sparsity=0.3, scope="ffn", features=sys.argv[3], seed=1, progress=False)
h = hashlib.sha256()
for k, v in sorted(model.state_dict().items()):
    h.update(k.encode()); h.update(v.numpy().tobytes())
print(h.hexdigest())
"""


@pytest.mark.parametrize("features", ["both", "producer"])
def test_pruned_weights_are_bit_identical_on_one_and_two_threads(features, tmp_path):
    script = tmp_path / "h.py"
    script.write_text(HASH_SCRIPT)
    hashes = []
    for threads in (1, 2):
        done = subprocess.run([sys.executable, str(script), str(threads), str(ROOT / "tests"), features],
                              capture_output=True, text=True, env={**__import__("os").environ,
                                                                   "OMP_NUM_THREADS": str(threads)})
        assert done.returncode == 0, done.stderr
        hashes.append(done.stdout.strip().splitlines()[-1])
    assert hashes[0] == hashes[1]


@pytest.mark.slow
def test_real_study_reproduces_its_records(tmp_path):
    from speechprune.cli import main

    path = tmp_path / "tiny.toml"
    path.write_text('name = "tiny"\nmodels = ["embedded:whisper-tiny.en"]\ndata = ["embedded"]\nmax_samples = 2\n'
                    'seeds = 1\n[[settings]]\nscope = "encoder.ffn"\nsparsity = 0.2\n'
                    '[[options]]\nmethod = "magnitude"\n[[options]]\nmethod = "cluster"\nfeatures = "producer"\n')
    out = tmp_path / "tiny.json"
    assert main(["study", str(path), "--out", str(out)]) == 0
    first = json.loads(out.read_text())["records"]
    assert [r["method"] for r in first] == ["dense", "magnitude", "cluster"]
    assert main(["study", str(path), "--out", str(out), "--rerun"]) == 0
    again = json.loads(out.read_text())["records"]
    assert [(r["key"], r["wer"], r["hypotheses"]) for r in again] == [(r["key"], r["wer"], r["hypotheses"]) for r in first]


def test_runs_with_the_same_settings_are_reused_from_other_studies(fake, tmp_path):
    execute, calls = fake
    first = st.parse_study(spec(seeds=1))
    st.run_study(first, tmp_path / "a.json", progress=False, log=lambda *_: None)
    calls.clear()
    second = st.parse_study(spec(name="b", seeds=2))
    lines = []
    st.run_study(second, tmp_path / "b.json", progress=False, log=lines.append)
    assert [c.seed for c in calls] == [1, 1, 1, 1]
    assert any("7 runs reused" in line for line in lines)
    saved = json.loads((tmp_path / "b.json").read_text())["records"]
    assert sum(r.get("reused_from") == "a.json" for r in saved) == 7
    relabelled = st.parse_study(spec(name="d", seeds=1, options=[
        dict(method="magnitude", label="baseline"), dict(method="cluster", features="both", label="A"),
        dict(method="cluster", features="producer", label="B")]))
    st.run_study(relabelled, tmp_path / "d.json", progress=False, log=lambda *_: None)
    labels = {r["label"] for r in json.loads((tmp_path / "d.json").read_text())["records"] if r["method"] != "dense"}
    assert labels == {"baseline", "A", "B"}  # copied runs carry this study's names, not the other's
    calls.clear()
    st.run_study(st.parse_study(spec(name="c", seeds=1)), tmp_path / "c.json", progress=False, reuse=False,
                 log=lambda *_: None)
    assert len(calls) == 7


def test_saved_study_reads_results_dir_first_then_the_package(tmp_path):
    from speechprune.study import PACKAGE_STUDIES, saved_comparison, saved_study

    shipped = saved_study("whisper-base-full")
    assert shipped is not None and (PACKAGE_STUDIES / "whisper-base-full.json").is_file()
    local = dict(json.loads((PACKAGE_STUDIES / "whisper-base-full.json").read_text()))
    local["records"] = local["records"][:3]
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "whisper-base-full.json").write_text(json.dumps(local))
    assert len(saved_study("whisper-base-full", tmp_path)["records"]) == 3
    assert saved_study("no-such-study", tmp_path) is None

    pairs = [("cluster (paper)", "magnitude"), ("cluster (paper)", "no such option")]
    status, records, said = saved_comparison("whisper-base-full", None, scope="ffn", sparsity=0.1, pairs=pairs)
    assert status.startswith("whisper-base-full")
    assert {(r["scope"], r["sparsity"]) for r in records if r["method"] != "dense"} == {("ffn", 0.1)}
    assert any(r["method"] == "dense" for r in records)
    assert "cluster (paper)" in said[pairs[0]] and "magnitude" in said[pairs[0]]
    assert said[pairs[1]].startswith("not measured yet")
    status, records, said = saved_comparison("no-such-study", tmp_path, pairs=pairs)
    assert records == [] and all(v.startswith("not measured yet") for v in said.values())


def test_summary_prints_the_saved_statistics_as_markdown(tmp_path, capsys):
    from speechprune.cli import main
    from speechprune.study import PACKAGE_STUDIES

    root = Path(__file__).resolve().parents[1]
    study_file = str(root / "studies" / "whisper-base-full.toml")
    assert main(["study", study_file, "--out", str(PACKAGE_STUDIES / "whisper-base-full.json"), "--summary"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("whisper-base-full (")
    assert "| setting | magnitude | cluster (paper) | cluster producer |" in out
    assert "| ffn 10% | " in out and "(single run)" in out and "against magnitude" in out
    assert main(["study", study_file, "--out", str(tmp_path / "absent.json"), "--summary"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_status_headline_keeps_the_name_and_the_progress():
    from speechprune.study import status_headline

    assert status_headline("x (PARTIAL: 2 of 9 runs saved so far): a study (8 clips). Measured") == \
        "x (PARTIAL: 2 of 9 runs saved so far)"
    assert status_headline("x (complete): desc") == "x (complete)"
    assert status_headline("x: no runs saved yet.") == "x: no runs saved yet."


def test_screening_scores_and_the_selection_rule():
    def rec(model, sparsity, label, seed, wer, method="cluster"):
        return dict(model=model, data="d", max_samples=None, decoding="greedy", scope="ffn", sparsity=sparsity,
                    method=method, features=label, allocation="uniform", merge="mean", weighting="none",
                    seed=seed, label=label, wer=wer)

    records = [rec(m, s, "magnitude", None, 90.0, "magnitude") for m in ("a", "b") for s in (0.1, 0.2)]
    for m in ("a", "b"):
        for s in (0.1, 0.2):
            records += [rec(m, s, "steady", seed, w) for seed, w in enumerate((20.0, 21.0, 22.0))]
            records += [rec(m, s, "lucky", seed, w) for seed, w in enumerate((19.5, 20.5, 60.0))]
            records += [rec(m, s, "bad", seed, w) for seed, w in enumerate((40.0, 41.0, 42.0))]
    records += [rec("a", 0.1, "partial", seed, 1.0) for seed in range(3)]
    scores = {r["option"]: r for r in st.screening_scores(records)}
    assert scores["steady"]["score"] == 21.0 and scores["steady"]["worst"] == 22.0
    assert scores["lucky"]["score"] == 20.5 and scores["lucky"]["worst"] == 60.0
    assert (scores["partial"]["cells"], scores["partial"]["of_cells"]) == (1, 4)
    # lucky is 0.5 points better, within the 1-point tie: the lower worst case (steady) goes first;
    # the option that covers one cell of four is never picked, nor is magnitude pruning
    assert st.select_options(list(scores.values())) == ["steady", "lucky"]
    assert st.select_options(list(scores.values()), tie=0.0) == ["lucky", "steady"]


def test_comparison_table_can_leave_the_sentences_to_the_page():
    from speechprune.study import saved_study, seeds_table as comparison_table

    records = saved_study("allocations-encoder-ffn20")["records"]
    full, short = comparison_table(records, n_boot=100), comparison_table(records, n_boot=100, sentences=False)
    assert "versus magnitude" in full.columns and "versus magnitude" not in short.columns
    assert list(short.index) == list(full.index) and len(short) >= 4


def test_two_workers_share_one_study_without_measuring_a_run_twice(fake, tmp_path):
    import threading

    execute, calls = fake
    study = st.parse_study(spec(seeds=3))
    out = tmp_path / "r.json"
    fake_execute = runner.execute

    def slow(run, *args, **kwargs):  # long enough that both workers are busy at once
        time.sleep(0.05)
        return fake_execute(run, *args, **kwargs)

    runner.execute = slow
    try:
        workers = [threading.Thread(target=st.run_study, args=(study, out),
                                    kwargs=dict(progress=False, log=lambda *_: None)) for _ in range(2)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    finally:
        runner.execute = fake_execute
    assert sorted(r.key for r in calls) == sorted(r.key for r in study.runs)  # each run measured once
    saved = json.loads(out.read_text())
    assert saved["n_done"] == len(study.runs) == len(saved["records"])  # no worker's record lost
    assert not (tmp_path / ".r.json.claims").exists()


def test_a_claim_left_by_a_dead_worker_is_taken_over(fake, tmp_path, capsys):
    from speechprune.cli import main

    execute, calls = fake
    study = st.parse_study(spec(seeds=1))
    out = tmp_path / "r.json"
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(done.stdout)
    first, second = study.runs[0].key, study.runs[1].key
    claims = {first: dict(pid=dead, host=socket.gethostname(), since=time.time()),
              second: dict(pid=os.getpid(), host=socket.gethostname(), since=time.time())}
    (tmp_path / ".r.json.claims").write_text(json.dumps(claims))
    lines = []
    st.run_study(study, out, progress=False, log=lines.append)
    # the dead worker's run is measured; the live worker's (this process) is left to it
    assert first in {c.key for c in calls} and second not in {c.key for c in calls}
    assert any("1 of them being measured by another worker" in line for line in lines)
    assert any("still being measured by other workers" in line for line in lines)
    assert json.loads((tmp_path / ".r.json.claims").read_text()).keys() == {second}


def _final_records(rates: dict[str, dict[float, list[float]]], utts: int = 40) -> list[dict]:
    """Records of a synthetic final study: per option and sparsity, one WER rate per seed."""
    base = dict(model="m", data="d", max_samples=None, decoding="greedy", scope="encoder.ffn", features="both",
                allocation="uniform", merge="mean", weighting="none")
    out = []
    for option, by_sparsity in rates.items():
        for sparsity, per_seed in by_sparsity.items():
            for s, rate in enumerate(per_seed):
                errors = [round(rate * 10)] * utts
                out.append(dict(base, sparsity=sparsity, features=option,  # options differ in their settings
                                method="magnitude" if option == "magnitude" else "cluster",
                                seed=None if option == "magnitude" else s, label=option, wer=rate * 100,
                                utterance_ids=[f"u{i}" for i in range(utts)], utterance_errors=errors,
                                utterance_words=[10] * utts))
    return out


def test_recommend_applies_step_3_of_the_rule():
    mag = {0.1: [0.8], 0.2: [0.9], 0.5: [1.0]}
    good = {0.1: [0.2] * 5, 0.2: [0.3] * 5, 0.5: [1.0] * 5}  # clearly better at two settings of three
    paper = {0.1: [0.4] * 5, 0.2: [0.6] * 5, 0.5: [1.0] * 5}
    picked = st.recommend(_final_records(dict(magnitude=mag, good=good, paper=paper)), fallback="paper", n_boot=200)
    assert picked["choice"] == "good" and "in 2 of them" in picked["reason"]
    assert [r["option"] for r in picked["rows"]] == ["good", "paper"]
    # the best option must beat magnitude pruning clearly in two settings, else the paper's recipe stays
    narrow = {0.1: [0.7] * 5, 0.2: [0.9] * 5, 0.5: [1.0] * 5}
    picked = st.recommend(_final_records(dict(magnitude={**mag, 0.1: [0.9]}, narrow=narrow)), fallback="paper",
                          n_boot=200)
    assert picked["choice"] == "paper" and "only 1 of 3" in picked["reason"]
    # within 1 point, the lower worst seed wins
    steady = {0.1: [0.2] * 5, 0.2: [0.3] * 5, 0.5: [1.0] * 5}
    risky = {0.1: [0.1, 0.1, 0.2, 0.9, 0.9], 0.2: [0.3] * 5, 0.5: [1.0] * 5}  # same medians, worse worst case
    picked = st.recommend(_final_records(dict(magnitude=mag, risky=risky, steady=steady)), fallback="paper",
                          n_boot=200)
    assert picked["choice"] == "steady"
    # an option missing a setting is not eligible
    partial = {0.1: [0.05] * 5}
    picked = st.recommend(_final_records(dict(magnitude=mag, partial=partial, paper=paper)), fallback="paper",
                          n_boot=200)
    assert picked["choice"] == "paper" and "only 0 of 3" not in picked["reason"]


def _errors_by_label(rate: dict[str, int]):
    """A fake ``runner.execute`` whose runs make ``rate[label]`` errors per utterance (magnitude 6, others 4)."""
    def by_label(run, *args, **kwargs):
        full = fake_full_record(run)
        if run.method != "dense":
            e = rate.get(run.label, 6 if run.method == "magnitude" else 4)
            full["utterance_errors"] = [e] * 4
            full["utterances"] = [dict(u, errors=e) for u in full["utterances"]]
            full["wer"], full["substitutions"] = 100.0 * 4 * e / 40, 4 * e
        return full
    return by_label


def test_select_recipe_script_writes_the_final_studies_and_applies_step_3(fake, tmp_path, monkeypatch):
    """The rule end to end on fake measurements: screening -> final study files -> recommended options."""
    import runpy

    script = runpy.run_path(str(ROOT / "scripts" / "select_recipe.py"))
    execute, calls = fake
    rate = {"J producer, cost allocation": 1, "B producer": 2, "E producer consumer-weighted": 3}

    monkeypatch.setattr(runner, "execute", _errors_by_label(rate))
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "screen-recipes.toml").write_text((ROOT / "studies" / "screen-recipes.toml").read_text())
    screen = st.load_study(tmp_path / "studies" / "screen-recipes.toml")
    out = tmp_path / "results" / "studies"
    with pytest.raises(SystemExit, match="absent"):
        script["final"](tmp_path)
    st.run_study(screen, out / "screen-recipes.json", progress=False, log=lambda *_: None, limit=10)
    with pytest.raises(SystemExit, match="not complete"):
        script["final"](tmp_path)
    st.run_study(screen, out / "screen-recipes.json", progress=False, log=lambda *_: None)
    written = script["final"](tmp_path)
    assert [p.name for p in written] == ["recipe-final.toml", "recipe-final-heldout.toml"]
    final = st.load_study(written[0])
    assert [o.label for o in final.runs if o.seed == 0] == ["A paper (both)", "J producer, cost allocation", "B producer"] * 3
    assert {r.data for r in final.runs} == {"embedded-full"} and max(r.seed or 0 for r in final.runs) == 4
    assert st.load_study(written[1]).runs[0].data == "embedded:train"
    with pytest.raises(SystemExit, match="never overwritten"):
        script["final"](tmp_path)
    st.run_study(final, out / "recipe-final.json", progress=False, log=lambda *_: None)
    picked = script["pick"](tmp_path)
    assert picked["choice"] == "J producer, cost allocation"
    assert picked["options"] == dict(method="cluster", features="producer", allocation="cost", merge="mean",
                                     weighting="none")


def test_recommend_keeps_the_incumbent_unless_a_challenger_is_more_than_a_point_lower():
    mag = {0.1: [0.8], 0.2: [0.9], 0.5: [1.0]}
    incumbent = {0.1: [0.2] * 5, 0.2: [0.3] * 5, 0.5: [1.0] * 5}
    close = {0.1: [0.1] * 5, 0.2: [0.3] * 5, 0.5: [1.0] * 5}  # 3.3 points lower on average: not enough for tie=5
    picked = st.recommend(_final_records(dict(magnitude=mag, incumbent=incumbent, close=close)), fallback="incumbent",
                          incumbent="incumbent", n_boot=200, tie=5.0)
    assert picked["choice"] == "incumbent" and "not more than 5 points below the incumbent" in picked["reason"]
    better = {0.1: [0.1] * 5, 0.2: [0.2] * 5, 0.5: [1.0] * 5}  # 6.7 points lower, and clear wins over magnitude
    picked = st.recommend(_final_records(dict(magnitude=mag, incumbent=incumbent, better=better)),
                          fallback="incumbent", incumbent="incumbent", n_boot=200)
    assert picked["choice"] == "better"
    worse = {0.1: [0.3] * 5, 0.2: [0.4] * 5, 0.5: [1.0] * 5}
    picked = st.recommend(_final_records(dict(magnitude=mag, incumbent=incumbent, worse=worse)),
                          fallback="incumbent", incumbent="incumbent", n_boot=200)
    assert picked["choice"] == "incumbent" and "keeps the lowest" in picked["reason"]


def test_select_recipe_round_2_keeps_two_new_candidates_and_carries_the_incumbent(fake, tmp_path, monkeypatch):
    """Round 2 of the rule on fake measurements: magnitude, the paper's recipe and G cannot be kept, and
    the final study carries G beside the two kept candidates."""
    import runpy

    script = runpy.run_path(str(ROOT / "scripts" / "select_recipe.py"))
    rate = {"G pairs producer": 1, "L pairs producer, cost allocation": 2, "O pairs function": 3}

    monkeypatch.setattr(runner, "execute", _errors_by_label(rate))
    (tmp_path / "studies").mkdir()
    name = "screen-recipes-2"
    (tmp_path / "studies" / f"{name}.toml").write_text((ROOT / "studies" / f"{name}.toml").read_text())
    screen = st.load_study(tmp_path / "studies" / f"{name}.toml")
    out = tmp_path / "results" / "studies"
    st.run_study(screen, out / f"{name}.json", progress=False, log=lambda *_: None)
    written = script["final"](tmp_path, round=2)
    assert [p.name for p in written] == ["recipe-final-2.toml", "recipe-final-2-heldout.toml"]
    final = st.load_study(written[0])
    assert list(dict.fromkeys(r.label for r in final.runs if r.method not in ("dense", "magnitude"))) == [
        "A paper (both)", "G pairs producer", "L pairs producer, cost allocation", "O pairs function"]
    assert "the incumbent 'G pairs producer'" in (tmp_path / "studies" / "recipe-final-2.toml").read_text()
    st.run_study(final, out / "recipe-final-2.json", progress=False, log=lambda *_: None)
    picked = script["pick"](tmp_path, round=2)
    assert picked["choice"] == "G pairs producer" and "stays G pairs producer" in picked["reason"]


def test_limit_stops_after_that_many_new_runs(fake, tmp_path):
    execute, calls = fake
    study = st.parse_study(spec(seeds=2))
    st.run_study(study, tmp_path / "r.json", progress=False, limit=3, log=lambda *_: None)
    assert len(calls) == 3 and len(json.loads((tmp_path / "r.json").read_text())["records"]) == 3


def test_scores_print_a_screening_cell_by_cell_and_keep_nothing_before_every_cell_is_run(fake, tmp_path, capsys):
    from speechprune.cli import main

    execute, calls = fake
    path = tmp_path / "s.toml"
    path.write_text('name = "s"\nmodels = ["m"]\ndata = ["d"]\nseeds = 2\n'
                    '[[settings]]\nscope = "encoder.ffn"\nsparsity = 0.2\n[[settings]]\nscope = "ffn"\nsparsity = 0.1\n'
                    '[[options]]\nmethod = "magnitude"\n'
                    '[[options]]\nmethod = "cluster"\nfeatures = "both"\nlabel = "A"\n'
                    '[[options]]\nmethod = "pairs"\nfeatures = "producer"\nlabel = "G"\n')
    study = st.load_study(path)
    out = tmp_path / "s.json"
    st.run_study(study, out, progress=False, limit=4, log=lambda *_: None)  # dense and the first setting
    assert main(["study", str(path), "--out", str(out), "--scores"]) == 0
    printed = capsys.readouterr().out
    assert "| option | m encoder.ffn 20% | score | worst | cells |" in printed
    assert "| A | 10.00 |  |" not in printed and "1 of 2 |" in printed
    assert "No option covers every cell yet (provisional" in printed
    st.run_study(study, out, progress=False, log=lambda *_: None)
    assert main(["study", str(path), "--out", str(out), "--scores"]) == 0
    printed = capsys.readouterr().out
    assert "| A | 16.25 (2) | 16.25 (2) | 16.25 | 17.50 | 2 of 2 |" in printed  # seeds 0, 1: 6 and 7 errors in 40 words
    assert "The rule keeps G and A." in printed


def test_target_rows_compare_the_median_with_half_of_magnitude():
    recs = _final_records(dict(magnitude={0.2: [0.8]}, good={0.2: [0.3, 0.4, 0.3, 0.9, 0.2]},
                               close={0.2: [0.5] * 5}))
    rows = {r["option"]: r for r in st.target_rows(recs)}
    assert rows["good"]["median"] == 30.0 and rows["good"]["magnitude"] == 80.0 and rows["good"]["met"]
    assert rows["good"]["ratio"] == pytest.approx(30 / 80) and rows["good"]["seeds"] == 5
    assert not rows["close"]["met"] and rows["close"]["ratio"] == pytest.approx(0.625)


def test_target_sentences_list_options_lowest_median_first_with_their_comparison():
    recs = _final_records(dict(magnitude={0.2: [0.8]}, good={0.2: [0.3, 0.4, 0.3, 0.9, 0.2]},
                               close={0.2: [0.5] * 5}))
    rows = st.target_rows(recs, n_boot=200)
    said = st.target_sentences(rows)
    assert len(said) == 1
    (setting, sentences), = said.items()
    assert setting[1] == 0.2 and len(sentences) == 2
    assert sentences[0].startswith("good, median 30.00% over 5 seeds, 0.38 times magnitude pruning's 80.00% "
                                   "(target met): ")
    assert sentences[1].startswith("close, median 50.00% over 5 seeds, 0.62 times") and "(target not met)" in sentences[1]
    plain = st.target_sentences(rows, target=False)[setting]
    assert plain[0].startswith("good, median 30.00% over 5 seeds, 0.38 times magnitude pruning's 80.00%: ")
    assert not any("target" in x for x in plain)
    table = st.target_table(rows)
    assert dict(zip(table.index.get_level_values("option"), table["target (ratio at most 0.5)"])) == \
        {"good": "met", "close": "not met"}


def test_every_named_recipe_is_what_the_rule_picked_in_its_round(capsys):
    """`--recipe recommended` must be the output of step 3 on the shipped round-4 final study,
    `--recipe pairs-refit-2026` round 3's, `pairs-variance-2026` round 2's and `pairs-2026` round 1's
    (the previous `recommended` recipes, kept by name), not hand edits."""
    import runpy

    from speechprune.recipes import RECIPES_OPTIONS

    for name in ("recipe-final", "recipe-final-2", "recipe-final-3", "recipe-final-4"):
        assert (ROOT / "results" / "studies" / f"{name}.json").is_file()
    script = runpy.run_path(str(ROOT / "scripts" / "select_recipe.py"))
    assert script["pick"](ROOT, round=4)["options"] == RECIPES_OPTIONS["recommended"]
    assert "recommended: " in capsys.readouterr().out
    assert script["pick"](ROOT, round=3)["options"] == RECIPES_OPTIONS["pairs-refit-2026"]
    assert script["pick"](ROOT, round=2)["options"] == RECIPES_OPTIONS["pairs-variance-2026"]
    assert script["pick"](ROOT, round=1)["options"] == RECIPES_OPTIONS["pairs-2026"]
    named = ("recommended", "pairs-refit-2026", "pairs-variance-2026", "pairs-2026")
    assert len({tuple(sorted(RECIPES_OPTIONS[n].items())) for n in named}) == 4


def _one_candidate_round(round: int) -> dict:
    """Step 3 of a round with one candidate and no screening (rounds 3 and 4), on its shipped final study;
    the candidate must win by more than 1 point over the round's incumbent."""
    import runpy

    script = runpy.run_path(str(ROOT / "scripts" / "select_recipe.py"))
    with pytest.raises(SystemExit, match="no screening"):
        script["final"](ROOT, round=round)
    picked = script["pick"](ROOT, round=round)
    assert "more than" not in picked["reason"], "the candidate scores more than 1 point below the incumbent"
    return picked


def test_round_3_picked_the_refit_merge_now_pairs_refit_2026(capsys):
    """Round 3: step 3 on the shipped `recipe-final-3` picks R, round 2's recipe K
    (`pairs-variance-2026`) with the refit merge, more than 1 point below K."""
    from speechprune.options import recipe_fields

    picked = _one_candidate_round(3)
    assert picked["choice"].startswith("R ") and picked["options"]["merge"] == "refit"
    assert recipe_fields("pairs-refit-2026") == picked["options"]
    assert dict(recipe_fields("pairs-variance-2026"), merge="refit") == picked["options"], "R is K with the refit merge"
    assert "recommended: R " in capsys.readouterr().out


def test_round_4_picks_the_brain_surgeon_and_it_is_the_recommended_recipe(capsys):
    """Round 4: step 3 on the shipped `recipe-final-4` picks O, round 3's recipe R with the obs method,
    more than 1 point below R and a clear win over magnitude in every setting."""
    from speechprune.options import CompressionOptions, recipe_fields

    picked = _one_candidate_round(4)
    assert picked["choice"].startswith("O ") and picked["options"]["method"] == "obs"
    assert all(row["wins"] == 3 for row in picked["rows"] if row["option"] == picked["choice"])
    runs_it = CompressionOptions(recipe="recommended", sparsity=0.2)
    assert runs_it.method_name == "obs" and runs_it.merge == "refit" and runs_it.seed is None
    r = recipe_fields("pairs-refit-2026")
    assert {**r, "method": "obs", "weighting": None} == recipe_fields("recommended"), "O is R with the obs method"
    assert "recommended: O " in capsys.readouterr().out


