"""Save and load pruned models as ordinary Hugging Face folders.

A pruned folder is what ``save_pretrained`` writes (``config.json``, ``model.safetensors``,
``generation_config.json``, the processor files) plus, in ``config.json``, the key
``speechprune.widths``: the channel count of every feed-forward block and attention block.
:func:`load_checkpoint` builds the model in those shapes and loads the weights strictly: no
missing, unexpected or mis-shaped tensor is tolerated, and the original model is never needed.
Every saved folder also gets a model card, and standard config fields where widths are uniform
(see :mod:`speechprune.hub`). :func:`save_pruned` publishes the folder through
:mod:`speechprune.outputs` (a marker listing what speechprune wrote, exclusive atomic
publication, ``overwrite`` only of its own outputs).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import torch
import transformers
from safetensors import safe_open
from torch import nn

from speechprune.errors import SpeechPruneError, warn
from speechprune.hub import finish_folder, read_config
from speechprune.outputs import check_output_dir, staged_output  # noqa: F401  (check_output_dir: the shared check)
from speechprune.structure import FAMILIES, apply_widths, model_family, record_widths

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


def write_pruned(model: nn.Module, folder: Path, *, processor=None, report=None, command: str | None = None,
                 name: str | None = None) -> None:
    """Write ``model`` (processor, report, card) into the existing ``folder`` and check it against the model."""
    model_family(model)
    if not getattr(model.config, "speechprune", None):
        record_widths(model)
    model.save_pretrained(folder)
    if processor is not None:
        processor.save_pretrained(folder)
    if report is not None:
        (folder / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2))
    finish_folder(folder, model, report=None if report is None else report.to_dict(), command=command,
                  name=name)
    _check_strict(model, _saved_shapes(folder), f"the folder written to {folder}")


def save_pruned(model: nn.Module, out: str | os.PathLike, *, processor=None, report=None,
                overwrite: bool = False, command: str | None = None, inputs=(), expect="check",
                caller: str = "save_pruned") -> Path:
    """Write ``model`` (and its processor and compression report) to the folder ``out``.

    The folder is what ``save_pretrained`` writes, plus the channel count of every unit in
    ``config.json`` (``speechprune.widths``), a model card (``README.md``) and the report
    (``speechprune_report.json``). Where every pruned unit of a kind has the same width, the
    standard config fields say so and plain ``transformers`` loads the folder too; otherwise
    those fields carry a message that makes plain loading fail and points at
    :func:`load_checkpoint` (see :mod:`speechprune.hub`). The folder is written beside
    ``out`` first and checked against the model's shapes, then moved into place, so an
    existing folder is replaced only by a complete one.

    Parameters
    ----------
    model : transformers model
        A supported model, pruned or dense.
    out : str or path
        The folder to write; it must be absent or empty unless ``overwrite``.
    processor : transformers processor, optional
        Saved alongside, so that the folder can be evaluated on its own.
    report : CompressionReport, optional
        What :func:`speechprune.compress` returned; it goes into the card and the report file.
    overwrite : bool, default False
        Replace ``out`` if speechprune wrote everything in it (its marker lists what);
        anything else in the way is refused.
    command : str, optional
        The command line that made the model, for the card (the command line passes its own;
        otherwise the card shows the equivalent command for ``report``).
    inputs : sequence of paths, optional
        Folders ``out`` must stay outside of (the input model).
    expect : optional
        What :func:`speechprune.outputs.output_state` saw when ``out`` was checked before the
        work; by default ``out`` is checked now.
    caller : str, default "save_pruned"
        The name that errors about ``out`` start with.

    Returns
    -------
    pathlib.Path
        ``out``.

    Raises
    ------
    SpeechPruneError
        When ``out`` is a file or a non-empty folder (without ``overwrite``), the model is
        not supported, or the written weights do not match the model's shapes.

    Examples
    --------
    >>> from speechprune import compress, load_checkpoint, save_pruned
    >>> from speechprune.testing import tiny_model
    >>> model = tiny_model("hubert")
    >>> report = compress(model, sparsity=0.5, progress=False)
    >>> import pathlib, tempfile
    >>> folder = save_pruned(model, pathlib.Path(tempfile.mkdtemp()) / "hubert-50", report=report)
    >>> sorted(p.name for p in folder.iterdir())
    ['.speechprune-output.json', 'README.md', 'config.json', 'model.safetensors', 'speechprune_report.json']
    >>> load_checkpoint(folder).config.intermediate_size  # uniform widths: a standard field
    32
    """
    model_family(model)
    with staged_output(out, overwrite=overwrite, expect=expect, inputs=inputs, command=caller) as staging:
        write_pruned(model, staging, processor=processor, report=report, command=command, name=Path(out).name)
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


#: Tensors a dense checkpoint may lack without harm: only training-time masking reads them
#: (``facebook/wav2vec2-base-960h`` ships without ``masked_spec_embed``).
MAY_BE_MISSING = ("masked_spec_embed",)


def load_checkpoint(path_or_id: str | os.PathLike, *, device: str | torch.device = "cpu",
                    dtype: torch.dtype | None = None, allow_new_weights: bool = False) -> nn.Module:
    """Load a dense or pruned model of any supported family from a folder or hub id, strictly.

    A pruned folder is built in the shapes recorded in ``config.json`` (``speechprune.widths``)
    without ever materialising the dense model, and its weights must match them exactly: no
    missing, unexpected or mis-shaped tensor is tolerated. Folders whose layers have different
    widths load only here; plain ``transformers`` refuses them on purpose.

    Parameters
    ----------
    path_or_id : str or path
        A local folder, or a hub id (fetched with ``huggingface_hub`` where there is a network).
    device : str or torch.device, default "cpu"
        Where the model goes.
    dtype : torch.dtype, optional
        Cast the weights; default: as stored.
    allow_new_weights : bool, default False
        Accept a dense folder that lacks tensors of the model (they are then freshly
        initialised, e.g. a new CTC head meant to be fine-tuned) or holds extra ones. Without
        it such a folder is refused, naming the tensors. Pruned folders are always strict.

    Returns
    -------
    transformers model
        In eval mode.

    Raises
    ------
    SpeechPruneError
        For a missing folder or ``config.json``, an unsupported architecture (the message
        lists the supported ones), or weights that do not match the recorded shapes.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> from speechprune import compress, load_checkpoint, save_pruned
    >>> from speechprune.testing import tiny_model
    >>> model = tiny_model("whisper")
    >>> report = compress(model, sparsity=0.5, scope="all", allocation="variance", progress=False)
    >>> folder = save_pruned(model, pathlib.Path(tempfile.mkdtemp()) / "whisper-pruned")
    >>> loaded = load_checkpoint(folder)
    >>> loaded.model.decoder.layers[0].self_attn.num_heads == model.model.decoder.layers[0].self_attn.num_heads
    True
    >>> load_checkpoint(folder / "nowhere")
    Traceback (most recent call last):
    ...
    speechprune.errors.SpeechPruneError: model folder ... does not exist
    """
    folder = _local_folder(path_or_id)
    if not (folder / "config.json").is_file():
        raise SpeechPruneError(f"{folder} has no config.json: not a Hugging Face model folder")
    config = read_config(folder)  # with the dense value of any field that guards against plain loading
    arch = (getattr(config, "architectures", None) or [""])[0]
    if not arch:
        raise SpeechPruneError(
            f"{folder}/config.json names no architecture (model_type {config.model_type!r}): add \"architectures\", "
            f"one of {', '.join(FAMILIES)}"
        )
    if arch not in FAMILIES:
        raise SpeechPruneError(f"{folder} holds a {arch} model: speechprune supports {', '.join(FAMILIES)}")
    cls = getattr(transformers, arch)
    pruned = getattr(config, "speechprune", None)
    try:
        if not pruned:
            model = _load_dense(cls, folder, dtype, allow_new_weights)
        else:
            model = _load_pruned(cls, config, folder)
    except SpeechPruneError:
        raise
    except Exception as err:
        raise SpeechPruneError(f"cannot load the weights in {folder}: {err}") from None
    model.eval()
    return model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)


@contextlib.contextmanager
def transformers_quiet():
    """transformers' notices at error level only while the block runs: its loading report (speechprune
    reports what matters) and generation's per-batch notices (Whisper's fixed 30 s features have no
    attention mask, none is needed; max_new_tokens wins over the config's max_length). Nothing else changes."""
    logger = transformers.utils.logging
    level = logger.get_verbosity()
    logger.set_verbosity_error()
    try:
        yield
    finally:
        logger.set_verbosity(level)


def _load_dense(cls, folder: Path, dtype: torch.dtype | None, allow_new_weights: bool) -> nn.Module:
    """``from_pretrained``, refusing missing, unexpected or mis-shaped tensors unless ``allow_new_weights``."""
    if not any(folder.glob("*.safetensors")) and any(folder.glob("*.bin")):
        raise SpeechPruneError(f"{folder} holds only pickled weights (*.bin), which speechprune does not load "
                               "(loading a pickle can run code); convert them to safetensors where you trust them")
    with transformers_quiet():
        try:
            model, info = cls.from_pretrained(folder, dtype=dtype, output_loading_info=True)
        except RuntimeError as err:
            if "mismatched" not in str(err):
                raise
            from accelerate import init_empty_weights

            with init_empty_weights(include_buffers=False):
                empty = cls(read_config(folder))
            saved = _saved_shapes(folder)
            wrong = sorted(f"{k} {tuple(v.shape)} in the config, {saved[k]} saved"
                           for k, v in empty.state_dict().items() if k in saved and tuple(v.shape) != saved[k])
            raise SpeechPruneError(f"the weights in {folder} do not fit its config (tensors of another shape: "
                                   f"{'; '.join(wrong[:3])}{' ...' if len(wrong) > 3 else ''})") from None
    missing = [k for k in info.get("missing_keys", []) if not k.endswith(MAY_BE_MISSING)]
    problems = dict(missing=sorted(missing), unexpected=sorted(info.get("unexpected_keys", [])),
                    mismatched=sorted(str(m[0]) if isinstance(m, tuple) else str(m)
                                      for m in info.get("mismatched_keys", [])))
    found = [f"{k} {len(v)}: {', '.join(v[:3])}{' ...' if len(v) > 3 else ''}" for k, v in problems.items() if v]
    if found and not allow_new_weights:
        raise SpeechPruneError(f"the weights in {folder} do not fit its config (tensors {'; '.join(found)}); "
                               "a model with a missing tensor would run with random weights there. Pass "
                               "--allow-new-weights (allow_new_weights=True) only for a head meant to be trained")
    if found:
        warn(f"{folder}: tensors {'; '.join(found)} (freshly initialised, as --allow-new-weights asked)")
    return model


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
