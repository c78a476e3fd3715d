"""Export a folder speechprune wrote to the runtimes speech models are deployed on.

* ``to="ct2"``: a CTranslate2 model directory (Whisper) that ``faster_whisper.WhisperModel(DIR)``
  and ``ctranslate2.models.Whisper(DIR)`` load. The spec is built by CTranslate2's own Whisper
  loader (``ctranslate2.converters.transformers.WhisperLoader``) from the model
  :func:`speechprune.load_checkpoint` built, not from the folder: CTranslate2's
  ``TransformersConverter`` reads the folder with plain ``transformers``, which refuses a folder
  whose widths differ per layer. CTranslate2 reads every feed-forward width from its weights, so
  per-layer widths need nothing more. It keeps one head count per stack (the decoder's self- and
  cross-attention share it), with the head size set per attention block: a folder whose heads
  were pruned to one count per stack is exported with that count; any other head pruning is
  refused with the reason.
* ``to="onnx"``: ONNX Runtime graphs exported with ``torch.onnx.export`` from the loaded model
  (``optimum-onnx`` requires ``transformers<4.58`` and cannot load this project's transformers 5).
  Whisper: ``encoder_model.onnx`` (log-mel features to every decoder layer's cross-attention keys
  and values) and ``decoder_model.onnx`` (tokens and past self-attention keys and values to the
  last position's logits and the new keys and values; a past of length 0 starts decoding).
  CTC families: ``model.onnx``, the encoder with its CTC head (audio to logits).
  The graphs are built and exported in :mod:`speechprune.onnx_export`.

Both carry the processor files, the model card, the compression report and
``speechprune_export.json`` (the export settings and what greedy decoding needs), and are
published like every speechprune output (:mod:`speechprune.outputs`). :class:`DeployedModel`
decodes an exported folder greedily, as :func:`speechprune.evaluate` decodes the
``transformers`` model, and :func:`evaluate_exported` scores it with the same normaliser.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from speechprune._version import __version__
from speechprune.checkpoint import load_checkpoint
from speechprune.data import SAMPLE_RATE
from speechprune.errors import SpeechPruneError, check_choice, warn
from speechprune.evaluate import describe_normalizer, english_normalizer, max_new_tokens, wer_details, whisper_window
from speechprune.hub import CARD_FILE, EVALUATIONS_FILE, REPORT_FILE
from speechprune.models import english_generate_kwargs, load_processor
from speechprune.onnx_export import ONNX_OPSET, _export_onnx_ctc, _export_onnx_whisper  # noqa: F401  (ONNX_OPSET: re-exported)
from speechprune.outputs import MARKER, check_output_dir, output_state, staged_output
from speechprune.structure import FAMILIES, model_family, widths

SETTINGS_FILE = "speechprune_export.json"
TARGETS = ("ct2", "onnx")
BACKENDS = ("transformers", *TARGETS)
#: the weight precisions each target takes (``none``: as stored, float32)
QUANTIZATIONS = {"ct2": ("none", "int8", "float16"), "onnx": ("none", "int8")}
DEPLOY_EXTRA = "pip install 'speechprune[deploy]'"
_PACKAGES = {"ct2": ("ctranslate2",), "onnx": ("onnx", "onnxruntime")}
_TARGET_NAMES = {"ct2": "CTranslate2", "onnx": "ONNX Runtime"}
#: files of the source folder that an export does not copy (weights, the HF config, bookkeeping)
_NOT_COPIED = {"config.json", MARKER, CARD_FILE, REPORT_FILE, EVALUATIONS_FILE, "speechprune_source.json"}


# ---------------------------------------------------------------- checks before any work


def _missing_packages(target: str) -> list[str]:
    return [name for name in _PACKAGES[target] if importlib.util.find_spec(name) is None]


def require_backend(backend: str) -> None:
    """Refuse a backend whose optional packages are not installed, naming the extra to install."""
    check_choice("backend", backend, BACKENDS)
    if backend == "transformers":
        return
    missing = _missing_packages(backend)
    if missing:
        raise SpeechPruneError(f"the {_TARGET_NAMES[backend]} backend needs {', '.join(missing)}, "
                               f"which is not installed: {DEPLOY_EXTRA}")


def read_source(folder: str | os.PathLike) -> tuple[Path, dict]:
    """The folder and its ``config.json``, refused unless speechprune wrote it (it records the widths)."""
    path = Path(folder).expanduser()
    if not path.exists():
        raise SpeechPruneError(f"model folder {folder} does not exist")
    if not path.is_dir():
        raise SpeechPruneError(f"{folder} is a file; export takes a folder written by speechprune compress")
    if (path / SETTINGS_FILE).is_file():
        raise SpeechPruneError(f"{folder} is already an export (it holds {SETTINGS_FILE}); "
                               "export the folder speechprune compress wrote")
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = None
    if not isinstance(config, dict) or not isinstance(config.get("speechprune"), dict) \
            or "widths" not in config["speechprune"]:
        raise SpeechPruneError(f"{folder} is not a folder speechprune wrote (its config.json records no "
                               "speechprune widths); export a folder from speechprune compress, or save a "
                               "model with speechprune.save_pruned first")
    return path, config


def _family(config: dict) -> str:
    arch = (config.get("architectures") or [""])[0]
    if arch not in FAMILIES:
        raise SpeechPruneError(f"the folder holds a {arch or config.get('model_type')} model: "
                               f"speechprune exports {', '.join(FAMILIES)}")
    return FAMILIES[arch]


def ct2_heads(config: dict) -> dict[str, int | None]:
    """The head count CTranslate2 gets for each stack; refuses head pruning it cannot represent.

    ``None`` for a stack means the dense count. CTranslate2's Whisper spec holds one head count
    per stack, shared by every layer (and in the decoder by self- and cross-attention).
    """
    widths = config["speechprune"]["widths"]
    dense = {"encoder": config.get("speechprune", {}).get("dense_fields", {}).get("encoder_attention_heads"),
             "decoder": config.get("speechprune", {}).get("dense_fields", {}).get("decoder_attention_heads")}
    out: dict[str, int | None] = {}
    for stack in ("encoder", "decoder"):
        counts = {name: n for name, n in widths.items() if name.startswith(stack + ".") and not name.endswith(".ffn")}
        values = sorted(set(counts.values()))
        dense_count = dense[stack] or config.get(f"{stack}_attention_heads")
        if len(values) > 1:
            blocks = "self- and cross-attention blocks" if stack == "decoder" else "attention blocks"
            raise SpeechPruneError(
                f"CTranslate2 cannot take this folder's attention heads: its Whisper spec keeps one head count for "
                f"all {stack} {blocks}, and this folder keeps {values[0]} to {values[-1]} heads per block; "
                "export it with --to onnx, or prune heads with --allocation uniform")
        out[stack] = values[0] if values and values[0] != dense_count else None
    return out


def check_export(folder: str | os.PathLike, to: str, quantize: str, out: str | os.PathLike,
                 overwrite: bool = False) -> tuple[Path, dict, tuple | None]:
    """Everything :func:`export` checks before any work: ``(folder, config, state of out)``."""
    check_choice("--to", to, TARGETS)
    if quantize not in QUANTIZATIONS[to]:
        raise SpeechPruneError(f"{_TARGET_NAMES[to]} export has no --quantize {quantize!r}: "
                               f"use one of {', '.join(QUANTIZATIONS[to])}")
    path, config = read_source(folder)
    family = _family(config)
    if to == "ct2":
        if family != "whisper":
            raise SpeechPruneError(f"CTranslate2 export here is for Whisper; this folder holds a {family} "
                                   "model: export it with --to onnx")
        ct2_heads(config)
    if family == "whisper" and not (path / "tokenizer.json").is_file():
        raise SpeechPruneError(f"{folder} has no tokenizer.json: a deployed Whisper model needs the processor "
                               "files that speechprune compress saves beside the weights")
    target = check_output_dir(out, overwrite=overwrite, inputs=[path])
    missing = _missing_packages(to)
    if missing:
        raise SpeechPruneError(f"--to {to} needs {', '.join(missing)}, which is not installed: {DEPLOY_EXTRA}")
    return path, config, output_state(target)


# ---------------------------------------------------------------- export


def export(folder: str | os.PathLike, *, to: str = "ct2", out: str | os.PathLike, quantize: str = "none",
           overwrite: bool = False, command: str | None = None) -> Path:
    """Export a folder speechprune wrote to CTranslate2 (``to="ct2"``) or ONNX Runtime (``to="onnx"``).

    Parameters
    ----------
    folder : str or path
        A folder written by ``speechprune compress`` / :func:`speechprune.save_pruned`
        (``config.json`` records the widths).
    to : {"ct2", "onnx"}
        ``ct2``: a CTranslate2 Whisper directory for faster-whisper; ``onnx``: Whisper's encoder
        and decoder (with past keys and values), or a CTC model with its head.
    out : str or path
        The folder to write; absent or empty unless ``overwrite`` (the rules of ``compress``).
    quantize : str, default "none"
        ct2: ``none`` (float32), ``int8`` or ``float16``; onnx: ``none`` or ``int8`` (dynamic
        quantisation of the weights by ``onnxruntime.quantization``).
    overwrite : bool, default False
        Replace an ``out`` that speechprune wrote.
    command : str, optional
        The command line, for the settings file.

    Returns
    -------
    pathlib.Path
        ``out``.

    Raises
    ------
    SpeechPruneError
        Before any work: a folder speechprune did not write, an unknown ``to``, a quantisation
        the backend lacks, head pruning CTranslate2 cannot represent, a missing optional package
        (``pip install 'speechprune[deploy]'``), or an ``out`` that may not be written.

    Examples
    --------
    Everything is checked before the model is loaded (``speechprune export`` prints the same
    message in one line and exits with status 2); with the ``deploy`` extra installed,
    ``quantize="int8"`` here writes ``model.onnx`` beside the card and the report.

    >>> import pathlib, tempfile
    >>> from speechprune import compress, export, save_pruned
    >>> from speechprune.testing import tiny_model, tiny_processor
    >>> model = tiny_model("hubert")
    >>> report = compress(model, sparsity=0.5, progress=False)
    >>> folder = save_pruned(model, pathlib.Path(tempfile.mkdtemp()) / "hubert-50",
    ...                      processor=tiny_processor("hubert"), report=report)
    >>> export(folder, to="onnx", out=folder.parent / "hubert-50-onnx", quantize="float16")
    Traceback (most recent call last):
    ...
    speechprune.errors.SpeechPruneError: ONNX Runtime export has no --quantize 'float16': use one of none, int8
    >>> export(folder, to="ct2", out=folder.parent / "hubert-50-ct2")
    Traceback (most recent call last):
    ...
    speechprune.errors.SpeechPruneError: CTranslate2 export here is for Whisper; this folder holds a hubert model: export it with --to onnx
    """
    path, config, expect = check_export(folder, to, quantize, out, overwrite)
    model = load_checkpoint(path)
    processor = load_processor(path)
    family = model_family(model)
    started = time.perf_counter()
    with staged_output(out, overwrite=overwrite, expect=expect, inputs=[path], command="export") as staging:
        if to == "ct2":
            files = _export_ct2(model, processor, config, staging, quantize)
        elif family == "whisper":
            files = _export_onnx_whisper(model, staging, quantize)
        else:
            files = _export_onnx_ctc(model, processor, staging, quantize)
        _copy_processor(path, staging, processor, family)
        for name in (CARD_FILE, REPORT_FILE):
            if (path / name).is_file():
                shutil.copy2(path / name, staging / name)
        settings = dict(
            format=1, backend=to, quantize=quantize, family=family, architecture=type(model).__name__,
            source=path.name, model_files=files,
            parameters=sum(p.numel() for p in model.parameters()), widths=widths(model),
            decoding=_decoding_facts(model, processor, family),
            command=command or f"speechprune export {path.name} --to {to} --out {Path(out).name}"
                               + ("" if quantize == "none" else f" --quantize {quantize}"),
            seconds=round(time.perf_counter() - started, 2),
            versions=_versions(to),
            date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        (staging / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
        _note_in_card(staging, settings)
    return Path(out)


def _versions(to: str) -> dict[str, str]:
    names = ["torch", "transformers"] + list(_PACKAGES[to])
    found = {n: importlib.metadata.version(n) for n in names if importlib.util.find_spec(n) is not None}
    return dict(speechprune=__version__, python=platform.python_version(), **found)


def _decoding_facts(model: nn.Module, processor, family: str) -> dict[str, Any]:
    """What greedy decoding of the exported model needs without the ``transformers`` model."""
    if family != "whisper":
        cfg = model.config
        return dict(kind="ctc", conv_kernel=list(cfg.conv_kernel), conv_stride=list(cfg.conv_stride),
                    attention_mask=bool(getattr(processor.feature_extractor, "return_attention_mask", False)))
    gen = model.generation_config
    prompt = [int(gen.decoder_start_token_id)]
    if english_generate_kwargs(model).get("language"):
        prompt += [int(gen.lang_to_id["<|en|>"]), int(gen.task_to_id["transcribe"])]
    if getattr(gen, "no_timestamps_token_id", None) is not None:
        prompt.append(int(gen.no_timestamps_token_id))
    eos = gen.eos_token_id if isinstance(gen.eos_token_id, int) else list(gen.eos_token_id)[0]
    return dict(kind="whisper", prompt=prompt, eos=int(eos),
                suppress_tokens=[int(t) for t in (gen.suppress_tokens or [])],
                begin_suppress_tokens=[int(t) for t in (gen.begin_suppress_tokens or [])],
                max_target_positions=int(model.config.max_target_positions),
                decoder_layers=len(model.model.decoder.layers))


def _copy_processor(source: Path, staging: Path, processor, family: str) -> None:
    """The processor files beside the model (faster-whisper reads tokenizer.json and preprocessor_config.json)."""
    for item in source.iterdir():
        if item.is_file() and item.name not in _NOT_COPIED and item.suffix != ".safetensors" \
                and not (staging / item.name).exists():
            shutil.copy2(item, staging / item.name)
    if not (staging / "preprocessor_config.json").exists():
        processor.feature_extractor.save_pretrained(staging)


def _note_in_card(staging: Path, settings: dict) -> None:
    card = staging / CARD_FILE
    if not card.is_file():
        return
    name = _TARGET_NAMES[settings["backend"]]
    how = ("```python\nfrom faster_whisper import WhisperModel\nmodel = WhisperModel(\"FOLDER\")\n```"
           if settings["backend"] == "ct2" else
           "`speechprune evaluate FOLDER --backend onnx` decodes it greedily with ONNX Runtime.")
    card.write_text(card.read_text(encoding="utf-8").rstrip() + "\n\n## Exported\n\n"
                    f"This folder is the {name} export (weights: {settings['quantize']}) of the model this card "
                    f"describes, made with `{settings['command']}`; {SETTINGS_FILE} holds the settings.\n\n"
                    f"{how}\n", encoding="utf-8")


# ---------------------------------------------------------------- CTranslate2


def _export_ct2(model: nn.Module, processor, config: dict, staging: Path, quantize: str) -> list[str]:
    import ctranslate2  # noqa: F401  (checked before the work)
    from ctranslate2.converters.converter import Converter
    from ctranslate2.converters.transformers import WhisperLoader

    heads = ct2_heads(config)

    class _LoadedWhisper(Converter):
        """CTranslate2's Whisper loader run on the model load_checkpoint built."""

        def _load(self):
            with torch.no_grad():
                spec = WhisperLoader()(model, processor.tokenizer)
            if heads["encoder"] or heads["decoder"]:
                _set_heads(spec, model, heads)
            return spec

    with torch.no_grad():
        _LoadedWhisper().convert(str(staging), quantization=None if quantize == "none" else quantize, force=True)
    return ["model.bin", "config.json", "vocabulary.json"]


def _set_heads(spec, model: nn.Module, heads: dict[str, int | None]) -> None:
    """Pruned heads: the kept count per stack, and each block's head size (CTranslate2 would divide d_model)."""
    stacks = {"encoder": (spec.encoder, model.model.encoder.layers, ("self_attention",)),
              "decoder": (spec.decoder, model.model.decoder.layers, ("self_attention", "attention"))}
    for stack, count in heads.items():
        if not count:
            continue
        stack_spec, layers, blocks = stacks[stack]
        stack_spec.num_heads = np.dtype("int16").type(count)
        head_dim = layers[0].self_attn.head_dim
        for layer_spec in stack_spec.layer:
            for block in blocks:
                # MultiHeadAttentionSpec declares head_dim only when given at construction
                object.__setattr__(getattr(layer_spec, block), "head_dim", np.dtype("int32").type(head_dim))
    if heads["decoder"]:  # the original alignment heads name heads that pruning renumbered or removed
        n = len(model.model.decoder.layers)
        spec.config.alignment_heads = [[layer, h] for layer in range(n // 2, n) for h in range(heads["decoder"])]


# ---------------------------------------------------------------- running an export


def read_settings(folder: str | os.PathLike, backend: str | None = None) -> tuple[Path, dict]:
    """An exported folder and its settings; refuses anything else, or an export for another backend."""
    path = Path(folder).expanduser()
    try:
        settings = json.loads((path / SETTINGS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        hint = f"; make one with: speechprune export {folder} --to {backend} --out DIR" if backend else ""
        raise SpeechPruneError(f"{folder} is not a folder speechprune export wrote (no readable "
                               f"{SETTINGS_FILE}){hint}") from None
    if backend is not None and settings.get("backend") != backend:
        raise SpeechPruneError(f"{folder} is a {settings.get('backend')} export, not {backend}: "
                               f"pass --backend {settings.get('backend')}")
    return path, settings


def _load_exported_processor(folder: Path, family: str):
    import transformers

    cls = transformers.WhisperProcessor if family == "whisper" else transformers.Wav2Vec2Processor
    try:
        return cls.from_pretrained(str(folder))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SpeechPruneError(f"cannot load the processor saved in {folder}: {err}") from None


def _ctc_lengths(samples: Sequence[int], kernels: Sequence[int], strides: Sequence[int]) -> list[int]:
    out = []
    for n in samples:
        for k, s in zip(kernels, strides):
            n = (n - k) // s + 1
        out.append(int(n))
    return out


class DeployedModel:
    """An exported folder, loaded in its runtime, that transcribes greedily as :func:`speechprune.evaluate` does.

    ``threads`` sets the runtime's intra-op threads (default: the runtime's own choice).
    """

    def __init__(self, folder: str | os.PathLike, *, threads: int | None = None, backend: str | None = None):
        self.folder, self.settings = read_settings(folder, backend)
        self.backend = self.settings["backend"]
        require_backend(self.backend)
        self.family = self.settings["family"]
        self.decoding = self.settings["decoding"]
        self.processor = _load_exported_processor(self.folder, self.family)
        self.threads = threads
        if self.backend == "ct2":
            import ctranslate2

            self.ct2 = ctranslate2.models.Whisper(str(self.folder), device="cpu", compute_type="default",
                                                  intra_threads=threads or 0)
        else:
            import onnxruntime as ort

            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
                options.inter_op_num_threads = 1
            options.log_severity_level = 3
            self.sessions = {name: ort.InferenceSession(str(self.folder / name), options,
                                                        providers=["CPUExecutionProvider"])
                             for name in self.settings["model_files"]}

    @property
    def window(self) -> float:
        """Seconds of audio a Whisper export reads at once (longer clips are cut, as in evaluate)."""
        return whisper_window(self.processor)

    def token_budget(self, seconds: float) -> int:
        """:func:`speechprune.evaluate.max_new_tokens` within the decoder's positions, as evaluate does."""
        return min(max_new_tokens(seconds), self.decoding["max_target_positions"] - 8)

    def transcribe(self, audios: Sequence[np.ndarray], *, batch_size: int = 8, progress: bool = True) -> list[str]:
        """Greedy transcripts of 16 kHz clips in input order, batched by length as :func:`speechprune.evaluate.transcribe`."""
        if batch_size < 1:
            raise SpeechPruneError(f"batch size must be at least 1, got {batch_size}")
        order = sorted(range(len(audios)), key=lambda i: len(audios[i]))
        texts = [""] * len(audios)
        with tqdm(total=len(audios), desc=f"transcribing ({self.backend})", unit="utt", disable=not progress,
                  file=sys.stderr) as bar:
            for start in range(0, len(order), batch_size):
                batch = order[start:start + batch_size]
                for i, text in zip(batch, self._decode([audios[i] for i in batch])):
                    texts[i] = text.strip()
                bar.update(len(batch))
        return texts

    def _decode(self, audios: list[np.ndarray]) -> list[str]:
        if self.family != "whisper":
            fe = self.processor.feature_extractor(audios, sampling_rate=SAMPLE_RATE, padding=True, return_tensors="np")
            feed = {"input_values": fe["input_values"].astype(np.float32)}
            if self.decoding["attention_mask"]:
                feed["attention_mask"] = fe["attention_mask"].astype(np.int64)
            logits = self.sessions["model.onnx"].run(["logits"], feed)[0]
            ids = logits.argmax(-1)
            lengths = _ctc_lengths([len(a) for a in audios], self.decoding["conv_kernel"], self.decoding["conv_stride"])
            return self.processor.tokenizer.batch_decode([row[:n].tolist() for row, n in zip(ids, lengths)])
        features = self.processor.feature_extractor(audios, sampling_rate=SAMPLE_RATE, return_tensors="np")
        features = np.ascontiguousarray(features.input_features, dtype=np.float32)
        budget = self.token_budget(min(max(len(a) for a in audios) / SAMPLE_RATE, self.window))
        tokens = self._generate_ct2(features, budget) if self.backend == "ct2" else self._generate_onnx(features, budget)
        return self.processor.tokenizer.batch_decode(tokens, skip_special_tokens=True)

    def _generate_ct2(self, features: np.ndarray, budget: int) -> list[list[int]]:
        import ctranslate2

        prompt = self.decoding["prompt"]
        # CTranslate2's Whisper decodes at most max_length / 2 new tokens (openai-whisper's sample_len),
        # so twice the budget gives the same bound as generate's max_new_tokens
        results = self.ct2.generate(ctranslate2.StorageView.from_array(features), [prompt] * len(features),
                                    beam_size=1, max_length=2 * budget, suppress_blank=True, suppress_tokens=[-1])
        return [r.sequences_ids[0] for r in results]

    def _generate_onnx(self, features: np.ndarray, budget: int) -> list[list[int]]:
        """Greedy decoding with past keys and values: Whisper's suppress lists, stop at end of text."""
        d = self.decoding
        encoder, decoder = self.sessions["encoder_model.onnx"], self.sessions["decoder_model.onnx"]
        cross = encoder.run(None, {"input_features": features})
        cross_feed = {o.name: a for o, a in zip(encoder.get_outputs(), cross)}
        batch = len(features)
        past_inputs = [i for i in decoder.get_inputs() if i.name.startswith("past.")]
        heads = {i.name: cross_feed[i.name.replace("past.", "cross.")].shape for i in past_inputs}
        past = {name: np.zeros((batch, shape[1], 0, shape[3]), dtype=np.float32) for name, shape in heads.items()}
        ids = np.array([d["prompt"]] * batch, dtype=np.int64)
        suppress = np.array(d["suppress_tokens"], dtype=np.int64)
        begin = np.array(d["begin_suppress_tokens"], dtype=np.int64)
        eos = d["eos"]
        out: list[list[int]] = [[] for _ in range(batch)]
        done = np.zeros(batch, dtype=bool)
        for step in range(budget):
            logits, *presents = decoder.run(None, {"input_ids": ids, **past, **cross_feed})
            if suppress.size:
                logits[:, suppress] = -np.inf
            if step == 0 and begin.size:
                logits[:, begin] = -np.inf
            nxt = logits.argmax(-1)
            nxt[done] = eos
            for b in np.flatnonzero(~done):
                out[b].append(int(nxt[b]))
            done |= nxt == eos
            if done.all():
                break
            ids = nxt[:, None].astype(np.int64)
            past = {name: p for name, p in zip(past, presents)}
        return out


def evaluate_exported(folder: str | os.PathLike, speech, *, backend: str | None = None, batch_size: int = 8,
                      max_samples: int | None = None, threads: int | None = None, progress: bool = True,
                      label: str | None = None) -> dict:
    """Transcribe ``speech`` with an exported folder and score it as :func:`speechprune.evaluate` does.

    Same greedy decoding (Whisper: the English prompt without timestamps, the suppress lists, the
    same token budget and 30 s window; CTC: argmax and collapse), the same normaliser and
    corpus WER. The record has :func:`speechprune.evaluate`'s fields, with ``backend`` and the
    export settings added.
    """
    model = DeployedModel(folder, threads=threads, backend=backend)
    utterances = speech.utterances[:max_samples]
    if not utterances:
        raise SpeechPruneError(f"{speech.name} has no utterances to evaluate")
    whisper = model.family == "whisper"
    over = sum(u.duration > model.window for u in utterances) if whisper else 0
    if over:
        warn(f"{over} of {len(utterances)} clip(s) in {speech.name} are longer than Whisper's {model.window:g} s "
             "window and are cut to it (the words after it count as deletions)")
    normalizer = english_normalizer(model.processor.tokenizer)
    started = time.perf_counter()
    hyps = model.transcribe([u.audio for u in utterances], batch_size=batch_size, progress=progress)
    decode_seconds = time.perf_counter() - started
    scores = wer_details([u.text for u in utterances], hyps, normalizer=normalizer)
    audio_seconds = float(sum(u.duration for u in utterances))
    data = dict(speech.provenance)
    if len(utterances) < len(speech):
        data.update(max_samples=max_samples, count=len(utterances), hours=round(audio_seconds / 3600, 4))
    s = model.settings
    method = ("greedy CTC: argmax per frame, collapse repeats, drop blanks" if not whisper else
              "greedy (beam 1, no sampling), English prompt without timestamps, Whisper's suppress lists")
    return dict(
        wer=round(scores["wer"], 4), substitutions=scores["substitutions"], deletions=scores["deletions"],
        insertions=scores["insertions"], hits=scores["hits"], ref_words=scores["ref_words"],
        n_utterances=len(utterances), n_dropped_empty=scores["n_dropped_empty"],
        audio_seconds=round(audio_seconds, 3), decode_seconds=round(decode_seconds, 3),
        seconds_per_utterance=round(decode_seconds / len(utterances), 4), rtf=round(decode_seconds / audio_seconds, 4),
        model=dict(name=label or str(folder), family=s["family"], architecture=s["architecture"],
                   parameters=s["parameters"]),
        data=data, normalizer=describe_normalizer(normalizer),
        dtype={"none": "float32"}.get(s["quantize"], s["quantize"]), device="cpu",
        backend=s["backend"], threads=threads, export=dict(quantize=s["quantize"], command=s["command"],
                                                           versions=s["versions"]),
        decoding=dict(method=method, batch_size=batch_size, backend=s["backend"],
                      **({"prompt": s["decoding"]["prompt"], "clips_over_30s": over} if whisper else {})),
        versions={**s["versions"], "speechprune": __version__, "python": platform.python_version(),
                  "jiwer": importlib.metadata.version("jiwer")},
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        utterances=[dict(id=u.id, duration=round(u.duration, 3), reference=u.text, hypothesis=hyp,
                         reference_normalized=ref_n, hypothesis_normalized=hyp_n, errors=err)
                    for u, hyp, ref_n, hyp_n, err in zip(utterances, hyps, scores["references"],
                                                         scores["hypotheses"], scores["per_utterance_errors"])],
    )
