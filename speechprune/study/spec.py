"""The study file: what a study asks, checked and expanded into its runs.

A study is settings (model, scope, sparsity) × compression options (method, features,
allocation, merge, weighting, or a ``recipe``) × k-means seeds × data × decoding, described by
a small TOML file under ``studies/``. :func:`parse_study` checks every key and value and expands
the grid into :class:`Run` s, seed-major (the dense models, every magnitude run and seed 0 of
every clustering option first, then seed 1, ...) so that a study cut short still covers every
setting. A run's key is a hash of its settings (:func:`run_key`). :func:`dump_study` writes a
study file back.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speechprune.data import check_speech_spec
from speechprune.errors import SpeechPruneError
from speechprune.evaluate import DECODINGS
from speechprune.models import check_model_spec
from speechprune.options import CompressionOptions, check_sparsity
from speechprune.recipes import RECIPES
from speechprune.structure import parse_scope, units_in_scope


# the settings that make a run; the key of a record is a hash of these
KEY_FIELDS = ("model", "data", "max_samples", "scope", "sparsity", "method", "features", "allocation",
              "merge", "weighting", "seed", "decoding", "batch_size")


@dataclass(frozen=True)
class Run:
    """One compression (or none: ``method="dense"``) and one evaluation."""

    model: str
    data: str
    max_samples: int | None = None
    scope: str | None = None
    sparsity: float = 0.0
    method: str = "dense"
    features: str | None = None
    allocation: str | None = None
    merge: str | None = None
    weighting: str | None = None
    seed: int | None = None
    decoding: str = "greedy"
    batch_size: int = 8
    label: str = field(default="", compare=False)
    recipe: str | None = field(default=None, compare=False)

    def settings(self) -> dict:
        return {k: getattr(self, k) for k in KEY_FIELDS}

    @property
    def key(self) -> str:
        return run_key(self.settings())

    def options(self) -> CompressionOptions | None:
        """The :class:`~speechprune.options.CompressionOptions` this run compresses with (None: dense)."""
        if self.method == "dense":
            return None
        return CompressionOptions(method=self.method, sparsity=self.sparsity, scope=self.scope,
                                  allocation=self.allocation, features=self.features, merge=self.merge,
                                  weighting=self.weighting, seed=self.seed, recipe=self.recipe)

    def describe(self) -> str:
        if self.method == "dense":
            return f"{self.model} dense on {self.data}"
        what = self.label or self.method
        seed = "" if self.seed is None else f" seed {self.seed}"
        return f"{self.model} {self.scope} {self.sparsity:g} {what}{seed} on {self.data}"


def run_key(settings: dict) -> str:
    """A short hash of a run's settings (sorted JSON)."""
    canonical = {k: settings.get(k) for k in KEY_FIELDS}
    if canonical["sparsity"] is not None:
        canonical["sparsity"] = float(canonical["sparsity"])
    return hashlib.sha1(json.dumps(canonical, sort_keys=True).encode()).hexdigest()[:16]


def make_run(model: str, data: str, options: CompressionOptions | None = None, *, decoding: str = "greedy",
             batch_size: int = 8, max_samples: int | None = None, label: str = "", **fields: Any) -> Run:
    """A :class:`Run` of ``options`` (None, or ``method="dense"``: the dense model) on ``model`` and ``data``.

    The fields come from :meth:`CompressionOptions.record_fields`: those the method does not read
    are None (magnitude pruning: no seed, features, merge rule or weighting; closest pairs: no
    seed). Instead of ``options``, its fields may be given as keywords.
    """
    if options is None:
        if fields.get("method", "dense") == "dense":
            return Run(model, data, max_samples, decoding=decoding, batch_size=batch_size, label=label or "dense")
        options = CompressionOptions(**fields)
    elif fields:
        raise SpeechPruneError(f"make_run: give options or their fields ({', '.join(fields)}), not both")
    f = options.record_fields()
    return Run(model, data, max_samples, f["scope"], f["sparsity"], f["method"], f["features"], f["allocation"],
               f["merge"], f["weighting"], f["seed"], decoding, batch_size, label or options.label(), options.recipe)


# --- the study file ---------------------------------------------------------------------------

STUDY_KEYS = {
    "name": "a short name (the results file is results/studies/<name>.json)",
    "description": "what the study asks",
    "models": "list of models, e.g. [\"embedded:whisper-base\"]",
    "data": "list of speech sets, e.g. [\"embedded-full\"]",
    "max_samples": "first N utterances of each set (optional)",
    "seeds": "number of k-means seeds (0 .. N-1) or a list of seeds",
    "decoding": f"list of decodings, from {', '.join(DECODINGS)}",
    "batch_size": "evaluation batch size",
    "dense": "also evaluate the uncompressed model (default true)",
    "settings": "list of tables with scope and sparsity (and optionally models)",
    "options": "list of tables: method, features, allocation, merge, weighting, recipe, label",
}
SETTING_KEYS = ("scope", "sparsity", "models")
OPTION_KEYS = ("method", "features", "allocation", "merge", "weighting", "recipe", "label")


@dataclass
class Study:
    name: str
    runs: list[Run]
    description: str = ""
    source: str | None = None
    spec: dict = field(default_factory=dict)


def _fail(where: str, message: str) -> SpeechPruneError:
    return SpeechPruneError(f"{where}: {message}")


def _known_keys(table: dict, allowed: Iterable[str], where: str) -> None:
    """Refuse a key of ``table`` that is not in ``allowed``, naming the ones that are."""
    for key in table:
        if key not in allowed:
            raise _fail(where, f"unknown key '{key}': use {', '.join(allowed)}")


def _list(value: Any, key: str, where: str, kind: type = str) -> list:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise _fail(where, f"'{key}' is empty")
    for item in items:
        if not isinstance(item, kind) or isinstance(item, bool) and kind is not bool:
            raise _fail(where, f"'{key}' must hold {kind.__name__} values, got {item!r}")
    return items


def _choice(value: Any, key: str, choices: Iterable[str], where: str) -> str:
    choices = tuple(choices)
    if value not in choices:
        raise _fail(where, f"'{key}' = {value!r} is not one of {', '.join(choices)}")
    return value


def parse_study(spec: dict, where: str = "study") -> Study:
    """Check a study description (a dict read from TOML) and expand it into runs, seed-major.

    Every key and value is checked here; nothing about the models is (see :func:`check_scopes`).
    """

    _known_keys(spec, STUDY_KEYS, where)
    for key in ("name", "models", "data", "settings", "options"):
        if key not in spec:
            raise _fail(where, f"missing key '{key}' ({STUDY_KEYS[key]})")
    name = spec["name"]
    if not isinstance(name, str) or not name or any(c in name for c in "/\\ ") or name.startswith("."):
        raise _fail(where, f"'name' must be a plain file name, got {name!r}")
    models = _list(spec["models"], "models", where)
    data = _list(spec["data"], "data", where)
    decodings = [_choice(d, "decoding", DECODINGS, where) for d in _list(spec.get("decoding", "greedy"), "decoding", where)]
    max_samples = spec.get("max_samples")
    if max_samples is not None and (not isinstance(max_samples, int) or isinstance(max_samples, bool) or max_samples < 1):
        raise _fail(where, f"'max_samples' must be a positive integer, got {max_samples!r}")
    batch_size = spec.get("batch_size", 8)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise _fail(where, f"'batch_size' must be a positive integer, got {batch_size!r}")
    dense = spec.get("dense", True)
    if not isinstance(dense, bool):
        raise _fail(where, f"'dense' must be true or false, got {dense!r}")
    seeds_value = spec.get("seeds", 5)
    if isinstance(seeds_value, int) and not isinstance(seeds_value, bool):
        if not 1 <= seeds_value <= 1000:
            raise _fail(where, f"'seeds' must be between 1 and 1000, got {seeds_value}")
        seeds = list(range(seeds_value))
    else:
        seeds = _list(seeds_value, "seeds", where, int)
        if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
            raise _fail(where, f"'seeds' must be distinct non-negative integers, got {seeds!r}")

    settings = []
    for i, s in enumerate(_list(spec["settings"], "settings", where, dict)):
        w = f"{where}: settings[{i}]"
        _known_keys(s, SETTING_KEYS, w)
        if "scope" not in s or "sparsity" not in s:
            raise _fail(w, "needs 'scope' and 'sparsity'")
        if not isinstance(s["scope"], str) or not s["scope"].strip():
            raise _fail(w, f"'scope' must be a non-empty string, got {s['scope']!r}")
        try:
            parse_scope(s["scope"])  # its parts; check_scopes matches them to each model before any run
        except SpeechPruneError as err:
            raise _fail(w, f"'scope' = {s['scope']!r}: {err}") from None
        sp = s["sparsity"]
        if not isinstance(sp, (int, float)) or isinstance(sp, bool):
            raise _fail(w, f"'sparsity' must be a number in [0, 1), got {sp!r}")
        try:
            sp = check_sparsity(sp)  # the one rule of every entry point
        except SpeechPruneError:
            raise _fail(w, f"'sparsity' must be a number in [0, 1), got {sp!r}") from None
        settings.append((s["scope"], sp, _list(s.get("models", models), "models", w)))

    options = []
    for i, o in enumerate(_list(spec["options"], "options", where, dict)):
        w = f"{where}: options[{i}]"
        _known_keys(o, OPTION_KEYS, w)
        recipe = _choice(o["recipe"], "recipe", RECIPES, w) if "recipe" in o else None
        opt = {k: v for k, v in o.items() if k not in ("recipe", "label")}
        try:  # checked by the options themselves (a plug-in method is one of them), once per option
            CompressionOptions(recipe=recipe, **opt)
        except SpeechPruneError as err:
            raise _fail(w, str(err)) from None
        label = o.get("label", "")
        if not isinstance(label, str):
            raise _fail(w, f"'label' must be a string, got {label!r}")
        options.append((opt, label, recipe))
    _check_labels_unique(options, where)

    runs: list[Run] = []
    seen: set[str] = set()

    def add(run: Run) -> None:
        if run.key not in seen:
            seen.add(run.key)
            runs.append(run)

    for s_index, seed in enumerate(seeds):  # seed-major: every setting early
        for decoding in decodings:
            for d in data:
                for model in models:
                    if dense and s_index == 0:
                        add(make_run(model, d, decoding=decoding, batch_size=batch_size, max_samples=max_samples))
                for scope, sparsity, setting_models in settings:
                    for model in setting_models:
                        for opt, label, recipe in options:
                            chosen = CompressionOptions(recipe=recipe, scope=scope, sparsity=sparsity, seed=seed,
                                                        **opt)
                            if not chosen.takes_seed and s_index > 0:  # one run: the method takes no seed
                                continue
                            add(make_run(model, d, chosen, decoding=decoding, batch_size=batch_size,
                                         max_samples=max_samples, label=label))
    return Study(name=name, runs=runs, description=spec.get("description", ""), spec=spec)


def _check_labels_unique(options: list[tuple[dict, str, str | None]], where: str) -> None:
    """Refuse two different options under one label: the tables would merge them into one row."""
    seen: dict[str, tuple] = {}
    for i, (opt, label, recipe) in enumerate(options):
        run = make_run("m", "d", CompressionOptions(recipe=recipe, scope="ffn", sparsity=0.5, **opt), label=label)
        what = (run.method, run.features, run.allocation, run.merge, run.weighting)
        if run.label in seen and seen[run.label][1] != what:
            raise _fail(f"{where}: options[{i}]",
                        f"label {run.label!r} is already used by options[{seen[run.label][0]}], a different option "
                        "(its runs would be merged into one row): give each option its own 'label'")
        seen.setdefault(run.label, (i, what))


def load_study(path: str | Path) -> Study:
    """Read and check a study file (TOML)."""
    path = Path(path)
    if not path.is_file():
        raise SpeechPruneError(f"no study file {path}: see studies/README.md for the format")
    try:
        spec = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise SpeechPruneError(f"{path}: not valid TOML: {err}") from None
    study = parse_study(spec, where=str(path))
    study.source = str(path)
    return study


def check_sources(study: Study) -> None:
    """Refuse a model or speech set that cannot be found, without loading either (``--dry-run`` too)."""
    where = study.source or study.name
    for name in sorted({r.model for r in study.runs}):
        try:
            check_model_spec(name)
        except SpeechPruneError as err:
            raise _fail(f"{where}: models", str(err)) from None
    for name in sorted({r.data for r in study.runs}):
        try:
            check_speech_spec(name)
        except SpeechPruneError as err:
            raise _fail(f"{where}: data", str(err)) from None


def check_scopes(study: Study, load=None) -> None:
    """Refuse a setting whose scope matches no unit of its model, before any run."""
    pairs = sorted({(r.model, r.scope) for r in study.runs if r.scope is not None})
    for model_name in sorted({m for m, _ in pairs}):
        model = load(model_name)
        for _, scope in [p for p in pairs if p[0] == model_name]:
            try:
                parts = parse_scope(scope, model)
                if not units_in_scope(model, parts):
                    raise SpeechPruneError("no unit")
            except SpeechPruneError as err:
                raise SpeechPruneError(f"{study.source or study.name}: settings: 'scope' = {scope!r} matches "
                                       f"no unit of {model_name}: {err}") from None



# --- writing a study file -------------------------------------------------------------------------

#: The order in which :func:`dump_study` writes an option's keys (the recipe first: the keys after it
#: change the recipe's options).
_DUMP_OPTION_KEYS = ("method", "recipe") + tuple(k for k in OPTION_KEYS if k not in ("method", "recipe"))


def _toml_value(value: Any) -> str:
    """``value`` as a TOML value: a string, a boolean, an integer, a float or a list of these."""
    if isinstance(value, str):  # JSON's escapes are TOML's; DEL is the one control character JSON keeps
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(x) for x in value) + "]"
    if isinstance(value, int | float):
        return repr(value)
    raise SpeechPruneError(f"cannot write {value!r} ({type(value).__name__}) into a study file")


def dump_study(study: Study | dict, *, comment: str = "") -> str:
    """The TOML text of a study file (a :class:`Study`'s own ``spec``, or a description as a dict),
    checked by :func:`parse_study` first; ``comment`` goes on top, each line as a ``#`` comment.

    Keys are written in a fixed order (the order of :data:`STUDY_KEYS`, then ``[[settings]]`` and
    ``[[options]]`` tables), so that ``parse_study(tomllib.loads(dump_study(spec)))`` gives the
    same study.
    """
    spec = study.spec if isinstance(study, Study) else study
    parse_study(spec)
    lines = [f"# {line}".rstrip() for line in comment.splitlines()]
    lines += [f"{k} = {_toml_value(spec[k])}" for k in STUDY_KEYS if k in spec and k not in ("settings", "options")]
    for table, keys in (("settings", SETTING_KEYS), ("options", _DUMP_OPTION_KEYS)):
        for entry in spec[table] if isinstance(spec[table], list) else [spec[table]]:
            lines += ["", f"[[{table}]]"] + [f"{k} = {_toml_value(entry[k])}" for k in keys if k in entry]
    return "\n".join(lines) + "\n"
