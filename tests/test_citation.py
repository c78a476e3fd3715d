"""CITATION.cff is valid CFF 1.2.0, and everything that cites or installs a version agrees with it.

``cffconvert --validate`` would do the schema check, but cffconvert 2.0 requires ``jsonschema<4``,
which the Jupyter stack cannot use; the same CFF 1.2.0 schema is checked here with ``jsonschema``.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import nbformat
import pytest
import yaml

import speechprune

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = Path(__file__).parent / "data" / "cff-schema-1.2.0.json"


def load_cff() -> dict:
    # YAML turns unquoted dates into date objects; CFF means the ISO string.
    return json.loads(json.dumps(yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8")), default=str))


def cff_errors(data: dict) -> list[str]:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(data)]


def markdown_section(text: str, heading: str) -> str:
    """The body under ``## heading`` up to the next heading of level 2 or above."""
    match = re.search(rf"^## {re.escape(heading)}\s*$(.*?)(?=^#{{1,2}} |\Z)", text, re.M | re.S)
    assert match, f"no '## {heading}' section"
    return match.group(1)


CFF = load_cff()


def test_citation_cff_is_valid_cff_1_2():
    assert CFF["cff-version"] == "1.2.0"
    assert cff_errors(CFF) == []


def test_schema_check_rejects_broken_files():
    broken = copy.deepcopy(CFF)
    del broken["authors"]
    broken["date-released"] = "29/11/2026"
    broken["preferred-citation"]["type"] = "paper"
    errors = "\n".join(cff_errors(broken))
    assert "'authors' is a required property" in errors
    assert "date-released" in errors and "preferred-citation/type" in errors


def test_cff_describes_this_release():
    assert CFF["version"] == speechprune.__version__
    assert CFF["title"].startswith("speechprune: ")
    assert CFF["authors"] == [{"name": "The speechprune developers"}]
    assert CFF["license"] == "MIT"
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    assert CFF["repository-code"] == config["repository"]["url"]
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert f"## [{CFF['version']}] - {CFF['date-released']}\n" in changelog, \
        "CHANGELOG.md needs a section for this version dated like CITATION.cff's date-released"
    paper = CFF["preferred-citation"]
    assert paper["year"] == 2026 and "2606.11836" in paper["url"]
    assert [a["family-names"] for a in paper["authors"]] == ["Xu", "Li", "Wang", "Chen", "Deng", "Geng", "Liu"]


@pytest.mark.parametrize("where", ["README.md", "book/index.md"])
def test_citations_match_cff(where):
    text = (ROOT / where).read_text(encoding="utf-8")
    if where == "README.md":
        block = markdown_section(text, "Citing")
    else:
        match = re.search(r"<!-- cite:start -->(.*?)<!-- cite:end -->", text, re.S)
        assert match, "book/index.md has no cite box between <!-- cite:start --> and <!-- cite:end -->"
        block = match.group(1)
    flat = " ".join(block.split())  # prose may wrap the title over lines
    assert CFF["title"] in flat, f"{where}: the citation does not give CITATION.cff's title"
    # BibTeX `version = {X}` or `"X"`, or prose "version X"
    versions = set(re.findall(r"\bversion\s*[=:]?\s*[{\"]?\s*v?(\d+\.\d+\.\d+)", block, re.I))
    assert CFF["version"] in versions, f"{where}: the citation does not give version {CFF['version']}"
    assert CFF["repository-code"] in block
    assert versions == {CFF["version"]}, f"{where}: versions {versions} in the citation"


def test_readme_installs_this_version():
    section = markdown_section((ROOT / "README.md").read_text(encoding="utf-8"), "Installing a release")
    version = speechprune.__version__
    assert f'"speechprune @ git+{CFF["repository-code"]}@v{version}"' in section
    assert f"speechprune=={version}" in section
    pinned = set(re.findall(r"@v(\d+\.\d+\.\d+)|speechprune(?:\[\w+\])?==(\d+\.\d+\.\d+)", section))
    assert {v for pair in pinned for v in pair if v} == {version}


def notebook_installs() -> dict[str, list[str]]:
    """Every ``pip install`` line of a notebook in the book that installs speechprune."""
    found = {}
    for path in sorted([*ROOT.glob("notebooks/*.ipynb"), *ROOT.glob("book/*.ipynb")]):
        lines = [line.strip() for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code"
                 for line in cell.source.splitlines() if "pip install" in line and "speechprune" in line]
        if lines:
            found[str(path.relative_to(ROOT))] = lines
    return found


def test_colab_cells_pin_this_version():
    """Issue 13: every chapter's install cell pins the release the README names."""
    installs = notebook_installs()
    version = speechprune.__version__
    pin = re.compile(rf"@v{re.escape(version)}\b|speechprune(\[[\w,]+\])?=={re.escape(version)}\b")
    if not any(pin.search(line) for lines in installs.values() for line in lines):
        pytest.skip("no notebook pins a release yet; the chapters' first cells are to install "
                    f"speechprune @ ...@v{version}")
    unpinned = {nb: lines for nb, lines in installs.items() if not all(pin.search(line) for line in lines)}
    assert unpinned == {}, f"install lines that do not pin v{version}: {unpinned}"
