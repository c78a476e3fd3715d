"""Stand-ins for the paper's models and data: the real shapes and file layouts, random weights, shipped speech.

``python scripts/standins.py OUT`` writes, from configs only (no network):

* ``facebook/hubert-large-ls960-ft``: ``HubertForCTC`` with the published architecture (24 layers,
  hidden 1024, feed-forward 4096, 16 heads, the 7-layer convolutional front end with layer norm,
  ``do_stable_layer_norm``, the 32-symbol character vocabulary) and its ``Wav2Vec2Processor``
  (feature extractor + CTC tokenizer), float32 like the hub's checkpoint;
* ``openai/whisper-large-v3``: ``WhisperForConditionalGeneration`` (32 + 32 layers, d_model 1280,
  feed-forward 5120, 20 heads, 128 mel bins, vocabulary 51866) with a ``WhisperProcessor`` (128-bin
  feature extractor) and a generation config, float16 like the hub's checkpoint (about 3 GB);
* LibriSpeech stand-ins made of the package's shipped clips, in both forms that
  ``speechprune.data`` reads: OpenSLR folders (``OUT/LibriSpeech/<subset>/<speaker>/<chapter>/``
  with ``*.flac`` and upper-case ``*.trans.txt``) and the hub datasets of
  ``speechprune.data.LIBRISPEECH_HUB`` (parquet files in the hub cache, plus the prepared Arrow
  cache that ``datasets.load_dataset`` reads offline).

Both models go into a Hugging Face hub cache (``OUT/hub``), so that with ::

    HF_HOME=OUT HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

the unchanged ids (``facebook/hubert-large-ls960-ft``, ``librispeech:test-clean``, ...) load through
the package's own code path (``huggingface_hub.snapshot_download`` then ``from_pretrained``;
``datasets.load_dataset``). ``datasets`` 5 reads a hub dataset offline only from its prepared Arrow
cache (``OUT/datasets/<org>___<name>/<config>/0.0.0/<commit>``), not from the hub cache's parquet
files; both are written.

The weights are random (seeded): the stand-ins transcribe noise. They exist so that every line of
the full-scale path runs, and so that its cost can be measured.

**Where the Whisper tokenizer differs from large-v3's.** The tokenizer is the embedded Whisper
base tokenizer (``embedded:whisper-base``: the same byte-level BPE, ids 0-50257) with large-v3's
one added language: ``<|yue|>`` (Cantonese) is inserted at id 50358, right after ``<|su|>``, so
every special token from ``<|translate|>`` on moves up by one (``<|translate|>`` 50359,
``<|transcribe|>`` 50360, ``<|startoflm|>`` 50361, ``<|startofprev|>`` 50362, ``<|nocaptions|>``
50363, ``<|notimestamps|>`` 50364, timestamps ``<|0.00|>`` 50365 to ``<|30.00|>`` 51865): 51866
ids, as large-v3's vocabulary. The generation config's ids move the same way. Not reproduced:
the hub tokenizer's own file layout (vocab.json/merges.txt/added_tokens.json; this one writes
``tokenizer.json``), the name of id 50363 (kept from the base tokenizer as ``<|nocaptions|>``;
large-v3 may spell it ``<|nospeech|>``), and ``suppress_tokens``, which is the base model's list
(its ids are all below 50358, so they do not move). Configuration values that the issue does not
state (dropouts, ``ctc_loss_reduction``, ``alignment_heads``) follow the published configs as
known here, unverified against the hub.

``--tiny`` writes the same ids with small layer counts and widths (same code, smaller numbers),
for the unit tests.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

HUBERT = "facebook/hubert-large-ls960-ft"
WHISPER = "openai/whisper-large-v3"
ESB = "hf-audio/esb-datasets-test-only-sorted"
OPENSLR = "openslr/librispeech_asr"

#: the CTC character vocabulary of facebook/hubert-large-ls960-ft (and wav2vec2-base-960h)
CTC_VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|", "E", "T", "A", "O", "N", "I", "H", "S", "R", "D", "L", "U",
             "M", "W", "C", "F", "G", "Y", "P", "B", "V", "K", "'", "X", "J", "Q", "Z"]
YUE_ID = 50358  # large-v3's added language token; every id from here on moves up by one
#: large-v3's cross-attention heads for word timestamps (published generation config, as known here)
V3_ALIGNMENT_HEADS = [[7, 0], [10, 17], [12, 18], [13, 12], [16, 1], [17, 14], [19, 11], [21, 4], [24, 1], [25, 6]]

#: LibriSpeech subset -> (speaker id, chapter id, clip pool): fictitious ids, clips from the shipped speech
SUBSETS = {
    "test-clean": (1089, 134686, "test"),
    "test-other": (1688, 142285, "test"),
    "dev-clean": (1272, 128104, "train"),
    "train-clean-100": (103, 1240, "train"),
}
#: hub dataset -> {config: {split: subset}}, as speechprune.data.LIBRISPEECH_HUB / LIBRISPEECH_TRAIN name them
HUB_DATASETS = {
    ESB: {"librispeech": {"test.clean": "test-clean", "test.other": "test-other"}},
    OPENSLR: {"clean": {"validation": "dev-clean", "train.100": "train-clean-100", "test": "test-clean"},
              "other": {"test": "test-other"}},
}


# ----------------------------------------------------------------------------- hub cache

def commit_of(repo_id: str) -> str:
    """A fixed fake commit hash per repo, so that reruns write the same snapshot."""
    return hashlib.sha1(f"speechprune stand-in {repo_id}".encode()).hexdigest()


def repo_folder(cache: Path, repo_id: str, kind: str = "models") -> Path:
    return cache / f"{kind}--{repo_id.replace('/', '--')}"


def publish_snapshot(cache: Path, repo_id: str, staging: Path, kind: str = "models") -> Path:
    """Move the files of ``staging`` into the hub cache layout (blobs, a snapshot of links, refs/main)."""
    folder = repo_folder(cache, repo_id, kind)
    commit = commit_of(repo_id)
    snapshot = folder / "snapshots" / commit
    if snapshot.exists():
        shutil.rmtree(snapshot)
    (folder / "blobs").mkdir(parents=True, exist_ok=True)
    for file in sorted(p for p in staging.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 24), b""):
                digest.update(block)
        blob = folder / "blobs" / digest.hexdigest()
        if blob.exists():
            file.unlink()
        else:
            file.rename(blob)
        link = snapshot / file.relative_to(staging)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    shutil.rmtree(staging)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    return snapshot


def staging_dir(out: Path, name: str) -> Path:
    path = out / ".staging" / name.replace("/", "--")
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


# ----------------------------------------------------------------------------- HuBERT

def hubert_config(tiny: bool = False):
    from transformers import HubertConfig

    sizes = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                 conv_dim=(512,) * 7, num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16)
    if tiny:
        sizes = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                     conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    return HubertConfig(
        vocab_size=len(CTC_VOCAB), conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        conv_bias=True, feat_extract_norm="layer", feat_extract_activation="gelu", do_stable_layer_norm=True,
        hidden_act="gelu", layer_norm_eps=1e-5, hidden_dropout=0.1, activation_dropout=0.1, attention_dropout=0.1,
        feat_proj_dropout=0.1, final_dropout=0.1, layerdrop=0.1, apply_spec_augment=True, mask_time_prob=0.05,
        ctc_loss_reduction="sum", ctc_zero_infinity=False, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        architectures=["HubertForCTC"], tokenizer_class="Wav2Vec2CTCTokenizer", **sizes)


def write_hubert(out: Path, cache: Path, seed: int, tiny: bool) -> Path:
    from transformers import HubertForCTC, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2Processor

    staging = staging_dir(out, HUBERT)
    torch.manual_seed(seed)
    model = HubertForCTC(hubert_config(tiny)).eval()
    model.save_pretrained(staging)
    del model
    vocab = staging / "vocab.json"
    vocab.write_text(json.dumps({s: i for i, s in enumerate(CTC_VOCAB)}), encoding="utf-8")
    tokenizer = Wav2Vec2CTCTokenizer(str(vocab), unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                     eos_token="</s>", word_delimiter_token="|", do_lower_case=False)
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                         do_normalize=True, return_attention_mask=True)
    Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(staging)
    return publish_snapshot(cache, HUBERT, staging)


# ----------------------------------------------------------------------------- Whisper

def whisper_config(tiny: bool = False):
    from transformers import WhisperConfig

    sizes = dict(d_model=1280, encoder_layers=32, decoder_layers=32, encoder_attention_heads=20,
                 decoder_attention_heads=20, encoder_ffn_dim=5120, decoder_ffn_dim=5120)
    if tiny:
        sizes = dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                     decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128)
    return WhisperConfig(
        vocab_size=51866, num_mel_bins=128, max_source_positions=1500, max_target_positions=448,
        decoder_start_token_id=50258, bos_token_id=50257, eos_token_id=50257, pad_token_id=50256,
        begin_suppress_tokens=[220, 50257], activation_function="gelu", dropout=0.0, attention_dropout=0.0,
        activation_dropout=0.0, scale_embedding=False, use_cache=True, architectures=["WhisperForConditionalGeneration"],
        **sizes)


def _shift(token_id: int) -> int:
    return token_id + 1 if token_id >= YUE_ID else token_id


def v3_tokenizer_json(base: dict) -> dict:
    """The base tokenizer's ``tokenizer.json`` with ``<|yue|>`` inserted at 50358 and later ids moved up."""
    data = json.loads(json.dumps(base))
    added = []
    for token in data["added_tokens"]:
        token = dict(token, id=_shift(token["id"]))
        added.append(token)
        if token["content"] == "<|su|>":
            added.append(dict(token, id=YUE_ID, content="<|yue|>"))
    data["added_tokens"] = sorted(added, key=lambda t: t["id"])
    assert [t["id"] for t in data["added_tokens"]] == list(range(50257, 51866)), "ids 50257-51865, none missing"
    for special in (data.get("post_processor") or {}).get("special_tokens", {}).values():
        special["ids"] = [_shift(i) for i in special["ids"]]
    return data


def v3_generation_config(base: dict, layers: int) -> dict:
    """Large-v3's generation settings from the base model's, with the moved ids."""
    config = {k: v for k, v in base.items() if k != "transformers_version"}
    config["lang_to_id"] = dict(sorted({**base["lang_to_id"], "<|yue|>": YUE_ID}.items()))
    config["task_to_id"] = {k: _shift(v) for k, v in base["task_to_id"].items()}
    for key in ("no_timestamps_token_id", "prev_sot_token_id"):
        config[key] = _shift(base[key])
    config["suppress_tokens"] = [_shift(i) for i in base["suppress_tokens"]]
    config["alignment_heads"] = ([h for h in V3_ALIGNMENT_HEADS if h[0] < layers] or [[layers - 1, 0]])
    return config


#: What the Whisper stand-in takes from Whisper base (``--base``): tokenizer, generation config, spelling map.
BASE_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "normalizer.json")


def write_whisper(out: Path, cache: Path, seed: int, tiny: bool, base: Path | None = None) -> Path:
    from transformers import (
        GenerationConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizerFast,
    )
    from tokenizers import Tokenizer

    from speechprune.models import ensure_embedded

    base = ensure_embedded("whisper-base") if base is None else base
    staging = staging_dir(out, WHISPER)
    config = whisper_config(tiny)
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration._from_config(config, dtype=torch.float16).eval()
    base_generation = json.loads((base / "generation_config.json").read_text(encoding="utf-8"))
    model.generation_config = GenerationConfig.from_dict(v3_generation_config(base_generation, config.decoder_layers))
    model.save_pretrained(staging)
    del model
    backend = Tokenizer.from_str(json.dumps(v3_tokenizer_json(json.loads((base / "tokenizer.json").read_text("utf-8")))))
    tokenizer_config = json.loads((base / "tokenizer_config.json").read_text(encoding="utf-8"))
    tokenizer = WhisperTokenizerFast(tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                     unk_token="<|endoftext|>", pad_token="<|endoftext|>",
                                     add_prefix_space=tokenizer_config.get("add_prefix_space", False))
    extractor = WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=30,
                                        n_fft=400, padding_value=0.0, return_attention_mask=False)
    WhisperProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(staging)
    if (base / "normalizer.json").is_file():  # the English spelling map the Whisper normaliser reads
        shutil.copy(base / "normalizer.json", staging / "normalizer.json")
    return publish_snapshot(cache, WHISPER, staging)


# ----------------------------------------------------------------------------- LibriSpeech

def librispeech_text(text: str) -> str:
    """LibriSpeech's transcript style: upper case, letters, digits and apostrophes, single spaces."""
    return " ".join(re.sub(r"[^A-Z0-9']+", " ", text.upper()).split())


def pick_clips(per_subset: int) -> dict[str, list]:
    """Each subset's clips: the shortest shipped clips, test sets from the embedded test split, the
    dev and train sets from its train split, no clip in two subsets."""
    from speechprune.data import load_speech

    pools = {name: sorted(load_speech(spec), key=lambda u: (u.duration, u.id))
             for name, spec in (("test", "embedded"), ("train", "embedded:train"))}
    used = {"test": 0, "train": 0}
    picked = {}
    for subset, (_, _, pool) in SUBSETS.items():
        clips = pools[pool][used[pool]:used[pool] + per_subset]
        if len(clips) < per_subset:
            raise SystemExit(f"only {len(clips)} shipped clips left for {subset}; ask for fewer per subset")
        used[pool] += per_subset
        picked[subset] = clips
    return picked


def flac_bytes(audio: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, audio, 16000, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def rows_of(subset: str, clips: list) -> list[dict]:
    speaker, chapter, _ = SUBSETS[subset]
    rows = []
    for i, clip in enumerate(clips):
        uid = f"{speaker}-{chapter}-{i:04d}"
        rows.append(dict(id=uid, speaker_id=speaker, chapter_id=chapter, text=librispeech_text(clip.text),
                         audio=clip.audio, source=clip.id, seconds=clip.duration))
    return rows


def write_openslr(out: Path, subset: str, rows: list[dict]) -> Path:
    folder = out / "LibriSpeech" / subset
    if folder.exists():
        shutil.rmtree(folder)
    lines: dict[Path, list[str]] = {}
    for row in rows:
        chapter_dir = folder / str(row["speaker_id"]) / str(row["chapter_id"])
        chapter_dir.mkdir(parents=True, exist_ok=True)
        (chapter_dir / f"{row['id']}.flac").write_bytes(flac_bytes(row["audio"]))
        lines.setdefault(chapter_dir, []).append(f"{row['id']} {row['text']}")
    for chapter_dir, text in lines.items():
        speaker, chapter = chapter_dir.parts[-2:]
        (chapter_dir / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(text) + "\n", encoding="utf-8")
    return folder


def hub_features(repo: str):
    import datasets

    if repo == ESB:  # the ESB test sets: audio{bytes,path}, dataset, text, id, audio_length_s
        return datasets.Features({"audio": datasets.Audio(sampling_rate=16000), "dataset": datasets.Value("string"),
                                  "text": datasets.Value("string"), "id": datasets.Value("string"),
                                  "audio_length_s": datasets.Value("float64")})
    return datasets.Features({"file": datasets.Value("string"), "audio": datasets.Audio(sampling_rate=16000),
                              "text": datasets.Value("string"), "speaker_id": datasets.Value("int64"),
                              "chapter_id": datasets.Value("int64"), "id": datasets.Value("string")})


def hub_table(repo: str, rows: list[dict]):
    import pyarrow as pa

    audio = [{"bytes": flac_bytes(r["audio"]), "path": f"{r['id']}.flac"} for r in rows]
    if repo == ESB:
        columns = dict(audio=audio, dataset=["librispeech"] * len(rows), text=[r["text"] for r in rows],
                       id=[r["id"] for r in rows], audio_length_s=[round(r["seconds"], 4) for r in rows])
    else:
        columns = dict(file=[f"{r['id']}.flac" for r in rows], audio=audio, text=[r["text"] for r in rows],
                       speaker_id=[r["speaker_id"] for r in rows], chapter_id=[r["chapter_id"] for r in rows],
                       id=[r["id"] for r in rows])
    return pa.Table.from_pydict(columns, schema=hub_features(repo).arrow_schema)


def write_hub_dataset(out: Path, cache: Path, repo: str, configs: dict[str, dict[str, str]],
                      rows: dict[str, list[dict]]) -> Path:
    """Parquet files in the hub cache (the repo's layout) and the prepared Arrow cache ``datasets`` reads offline."""
    import pyarrow.parquet as pq
    from datasets.packaged_modules.parquet.parquet import Parquet

    staging = staging_dir(out, repo)
    written: dict[str, dict[str, list[str]]] = {}
    for config, splits in configs.items():
        for split, subset in splits.items():
            name = (f"{config}/{split}-00000-of-00001.parquet" if repo == ESB
                    else f"{config}/{split}/0000.parquet")
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(hub_table(repo, rows[subset]), staging / name)
            written.setdefault(config, {})[split] = [str(staging / name)]
    commit = commit_of(repo)
    datasets_cache = out / "datasets"
    namespace, name = repo.split("/")
    for config, splits in configs.items():
        target = datasets_cache / f"{namespace}___{name}" / config / "0.0.0" / commit
        build = out / ".staging" / f"arrow-{namespace}-{name}-{config}"
        shutil.rmtree(build, ignore_errors=True)
        builder = Parquet(cache_dir=str(build), dataset_name=name, config_name=config, hash=commit,
                          data_files=written[config], features=hub_features(repo))
        builder.download_and_prepare()
        prepared = Path(builder.cache_dir)
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(prepared, target, ignore=shutil.ignore_patterns("*.lock"))
        shutil.rmtree(build)
    publish_snapshot(cache, repo, staging, kind="datasets")
    return datasets_cache / f"{namespace}___{name}"


def write_speech(out: Path, cache: Path, per_subset: int) -> dict:
    picked = pick_clips(per_subset)
    rows = {subset: rows_of(subset, clips) for subset, clips in picked.items()}
    for subset, subset_rows in rows.items():
        write_openslr(out, subset, subset_rows)
    for repo, configs in HUB_DATASETS.items():
        write_hub_dataset(out, cache, repo, configs, rows)
    return {subset: [dict(id=r["id"], clip=r["source"], seconds=round(r["seconds"], 2)) for r in subset_rows]
            for subset, subset_rows in rows.items()}


# ----------------------------------------------------------------------------- main

def environment(out: Path) -> dict[str, str]:
    """The variables that make the stand-ins resolve offline under the unchanged ids."""
    return {"HF_HOME": str(out), "HF_HUB_CACHE": str(out / "hub"), "HF_DATASETS_CACHE": str(out / "datasets"),
            "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write (HF_HOME for the runs that use it)")
    parser.add_argument("--only", default="hubert,whisper,speech",
                        help="comma-separated parts: hubert, whisper, speech (default: all)")
    parser.add_argument("--utterances", type=int, default=3, help="utterances per LibriSpeech subset (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--tiny", action="store_true", help="small layer counts and widths (tests)")
    parser.add_argument("--base", type=Path, default=None,
                        help="a folder with Whisper base's " + ", ".join(BASE_FILES) + " (default: the embedded "
                             "model's; for a machine without the embedded packages, e.g. a GPU server: "
                             "copy these four files there)")
    args = parser.parse_args(argv)
    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    unknown = parts - {"hubert", "whisper", "speech"}
    if unknown:
        parser.error(f"unknown part(s) {', '.join(sorted(unknown))}: use hubert, whisper, speech")
    if args.utterances < 1:
        parser.error("--utterances must be at least 1")
    if args.base is not None and "whisper" in parts:
        missing = [f for f in BASE_FILES if not (args.base / f).is_file()]
        if missing:
            parser.error(f"--base {args.base} lacks {', '.join(missing)}: copy them from the embedded Whisper base "
                         "(python -c 'from speechprune.models import ensure_embedded; "
                         "print(ensure_embedded(\"whisper-base\"))')")
    out = args.out.resolve()
    cache = out / "hub"
    cache.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "standins.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    manifest.update(seed=args.seed, tiny=args.tiny, environment=environment(out))
    for part, write in (("hubert", write_hubert), ("whisper", write_whisper)):
        if part in parts:
            start = time.perf_counter()
            extra = {"base": args.base} if part == "whisper" else {}
            snapshot = write(out, cache, args.seed, args.tiny, **extra)
            size = sum(p.stat().st_size for p in snapshot.iterdir())
            manifest[part] = dict(id=HUBERT if part == "hubert" else WHISPER, bytes=size,
                                  seconds=round(time.perf_counter() - start, 1))
            print(f"{manifest[part]['id']}: {size / 1e9:.2f} GB in {manifest[part]['seconds']} s", flush=True)
    if "speech" in parts:
        start = time.perf_counter()
        manifest["speech"] = write_speech(out, cache, args.utterances)
        print(f"LibriSpeech stand-ins ({args.utterances} utterances per subset) in "
              f"{time.perf_counter() - start:.1f} s", flush=True)
    shutil.rmtree(out / ".staging", ignore_errors=True)
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    print("use: " + " ".join(f"{k}={v}" for k, v in environment(out).items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
