"""Light checks of the book: layout, notebooks ready for papermill and Colab, pedagogy, the build's checks."""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import json
import math
import re
from pathlib import Path

import nbformat
import pytest
import yaml

from speechprune import book
from speechprune.errors import SpeechPruneError

ROOT = Path(__file__).resolve().parents[1]
RELEASE = "0.4.0"


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_book = _load_script("build_book")
student_version = _load_script("student_version")
NOTEBOOKS = build_book.notebooks_in_toc()
CHAPTERS = sorted((ROOT / "notebooks").glob("0*.ipynb"))


def _parameters(nb) -> dict:
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "exactly one cell tagged `parameters`"
    names = {}
    exec(cells[0].source, {}, names)
    return names


def _setup_cell(nb) -> str:
    """The code cell right after the parameters: it checks SCALE and fills in the scale's values."""
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    return next(c.source for c in nb.cells[index + 1:] if c.cell_type == "code")


def _presets(nb) -> dict:
    """The chapter's PRESETS, evaluated from the setup cell's literal assignments without running it."""
    tree = ast.parse(_setup_cell(nb))
    literals = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name == "PRESETS":
                return eval(compile(ast.Expression(node.value), "PRESETS", "eval"), {"dict": dict}, literals)
            literals[name] = ast.literal_eval(node.value)
    raise AssertionError("no PRESETS in the setup cell")


def _run_setup(nb, cuda: bool, **overrides) -> tuple[dict, str]:
    """Run the parameters and setup cells as a notebook would, with or without a GPU."""
    import torch

    namespace = dict(_parameters(nb), **overrides)
    out = io.StringIO()
    original = torch.cuda.is_available
    torch.cuda.is_available = lambda: cuda
    try:
        with contextlib.redirect_stdout(out):
            exec(_setup_cell(nb), namespace)
    finally:
        torch.cuda.is_available = original
    return namespace, out.getvalue()


def _markdown(nb) -> str:
    return "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")


def test_config_builds_only_the_toc_with_execution_off():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["only_build_toc_files"] is True
    assert config["execute"]["execute_notebooks"] == "off"
    assert config["repository"]["url"].startswith("https://github.com/")
    assert config["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    assert config["sphinx"]["config"]["hide_solutions"] is False


def test_toc_lists_every_notebook_and_every_entry_exists():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = build_book.toc_files(toc)
    for f in files:
        assert (ROOT / f"{f}.ipynb").is_file() or (ROOT / f"{f}.md").is_file(), f"{f} in _toc.yml does not exist"
    listed = {ROOT / f"{f}.ipynb" for f in files}
    on_disk = set((ROOT / "notebooks").glob("*.ipynb")) | set((ROOT / "book").glob("*.ipynb"))
    assert on_disk <= listed, f"notebooks missing from _toc.yml: {sorted(map(str, on_disk - listed))}"
    assert len(NOTEBOOKS) >= 5
    for page in ("book/course_guide", "book/glossary", "book/bibliography"):
        assert page in files


@pytest.mark.parametrize("path", NOTEBOOKS, ids=str)
def test_notebook_is_ready_for_papermill_and_colab(path):
    # nbformat 4.5 wants an id on every cell; nbformat.read fills missing ones in (with a warning that
    # says it will become an error), so check the file itself
    raw = json.loads((ROOT / path).read_text(encoding="utf-8"))
    ids = [cell.get("id") for cell in raw["cells"]]
    assert (raw["nbformat"], raw["nbformat_minor"]) >= (4, 5) and None not in ids, "a cell without an id"
    assert len(set(ids)) == len(ids), "two cells with one id"
    nb = nbformat.read(ROOT / path, as_version=4)
    first = nb.cells[0]
    assert first.cell_type == "code"
    assert "import speechprune" in first.source and "except ImportError" in first.source
    assert "%pip install" in first.source and "git+https://github.com/speechprune/speechprune" in first.source

    params = _parameters(nb)
    assert "BUILD_ID" in params and "MODEL" in params

    last = nb.cells[-1]
    assert "BUILD_ID" in last.source
    assert ("environment {hashlib.sha256(sys.prefix.encode()).hexdigest()[:12]}" in last.source
            or "Python environment {sys.prefix}" in last.source)

    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, "commit notebooks without outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=str)
def test_injected_parameters_exist_with_the_same_type_and_no_absolute_path(path):
    params = _parameters(nbformat.read(ROOT / path, as_version=4))
    for scale in build_book.SCALES:
        injected = build_book.parameters_for(path, scale, "build-1")
        assert injected.get("SCALE", scale) == scale and injected["BUILD_ID"] == "build-1"
        for name, value in injected.items():
            assert name in params
            if params[name] is not None and value is not None:
                assert type(params[name]) is type(value), f"{path}: {name}"
            if name.endswith("_DIR"):
                assert not Path(value).is_absolute(), f"{path}: {name} = {value}"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_installs_the_pinned_release_and_prints_versions(path):
    first = nbformat.read(path, as_version=4).cells[0].source
    pip = next(line for line in first.splitlines() if "%pip install" in line)
    assert f"git+https://github.com/speechprune/speechprune@v{RELEASE}" in pip
    assert f'RELEASE = "{RELEASE}"' in first and "found != RELEASE" in first, "skips installing when present"
    assert "torch" not in pip, "never reinstall Colab's torch"
    for name in ("sys.version", "torch.__version__", "transformers.__version__", "speechprune.__version__"):
        assert name in first
    assert "restart the runtime" in first.lower()


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_last_cell_shows_no_machine_path(path):
    last = nbformat.read(path, as_version=4).cells[-1].source
    assert "environment {hashlib.sha256(sys.prefix.encode()).hexdigest()[:12]}" in last
    assert "{sys.prefix}" not in last


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_scales(path):
    nb = nbformat.read(path, as_version=4)
    params = _parameters(nb)
    assert params["SCALE"] == "colab", "the default is the Colab preset"
    for name in ("CACHE_DIR", "RESULTS_DIR", "OUT_DIR"):
        if name in params:
            assert not Path(params[name]).is_absolute() and ".." not in Path(params[name]).parts, \
                f"{name} must resolve inside the working directory"
    presets = _presets(nb)
    assert list(presets) == ["paper", "colab", "embedded", "smoke"]
    assert presets["colab"] != presets["paper"] or path.name.startswith("01"), "the full setting is another scale"
    for scale in ("embedded", "smoke"):  # the build's scales, as build_book.py states them
        for name, value in presets[scale].items():
            if name in build_book.SCALES[scale]:
                assert value == build_book.SCALES[scale][name], f"{path.name}: {scale} {name}"
    scale_table = next(c.source for c in nb.cells if c.cell_type == "markdown" and c.source.startswith("## Parameters"))
    assert '`SCALE = "paper"`' in scale_table and all(f'`"{s}"`' in scale_table for s in presets)


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_unknown_scale_stops_in_the_first_cell_naming_the_allowed_values(path):
    nb = nbformat.read(path, as_version=4)
    with pytest.raises(SpeechPruneError, match="unknown SCALE 'huge': use one of paper, colab, embedded, smoke"):
        _run_setup(nb, cuda=True, SCALE="huge")
    body = ast.parse(_setup_cell(nb)).body
    check = next(i for i, node in enumerate(body) if isinstance(node, ast.Expr) and "check_choice" in ast.unparse(node))
    assert all(isinstance(node, (ast.ImportFrom, ast.Import, ast.Assign)) for node in body[:check]), \
        "nothing but imports and the presets runs before SCALE is checked"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_colab_without_a_gpu_falls_back_to_the_cpu_preset_with_a_warning(path):
    nb = nbformat.read(path, as_version=4)
    presets = _presets(nb)
    namespace, printed = _run_setup(nb, cuda=False)
    assert "WARNING: no GPU" in printed and namespace["SCALE"] == "embedded"
    assert namespace["MODEL"] == presets["embedded"]["MODEL"]
    namespace, printed = _run_setup(nb, cuda=True)
    assert "WARNING" not in printed and namespace["SCALE"] == "colab"
    assert namespace["MODEL"] == presets["colab"]["MODEL"]
    if "MAX_SAMPLES" in presets["colab"]:
        assert namespace["MAX_SAMPLES"] == presets["colab"]["MAX_SAMPLES"]
        namespace, _ = _run_setup(nb, cuda=True, MAX_SAMPLES=0)
        assert namespace["MAX_SAMPLES"] is None, "0 means every utterance"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_has_objectives_summary_and_exercises_with_solutions(path):
    nb = nbformat.read(path, as_version=4)
    text = _markdown(nb)
    about = next(c.source for c in nb.cells[:4] if c.cell_type == "markdown" and "After this chapter you can" in c.source)
    objectives = [line for line in about.split("After this chapter you can")[1].split("**Prerequisites")[0].splitlines()
                  if line.startswith("- ")]
    assert 3 <= len(objectives) <= 4
    assert "**Prerequisites:**" in about and "on 2 idle CPU cores" in about and "Colab T4" in about
    assert "## Summary" in text and "## Exercises" in text
    assert text.index("## Summary") > text.index("After this chapter you can")
    exercises = re.findall(r"```\{exercise\}.*\n:label: (\S+)", text)
    solutions = re.findall(r"```\{solution-start\} (\S+)\n:class: dropdown", text)
    assert 2 <= len(exercises) <= 4 and solutions == exercises, "each exercise has a solution, hidden by default"
    assert text.count("{solution-end}") == len(exercises)
    spans = build_book.solution_span(nb)
    solution_code = [nb.cells[i] for i in sorted(spans) if nb.cells[i].cell_type == "code"]
    assert solution_code, "solutions in code, which the build executes"
    assert any(re.search(r"\b(compress|assign|merge|measure|finetune|evaluate|wer_difference)\(", c.source)
               for c in solution_code), "at least one exercise has the student write code against the package"
    assert max(spans) < len(nb.cells) - 1, "the build-id cell comes after the last solution"


def _roles(text: str, role: str) -> set[str]:
    found = set()
    for target in re.findall(r"\{" + re.escape(role) + r"\}`([^`]+)`", text):
        match = re.search(r"<([^>]+)>$", target)
        found.update([match.group(1)] if match else [t.strip() for t in target.split(",")])
    return found


def _book_texts() -> dict[str, str]:
    texts = {p.name: _markdown(nbformat.read(p, as_version=4)) for p in CHAPTERS}
    texts.update({p.name: p.read_text() for p in (ROOT / "book").glob("*.md")})
    return texts


def test_glossary_defines_every_linked_term_and_the_chapters_link_it():
    glossary = (ROOT / "book" / "glossary.md").read_text().split("```{glossary}")[1]
    defined = set(re.findall(r"^(\S[^\n]*)\n  \S", glossary, re.M))
    required = {"channel", "producer", "consumer", "sparsity", "allocation", "WER"}
    assert required <= defined
    used = set()
    for name, text in _book_texts().items():
        terms = _roles(text, "term")
        assert terms <= defined, f"{name} links undefined terms {terms - defined}"
        used |= terms
    assert required <= used


def test_bibliography_has_the_required_works_and_every_citation_resolves():
    bib = (ROOT / "book" / "references.bib").read_text()
    keys = set(re.findall(r"^@\w+\{([^,]+),", bib, re.M))
    assert "2502.10216" in bib and "2606.11836" in bib
    assert {"xu2026clustering", "wang2025folding", "han2015learning", "radford2023whisper", "hsu2021hubert",
            "panayotov2015librispeech"} <= keys
    cited = set()
    for name, text in _book_texts().items():
        found = _roles(text, "cite:p") | _roles(text, "cite")
        assert found <= keys, f"{name} cites unknown keys {found - keys}"
        cited |= found
    assert cited == keys, f"entries never cited: {keys - cited}"
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["bibtex_bibfiles"] == ["book/references.bib"]
    assert {"sphinx_exercise", "sphinx_togglebutton"} <= set(config["sphinx"]["extra_extensions"])
    assert "{bibliography}" in (ROOT / "book" / "bibliography.md").read_text()


def test_cite_box_sits_between_its_markers():
    index = (ROOT / "book" / "index.md").read_text()
    box = index.split("<!-- cite:start -->")[1].split("<!-- cite:end -->")[0]
    assert ":::{admonition}" in box and "@software{" in box
    assert f"version = {{{RELEASE}}}" in box and "year    = {2026}" in box
    assert "author  = {{The speechprune developers}}" in box
    assert ("title   = {speechprune: data-free, training-free compression of speech foundation models by "
            "channel clustering}") in box
    assert "url     = {https://github.com/speechprune/speechprune}" in box
    assert "2606.11836" in box, "the paper's citation too"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_every_figure_cell_has_alt_text(path):
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type == "code" and ("plt.show()" in cell.source or re.search(r"\bplot_\w+\(", cell.source)):
            alt = cell.metadata.get("mystnb", {}).get("image", {}).get("alt", "")
            assert len(alt) > 20, f"{path.name}: a figure cell without alt text:\n{cell.source[:120]}"


def test_chapter_five_reads_its_saved_run_from_the_package():
    source = "\n".join(c.source for c in nbformat.read(ROOT / "notebooks/05_finetuning.ipynb", as_version=4).cells)
    assert 'saved_result("finetune_demo.json")' in source and '"results/finetune_demo.json"' not in source
    shipped = book.PACKAGE_RESULTS / "finetune_demo.json"
    assert shipped.is_file() and book.saved_result("finetune_demo.json") == shipped
    assert shipped.resolve() == (ROOT / "results" / "finetune_demo.json").resolve(), "one copy, linked from results/"
    with pytest.raises(FileNotFoundError, match="no saved result 'missing.json'"):
        book.saved_result("missing.json")


def test_course_guide_includes_the_generated_run_times():
    guide = (ROOT / "book" / "course_guide.md").read_text()
    assert "```{include} chapter_times.md" in guide
    assert not (ROOT / "book" / "chapter_times.md").exists(), "the table is generated by the build, never typed"
    for words in ("session", "CPU", "GPU", "student_version.py", "--student", "papermill"):
        assert words in guide
    durations = dict(build_id="b-1", scale="embedded", date="2026-01-01", machine="2 CPU cores, no GPU", notebooks=[
        dict(notebook="notebooks/01_x.ipynb", title="1. X", seconds=90.0, solutions_seconds=30.0, exercises=3),
        dict(notebook="book/results.ipynb", title="Results", seconds=10.0, solutions_seconds=0.0, exercises=0)])
    table = build_book.chapter_times_table(durations)
    assert "| [1. X](../notebooks/01_x.ipynb) | 1.5 min | n/a | n/a | 0.5 min | 3 |" in table  # an old durations.json
    assert "Results" not in table and "b-1" in table and "--keep-cache" not in table
    assert "--keep-cache" in build_book.chapter_times_table(dict(durations, reused_cache=True))
    # a build on a busy machine says so beside its times, and an idle one says that too
    busy = dict(durations, notebooks=[dict(durations["notebooks"][0], cpu_seconds=150.0, load_average=6.0,
                                           other_load=4.3)])
    table = build_book.chapter_times_table(busy)
    assert "| 1.5 min | 2.5 min | 6.0 (4.3) |" in table and "busy with other work during 1 of the 1" in table
    idle = dict(durations, notebooks=[dict(durations["notebooks"][0], cpu_seconds=170.0, load_average=1.9,
                                           other_load=0.0)])
    assert "ran nothing else meanwhile" in build_book.chapter_times_table(idle)


def test_the_run_times_name_the_newest_idle_default_scale_benchmark(tmp_path):
    chapter = dict(seconds=200.0, cpu_seconds=380.0, load_average=1.9, other_load=0.0)
    builds = [dict(build_id="old", scale="embedded", machine="2 CPU cores, no GPU", date="2026-01-01", busy=False,
                   total_seconds=900.0, chapters={"notebooks/02_x.ipynb": chapter}, verdict="targets missed"),
              dict(build_id="new", scale="embedded", machine="2 CPU cores, no GPU", date="2026-01-02", busy=False,
                   total_seconds=570.0, chapters={"notebooks/02_x.ipynb": chapter}, verdict="targets met"),
              dict(build_id="busy", scale="embedded", machine="2 CPU cores, no GPU", date="2026-01-03", busy=True,
                   total_seconds=1500.0, chapters={"notebooks/02_x.ipynb": chapter}, verdict="not judged")]
    path = tmp_path / "book_build.json"
    path.write_text(json.dumps({"builds": builds}))
    line = build_book.idle_benchmark_line(path)
    assert "build `new`" in line and "9.5 min in all" in line and "chapter 2: 3.3 min" in line
    assert "targets met" in line and "busy" not in line
    assert build_book.idle_benchmark_line(tmp_path / "absent.json") == ""
    durations = dict(build_id="b-1", scale="smoke", date="2026-01-01", machine="2 CPU cores, no GPU", notebooks=[])
    assert build_book.chapter_times_table(durations, benchmark=line).rstrip().endswith(line)


def test_the_load_meter_counts_the_cpu_of_a_child_process():
    import subprocess
    import sys

    with build_book.LoadMeter(every=0.1) as meter:
        subprocess.run([sys.executable, "-c", "x = sum(i * i for i in range(3_000_000))"], check=True)
    figures = meter.as_dict()
    assert figures["cpu_seconds"] > 0.05 and figures["seconds"] >= figures["cpu_seconds"] * 0.5
    assert figures["load_average"] >= 0 and figures["other_load"] >= 0


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_student_version_removes_every_solution_and_keeps_the_exercises(path):
    nb = nbformat.read(path, as_version=4)
    exercises = _markdown(nb).count("{exercise}")
    removed = student_version.strip_solutions(nb, path.name)
    text = _markdown(nb)
    assert removed == exercises and "{solution" not in text and text.count("{exercise}") == exercises
    answers = [c for c in nb.cells if c.cell_type == "code" and c.source == student_version.ANSWER]
    assert len(answers) == exercises
    assert _parameters(nb)["SCALE"] == "colab" and "BUILD_ID" in nb.cells[-1].source


def test_student_book_build_strips_solutions_but_keeps_outputs():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("print(1)", outputs=[nbformat.v4.new_output("stream", text="1\n")]),
        nbformat.v4.new_markdown_cell("```{exercise} E\n:label: e\n```"),
        nbformat.v4.new_markdown_cell("```{solution-start} e\n:class: dropdown\n```"),
        nbformat.v4.new_code_cell("print(2)"),
        nbformat.v4.new_markdown_cell("```{solution-end}\n```")])
    assert student_version.strip_solutions(nb, handout=False) == 1
    assert len(nb.cells) == 2 and nb.cells[0].outputs, "outputs stay, no answer cell is added"


def test_student_version_refuses_bad_markers_and_the_source_folder(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("```{solution-start} x\n```")])
    with pytest.raises(student_version.SolutionMarkersError, match="no solution-end"):
        student_version.strip_solutions(nb)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("```{solution-end}\n```")])
    with pytest.raises(student_version.SolutionMarkersError, match="never started"):
        student_version.strip_solutions(nb)
    assert student_version.main(["--out", str(ROOT / "notebooks"), str(CHAPTERS[0])]) == 2
    assert student_version.main(["--out", str(tmp_path), str(CHAPTERS[0])]) == 0
    written = nbformat.read(tmp_path / CHAPTERS[0].name, as_version=4)
    assert "{solution" not in _markdown(written)


def test_publish_ready_hides_injected_parameters_and_relative_paths(tmp_path, monkeypatch):
    monkeypatch.setattr(build_book, "STAGE", tmp_path)
    cells = [nbformat.v4.new_markdown_cell("# 9. A chapter"),
             nbformat.v4.new_code_cell("SCALE = 'smoke'", metadata={"tags": ["injected-parameters"]}),
             nbformat.v4.new_markdown_cell("```{exercise} E\n:label: e\n```"),
             nbformat.v4.new_markdown_cell("```{solution-start} e\n:class: dropdown\n```"),
             nbformat.v4.new_code_cell("print(2)"),
             nbformat.v4.new_markdown_cell("```{solution-end}\n```")]
    for cell, seconds in zip((cells[1], cells[4]), (1.5, 2.5)):
        cell.metadata["papermill"] = {"duration": seconds}
        cell.outputs = [nbformat.v4.new_output("stream", name="stderr", text=f"warning from {ROOT}\n"),
                        nbformat.v4.new_output("stream", name="stdout", text="2\n")]
    nb = nbformat.v4.new_notebook(cells=cells, metadata={"papermill": {"input_path": str(ROOT / "notebooks/x.ipynb"),
                                                                       "output_path": str(tmp_path / "x.ipynb")}})
    (tmp_path / "notebooks").mkdir()
    nbformat.write(nb, tmp_path / "notebooks" / "x.ipynb")
    entry = build_book.publish_ready(Path("notebooks/x.ipynb"))
    assert entry == dict(notebook="notebooks/x.ipynb", title="9. A chapter", cells_seconds=4.0,
                         solutions_seconds=2.5, exercises=1)
    text = (tmp_path / "notebooks" / "x.ipynb").read_text()
    assert str(ROOT) not in text and str(tmp_path) not in text
    done = nbformat.read(tmp_path / "notebooks" / "x.ipynb", as_version=4)
    assert "remove-cell" in done.cells[1].metadata["tags"]
    assert [o["name"] for o in done.cells[4].outputs] == ["stdout"]


def test_path_and_figure_checks_catch_what_they_should(tmp_path):
    (tmp_path / "ok.html").write_text('<figure><img src="a.png"><figcaption>WER per method</figcaption></figure>'
                                      '<img src="b.png" alt="Bar chart of WER per method">')
    (tmp_path / "bad.html").write_text(f'<p>cache in {ROOT}/_build</p><img src="c.png" alt="c.png"><img src="d.png">')
    paths = build_book.check_paths(tmp_path, [str(ROOT)])
    assert len(paths) == 1 and paths[0].startswith("bad.html")
    figures = build_book.check_figures(tmp_path)
    assert len(figures) == 2 and all(p.startswith("bad.html") for p in figures)
    assert str(ROOT) in build_book.machine_paths()


@pytest.mark.parametrize("bad", [
    # chapter 5's key sentence, as nested backticks in a markdown cell render it
    "<p><code class='docutils literal notranslate'><span class='pre'>{glue:text}</span></code>demo_model makes "
    "{glue:text}`demo_dense:.2f`% word errors</p>",
    "<p>a {glue}`x` value</p>", "<p>see {term}`channel`</p>", "<p>as {cite:p}`xu2026clustering` says</p>",
    "<p>as {cite}`xu2026clustering` says</p>", "<li>{numref}`fig-1`</li>",
])
def test_text_check_fails_on_an_unrendered_role(bad):
    problems = build_book.text_problems("bad.html", f"<html><body>{bad}</body></html>")
    assert problems and all("unrendered role" in p and p.startswith("bad.html") for p in problems)


@pytest.mark.parametrize("bad", [
    "<h3>On clips the recipe search never saw: the brief's target</h3>",
    "<p>pruning 20% of the encoder (the Brief's probe)</p>",
    "<p>where the brief is checked</p>",
    "<p>converted from the previous session's seed study script</p>",
    "<p>In this session we ran the screening.</p>",
    "<p>as the CEO asked</p>", "<p>see issue #25</p>", "<p>the lead engineer merged it</p>",
    '<img src="a.png" alt="WER against the brief\'s target">',
])
def test_text_check_fails_on_insider_words(bad):
    problems = build_book.text_problems("bad.html", f"<html><body>{bad}</body></html>")
    assert len(problems) == 1 and "insider word" in problems[0]


def test_no_page_source_nests_a_role_in_inline_code_or_uses_insider_words():
    """The sources behind the build's text check: a role inside backticks renders raw (chapter 5 did)."""
    texts = _book_texts()
    texts.update({p.name: _markdown(nbformat.read(p, as_version=4)) for p in (ROOT / "book").glob("*.ipynb")})
    for name, text in texts.items():
        nested = re.findall(r"`\{(?:glue|term|cite)[^}]*\}`[^`]*``", text)
        assert not nested, f"{name}: a role nested in inline code renders raw: {nested}"
        insider = build_book._INSIDER.findall(text)
        assert not insider, f"{name} uses insider words: {insider}"


def test_text_check_passes_a_clean_page_and_scans_only_what_a_reader_sees(tmp_path):
    clean = ("<html><head><title>the brief</title><script>var x = '{glue:text}`a`';</script>"
             "<style>.brief's {}</style></head><body><p>A brief look at the target: clustering "
             "is 3.1 points lower (95% interval 1.0 to 5.2).</p><p>Briefly, sessions of a course.</p>"
             "<pre>glue(\"demo\", 1.0)</pre></body></html>")
    assert build_book.text_problems("ok.html", clean) == []
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "ok.html").write_text(clean)
    (tmp_path / "book" / "bad.html").write_text("<p>{term}`WER` and the brief's probe</p>")
    problems = build_book.check_text(tmp_path)
    assert len(problems) == 2 and all(p.startswith("book/bad.html") for p in problems)


def test_mathjax_check_fails_on_a_cdn_or_a_missing_copy_and_the_config_serves_it(tmp_path):
    (tmp_path / "_static" / "mathjax").mkdir(parents=True)
    (tmp_path / "_static" / "mathjax" / "tex-chtml.js").write_text("// MathJax")
    (tmp_path / "book").mkdir()
    math = '<div class="math notranslate nohighlight">\\[x^2\\]</div>'
    pages = {
        "local": f'<script defer src="../_static/mathjax/tex-chtml.js"></script>{math}',
        "cdn": f'<script defer src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"></script>{math}',
        "missing": f'<script defer src="../_static/mathjax/tex-svg.js"></script>{math}',
        "none": math,
        "prose": "<p>no equations here</p>",
    }
    for name, body in pages.items():
        (tmp_path / "book" / f"{name}.html").write_text(f"<html><head></head><body>{body}</body></html>")
    problems = build_book.check_mathjax(tmp_path)
    assert sorted(p.split(" ")[0] for p in problems) == ["book/cdn.html", "book/missing.html", "book/none.html"]
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    path = config["sphinx"]["config"]["mathjax_path"]
    shipped = ROOT / "_static" / path
    assert not path.startswith(("http:", "https:", "//")) and shipped.is_file() and shipped.stat().st_size > 500_000
    assert 'VERSION="3.' in shipped.read_text(encoding="utf-8", errors="replace")
    assert (ROOT / "_static" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2" / "MathJax_Main-Regular.woff").is_file()
    assert (ROOT / "_static" / "mathjax" / "LICENSE").is_file()


PRUNE_YOUR_OWN = ROOT / "book" / "prune_your_own.ipynb"


def _fenced(nb, language: str) -> list[str]:
    """The fenced code blocks of ``language`` in a notebook's markdown cells, in reading order."""
    return re.findall(r"^```" + language + r"\n(.*?)^```", _markdown(nb), re.M | re.S)


def test_prune_your_own_is_linked_and_shows_both_recipes_an_audiofolder_and_transformers():
    for page in ("index.md", "api.md"):
        assert "](prune_your_own.ipynb)" in (ROOT / "book" / page).read_text(), page
    assert "book/prune_your_own" in build_book.toc_files(yaml.safe_load((ROOT / "_toc.yml").read_text()))
    nb = nbformat.read(PRUNE_YOUR_OWN, as_version=4)
    bash = "\n".join(_fenced(nb, "bash"))
    assert "pip install" in bash and "--recipe recommended" in bash and "--recipe paper" in bash
    assert "speechprune evaluate" in bash and "--card" in bash and "README.md" in bash
    assert "from_pretrained" in "\n".join(_fenced(nb, "python")) and "metadata.csv" in _markdown(nb)
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "saved_study(" in source, "the decision table is read from saved studies"
    assert "import recipe_of, " in source and "def recipe_of" not in source, "one definition of a record's recipe"


@pytest.mark.slow
def test_every_command_on_prune_your_own_runs(tmp_path):
    """The page's commands, in its order, on embedded:whisper-tiny.en and two clips (a few minutes)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    nb = nbformat.read(PRUNE_YOUR_OWN, as_version=4)
    blocks = re.findall(r"^```(bash|python)\n(.*?)^```", _markdown(nb), re.M | re.S)
    ran = 0
    for language, block in blocks:
        if language == "python":
            commands = [[sys.executable, "-c", block]]
        else:
            lines = block.replace("\\\n", " ").splitlines()
            commands = [line for line in lines if line.strip() and not line.startswith(("pip ", "#"))]
        for command in commands:
            done = subprocess.run(command, shell=isinstance(command, str), cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=900)
            assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
            ran += 1
    assert ran >= 8
    card = (tmp_path / "pruned" / "recommended" / "README.md").read_text()
    assert "--method obs" in card and "my-speech" in card, "the card says how it was made and its WER"
    assert (tmp_path / "paper.json").is_file() and (tmp_path / "dense.json").is_file()


@pytest.mark.skipif(build_book.chromium() is None, reason="needs chromium (apt-get install chromium)")
def test_phone_width_check_flags_only_pages_that_scroll_sideways(tmp_path):
    style = "<meta name='viewport' content='width=device-width, initial-scale=1'>"
    (tmp_path / "narrow.html").write_text(f"<html><head>{style}</head><body><p>fits</p>"
                                          "<div style='overflow-x:auto'><table style='width:900px'><tr><td>x</td>"
                                          "</tr></table></div></body></html>")
    (tmp_path / "wide.html").write_text(f"<html><head>{style}</head><body><pre style='white-space:pre'>"
                                        f"{'x' * 300}</pre></body></html>")
    problems = build_book.check_phone_overflow(tmp_path)
    assert len(problems) == 1 and problems[0].startswith("wide.html")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["narrow.html", "wide.html"], "probe copies removed"


@pytest.mark.skipif(not (build_book.HTML / "book" / "index.html").is_file() or build_book.chromium() is None,
                    reason="needs a built book (scripts/build_book.py) and chromium")
def test_built_book_fits_a_phone_and_every_figure_is_described():
    assert build_book.check_figures(build_book.HTML) == []
    assert build_book.check_phone_overflow(build_book.HTML) == []


def test_paper_numbers_are_consistent():
    implied = {  # METHOD.md section 1: magnitude, clustering (test-clean, test-other)
        "hubert-large-50": ((80.68, 52.95), (84.94, 66.33)),
        "hubert-large-50-ft3": ((5.65, 5.46), (17.10, 16.31)),
        "whisper-large-v3-10": ((4.83, 1.97), (9.08, 4.06)),
    }
    for key, per_set in implied.items():
        setting = book.SETTINGS[key]
        for test_set, (magnitude, cluster) in zip(book.TEST_SETS, per_set):
            r = setting.reductions[test_set]
            assert math.isclose(r.magnitude_wer, r.absolute / r.relative * 100)
            assert math.isclose(r.cluster_wer, r.magnitude_wer - r.absolute)
            assert round(r.magnitude_wer, 2) == pytest.approx(magnitude, abs=0.011)
            assert round(r.cluster_wer, 2) == pytest.approx(cluster, abs=0.011)
            lo, hi = r.magnitude_range()
            assert lo <= r.magnitude_wer <= hi


def test_every_stated_number_is_in_the_paper_table():
    rows = book.paper_numbers()
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
    red = book.reductions(magnitude, cluster)
    assert red["absolute"] == pytest.approx(30.0) and red["relative"] == pytest.approx(60.0)
    lo, hi = book.wer_interval(cluster)
    assert lo <= cluster["wer"] <= hi
    diff, lo, hi = book.wer_difference(cluster, dense)
    assert diff == pytest.approx(15.0) and lo <= diff <= hi

    ours = {"ours": dict(dense=dense, magnitude=magnitude, cluster=cluster)}
    table = book.comparison_table(book.SETTINGS["hubert-large-50"], ours)
    assert table.loc["absolute WER reduction (points)", "ours"] == "30.00"
    summary = book.summary_table([(book.SETTINGS["hubert-large-50"], ours),
                                   (book.SETTINGS["hubert-large-50-ft3"], None)])
    assert len(summary) == 2 * len(book.QUANTITIES)
    assert (summary.xs(book.SETTINGS["hubert-large-50-ft3"].label)["ours"] == "not measured").all()


def test_full_scale_results_round_trip(tmp_path):
    setting = book.SETTINGS["whisper-large-v3-10"]
    assert book.is_full_scale(setting, setting.model, ["librispeech:test-other"])
    assert not book.is_full_scale(setting, "embedded:whisper-base", ["embedded"])
    assert book.scale_note(setting, setting.model, list(setting.data), scope="ffn", sparsity=0.1).startswith(
        "Full scale")
    assert "analog" in book.scale_note(setting, "embedded:whisper-base", ["embedded"], scope="ffn", sparsity=0.1)
    assert book.load_full_scale(setting, tmp_path) == {}
    records = {k: _record([1, 2], [10, 10], None if k == "dense" else k) for k in ("dense", "magnitude", "cluster")}
    for r in records.values():
        r["settings"]["model"] = setting.model
    book.save_full_scale(setting, "librispeech:test-other", records, tmp_path)
    loaded = book.load_full_scale(setting, tmp_path)
    assert list(loaded) == ["full scale: librispeech:test-other (2 utt.)"]
    with pytest.raises(ValueError):
        book.save_full_scale(setting, "embedded", records, tmp_path)


def test_freshness_check_rejects_stale_or_unexecuted_notebooks(tmp_path, monkeypatch):


    monkeypatch.setattr(build_book, "STAGE", tmp_path)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1)")])
    nbformat.write(nb, tmp_path / "stale.ipynb")
    problems = build_book.check_executed(Path("stale.ipynb"), "build-123")
    assert len(problems) == 3  # no run time, no BUILD_ID, no environment

    cell = nb.cells[0]
    cell.execution_count = 1
    cell.metadata["papermill"] = {"duration": 0.01}
    cell.outputs = [nbformat.v4.new_output(
        "stream", text=f"Executed in build build-123: environment {build_book.environment_fingerprint()}\n")]
    nbformat.write(nb, tmp_path / "fresh.ipynb")
    assert build_book.check_executed(Path("fresh.ipynb"), "build-123") == []
    assert build_book.check_executed(Path("fresh.ipynb"), "build-456") != []


def test_each_chapters_time_line_agrees_with_the_newest_idle_build_benchmark():
    """A chapter's "**Time:** about N min ... at SCALE embedded" is the newest idle default-scale build's
    time in whole minutes (at least 1), so a teacher planning labs reads measured figures."""
    builds = json.loads(build_book.BENCH_BUILDS.read_text())["builds"]
    idle = [b for b in builds if not b["busy"] and b["scale"] == "embedded"]
    assert idle, "no idle default-scale build in results/benchmarks/book_build.json"
    newest = idle[-1]["chapters"]
    for path in CHAPTERS:
        text = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown")
        said = re.search(r"\*\*Time:\*\* about (\d+) min .*?on 2 idle CPU cores at `SCALE = \"embedded\"`", text)
        assert said, f"{path.name}: no '**Time:** about N min ... on 2 idle CPU cores' line"
        seconds = newest[f"notebooks/{path.name}"]["seconds"]
        assert int(said.group(1)) == max(1, round(seconds / 60)), (path.name, seconds)
