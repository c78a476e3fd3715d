"""Each chapter runs alone, as Colab opens it: one notebook in an empty folder, only the package installed.

The notebook is copied into an empty temporary folder and executed there with papermill at
``SCALE = "smoke"`` (on 4 utterances where a chapter takes ``MAX_SAMPLES``: the point is that it runs,
and CI's time is shared). The kernel's working directory is that folder and its import path holds a copy
of the ``speechprune`` package (with its package data) and nothing else of the repository, so a
chapter that reads a file of the checkout, or writes outside its working directory, fails here.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import nbformat
import papermill
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "notebooks").glob("0*.ipynb"))

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A folder holding only the package, as `pip install` would leave it."""
    site = tmp_path_factory.mktemp("site-packages")
    shutil.copytree(ROOT / "speechprune", site / "speechprune", ignore=shutil.ignore_patterns("__pycache__"))
    return site


@pytest.fixture
def alone(installed, tmp_path, monkeypatch) -> Path:
    """An empty working folder, and a kernel environment that sees the package copy only."""
    work = tmp_path / "colab"
    work.mkdir()
    monkeypatch.setenv("PYTHONPATH", str(installed))
    monkeypatch.setenv("PATH", os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    monkeypatch.setenv("MPLBACKEND", "agg")
    monkeypatch.chdir(work)
    return work


def _run(source: Path, work: Path, **parameters) -> Path:
    notebook = work / source.name
    shutil.copy2(source, notebook)
    out = work / f"executed-{source.name}"
    papermill.execute_notebook(str(notebook), str(out), parameters=parameters, kernel_name="python3",
                               cwd=str(work), progress_bar=False, start_timeout=120)
    return out


@pytest.mark.parametrize("source", CHAPTERS, ids=lambda p: p.name)
def test_chapter_runs_alone_in_an_empty_folder(source, alone):
    declared = papermill.inspect_notebook(str(source))
    out = _run(source, alone, SCALE="smoke", **({"MAX_SAMPLES": 4} if "MAX_SAMPLES" in declared else {}))
    nb = nbformat.read(out, as_version=4)
    text = "\n".join(str(o.get("text", "")) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "SCALE = 'smoke'" in text, "the chapter says which scale it ran"
    assert "Executed in build (interactive run)" in text
    # library warnings name their own files; in CI the environment lives inside the checkout (.venv)
    text = text.replace(sys.prefix, "<environment>")
    assert str(ROOT) not in text, "no output mentions the checkout"
    if "CACHE_DIR" in declared:  # relative defaults resolve in the working folder
        assert any((alone / "speechprune-cache").iterdir())
    assert not (ROOT / "notebooks" / "speechprune-cache").exists() and not (ROOT / "speechprune-cache").exists()


def test_unknown_scale_stops_at_the_first_cell_after_the_parameters(alone):
    source = CHAPTERS[2]
    with pytest.raises(papermill.PapermillExecutionError) as err:
        _run(source, alone, SCALE="tiny")
    assert err.value.ename == "SpeechPruneError"
    assert "unknown SCALE 'tiny': use one of paper, colab, embedded, smoke" in err.value.evalue
    nb = nbformat.read(alone / f"executed-{source.name}", as_version=4)
    executed = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.execution_count is not None]
    injected = next(i for i, c in enumerate(nb.cells) if "injected-parameters" in c.metadata.get("tags", []))
    failed = max(executed)
    assert failed == next(i for i in range(injected + 1, len(nb.cells)) if nb.cells[i].cell_type == "code")
