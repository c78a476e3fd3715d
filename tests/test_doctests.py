"""The Examples of the public API run as doctests, on tiny random models (no network)."""

from __future__ import annotations

import doctest
import inspect

import pytest

import speechprune
import speechprune.testing
from speechprune.methods import unregister_method

SECTIONS = ("Parameters", "Returns", "Examples")
OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _documented():
    return [(name, getattr(speechprune, name)) for name in speechprune.__all__]


@pytest.mark.parametrize("name,obj", _documented(), ids=[n for n, _ in _documented()])
def test_public_names_have_numpydoc_sections(name, obj):
    doc = inspect.getdoc(obj) or ""
    needed = ("Examples",) if inspect.isclass(obj) and issubclass(obj, Exception) else SECTIONS
    if inspect.isclass(obj) and not issubclass(obj, Exception):
        needed = ("Parameters", "Examples")
    for section in needed:
        assert f"\n{section}\n{'-' * len(section)}\n" in doc, f"{name} has no {section} section"
    if inspect.isfunction(obj) and "Raises" not in doc and name != "available_methods":
        pytest.fail(f"{name} has no Raises section")


@pytest.mark.parametrize("name,obj", _documented(), ids=[n for n, _ in _documented()])
def test_examples_run(name, obj, tmp_path, monkeypatch):
    monkeypatch.setenv("SPEECHPRUNE_CACHE", str(tmp_path / "cache"))  # nothing touches the real cache
    monkeypatch.chdir(tmp_path)
    tests = doctest.DocTestFinder(recurse=False).find(obj, name, globs={})
    assert tests and tests[0].examples, f"{name} has no examples"
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed (see stdout)"


def test_register_method_example_cleans_up():
    assert "first-k" not in speechprune.available_methods()
    with pytest.raises(speechprune.SpeechPruneError):
        unregister_method("first-k")


def test_tiny_model_examples_run():
    result = doctest.testmod(speechprune.testing, optionflags=OPTIONS)
    assert result.attempted and result.failed == 0


def test_modules_import_each_other_without_cycles():
    """Layering: no chain of imports (module-level or inside functions) leads a module back to itself."""
    import ast
    from pathlib import Path

    package = Path(speechprune.__file__).parent
    modules = {p.stem: p for p in package.glob("*.py") if p.stem not in ("__init__", "__main__")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("speechprune."):
                deps.add(node.module.split(".")[1])
            elif isinstance(node, ast.ImportFrom) and node.module == "speechprune":
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[1] for a in node.names if a.name.startswith("speechprune.")}
        graph[name] = deps & set(modules)

    def reaches(start, goal, seen):
        return any(d == goal or (d not in seen and reaches(d, goal, seen | {d})) for d in graph[start])

    cyclic = sorted(name for name in graph if reaches(name, name, {name}))
    assert not cyclic, f"import cycles through {cyclic}"
    assert "compress" not in graph["checkpoint"] and "checkpoint" not in graph["structure"]
