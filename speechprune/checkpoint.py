"""Save and load pruned models as ordinary Hugging Face folders.

A pruned folder is what ``save_pretrained`` writes (``config.json``, ``model.safetensors``,
``generation_config.json``, the processor files) plus, in ``config.json``, the key
``speechprune.widths``: the channel count of every feed-forward block and attention block.
:func:`load_checkpoint` builds the model in those shapes and loads the weights strictly: no
missing, unexpected or mis-shaped tensor is tolerated, and the original model is never needed.
:func:`save_pruned` publishes the folder through :mod:`speechprune.outputs` (a marker listing
what speechprune wrote, exclusive atomic publication, ``overwrite`` only of its own outputs).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import transformers
from safetensors import safe_open
from torch import nn

from speechprune.errors import SpeechPruneError
from speechprune.outputs import check_output_dir, staged_output  # noqa: F401  (check_output_dir: the shared check)
from speechprune.structure import FAMILIES, apply_widths, model_family

REPORT_FILE = "speechprune_report.json"


def _tied_keys(model: nn.Module) -> set[str]:
    tied = getattr(model, "all_tied_weights_keys", None) or getattr(model, "_tied_weights_keys", None) or {}
    return set(tied)


def _saved_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                shapes[key] = tuple(f.get_slice(key).get_shape())
    return shapes


def _check_strict(model: nn.Module, saved: dict[str, tuple[int, ...]], where: str) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    tied = _tied_keys(model)
    missing = sorted(k for k in expected if k not in saved and k not in tied)
    unexpected = sorted(k for k in saved if k not in expected)
    wrong = sorted(k for k in saved if k in expected and saved[k] != expected[k])
    if missing or unexpected or wrong:
        raise SpeechPruneError(
            f"{where} does not match the model's pruned shapes: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shape {wrong[:5]}"
        )


def write_pruned(model: nn.Module, folder: Path, *, processor=None, report=None) -> None:
    """Write ``model`` (processor, report) into the existing ``folder`` and check it against the model."""
    from speechprune.compress import record_widths

    model_family(model)
    if not getattr(model.config, "speechprune", None):
        record_widths(model)
    model.save_pretrained(folder)
    if processor is not None:
        processor.save_pretrained(folder)
    if report is not None:
        (folder / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2))
    _check_strict(model, _saved_shapes(folder), f"the folder written to {folder}")


def save_pruned(model: nn.Module, out: str | os.PathLike, *, processor=None, report=None,
                overwrite: bool = False, inputs=(), expect="check", command: str = "save_pruned") -> Path:
    """Write ``model`` (and its processor and compression report) to the folder ``out``.

    The folder is written beside ``out`` first, checked against the model's shapes, marked as a
    speechprune output and then published exclusively (see :mod:`speechprune.outputs`): an
    existing ``out`` is replaced only with ``overwrite``, only if speechprune wrote all of it, and
    only by a complete folder. ``inputs`` are folders ``out`` must stay outside of; ``expect`` is
    what :func:`speechprune.outputs.output_state` saw when ``out`` was checked before the work.
    """
    model_family(model)
    with staged_output(out, overwrite=overwrite, expect=expect, inputs=inputs, command=command) as staging:
        write_pruned(model, staging, processor=processor, report=report)
    return Path(out)


def _local_folder(path_or_id: str | os.PathLike) -> Path:
    path = Path(path_or_id)
    if path.is_dir():
        return path
    if path.exists():
        raise SpeechPruneError(f"{path} is a file; a model is a folder with config.json and weights")
    text = str(path_or_id)
    if text.count("/") == 1 and not text.startswith((".", "/")):
        from huggingface_hub import snapshot_download  # hub ids only where there is a network

        try:
            return Path(snapshot_download(text))
        except Exception as err:  # offline, unknown id, ...
            raise SpeechPruneError(f"cannot fetch {text!r} from the Hugging Face hub: {err}") from None
    raise SpeechPruneError(f"model folder {text} does not exist")


def load_checkpoint(path_or_id: str | os.PathLike, *, device: str | torch.device = "cpu",
                    dtype: torch.dtype | None = None) -> nn.Module:
    """Load a dense or pruned HuBERT / wav2vec2 / Whisper model from a folder or hub id, strictly."""
    folder = _local_folder(path_or_id)
    if not (folder / "config.json").is_file():
        raise SpeechPruneError(f"{folder} has no config.json: not a Hugging Face model folder")
    try:
        config = transformers.AutoConfig.from_pretrained(folder)
    except Exception as err:
        raise SpeechPruneError(f"cannot read {folder / 'config.json'}: {err}") from None
    arch = (getattr(config, "architectures", None) or [""])[0]
    if arch not in FAMILIES:
        raise SpeechPruneError(
            f"{folder} holds a {arch or config.model_type} model: speechprune supports {', '.join(FAMILIES)}"
        )
    cls = getattr(transformers, arch)
    pruned = getattr(config, "speechprune", None)
    try:
        if not pruned:
            model = cls.from_pretrained(folder, dtype=dtype)
        else:
            model = _load_pruned(cls, config, folder)
    except SpeechPruneError:
        raise
    except Exception as err:
        raise SpeechPruneError(f"cannot load the weights in {folder}: {err}") from None
    model.eval()
    return model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)


def _load_pruned(cls, config, folder: Path) -> nn.Module:
    from accelerate import init_empty_weights

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise SpeechPruneError(f"{folder} has no .safetensors weights")
    with init_empty_weights(include_buffers=False):
        model = cls(config)
    apply_widths(model, config.speechprune["widths"])
    saved = _saved_shapes(folder)
    _check_strict(model, saved, f"the weights in {folder}")
    state = {}
    for file in files:
        with safe_open(str(file), "pt") as f:
            state.update({k: f.get_tensor(k) for k in f.keys()})
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    still_empty = [n for n, p in model.named_parameters() if p.is_meta]
    if still_empty:
        raise SpeechPruneError(f"{folder} left parameters without weights: {still_empty[:5]}")
    if (folder / "generation_config.json").is_file():
        model.generation_config = transformers.GenerationConfig.from_pretrained(folder)
    return model
