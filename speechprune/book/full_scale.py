"""Full-scale result files: the paper's own model on LibriSpeech, saved once and shown by the book.

A full-scale run is saved with :func:`save_full_scale` (one JSON file per test set) and read
back with :func:`load_full_scale`; :func:`saved_result` finds a saved file in a results folder
or in the copy shipped with the package (:data:`PACKAGE_RESULTS`), so that a chapter opened
alone (Colab) still finds it.
"""

from __future__ import annotations

import json
from pathlib import Path

from speechprune.book.reference import Setting
from speechprune.outputs import check_output_file, write_json


def is_full_scale(setting: Setting, model: str, data: list[str] | tuple[str, ...]) -> bool:
    """Whether a run uses the paper's own model and only the paper's test sets."""
    return model == setting.model and bool(data) and all(d in setting.data for d in data)


def save_full_scale(setting: Setting, data: str, records: dict[str, dict], results_dir: str | Path) -> Path:
    """Write one full-scale test set's records to ``results_dir/<setting>/<test set>.json``.

    One file per test set, so that test sets can run in parallel (one GPU each).
    """
    if data not in setting.data:
        raise ValueError(f"{data} is not one of the paper's test sets for {setting.key}: {setting.data}")
    path = check_output_file(Path(results_dir) / setting.key / f"{data.split(':')[-1]}.json", flag="results_dir")
    return write_json(path, dict(setting=setting.key, data=data, records=records), indent=1)


#: Saved runs that ship with the package, so that a chapter opened alone (Colab) still finds them.
PACKAGE_RESULTS = Path(__file__).resolve().parents[1] / "data" / "results"


def saved_result(name: str, results_dir: str | Path | None = None) -> Path:
    """``results_dir/name`` when it exists, else the copy shipped in the package."""
    for folder in ([Path(results_dir)] if results_dir else []) + [PACKAGE_RESULTS]:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"no saved result {name!r} in {results_dir or '(no results_dir)'} or in the package")


def load_full_scale(setting: Setting, results_dir: str | Path | None) -> dict[str, dict[str, dict]]:
    """Saved full-scale records of ``setting`` by column title (``results_dir`` first, then the package's)."""
    paths = {}
    for folder in [PACKAGE_RESULTS / setting.key] + ([Path(results_dir) / setting.key] if results_dir else []):
        paths.update({p.name: p for p in sorted(folder.glob("*.json"))} if folder.is_dir() else {})
    found = {}
    for path in paths.values():
        saved = json.loads(path.read_text())
        records = saved.get("records", {})
        if saved.get("setting") == setting.key and all(
                records.get(k, {}).get("settings", {}).get("model") == setting.model for k in ("magnitude", "cluster")):
            found[f"full scale: {saved['data']} ({records['cluster']['n_utterances']} utt.)"] = records
    return found
