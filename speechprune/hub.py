"""Hub-ready pruned folders: standard config fields where they fit, a loud guard where not, a model card.

:func:`finish_folder` runs on every folder :func:`speechprune.save_pruned` writes:

* **Uniform widths.** When every pruned unit that one config field describes has the same
  width (``encoder_ffn_dim`` / ``decoder_ffn_dim`` for Whisper, ``intermediate_size`` for the
  CTC families), that field gets the width, so plain ``transformers`` ``from_pretrained``
  builds the pruned shapes and loads the folder with the same outputs as
  :func:`speechprune.load_checkpoint`.
* **Anything else.** Widths that differ per layer cannot be written in a ``transformers``
  config, and neither can fewer attention heads (every supported attention module derives
  its head size from ``hidden_size / num_heads``). Such a field is set to a *string* naming
  the problem and :func:`speechprune.load_checkpoint`; the config's type validation then
  makes plain ``from_pretrained`` (and ``AutoConfig``, pipelines) fail on it with that text,
  instead of loading mismatched shapes or silently re-initialising weights. The dense value
  is kept in ``speechprune.dense_fields`` and :func:`read_config` restores it.
* **A model card** (``README.md``): Hub metadata (``library_name``, ``pipeline_tag``,
  ``tags``, ``base_model`` where known), the compression report, the command that made the
  folder, how to load and upload it, and the WER once ``speechprune evaluate --card`` has
  measured one.

Uploading is left to ``huggingface_hub``; nothing here touches the network.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import transformers
from torch import nn

from speechprune.errors import SpeechPruneError
from speechprune.methods import describe_method
from speechprune.options import CompressionOptions
from speechprune.outputs import write_file
from speechprune.structure import FAMILIES, PARTS, model_family

CARD_FILE = "README.md"
EVALUATIONS_FILE = "speechprune_evaluations.json"
REPORT_FILE = "speechprune_report.json"
FINETUNE_FILE = "finetune.json"  # written by speechprune finetune beside the weights
GUARD_PREFIX = "speechprune:"

#: family -> {config field: (unit part, kind)}; kind "width" is a channel count, "heads" a head count
CONFIG_FIELDS: dict[str, dict[str, tuple[str, str]]] = {
    "whisper": {
        "encoder_ffn_dim": ("encoder.ffn", "width"),
        "decoder_ffn_dim": ("decoder.ffn", "width"),
        "encoder_attention_heads": ("encoder.attention", "heads"),
        "decoder_attention_heads": ("decoder.attention", "heads"),
    },
}
_CTC_FIELDS = {"intermediate_size": ("encoder.ffn", "width"), "num_attention_heads": ("encoder.attention", "heads")}

#: embedded model spec -> the Hub model its weights come from
EMBEDDED_BASE_MODELS = {
    "embedded:whisper-base": "openai/whisper-base",
    "embedded:whisper-tiny.en": "openai/whisper-tiny.en",
}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
_FAMILY_NAMES = {
    "whisper": "Whisper", "hubert": "HuBERT", "wav2vec2": "wav2vec 2.0", "wavlm": "WavLM",
    "data2vec_audio": "data2vec-audio", "wav2vec2_conformer": "Wav2Vec2-Conformer",
    "unispeech_sat": "UniSpeech-SAT", "sew": "SEW",
}


def _fields(family: str) -> dict[str, tuple[str, str]]:
    return CONFIG_FIELDS.get(family, _CTC_FIELDS)


def _part(unit_name: str) -> str:
    """``encoder.layers.3.ffn2`` -> ``encoder.ffn``; attention blocks -> ``<stack>.attention``."""
    stack, block = unit_name.split(".")[0], unit_name.split(".")[-1]
    return f"{stack}.{'ffn' if block.startswith('ffn') else 'attention'}"


def config_fields(config: dict[str, Any], family: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """What to write into a pruned folder's ``config.json``: (new values, dense values they replace).

    Only fields whose units changed appear. A uniform feed-forward width is written as is;
    widths that differ per layer, and any change of head count, become a guard string.
    """
    widths = config.get("speechprune", {}).get("widths", {})
    updates, dense = {}, {}
    for field, (part, kind) in _fields(family).items():
        values = sorted({w for name, w in widths.items() if _part(name) == part})
        current = config.get(field)
        if not values or values == [current]:
            continue
        dense[field] = current
        if kind == "width" and len(values) == 1:
            updates[field] = values[0]
        elif kind == "width":
            updates[field] = (f"{GUARD_PREFIX} {part} widths differ per layer ({values[0]} to {values[-1]}); "
                              f"plain transformers cannot build this model: load it with "
                              f"speechprune.load_checkpoint(folder)")
        else:
            kept = f"{values[0]}" if len(values) == 1 else f"{values[0]} to {values[-1]}"
            updates[field] = (f"{GUARD_PREFIX} {part} keeps {kept} of {current} heads and "
                              f"transformers derives the head size from this count; load it with "
                              f"speechprune.load_checkpoint(folder)")
    return updates, dense


def plain_loadable(config: dict[str, Any]) -> bool:
    """True when plain ``transformers`` builds the folder's shapes from its ``config.json``."""
    return not any(isinstance(v, str) and v.startswith(GUARD_PREFIX) for v in config.values())


def _unguarded(data: dict[str, Any]) -> dict[str, Any]:
    """A config dict with every guard field back at its dense value."""
    data = dict(data)
    for field, value in (data.get("speechprune") or {}).get("dense_fields", {}).items():
        if isinstance(data.get(field), str) and data[field].startswith(GUARD_PREFIX):
            data[field] = value
    return data


@contextlib.contextmanager
def processor_view(location: str | os.PathLike) -> Iterator[str]:
    """``location``, or for a guarded folder a temporary view of it that transformers' processor loaders read.

    ``AutoProcessor`` reads ``config.json`` on the way (to choose a tokenizer), so the guard that
    stops plain model loading would stop it too; the view links every file but the weights and
    holds the config with its dense values.
    """
    folder = Path(location)
    if not folder.is_dir() and _HUB_ID.fullmatch(str(location)):
        try:  # a hub repo: load_checkpoint has fetched it already, so this reads the local cache
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(str(location)))
        except Exception:  # offline or unknown: let transformers say what is wrong
            yield str(location)
            return
    config = folder / "config.json"
    if not config.is_file() or plain_loadable(json.loads(config.read_text(encoding="utf-8"))):
        yield str(location)
        return
    with tempfile.TemporaryDirectory(prefix="speechprune-processor-") as tmp:
        for item in folder.iterdir():
            if item.is_file() and item.name != "config.json" and item.suffix != ".safetensors":
                (Path(tmp) / item.name).symlink_to(item.resolve())
        data = _unguarded(json.loads(config.read_text(encoding="utf-8")))
        (Path(tmp) / "config.json").write_text(json.dumps(data), encoding="utf-8")
        yield tmp


def read_config(folder: str | os.PathLike) -> transformers.PretrainedConfig:
    """A folder's config with any guard field back at its dense value, for :func:`load_checkpoint`."""
    folder = Path(folder)
    path = folder / "config.json"
    try:
        data = _unguarded(json.loads(path.read_text(encoding="utf-8")))
        config_cls = transformers.AutoConfig.for_model(data["model_type"]).__class__
        config = config_cls.from_dict(data)
    except Exception as err:
        raise SpeechPruneError(f"cannot read {path}: {err}") from None
    config._name_or_path = str(folder)
    return config


def base_model_of(model: nn.Module) -> str | None:
    """The Hub id this model derives from, where it can be known without a network.

    A previous speechprune folder's recorded base model, an embedded checkpoint's origin, or
    the hub id the model was loaded from.
    """
    recorded = (getattr(model.config, "speechprune", None) or {}).get("base_model")
    if recorded:
        return recorded
    source = str(getattr(model.config, "_name_or_path", "") or getattr(model, "name_or_path", "") or "")
    if not source:
        return None
    path = Path(source)
    if path.is_dir():
        marker = path / "speechprune_source.json"  # an embedded checkpoint's cached folder
        if marker.is_file():
            try:
                spec = json.loads(marker.read_text(encoding="utf-8")).get("model")
            except ValueError:
                return None
            return EMBEDDED_BASE_MODELS.get(spec)
        return None
    return source if _HUB_ID.fullmatch(source) else None


def command_line(report: dict | None, *, model: str, out: str | os.PathLike) -> str | None:
    """The ``speechprune compress`` command that reproduces ``report`` (``None`` without one).

    Absolute paths are shortened to their last part, so a card shows no path of the machine
    that made it.
    """
    if not report:
        return None
    if os.path.isabs(model):
        model = Path(model).name
    try:
        options = CompressionOptions.from_report(report).cli_args()
    except SpeechPruneError:  # a method given as an unregistered callable has no command-line form
        return None
    if options is None:
        return None  # a per-unit budget has no command-line form
    args = ["speechprune", "compress", model, *options, "--out", Path(out).name]
    return shlex.join(args)


def finish_folder(folder: str | os.PathLike, model: nn.Module, *, report: dict | None = None,
                  command: str | None = None, name: str | None = None) -> None:
    """Write the standard or guard config fields, the base model and the command, and the card.

    ``folder`` is what ``save_pretrained`` just wrote (``name``: the folder's final name, when
    it is written under a temporary one). ``command`` is the command line that made the model;
    without it, the card gives the equivalent command for ``report``.
    """
    folder = Path(folder)
    family = model_family(model)
    path = folder / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    meta = dict(config.get("speechprune") or {})
    updates, dense = config_fields(config, family)
    config.update(updates)
    if dense:
        meta["dense_fields"] = {**dense, **meta.get("dense_fields", {})}
    base = base_model_of(model)
    if base:
        meta["base_model"] = base
    if report is None and meta.get("compressions"):
        report = meta["compressions"][-1]
    made_by = command or command_line(report, model=base or "BASE_MODEL", out=name or folder.name)
    if made_by:
        meta["command"] = made_by
    config["speechprune"] = meta
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    write_card(folder)


def add_evaluation(folder: str | os.PathLike, record: dict) -> Path:
    """Record a WER measured by :func:`speechprune.evaluate` in the folder's card.

    The result is kept in ``speechprune_evaluations.json`` (one entry per data set and size,
    the newest wins) and the card is rewritten from it.
    """
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if "speechprune" not in config:
        raise SpeechPruneError(f"{folder} was not saved by speechprune: it has no card to record the WER in")
    path = folder / EVALUATIONS_FILE
    rows = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
    data = record.get("data", {})
    row = dict(data=str(data.get("name", "unknown")), utterances=record["n_utterances"],
               ref_words=record["ref_words"], wer=record["wer"], device=record.get("device"),
               date=record.get("date"))
    rows = [r for r in rows if (r["data"], r["utterances"]) != (row["data"], row["utterances"])] + [row]
    write_file(path, json.dumps(rows, indent=2) + "\n")
    return write_card(folder)


def _yaml_list(items: list[str]) -> str:
    return "".join(f"\n- {json.dumps(i)}" for i in items)


def _widths_table(widths: dict[str, int]) -> list[str]:
    rows = ["| part | channels per layer |", "|---|---|"]
    parts: dict[str, list[int]] = {p: [] for p in PARTS}
    for name, w in widths.items():
        parts[_part(name)].append(w)
    for part, ws in parts.items():
        if not ws:
            continue
        unit = "heads" if part.endswith("attention") else "neurons"
        shown = str(ws[0]) if len(set(ws)) == 1 else ", ".join(map(str, ws))
        rows.append(f"| {part} | {shown} {unit} |")
    return rows


def write_card(folder: str | os.PathLike) -> Path:
    """(Re)write ``README.md`` from what the folder holds: config, report, evaluations."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    meta = config.get("speechprune") or {}
    report_path = folder / REPORT_FILE
    report = json.loads(report_path.read_text(encoding="utf-8")) if report_path.is_file() else None
    if report is None and meta.get("compressions"):
        report = meta["compressions"][-1]
    evaluations_path = folder / EVALUATIONS_FILE
    evaluations = json.loads(evaluations_path.read_text(encoding="utf-8")) if evaluations_path.is_file() else []
    arch = (config.get("architectures") or ["?"])[0]
    family = FAMILIES.get(arch, config.get("model_type", "?"))
    family_name = _FAMILY_NAMES.get(family, family)
    plain = plain_loadable(config)
    base = meta.get("base_model")
    method = (report or {}).get("method", "none")
    tags = ["speechprune", "pruning", "audio", "automatic-speech-recognition", family.replace("_", "-")]
    tags += {"cluster": ["channel-clustering"], "magnitude": ["magnitude-pruning"]}.get(method, [])

    lines = ["---", f"library_name: {'transformers' if plain else 'speechprune'}",
             "pipeline_tag: automatic-speech-recognition", "tags:" + _yaml_list(tags)]
    if base:
        lines.append(f"base_model: {base}")
    if evaluations:
        lines += ["model-index:", f"- name: {json.dumps(folder.name)}", "  results:"]
        for e in evaluations:
            lines += ["  - task:", "      type: automatic-speech-recognition",
                      f"    dataset:\n      name: {json.dumps(e['data'])}\n      type: {json.dumps(e['data'])}",
                      "    metrics:", "    - type: wer", f"      value: {e['wer']}",
                      f"      name: WER ({e['utterances']} utterances)"]
    lines += ["---", ""]
    title = f"{family_name}" + (f" ({base})" if base else "") + ", pruned with speechprune"
    lines += [f"# {title}", ""]
    if report:
        lines += [f"This model was compressed without data or training by speechprune's "
                  f"{describe_method(method)}: "
                  f"{report['sparsity']:.1%} "
                  f"of the channels in {', '.join(report['scope'])} were removed "
                  f"({report['allocation']} allocation over layers).", ""]
    else:
        lines += ["This model's layer widths were set by speechprune.", ""]
    if (folder / FINETUNE_FILE).is_file():
        lines += [f"Its weights were then fine-tuned with `speechprune finetune`: `{FINETUNE_FILE}` records the "
                  "data, settings and losses.", ""]
    if meta.get("command"):
        lines += ["## How it was made", "", "```bash", meta["command"], "```", ""]
        if len(meta.get("compressions", [])) > 1:
            lines += [f"It went through {len(meta['compressions'])} compressions; `config.json` "
                      "(`speechprune.compressions`) lists every one.", ""]
    lines += ["## Compression", ""]
    if report:
        before, after = report["params_before"], report["params_after"]
        lines += [f"- method: `{method}`, scope: `{','.join(report['scope'])}`, allocation: "
                  f"`{report['allocation']}`, seed: {'none (the method takes none)' if report['seed'] is None else report['seed']}",
                  f"- parameters: {before:,} -> {after:,} ({1 - after / before:.2%} of the model removed)", ""]
    lines += _widths_table(meta.get("widths", {})) + [""]
    if (folder / REPORT_FILE).is_file():
        lines += [f"Every layer's channels, parameters and cost are in `{REPORT_FILE}`.", ""]
    lines += ["## Word error rate", ""]
    if evaluations:
        lines += ["| data | utterances | reference words | WER (%) | device | date |", "|---|---|---|---|---|---|"]
        lines += [f"| {e['data']} | {e['utterances']} | {e['ref_words']} | {e['wer']:.2f} | {e.get('device')} | "
                  f"{e.get('date')} |" for e in evaluations]
        lines += ["", "Greedy decoding, Whisper English normaliser, corpus WER (speechprune evaluate).", ""]
    else:
        lines += ["Not measured yet. `speechprune evaluate FOLDER --data ... --card` measures it and adds it here.", ""]
    lines += ["## Loading", ""]
    if plain:
        lines += ["Every pruned layer of a kind has the same width, so `config.json` states the pruned sizes and "
                  "plain `transformers` loads it:", "", "```python", f"from transformers import {arch}", "",
                  f'model = {arch}.from_pretrained("FOLDER_OR_REPO_ID")', "```", "",
                  "`speechprune.load_checkpoint` loads it too, strictly (no missing or mis-shaped tensor tolerated).",
                  ""]
    else:
        lines += ["Its layers have different widths (or fewer attention heads), which a `transformers` config "
                  "cannot describe, so load it with speechprune:", "", "```python",
                  "from speechprune import load_checkpoint, load_model", "",
                  'model = load_checkpoint("FOLDER_OR_REPO_ID")', "# or the model and its processor:",
                  'model, processor = load_model("FOLDER_OR_REPO_ID")', "```", "",
                  "Plain `from_pretrained` (and `AutoProcessor`, which reads `config.json` too) refuses this folder "
                  "on purpose: the config fields it cannot honour hold a message that points here, so it can never "
                  "load mismatched or re-initialised weights.", ""]
    lines += ["## Uploading", "", "With `huggingface_hub` (after `huggingface-cli login`):", "", "```python",
              "from huggingface_hub import upload_folder", "",
              'upload_folder(repo_id="YOUR_NAME/MODEL_NAME", folder_path="FOLDER", repo_type="model")', "```", "",
              "_This card is written by speechprune; `speechprune evaluate --card` rewrites it._", ""]
    path = folder / CARD_FILE
    write_file(path, "\n".join(lines))
    return path
