"""The paper's reported numbers, and this project's measured analog of each, side by side.

Xu et al. (Interspeech 2026) state their results in the abstract as WER *reductions* of channel
clustering over magnitude pruning, absolute (WER points) and relative (percent of the magnitude
WER). The absolute WERs follow from those two numbers: magnitude = absolute / relative, and
clustering = magnitude - absolute. :data:`SETTINGS` holds every stated number once; everything
else in the book is derived from it or measured.

:func:`measure` evaluates one (model, data, method, sparsity, scope, allocation) setting and caches
the record as JSON keyed by its settings, so that the chapters and the results page share runs
instead of repeating them. A full-scale run (the paper's model on LibriSpeech) can be saved with
:func:`save_full_scale` and is shown by the book wherever it exists.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


import speechprune

CITATION = (
    'H. Xu, Z. Li, H. Wang, Y. Chen, C. Deng, M. Geng, X. Liu, "Towards Data-free and Training-free '
    'Compression for Speech Foundation Models Using Parameter Clustering", Interspeech 2026, arXiv 2606.11836'
)
ARXIV_URL = "https://arxiv.org/abs/2606.11836"
TEST_SETS = ("test-clean", "test-other")
ROUNDING = 0.005  # the abstract gives two decimals


@dataclass(frozen=True)
class Reduction:
    """One stated pair: how much lower clustering's WER is than magnitude pruning's."""

    absolute: float  # WER points
    relative: float  # percent of the magnitude-pruning WER

    @property
    def magnitude_wer(self) -> float:
        return self.absolute / self.relative * 100.0

    @property
    def cluster_wer(self) -> float:
        return self.magnitude_wer - self.absolute

    def magnitude_range(self) -> tuple[float, float]:
        """The magnitude WERs consistent with both stated numbers after rounding."""
        lo = (self.absolute - ROUNDING) / (self.relative + ROUNDING) * 100.0
        hi = (self.absolute + ROUNDING) / (self.relative - ROUNDING) * 100.0
        return lo, hi


@dataclass(frozen=True)
class Setting:
    """One of the paper's experiments, as the abstract states it."""

    key: str
    title: str
    model: str
    data: tuple[str, ...]
    sparsity: float
    finetune_epochs: int
    reductions: dict[str, Reduction]
    dense: dict[str, tuple[float, str]] = field(default_factory=dict)  # test set -> (WER, source)
    claim: str | None = None

    @property
    def label(self) -> str:
        ft = f", {self.finetune_epochs} epochs fine-tuning" if self.finetune_epochs else ", no fine-tuning"
        return f"{self.title} {self.sparsity:.0%}{ft}"


_HUBERT = "facebook/hubert-large-ls960-ft"
_WHISPER = "openai/whisper-large-v3"
_LIBRISPEECH = ("librispeech:test-clean", "librispeech:test-other")
_HUBERT_DENSE = {"test-clean": (1.9, "facebook/hubert-large-ls960-ft model card")}

SETTINGS: dict[str, Setting] = {
    "hubert-large-50": Setting(
        "hubert-large-50", "HuBERT-large", _HUBERT, _LIBRISPEECH, 0.5, 0,
        {"test-clean": Reduction(27.73, 34.37), "test-other": Reduction(18.61, 21.91)},
        _HUBERT_DENSE,
    ),
    "hubert-large-50-ft3": Setting(
        "hubert-large-50-ft3", "HuBERT-large", _HUBERT, _LIBRISPEECH, 0.5, 3,
        {"test-clean": Reduction(0.19, 3.36), "test-other": Reduction(0.79, 4.62)},
        _HUBERT_DENSE,
    ),
    "whisper-large-v3-10": Setting(
        "whisper-large-v3-10", "Whisper-large-v3", _WHISPER, _LIBRISPEECH, 0.1, 0,
        {"test-clean": Reduction(2.86, 59.21), "test-other": Reduction(5.02, 55.29)},
        {"test-clean": (2.0, "Open ASR Leaderboard (about)"), "test-other": (3.9, "Open ASR Leaderboard (about)")},
        claim="no significant WER increase over the uncompressed model",
    ),
}


def paper_numbers() -> list[dict]:
    """Every number of the abstract, and the WERs it implies, one row each, labelled."""
    rows = []
    for s in SETTINGS.values():
        for test_set, r in s.reductions.items():
            base = dict(setting=s.label, model=s.model, data=f"LibriSpeech {test_set}", sparsity=s.sparsity,
                        finetune_epochs=s.finetune_epochs)
            lo, hi = r.magnitude_range()
            rows += [
                dict(base, quantity="absolute WER reduction (points)", value=r.absolute, kind="stated"),
                dict(base, quantity="relative WER reduction (%)", value=r.relative, kind="stated"),
                dict(base, quantity="magnitude pruning WER (%)", value=round(r.magnitude_wer, 2),
                     kind=f"implied, {lo:.2f} to {hi:.2f} after rounding"),
                dict(base, quantity="channel clustering WER (%)", value=round(r.cluster_wer, 2),
                     kind=f"implied, {lo - r.absolute - ROUNDING:.2f} to {hi - r.absolute + ROUNDING:.2f} after rounding"),
            ]
            if test_set in s.dense:
                value, source = s.dense[test_set]
                rows.append(dict(base, quantity="uncompressed WER (%)", value=value, kind=f"reference: {source}"))
    return rows


# --- measuring our analog ---------------------------------------------------------------------

_loaded: dict[str, Any] = {}


def dense_model(spec: str, device: str = "cpu"):
    """``load_model(spec)``, loaded once per process and shared by every :func:`measure` call."""
    key = f"model:{spec}:{device}"
    if key not in _loaded:
        from speechprune.models import load_model

        for old in [k for k in _loaded if k.startswith("model:")]:  # hold one model at a time
            del _loaded[old]
        _loaded[key] = load_model(spec, device=device)
    return _loaded[key]


def _speech(spec: str, max_samples: int | None):
    key = f"speech:{spec}:{max_samples}"
    if key not in _loaded:
        from speechprune.data import load_speech

        _loaded[key] = load_speech(spec, max_samples=max_samples)
    return _loaded[key]


def measure(model: str, data: str, *, method: str | None = None, sparsity: float = 0.0, scope: str = "ffn",
            allocation: str = "uniform", seed: int = 0, features: str = "both", max_samples: int | None = None,
            batch_size: int = 8, device: str | None = None, cache_dir: str | Path | None = None,
            build_id: str | None = None) -> dict:
    """WER record of ``model`` on ``data``: dense when ``method`` is None, else compressed first.

    The record is :func:`speechprune.evaluate.evaluate`'s, plus ``compression`` (the
    :class:`~speechprune.compress.CompressionReport` as a dict, or None), ``settings`` and
    ``build_id``. ``features`` is the cluster feature set (see
    :func:`speechprune.prune.channel_features`). With ``cache_dir``, a record saved for the same
    settings is loaded instead of measured again; delete the folder to measure afresh.
    """
    import torch

    from speechprune.study import execute, make_run

    settings = dict(model=model, data=data, max_samples=max_samples, method=method,
                    sparsity=sparsity if method else 0.0, scope=scope if method else None,
                    allocation=allocation if method else None, seed=seed if method else None,
                    features=features if method == "cluster" else None, speechprune=speechprune.__version__)
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(cache_dir) / f"{method or 'dense'}-{digest}.json" if cache_dir else None
    if path is not None and path.is_file():
        return json.loads(path.read_text())

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dense, processor = dense_model(model, device)
    label = "dense" if not method else method if allocation == "uniform" else f"{method} ({allocation})"
    run = make_run(model, data, method=method or "dense", scope=scope, sparsity=sparsity, allocation=allocation,
                   features=features, seed=seed, batch_size=batch_size, max_samples=max_samples, label=label)
    record = execute(run, dense, processor, _speech(data, max_samples), device=device)
    record.update(settings=settings, build_id=build_id)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1))
    return record


def measure_comparison(model: str, data_sets: list[str], *, sparsity: float, scope: str, seed: int = 0,
                       **run) -> dict[str, dict[str, dict]]:
    """Dense, magnitude and cluster records on each data set, by column title ("ours: DATA (N utt.)").

    ``run`` goes to :func:`measure` (``max_samples``, ``batch_size``, ``device``, ``cache_dir``, ``build_id``).
    """
    ours = {}
    for data in data_sets:
        recs = {"dense": measure(model, data, **run)}
        for method in ("magnitude", "cluster"):
            recs[method] = measure(model, data, method=method, sparsity=sparsity, scope=scope, seed=seed, **run)
        ours[f"ours: {data} ({recs['dense']['n_utterances']} utt.)"] = recs
    return ours


def scale_note(setting: Setting, model: str, data_sets: list[str], *, scope: str, sparsity: float,
               max_samples: int | None = None) -> str:
    """One sentence saying whether a run is the paper's experiment or the embedded-scale analog."""
    if is_full_scale(setting, model, data_sets):
        subset = f"the first {max_samples} utterances of each" if max_samples else "every utterance"
        return f"Full scale: the paper's model {model} on {', '.join(data_sets)}, {subset}."
    return (f"Embedded-scale analog, not the paper's experiment: {model} (not {setting.model}) on "
            f"{', '.join(data_sets)} (not LibriSpeech), pruning {scope} at {sparsity:.0%}. Compare "
            "directions and rough sizes with the paper, not the numbers themselves.")


def describe(record: dict) -> str:
    """Model, data, compression and decoding of a record, in one line."""
    s, c = record["settings"], record.get("compression")
    what = "uncompressed" if not c else (
        f"{c['method']} at {c['sparsity']:.0%} of {','.join(c['scope'])} channels, {c['allocation']} allocation"
        + (f", {c.get('features', 'both')} features, seed {c['seed']}" if c["method"] == "cluster" else "")
        + f" ({c['param_sparsity']:.1%} of all parameters removed)"
    )
    return (f"{s['model']} on {record['data']['name']} ({record['n_utterances']} utterances), {what}; "
            f"greedy decoding, Whisper English normaliser, {record['dtype']}")


def describe_comparison(recs: dict[str, dict]) -> str:
    """One line for a dense / magnitude / cluster trio measured with the same settings."""
    r, c = recs["cluster"], recs["cluster"]["compression"]
    return (f"{r['settings']['model']} on {r['data']['name']} ({r['n_utterances']} utterances): magnitude "
            f"pruning and clustering (seed {c['seed']}) of {c['sparsity']:.0%} of {','.join(c['scope'])} "
            f"channels, {c['allocation']} allocation ({c['param_sparsity']:.1%} of all parameters removed); "
            f"greedy decoding, Whisper English normaliser, {r['dtype']}")


# --- spread ----------------------------------------------------------------------------------

def _as_study_record(record: dict) -> dict:
    """An evaluate record in the per-utterance form :mod:`speechprune.stats` reads."""
    rows = [u for u in record["utterances"] if u["errors"] is not None]
    seed = (record.get("compression") or {}).get("seed")
    return dict(utterance_ids=[u["id"] for u in rows], utterance_errors=[u["errors"] for u in rows],
                utterance_words=[len(u["reference_normalized"].split()) for u in rows], seed=seed)


def wer_interval(record: dict, *, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval (over utterances) of one run's corpus WER, in percent."""
    from speechprune.stats import summarize

    return summarize([_as_study_record(record)], n_boot=n_boot, seed=seed).interval


def wer_difference(a: dict, b: dict, *, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """WER(a) - WER(b) in points with its 95% paired bootstrap interval; same utterances required."""
    from speechprune.stats import paired_difference

    d = paired_difference([_as_study_record(a)], [_as_study_record(b)], n_boot=n_boot, seed=seed)
    return d.median, d.interval[0], d.interval[1]


# --- paper beside ours ------------------------------------------------------------------------

def reductions(magnitude: dict, cluster: dict) -> dict[str, float]:
    """Our absolute and relative reduction, in the paper's terms, from two measured records."""
    m, c = magnitude["wer"], cluster["wer"]
    return dict(magnitude_wer=m, cluster_wer=c, absolute=m - c, relative=100.0 * (m - c) / m if m else float("nan"))


QUANTITIES = ("magnitude pruning WER (%)", "channel clustering WER (%)", "absolute WER reduction (points)",
              "relative WER reduction (%)", "uncompressed WER (%)")


def _paper_values(setting: Setting, test_set: str) -> list[str]:
    r, dense = setting.reductions[test_set], setting.dense.get(test_set)
    return [f"{r.magnitude_wer:.2f} (implied)", f"{r.cluster_wer:.2f} (implied)", f"{r.absolute:.2f}",
            f"{r.relative:.2f}", f"{dense[0]:.1f} ({dense[1]})" if dense else "not stated"]


def _our_values(recs: dict[str, dict]) -> list[str]:
    red = reductions(recs["magnitude"], recs["cluster"])
    return [f"{red['magnitude_wer']:.2f}", f"{red['cluster_wer']:.2f}", f"{red['absolute']:.2f}",
            f"{red['relative']:.2f}", f"{recs['dense']['wer']:.2f}" if "dense" in recs else "not measured"]


def comparison_table(setting: Setting, ours: dict[str, dict[str, dict]]):
    """A DataFrame: one row per quantity, the paper's test sets then each of our data sets.

    ``ours`` maps a column title to records ``{"dense": ..., "magnitude": ..., "cluster": ...}``
    (dense optional).
    """
    import pandas as pd

    columns = {f"paper: {setting.title}, LibriSpeech {t}": _paper_values(setting, t) for t in setting.reductions}
    columns.update({title: _our_values(recs) for title, recs in ours.items()})
    return pd.DataFrame(columns, index=list(QUANTITIES)).rename_axis(setting.label)


def summary_table(entries: list[tuple[Setting, dict[str, dict[str, dict]] | None]]):
    """Every setting's numbers in one DataFrame: the paper's two test sets beside ours.

    Each entry is ``(setting, ours)``: ``ours`` as for :func:`comparison_table` (records need only
    ``wer``), or None where this build has no measurement ("not measured").
    """
    import pandas as pd

    rows = []
    for setting, ours in entries:
        ours_values = [_our_values(recs) for recs in (ours or {}).values()]
        clean, other = (_paper_values(setting, t) for t in TEST_SETS)
        for i, quantity in enumerate(QUANTITIES):
            rows.append({"setting": setting.label, "quantity": quantity, "paper: test-clean": clean[i],
                         "paper: test-other": other[i],
                         "ours": " / ".join(v[i] for v in ours_values) if ours_values else "not measured"})
    return pd.DataFrame(rows).set_index(["setting", "quantity"])


def plot_paper_vs_ours(setting: Setting, ours: dict[str, dict[str, dict]], *, title: str | None = None):
    """Two panels of WER bars: the paper's (implied) on the left, ours with 95% intervals on the right."""
    import matplotlib.pyplot as plt

    colours = {"dense": "#7f7f7f", "magnitude": "#d1495b", "cluster": "#2a7ab9"}
    names = {"dense": "uncompressed", "magnitude": "magnitude pruning", "cluster": "channel clustering"}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.26
    for i, (test_set, r) in enumerate(setting.reductions.items()):
        values = {"dense": setting.dense.get(test_set, (None,))[0], "magnitude": r.magnitude_wer, "cluster": r.cluster_wer}
        for j, (kind, v) in enumerate(values.items()):
            if v is None:
                continue
            bar = left.bar(i + (j - 1) * width, v, width, color=colours[kind], label=names[kind] if i == 0 else None,
                           hatch="//" if kind != "dense" else None, edgecolor="white")
            left.bar_label(bar, fmt="%.2f", fontsize=8)
    left.set_xticks(range(len(setting.reductions)), [f"LibriSpeech\n{t}" for t in setting.reductions])
    left.set_title(f"Paper (abstract): {setting.title}, {setting.sparsity:.0%} sparsity"
                   + (f", {setting.finetune_epochs} epochs fine-tuning" if setting.finetune_epochs else ""), fontsize=10)
    left.set_ylabel("WER (%)")
    left.legend(fontsize=8)
    for i, (column, recs) in enumerate(ours.items()):
        for j, kind in enumerate(("dense", "magnitude", "cluster")):
            if kind not in recs:
                continue
            rec = recs[kind]
            lo, hi = wer_interval(rec)
            bar = right.bar(i + (j - 1) * width, rec["wer"], width, color=colours[kind],
                            yerr=[[rec["wer"] - lo], [hi - rec["wer"]]], capsize=3,
                            label=names[kind] if i == 0 else None)
            right.bar_label(bar, fmt="%.2f", fontsize=8, padding=2)
    right.set_xticks(range(len(ours)), list(ours), fontsize=8)
    right.set_xlim(-0.8, len(ours) - 0.2)
    first = next(iter(ours.values()))["cluster"]
    c = first["compression"]
    right.set_title(title or f"This build: {first['settings']['model']}, {c['sparsity']:.0%} of {','.join(c['scope'])}",
                    fontsize=10)
    right.set_ylabel("WER (%), 95% bootstrap interval")
    right.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_reductions(entries: list[tuple[Setting, dict[str, dict[str, dict]] | None]]):
    """Absolute and relative WER reduction of clustering over magnitude pruning, paper beside ours.

    One group of bars per setting: the paper's test-clean and test-other (hatched), then each of
    our data sets where ``ours`` is not None.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for ax, key, unit in [(axes[0], "absolute", "WER points"), (axes[1], "relative", "% of the magnitude WER")]:
        ticks, labels, x = [], [], 0.0
        for setting, ours in entries:
            group = [(f"paper\n{t.removeprefix('test-')}", getattr(setting.reductions[t], key), True) for t in TEST_SETS]
            group += [("ours", reductions(recs["magnitude"], recs["cluster"])[key], False) for recs in (ours or {}).values()]
            for j, (name, value, is_paper) in enumerate(group):
                bar = ax.bar(x + j, value, 0.9, color="#9ecae1" if is_paper else "#2a7ab9",
                             hatch="//" if is_paper else None, edgecolor="white")
                ax.bar_label(bar, fmt="%.1f", fontsize=7)
                ticks.append(x + j)
                labels.append(name)
            ax.text(x + (len(group) - 1) / 2, -0.2, setting.label.replace(", ", "\n", 1), ha="center", va="top",
                    fontsize=8, transform=ax.get_xaxis_transform())
            x += len(group) + 1
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(ticks, labels, fontsize=7)
        ax.set_ylabel(f"{key} reduction ({unit})")
        ax.set_title(f"{key} WER reduction, clustering vs magnitude", fontsize=10)
    axes[0].bar(0, 0, color="#9ecae1", hatch="//", edgecolor="white", label="paper (abstract), LibriSpeech")
    axes[0].bar(0, 0, color="#2a7ab9", label="ours (embedded-scale analog)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


# --- full-scale results files -----------------------------------------------------------------

def is_full_scale(setting: Setting, model: str, data: list[str] | tuple[str, ...]) -> bool:
    """Whether a run uses the paper's own model and only the paper's test sets."""
    return model == setting.model and bool(data) and all(d in setting.data for d in data)


def save_full_scale(setting: Setting, data: str, records: dict[str, dict], results_dir: str | Path) -> Path:
    """Write one full-scale test set's records to ``results_dir/<setting>/<test set>.json``.

    One file per test set, so that test sets can run in parallel (one GPU each).
    """
    if data not in setting.data:
        raise ValueError(f"{data} is not one of the paper's test sets for {setting.key}: {setting.data}")
    path = Path(results_dir) / setting.key / f"{data.split(':')[-1]}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(setting=setting.key, data=data, records=records), indent=1))
    return path


#: Saved runs that ship with the package, so that a chapter opened alone (Colab) still finds them.
PACKAGE_RESULTS = Path(__file__).resolve().parent / "data" / "results"


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


# --- glue ------------------------------------------------------------------------------------

def glue(name: str, value: Any, display: bool = False) -> None:
    """myst-nb's ``glue`` (numbers in the book's prose come from the run); a plain display elsewhere."""
    try:
        from myst_nb import glue as myst_glue
    except ImportError:  # Colab and plain Jupyter: nothing to paste into, show it when asked
        if display:
            from IPython.display import display as show

            show(value)
        return
    myst_glue(name, value, display=display)
