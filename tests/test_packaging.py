"""The sdist and the wheel build cleanly, and the wheel carries everything a user needs.

The wheel is installed with ``--no-deps`` into a fresh virtual environment outside the repository;
that environment reuses the test environment's packages (torch, transformers, ...) through a
``.pth`` file, so nothing is downloaded, but ``speechprune`` itself comes only from the wheel.
"""

from __future__ import annotations

import json
import os
import re
import site
import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

import speechprune

# About a minute on two busy cores (building, a venv, importing torch twice); `make test` runs it.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
VERSION = speechprune.__version__
LICENCE_FILES = {"README.md", "CC-BY-SA-3.0.txt", "PUBLIC-DOMAIN.md", "MIT-openai-whisper.txt"}


def clean_env() -> dict[str, str]:
    """The environment without anything that would import the repository's copy of speechprune."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict:
    """Build the sdist, and the wheel from it, as the release workflow does (``python -m build``)."""
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: the test environment's setuptools (dev extra) builds it, offline.
    build = run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
                cwd=ROOT, env=clean_env())
    wheels, sdists = sorted(out.glob("*.whl")), sorted(out.glob("*.tar.gz"))
    assert [w.name for w in wheels] == [f"speechprune-{VERSION}-py3-none-any.whl"]
    assert [s.name for s in sdists] == [f"speechprune-{VERSION}.tar.gz"]
    return {"wheel": wheels[0], "sdist": sdists[0], "log": build.stdout + build.stderr}


@pytest.fixture(scope="module")
def installed(dists, tmp_path_factory) -> Path:
    """A fresh venv, outside the repository, holding the wheel; returns the venv's folder."""
    home = tmp_path_factory.mktemp("venv-home")
    env_dir = home / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                       env=clean_env()).stdout.strip())
    # Appended to the venv's sys.path after its own site-packages, so the wheel's copy wins.
    shared = dict.fromkeys([*site.getsitepackages(), sysconfig.get_paths()["purelib"]])
    (purelib / "_test_environment.pth").write_text("\n".join(shared) + "\n")
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
         "--no-index", "--ignore-installed", str(dists["wheel"])], cwd=home, env=clean_env())
    return env_dir


def test_build_has_no_licence_deprecation_warning(dists):
    log = dists["log"]
    assert "as a TOML table is deprecated" not in log
    assert "License classifiers are deprecated" not in log
    assert "adding license file 'LICENSE'" in log


def test_twine_check_passes(dists):
    result = run([sys.executable, "-m", "twine", "check", "--strict", str(dists["wheel"]), str(dists["sdist"])])
    assert result.stdout.count("PASSED") == 2, result.stdout


def test_wheel_metadata(dists):
    with zipfile.ZipFile(dists["wheel"]) as wheel:
        metadata = wheel.read(f"speechprune-{VERSION}.dist-info/METADATA").decode()
        names = set(wheel.namelist())
    assert f"\nVersion: {VERSION}\n" in metadata
    assert "\nLicense-Expression: MIT\n" in metadata
    assert "\nLicense: " not in metadata  # the deprecated free-text field is gone
    for name in ("LICENSE", *(f"speechprune/data/LICENSES/{f}" for f in LICENCE_FILES)):
        assert f"License-File: {name}\n" in metadata
        assert f"speechprune-{VERSION}.dist-info/licenses/{name}" in names


def test_wheel_holds_only_the_package(dists):
    with zipfile.ZipFile(dists["wheel"]) as wheel:
        names = wheel.namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"speechprune", f"speechprune-{VERSION}.dist-info"}, tops
    unwanted = re.compile(r"(^|/)(tests?|__pycache__|\.pytest_cache|\.ipynb_checkpoints|_build|build|"
                          r"[^/]*\.egg-info)(/|$)|\.py[cod]$|\.DS_Store$")
    assert [n for n in names if unwanted.search(n)] == []
    flac = [n for n in names if n.startswith("speechprune/data/speech/embedded/") and n.endswith(".flac")]
    assert len(flac) == 208
    for name in ("speechprune/data/english_spelling.json", "speechprune/data/speech/embedded/metadata.csv",
                 *(f"speechprune/data/LICENSES/{f}" for f in LICENCE_FILES)):
        assert name in names


def test_sdist_holds_sources_not_tests(dists):
    with tarfile.open(dists["sdist"]) as sdist:
        names = [n.split("/", 1)[1] for n in sdist.getnames() if "/" in n]
    for name in ("LICENSE", "README.md", "pyproject.toml", "speechprune/__init__.py",
                 "speechprune/data/LICENSES/CC-BY-SA-3.0.txt", "speechprune/data/english_spelling.json"):
        assert name in names
    assert not [n for n in names if n.startswith(("tests/", "_build/", "build/", "notebooks/"))
                or "__pycache__" in n]


def test_installed_command_line(installed, tmp_path):
    result = run([str(installed / "bin" / "speechprune"), "--help"], cwd=tmp_path, env=clean_env())
    for command in ("compress", "evaluate", "finetune", "compare"):
        assert command in result.stdout


CHECK = """
import importlib.metadata as md, json
from pathlib import Path
import speechprune
from speechprune.data import load_speech
from speechprune.models import english_spelling_map
package = Path(speechprune.__file__).parent
licences = package / "data" / "LICENSES"
print(json.dumps({
    "file": speechprune.__file__,
    "version": speechprune.__version__,
    "metadata_version": md.version("speechprune"),
    "clips": len(load_speech("embedded")),
    "spelling": english_spelling_map().get("colour"),
    "licences": sorted(p.name for p in licences.iterdir()),
    "cc_by_sa": (licences / "CC-BY-SA-3.0.txt").read_text().splitlines()[0],
    "attribution": "Allison Smith" in (licences / "README.md").read_text(),
    "dist_licence": any(f.name == "LICENSE" for f in md.files("speechprune")),
}))
"""


def test_installed_package_carries_its_data(installed, tmp_path):
    result = run([str(installed / "bin" / "python"), "-c", CHECK], cwd=tmp_path, env=clean_env())
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(found["file"]).is_relative_to(installed), f"imported {found['file']}, not the wheel's copy"
    assert found["version"] == found["metadata_version"] == VERSION
    assert found["clips"] == 64
    assert found["spelling"] == "color"
    assert set(found["licences"]) == LICENCE_FILES
    assert found["cc_by_sa"] == "Creative Commons Attribution-ShareAlike 3.0 Unported"
    assert found["attribution"] and found["dist_licence"]
