"""Light checks of the book: layout, notebooks ready for papermill and Colab, the paper's numbers."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import nbformat
import pytest
import yaml

from speechprune import paper

ROOT = Path(__file__).resolve().parents[1]


def _build_book():
    spec = importlib.util.spec_from_file_location("build_book", ROOT / "scripts" / "build_book.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_book = _build_book()
NOTEBOOKS = build_book.notebooks_in_toc()


def _parameters(nb) -> dict:
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "exactly one cell tagged `parameters`"
    names = {}
    exec(cells[0].source, {}, names)
    return names


def test_config_builds_only_the_toc_with_execution_off():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["only_build_toc_files"] is True
    assert config["execute"]["execute_notebooks"] == "off"
    assert config["repository"]["url"].startswith("https://github.com/")
    assert config["launch_buttons"]["colab_url"] == "https://colab.research.google.com"


def test_toc_lists_every_notebook_and_every_entry_exists():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = build_book.toc_files(toc)
    for f in files:
        assert (ROOT / f"{f}.ipynb").is_file() or (ROOT / f"{f}.md").is_file(), f"{f} in _toc.yml does not exist"
    listed = {ROOT / f"{f}.ipynb" for f in files}
    on_disk = set((ROOT / "notebooks").glob("*.ipynb")) | set((ROOT / "book").glob("*.ipynb"))
    assert on_disk <= listed, f"notebooks missing from _toc.yml: {sorted(map(str, on_disk - listed))}"
    assert len(NOTEBOOKS) >= 5


@pytest.mark.parametrize("path", NOTEBOOKS, ids=str)
def test_notebook_is_ready_for_papermill_and_colab(path):
    nb = nbformat.read(ROOT / path, as_version=4)
    first = nb.cells[0]
    assert first.cell_type == "code"
    assert "import speechprune" in first.source and "except ImportError" in first.source
    assert "%pip install" in first.source and "git+https://github.com/speechprune/speechprune" in first.source

    params = _parameters(nb)
    assert "BUILD_ID" in params and "MODEL" in params

    last = nb.cells[-1]
    assert "BUILD_ID" in last.source and "Python environment {sys.prefix}" in last.source

    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, "commit notebooks without outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=str)
def test_injected_parameters_exist_in_the_notebook_with_the_same_type(path):
    params = _parameters(nbformat.read(ROOT / path, as_version=4))
    for scale in build_book.SCALES.values():
        for name, value in scale.items():
            if name in params and params[name] is not None and value is not None:
                assert type(params[name]) is type(value), f"{path}: {name}"


def test_paper_numbers_are_consistent():
    implied = {  # METHOD.md section 1: magnitude, clustering (test-clean, test-other)
        "hubert-large-50": ((80.68, 52.95), (84.94, 66.33)),
        "hubert-large-50-ft3": ((5.65, 5.46), (17.10, 16.31)),
        "whisper-large-v3-10": ((4.83, 1.97), (9.08, 4.06)),
    }
    for key, per_set in implied.items():
        setting = paper.SETTINGS[key]
        for test_set, (magnitude, cluster) in zip(paper.TEST_SETS, per_set):
            r = setting.reductions[test_set]
            assert math.isclose(r.magnitude_wer, r.absolute / r.relative * 100)
            assert math.isclose(r.cluster_wer, r.magnitude_wer - r.absolute)
            assert round(r.magnitude_wer, 2) == pytest.approx(magnitude, abs=0.011)
            assert round(r.cluster_wer, 2) == pytest.approx(cluster, abs=0.011)
            lo, hi = r.magnitude_range()
            assert lo <= r.magnitude_wer <= hi


def test_every_stated_number_is_in_the_paper_table():
    rows = paper.paper_numbers()
    values = {row["value"] for row in rows}
    for stated in (27.73, 18.61, 34.37, 21.91, 0.19, 0.79, 3.36, 4.62, 2.86, 5.02, 59.21, 55.29, 1.9, 2.0, 3.9):
        assert stated in values
    assert all(row["model"] and row["data"] and row["kind"] for row in rows)


def _record(errors: list[int], words: list[int], method: str | None) -> dict:
    utterances = [dict(id=f"u{i}", errors=e, reference_normalized=" ".join(["w"] * n))
                  for i, (e, n) in enumerate(zip(errors, words))]
    compression = None if method is None else dict(method=method, sparsity=0.5, scope=["encoder.ffn"],
                                                   allocation="uniform", seed=0, param_sparsity=0.2)
    return dict(wer=100 * sum(errors) / sum(words), utterances=utterances, compression=compression,
                settings=dict(model="m"), data=dict(name="d"), n_utterances=len(errors), dtype="float32")


def test_reductions_intervals_and_tables_from_records():
    dense = _record([0, 1, 0, 1], [10, 10, 10, 10], None)
    magnitude = _record([5, 6, 4, 5], [10, 10, 10, 10], "magnitude")
    cluster = _record([2, 3, 2, 1], [10, 10, 10, 10], "cluster")
    red = paper.reductions(magnitude, cluster)
    assert red["absolute"] == pytest.approx(30.0) and red["relative"] == pytest.approx(60.0)
    lo, hi = paper.wer_interval(cluster)
    assert lo <= cluster["wer"] <= hi
    diff, lo, hi = paper.wer_difference(cluster, dense)
    assert diff == pytest.approx(15.0) and lo <= diff <= hi

    ours = {"ours": dict(dense=dense, magnitude=magnitude, cluster=cluster)}
    table = paper.comparison_table(paper.SETTINGS["hubert-large-50"], ours)
    assert table.loc["absolute WER reduction (points)", "ours"] == "30.00"
    summary = paper.summary_table([(paper.SETTINGS["hubert-large-50"], ours),
                                   (paper.SETTINGS["hubert-large-50-ft3"], None)])
    assert len(summary) == 2 * len(paper.QUANTITIES)
    assert (summary.xs(paper.SETTINGS["hubert-large-50-ft3"].label)["ours"] == "not measured").all()


def test_full_scale_results_round_trip(tmp_path):
    setting = paper.SETTINGS["whisper-large-v3-10"]
    assert paper.is_full_scale(setting, setting.model, ["librispeech:test-other"])
    assert not paper.is_full_scale(setting, "embedded:whisper-base", ["embedded"])
    assert paper.scale_note(setting, setting.model, list(setting.data), scope="ffn", sparsity=0.1).startswith(
        "Full scale")
    assert "analog" in paper.scale_note(setting, "embedded:whisper-base", ["embedded"], scope="ffn", sparsity=0.1)
    assert paper.load_full_scale(setting, tmp_path) == {}
    records = {k: _record([1, 2], [10, 10], None if k == "dense" else k) for k in ("dense", "magnitude", "cluster")}
    for r in records.values():
        r["settings"]["model"] = setting.model
    paper.save_full_scale(setting, "librispeech:test-other", records, tmp_path)
    loaded = paper.load_full_scale(setting, tmp_path)
    assert list(loaded) == ["full scale: librispeech:test-other (2 utt.)"]
    with pytest.raises(ValueError):
        paper.save_full_scale(setting, "embedded", records, tmp_path)


def test_freshness_check_rejects_stale_or_unexecuted_notebooks(tmp_path, monkeypatch):
    import sys

    monkeypatch.setattr(build_book, "STAGE", tmp_path)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1)")])
    nbformat.write(nb, tmp_path / "stale.ipynb")
    problems = build_book.check_executed(Path("stale.ipynb"), "build-123")
    assert len(problems) == 3  # no run time, no BUILD_ID, no environment

    cell = nb.cells[0]
    cell.execution_count = 1
    cell.metadata["papermill"] = {"duration": 0.01}
    cell.outputs = [nbformat.v4.new_output(
        "stream", text=f"Executed in build build-123, Python environment {sys.prefix}\n")]
    nbformat.write(nb, tmp_path / "fresh.ipynb")
    assert build_book.check_executed(Path("fresh.ipynb"), "build-123") == []
    assert build_book.check_executed(Path("fresh.ipynb"), "build-456") != []
