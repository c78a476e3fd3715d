"""`speechprune study --executor submitit`: workers in separate processes (submitit's local executor),
the same claims and records as the local workers, and a stopped study that resumes."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from speechprune import study as st
from speechprune.cli import main
from speechprune.testing import tiny_model, tiny_processor

submitit = pytest.importorskip("submitit")  # the dev extra installs it; CI has it

STUDY = """name = "tiny-cluster"
models = ["{model}"]
data = ["embedded"]
max_samples = 1
seeds = 4
[[settings]]
scope = "ffn"
sparsity = 0.25
[[options]]
method = "magnitude"
[[options]]
method = "cluster"
features = "producer"
"""
N_RUNS = 1 + 1 + 4  # dense, magnitude, four k-means seeds


@pytest.fixture
def tiny_study(tmp_path) -> Path:
    """A study of a tiny random HuBERT saved with its processor, on one shipped clip."""
    model = tmp_path / "tiny-hubert"
    tiny_model("hubert").save_pretrained(model)
    tiny_processor("hubert").save_pretrained(model)
    path = tmp_path / "tiny.toml"
    path.write_text(STUDY.format(model=model.as_posix()))
    return path


def _measured(out: Path) -> list[str]:
    """The runs that the workers' logs say they measured (one line each), over every job so far."""
    logs = sorted(st_folder(out).rglob("*_log.out"))
    return [line for log in logs for line in log.read_text().splitlines() if ": WER " in line]


def st_folder(out: Path) -> Path:
    from speechprune.executors import log_folder

    return log_folder(out)


@pytest.mark.slow  # worker processes import torch: about 30 s
def test_submitit_workers_measure_each_run_once(tiny_study, tmp_path, capsys):
    out = tmp_path / "results" / "tiny.json"
    code = main(["study", str(tiny_study), "--out", str(out), "--executor", "submitit", "--cluster", "local",
                 "--jobs", "2", "--timeout", "10"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "submitted 2 worker(s) to local" in printed.out
    saved = json.loads(out.read_text())
    assert saved["n_done"] == saved["n_runs"] == N_RUNS == len(saved["records"])
    assert all(st.check_record(r) is None for r in saved["records"])
    assert sorted(r["method"] for r in saved["records"]) == ["cluster"] * 4 + ["dense", "magnitude"]
    measured = _measured(out)
    assert len(measured) == N_RUNS  # by two processes together, none twice
    assert len({line.split(": WER")[0] for line in measured}) == N_RUNS
    assert len(list(st_folder(out).rglob("*_log.out"))) == 2  # two workers, each with its log
    assert not (out.parent / ".tiny.json.claims").exists()  # every claim released

    # everything saved: the same command submits nothing
    assert main(["study", str(tiny_study), "--out", str(out), "--executor", "submitit", "--cluster", "local"]) == 0
    assert "0 to measure" in capsys.readouterr().out and len(_measured(out)) == N_RUNS


@pytest.mark.slow
def test_a_stopped_submitit_study_resumes_without_measuring_saved_runs_again(tiny_study, tmp_path, capsys):
    out = tmp_path / "tiny.json"
    study = st.load_study(tiny_study)
    executor = submitit.AutoExecutor(folder=st_folder(out) / "%j", cluster="local")
    executor.update_parameters(timeout_min=10)
    from speechprune.executors import StudyWorker

    job = executor.submit(StudyWorker(study, out), 0)
    deadline = time.time() + 300
    while time.time() < deadline and not job.done():
        if out.is_file() and json.loads(out.read_text())["records"]:
            break
        time.sleep(0.05)
    # stopped as `scancel` stops a SLURM job: SIGTERM to the worker's process (SIGKILL would follow)
    log = next(st_folder(out).rglob("*_log.out")).read_text()
    os.kill(int(re.search(r"worker 0 of study \S+ on \S+, pid (\d+)", log).group(1)), signal.SIGTERM)
    while not job.done():
        time.sleep(0.1)
    assert "KeyboardInterrupt" in str(job.exception())
    before = {r["key"]: r for r in json.loads(out.read_text())["records"]}
    assert 1 <= len(before) < N_RUNS, "the job was not stopped before its end"
    with st._locked(out):
        assert not st._claims_path(out).exists()  # the stopped worker released its claim itself
    n_logged = len(_measured(out))
    assert n_logged == len(before)

    assert main(["study", str(tiny_study), "--out", str(out), "--executor", "submitit", "--cluster", "local",
                 "--jobs", "3", "--timeout", "10"]) == 0
    assert f"{len(before)} saved in {out}, {N_RUNS - len(before)} to measure" in capsys.readouterr().out
    after = {r["key"]: r for r in json.loads(out.read_text())["records"]}
    assert len(after) == N_RUNS
    assert all(after[k] == r for k, r in before.items())  # the saved records are kept as they were
    assert len(_measured(out)) == N_RUNS  # only the missing runs were measured


def test_options_and_a_missing_package_are_one_line(tiny_study, tmp_path, capsys, monkeypatch):
    out = tmp_path / "o.json"
    assert main(["study", str(tiny_study), "--out", str(out), "--jobs", "3"]) == 2
    assert "--jobs: only with --executor submitit" in capsys.readouterr().err
    assert main(["study", str(tiny_study), "--out", str(out), "--executor", "submitit", "--jobs", "0"]) == 2
    assert "--jobs must be at least 1" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if it were not installed
    assert main(["study", str(tiny_study), "--out", str(out), "--executor", "submitit"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'speechprune[cluster]'" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()

