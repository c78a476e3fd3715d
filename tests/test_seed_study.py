"""scripts/seed_study.py on the real embedded Whisper tiny.en, at two clips: records, resume, refusal."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "seed_study.py"
ARGS = ["--model", "embedded:whisper-tiny.en", "--max-samples", "2", "--probe-clips", "1", "--seeds", "1",
        "--features", "producer"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *ARGS, *args], capture_output=True, text=True)


@pytest.mark.slow
def test_seed_study_records_extends_and_refuses_another_setting(tmp_path):
    out = tmp_path / "study.json"
    done = run("--out", str(out))
    assert done.returncode == 0, done.stderr
    study = json.loads(out.read_text())
    assert [r["label"] for r in study["records"]] == ["dense", "magnitude", "cluster producer seed 0"]
    dense, magnitude, cluster = study["records"]
    assert dense["encoder_relative_error"] == 0 and cluster["encoder_relative_error"] > 0
    assert cluster["compression"]["features"] == "producer" and cluster["compression"]["seed"] == 0
    assert study["summary"]["producer"]["n"] == 1
    # extending with another allocation runs only the new variants and keeps the old records
    more = run("--out", str(out), "--allocations", "variance")
    assert more.returncode == 0, more.stderr
    assert "cluster producer seed 0" not in more.stdout and "cluster producer variance seed 0" in more.stdout
    labels = [r["label"] for r in json.loads(out.read_text())["records"]]
    assert labels == ["dense", "magnitude", "cluster producer seed 0", "magnitude variance",
                      "cluster producer variance seed 0"]
    # a study of another setting is not mixed into this file
    other = run("--out", str(out), "--sparsity", "0.3")
    assert other.returncode != 0 and "another setting" in other.stderr
    assert [r["label"] for r in json.loads(out.read_text())["records"]] == labels
