"""The package's layering can be seen: every module imports on its own, speechprune imports sit at
module top (so that the import graph is what the file headers say), and only the command line
parses arguments."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "speechprune"


def _module_name(path: Path) -> str:
    """``speechprune/study/runner.py`` -> ``speechprune.study.runner``; a package is its ``__init__``."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(_module_name(p) for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)

# Function-level imports of speechprune modules that may stay, each with its reason. Heavy optional
# packages that are not speechprune (matplotlib, pandas, datasets, myst_nb, ...) may stay lazy anywhere.
ALLOWED_LAZY = {
    # errors is the bottom layer, imported first by everything (the command line included); it stays
    # free of torch, which speechprune.device imports, until a device is actually checked.
    ("speechprune.errors", "speechprune.device"),
}
# The only modules that may import argparse: the command line itself (study.cli still registers
# `speechprune study`, executors adds its cluster options), and errors, whose argparse types are the one
# check of every numeric option at the boundary (they raise argparse's ArgumentTypeError with the checks'
# messages).
ARGPARSE = {"speechprune.cli", "speechprune.commands", "speechprune.study.cli", "speechprune.executors",
            "speechprune.errors"}


def _path(module: str) -> Path:
    path = PACKAGE.parent.joinpath(*module.split("."))
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else path / "__init__.py"


def _tree(module: str) -> ast.Module:
    path = _path(module)
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


def _imported(node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    assert node.level == 0, "speechprune imports are absolute"
    return [node.module or ""]


def _function_level_imports(tree: ast.Module) -> list[tuple[int, str]]:
    found = []
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    found += [(node.lineno, name) for name in _imported(node)]
    return found


@pytest.mark.slow  # an interpreter per module (torch each time): minutes on a busy machine
@pytest.mark.parametrize("module", MODULES)
def test_module_imports_alone_in_a_fresh_interpreter(module):
    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True,
                          cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stderr[-2000:]


_EACH_FIRST = """
import importlib, sys
failed = []
for module in sys.argv[1:]:
    for name in [n for n in sys.modules if n == "speechprune" or n.startswith("speechprune.")]:
        del sys.modules[name]  # torch and the rest stay loaded: only speechprune's own order is tested
    try:
        importlib.import_module(module)
    except Exception as err:
        failed.append(f"{module}: {type(err).__name__}: {err}")
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_every_module_imports_first():
    """The fast form of the test above: each module is the first speechprune module imported."""
    done = subprocess.run([sys.executable, "-c", _EACH_FIRST, *MODULES], capture_output=True, text=True,
                          cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_speechprune_imports_sit_at_module_top():
    offenders = []
    for module in MODULES:
        for line, name in _function_level_imports(_tree(module)):
            if name.split(".")[0] == "speechprune" and (module, name) not in ALLOWED_LAZY:
                offenders.append(f"{module}:{line} imports {name} inside a function")
    assert not offenders, "\n".join(offenders)


def test_modules_of_subpackages_are_checked_too():
    assert {"speechprune", "speechprune.study", "speechprune.study.runner", "speechprune.study.cli"} <= set(MODULES)
    assert all(_path(m).is_file() for m in MODULES)


def test_the_check_sees_a_function_level_import():
    tree = ast.parse("import os\n\ndef f():\n    from speechprune.models import load_model\n    import json\n")
    assert _function_level_imports(tree) == [(4, "speechprune.models"), (5, "json")]


def test_every_allowed_exception_still_exists():
    for module, name in ALLOWED_LAZY:
        assert name in [n for _, n in _function_level_imports(_tree(module))], f"{module} -> {name} is gone: drop it"


def test_only_the_command_line_imports_argparse():
    users = {module for module in MODULES for node in ast.walk(_tree(module))
             if isinstance(node, ast.Import | ast.ImportFrom) and "argparse" in _imported(node)}
    assert users <= ARGPARSE, sorted(users - ARGPARSE)


def test_moved_names_are_still_importable_from_where_they_were():
    import warnings

    from speechprune import book, data, finetune, presets

    assert finetune.StreamedSpeech is data.StreamedSpeech
    assert finetune.load_training_speech is data.load_training_speech
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # tests/test_book_helpers.py checks that it warns
        from speechprune import paper
    assert paper.SETTINGS is book.SETTINGS and paper.measure is presets.measure
    assert paper.wer_interval is presets.wer_interval and paper.comparison_table is book.comparison_table
    assert paper.saved_result is book.saved_result and paper.PACKAGE_RESULTS == book.PACKAGE_RESULTS


def test_the_version_is_read_from_one_module_that_imports_nothing():
    """speechprune.__version__ is written once, in speechprune/_version.py, which imports nothing; the
    modules that stamp what they write read it from there, never through the package's ``__init__``
    (whose import order would then decide whether the version is set yet)."""
    assert not [n for n in ast.walk(_tree("speechprune._version")) if isinstance(n, ast.Import | ast.ImportFrom)]
    through_package = [m for m in MODULES if m != "speechprune" for n in ast.walk(_tree(m))
                       if isinstance(n, ast.Attribute) and n.attr == "__version__"
                       and isinstance(n.value, ast.Name) and n.value.id == "speechprune"]
    assert not through_package, through_package
    code = ("import importlib.metadata, speechprune.outputs as o, speechprune._version as v, speechprune as s\n"
            "print(o.stamp(), importlib.metadata.version('speechprune'), v.__version__, s.__version__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    _, stamped, installed, written, exported = done.stdout.split()
    assert stamped == installed == written == exported
