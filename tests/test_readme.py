"""The README quotes only what its commands print: every study table is the saved study's summary."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_study_tables_are_what_the_summary_command_prints():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert text.count("--summary -->") >= 3  # the book's settings, chapter 2's allocations, the first seed study
    done = subprocess.run([sys.executable, "scripts/readme_studies.py", "--check"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
