"""Fine-tune a (pruned) speech model and keep its pruned shapes: the paper's 3-epoch recovery.

HuBERT / wav2vec2 are fine-tuned with CTC on the character vocabulary of the model's own
tokenizer; Whisper sequence-to-sequence on its own tokens. Training runs on the Hugging Face
``Trainer`` / ``Seq2SeqTrainer`` (accelerate underneath), so the same call runs on one CPU, on
one GPU with mixed precision, or on many GPUs and machines under ``torchrun`` or
``accelerate launch``. The model is trained in the shapes it was loaded with; the result is
saved with :func:`speechprune.checkpoint.write_pruned` and reloads like any pruned folder.

Layout of ``out_dir``: the fine-tuned model and processor at the top (so ``speechprune
evaluate OUT`` works), ``finetune.json`` (what was done), ``finetune_run.json`` (written at the
start, it marks the folder as a run that ``resume`` may continue), ``checkpoints/`` (Trainer
checkpoints with optimizer state, for resuming after an interruption) and the speechprune marker
listing all of it (see :mod:`speechprune.outputs`), so that ``--overwrite`` never removes anything else.
The overlap check, the label ids and the batches are in :mod:`speechprune.finetune_data`.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import math
import os
import platform
import shlex
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import transformers
from accelerate import PartialState
from torch import nn

from speechprune._version import __version__
from speechprune.checkpoint import write_pruned
from speechprune.data import (  # noqa: F401  (LIBRISPEECH_TRAIN*, load_training_speech: re-exported, they lived here)
    LIBRISPEECH_TRAIN,
    LIBRISPEECH_TRAIN_REPO,
    SpeechSet,
    StreamedSpeech,
    load_training_speech,
)
from speechprune.errors import SpeechPruneError, check_choice, check_int, check_number, check_seed, warn
from speechprune.finetune_data import LabelledSpeech, SpeechCollator, _kind, check_overlap, encode_labels
from speechprune.hub import FINETUNE_FILE, write_card
from speechprune.models import is_multilingual, load_model
from speechprune.outputs import (
    check_place,
    check_replaceable,
    check_writable,
    in_the_way,
    read_marker,
    remove_written,
    write_marker,
)
from speechprune.structure import count_parameters, model_family, widths

RUN_FILE = "finetune_run.json"
REPORT_FILE = FINETUNE_FILE  # "finetune.json": the model card looks for it
CHECKPOINTS = "checkpoints"
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
FREEZE = ("front-end", "encoder", "none")
DEFAULT_LEARNING_RATE = {"ctc": 5e-5, "whisper": 1e-5}


# ---------------------------------------------------------------- the output folder


def plan_out_dir(out_dir: str | os.PathLike, *, resume: bool, overwrite: bool = False,
                 inputs=()) -> tuple[Path, str]:
    """Check ``out_dir`` before any work and say what the run does with it.

    Returns the resolved folder and ``"new"`` (absent or empty), ``"resume"`` (a run with a
    checkpoint, with ``resume``), ``"restart"`` (a run of speechprune's that stopped before its first
    checkpoint: nothing to keep, started again) or ``"replace"`` (``overwrite`` of a speechprune
    output holding nothing else). Anything else is refused, naming what is in the way.
    """
    out = check_place(out_dir, inputs=inputs)
    shown = str(out_dir)
    if out.exists() and not out.is_dir():
        raise SpeechPruneError(f"--out {shown} is a file, not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        if resume:
            raise SpeechPruneError(f"--resume: {shown} holds no speechprune fine-tuning run ({RUN_FILE} is missing)")
        check_writable(out)
        return out, "new"
    ours = (out / RUN_FILE).is_file()
    marked = read_marker(out) is not None
    checkpointed = any((out / CHECKPOINTS).glob("checkpoint-*"))
    finished = (out / "config.json").is_file() and ours
    clear = f"rm -r {shlex.quote(shown)}"
    if overwrite and not resume:
        check_replaceable(out)
        check_writable(out)
        return out, "replace"
    if resume and not ours:
        raise SpeechPruneError(f"--resume: {shown} holds no speechprune fine-tuning run ({RUN_FILE} is missing)")
    if ours and not checkpointed and not finished:  # stopped before its first checkpoint: nothing to keep
        if not marked or in_the_way(out):
            raise SpeechPruneError(
                f"--out {shown} holds a fine-tuning run that stopped before its first checkpoint, and files "
                f"speechprune did not list: {', '.join(in_the_way(out)[:5])}; clear it with `{clear}` and run again")
        warn(f"{shown} holds a fine-tuning run that stopped before its first checkpoint; starting it again")
        check_writable(out)
        return out, "restart"
    if resume:
        if finished and not checkpointed:
            raise SpeechPruneError(f"--resume: the run in {shown} has finished; choose another --out, or pass "
                                   "--overwrite (without --resume) to train again")
        return out, "resume"
    if finished:
        raise SpeechPruneError(f"--out {shown} already holds a finished fine-tuning run; choose another folder "
                               "or pass --overwrite to replace it")
    if ours:
        raise SpeechPruneError(f"--out {shown} already holds a fine-tuning run: pass --resume to continue it, "
                               "--overwrite to start again, or choose another folder")
    names = ", ".join(sorted(p.name for p in out.iterdir())[:5])
    raise SpeechPruneError(f"--out {shown} holds something else ({names}); choose an empty or new folder")


def prepare_out_dir(out_dir: str | os.PathLike, *, resume: bool, overwrite: bool = False, inputs=()) -> Path:
    """Accept an absent or empty folder, or (with ``resume``) a folder holding an earlier run; see
    :func:`plan_out_dir`."""
    return plan_out_dir(out_dir, resume=resume, overwrite=overwrite, inputs=inputs)[0]


def check_schedule(epochs: float, warmup: float, max_steps: int | None, save_steps: int | None,
                   logging_steps: int, seed: int) -> tuple[float, float, int | None]:
    """Refuse a training schedule that cannot run: epochs, warm-up and steps must be finite and in range
    (``max_steps=0`` is refused: leave it out for no limit)."""
    epochs = check_number("epochs", epochs)
    if max_steps is not None:
        max_steps = check_int("max_steps", max_steps, minimum=1)
    elif epochs <= 0:
        raise SpeechPruneError(f"epochs must be positive, got {epochs:g}")
    warmup = check_number("warmup", warmup, minimum=0)
    if save_steps is not None:
        check_int("save_steps", save_steps, minimum=1)
    check_int("logging_steps", logging_steps, minimum=1)
    check_seed(seed)
    return epochs, warmup, max_steps


def check_language(model: nn.Module, language: str | None) -> str | None:
    """The language token of a Whisper model's labels (``en`` unless ``language`` names another), or None (CTC).

    Only multilingual Whisper checkpoints have language tokens: an English-only one accepts ``en``
    alone, a CTC model no language at all, so that a value the model cannot use is refused, not ignored.
    """
    from transformers.models.whisper.tokenization_whisper import LANGUAGES, TO_LANGUAGE_CODE

    if _kind(model) != "whisper":
        if language is not None:
            raise SpeechPruneError(f"--language {language!r} is for multilingual Whisper checkpoints; this "
                                   f"{model_family(model)} model has no language tokens: leave --language out")
        return None
    code = None if language is None else TO_LANGUAGE_CODE.get(str(language).lower(), str(language).lower())
    if not is_multilingual(model):
        if code not in (None, "en"):
            raise SpeechPruneError(f"--language {language!r} is for multilingual Whisper checkpoints; this one is "
                                   "English-only: leave --language out")
        return "en"
    if code is not None and code not in LANGUAGES:
        raise SpeechPruneError(f"unknown --language {language!r}: use a Whisper language code such as en, de, fr or zh")
    return code or "en"


def check_learning_rate(learning_rate: float | None) -> None:
    """Refuse a learning rate that is not a positive finite number (None: the family's default)."""
    if learning_rate is None:
        return
    try:
        ok = math.isfinite(float(learning_rate)) and float(learning_rate) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise SpeechPruneError(f"--lr must be a positive finite number, got {learning_rate!r}")


def _check_resumable(out: Path, run: dict) -> None:
    previous = json.loads((out / RUN_FILE).read_text())
    for key in ("family", "widths", "parameters"):
        if previous.get(key) != run[key]:
            raise SpeechPruneError(f"--resume: the run in {out} was started from a model with other {key} "
                                   f"({previous.get('model')}); resume it with the same model")


def _install(staging: Path, out: Path) -> None:
    """Move the files of a finished model folder into ``out``, beside the checkpoints."""
    for path in staging.iterdir():
        os.replace(path, out / path.name)
    staging.rmdir()


# ---------------------------------------------------------------- training


class _Timer(transformers.TrainerCallback):
    """Epoch and step at the start of this run (after a resume, where it resumed) and wall time."""

    def on_train_begin(self, args, state, control, **kwargs):
        self.start_epoch, self.start_step, self.started = state.epoch or 0.0, state.global_step, time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):
        self.seconds = time.perf_counter() - self.started


SPECIAL_TOKENS = ("pad_token_id", "bos_token_id", "eos_token_id")


class _KeepSpecialTokens(transformers.TrainerCallback):
    """Put back the model's pad/bos/eos ids, which ``Trainer.train`` first aligns with the tokenizer's.

    transformers 5.15 (Colab's) copies even a pad token the tokenizer does not define (None) into
    the config, and Whisper's loss then stops ("pad_token_id has to be defined"); later versions
    copy only defined ids, which can still differ from the model's. Fine-tuning adds no token, so
    the model keeps the ids it was trained with, in its config and its generation config.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.saved = {(i, name): copy.deepcopy(getattr(config, name, None))
                      for i, config in enumerate(self._configs()) for name in SPECIAL_TOKENS}

    def _configs(self) -> list:
        config = self.model.config
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        generation = getattr(self.model, "generation_config", None)
        return [c for c in (config, text, generation) if c is not None]

    def on_train_begin(self, args, state, control, **kwargs):
        for (i, name), value in self.saved.items():
            config = self._configs()[i]
            if getattr(config, name, None) != value:
                setattr(config, name, copy.deepcopy(value))


def _precision(precision: str) -> dict[str, bool]:
    check_choice("precision", precision, PRECISIONS)
    if precision == "auto":
        if not torch.cuda.is_available():
            return {}
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision != "fp32" and not torch.cuda.is_available():
        raise SpeechPruneError(f"{precision} mixed precision needs a CUDA GPU; use fp32 (or auto) on CPU")
    return {"fp16": precision == "fp16", "bf16": precision == "bf16"}


def _freeze(model: nn.Module, what: str) -> list[str]:
    """Freeze the convolutional front end (never pruned: the CTC feature encoder, Whisper's conv1/conv2),
    or Whisper's whole encoder (sensible when only the decoder was pruned), or nothing."""
    check_choice("freeze option", what, FREEZE)
    whisper = _kind(model) == "whisper"
    if what == "encoder" and not whisper:
        raise SpeechPruneError("freeze='encoder' applies to Whisper; CTC models train their encoder (use 'front-end')")
    if what == "none":
        return []
    if what == "encoder":
        modules = {"model.encoder": model.model.encoder}
    elif whisper:
        modules = {"model.encoder.conv1": model.model.encoder.conv1, "model.encoder.conv2": model.model.encoder.conv2}
    else:
        modules = {f"{model_family(model)}.feature_extractor": getattr(model, model_family(model)).feature_extractor}
    for module in modules.values():
        module.requires_grad_(False)
    return sorted(modules)


def _provenance(speech) -> dict | None:
    return None if speech is None else dict(speech.provenance, count=len(speech))


def _versions() -> dict[str, str]:
    return dict(speechprune=__version__, torch=torch.__version__, transformers=transformers.__version__,
                accelerate=importlib.metadata.version("accelerate"), python=platform.python_version())


def _training_arguments(kind: str, output_dir: Path, *, world_size: int, batch_size: int, grad_accum: int,
                        epochs: float, max_steps: int | None, learning_rate: float, warmup: float, with_eval: bool,
                        save_steps: int | None, keep_checkpoints: int, logging_steps: int, seed: int,
                        num_workers: int, progress: bool, mixed: dict[str, bool]) -> transformers.TrainingArguments:
    """The Trainer's settings; several processes without CUDA run accelerate's multi-CPU mode (gloo)."""
    cpu_processes = world_size > 1 and not torch.cuda.is_available()
    args_class = transformers.Seq2SeqTrainingArguments if kind == "whisper" else transformers.TrainingArguments
    return args_class(
        output_dir=str(output_dir),
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        gradient_accumulation_steps=grad_accum,
        num_train_epochs=epochs,
        max_steps=max_steps or -1,
        learning_rate=learning_rate,
        warmup_steps=warmup,
        lr_scheduler_type="linear",
        logging_strategy="steps",
        logging_steps=logging_steps,
        eval_strategy="epoch" if with_eval else "no",
        save_strategy="steps" if save_steps else "epoch",
        save_steps=save_steps or 500,
        save_total_limit=keep_checkpoints,
        seed=seed,
        data_seed=seed,
        use_cpu=cpu_processes,
        ddp_backend="gloo" if cpu_processes else None,
        dataloader_num_workers=num_workers,
        dataloader_pin_memory=torch.cuda.is_available(),
        remove_unused_columns=False,
        label_names=["labels"],
        prediction_loss_only=True,
        report_to="none",
        disable_tqdm=not progress,
        **mixed,
    )


def finetune(
    model: str | os.PathLike | nn.Module,
    train: SpeechSet | StreamedSpeech,
    *,
    out_dir: str | os.PathLike,
    eval: SpeechSet | StreamedSpeech | None = None,
    processor: Any = None,
    epochs: float = 3,
    learning_rate: float | None = None,
    batch_size: int = 8,
    grad_accum: int = 1,
    max_steps: int | None = None,
    warmup: float = 0.1,
    precision: str = "auto",
    freeze: str = "front-end",
    language: str | None = None,
    save_steps: int | None = None,
    keep_checkpoints: int = 1,
    logging_steps: int = 10,
    seed: int = 0,
    resume: bool = False,
    overwrite: bool = False,
    num_workers: int = 0,
    progress: bool = True,
    callbacks: list[transformers.TrainerCallback] | None = None,
    allow_new_weights: bool = False,
) -> dict:
    """Fine-tune ``model`` on ``train`` in its current (pruned) shapes and save it to ``out_dir``.

    ``model`` is a folder, hub id or embedded spec (loaded with its processor) or a loaded model
    (then ``processor`` is required). ``learning_rate`` defaults to 5e-5 (CTC) or 1e-5 (Whisper);
    ``batch_size`` is per device, so the effective batch is ``batch_size * grad_accum * processes``;
    ``warmup`` is a fraction of the steps (or a step count if >= 1); ``precision="auto"`` uses bf16
    (or fp16) on CUDA and fp32 on CPU; ``freeze`` is ``"front-end"`` (the convolutions),
    ``"encoder"`` (Whisper) or ``"none"``; ``language`` is the language token of a multilingual Whisper
    checkpoint's labels (default ``en``; refused for models without language tokens); checkpoints are
    written each epoch (or every ``save_steps``).
    Everything is checked before training starts. ``out_dir`` must be new or empty, or hold a run
    to ``resume``, or (``overwrite``) a speechprune output holding nothing else; a run that stopped
    before its first checkpoint is started again. ``allow_new_weights`` accepts a dense folder
    whose head is missing (freshly initialised, to be trained here). Returns the JSON-ready record
    that is also written to ``out_dir/finetune.json``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    epochs, warmup, max_steps = check_schedule(epochs, warmup, max_steps, save_steps, logging_steps, seed)
    if batch_size < 1 or grad_accum < 1:
        raise SpeechPruneError(
            f"batch size and gradient accumulation must be at least 1, got {batch_size}, {grad_accum}")
    if len(train) < batch_size * world_size:
        raise SpeechPruneError(
            f"the train set {train.name} has {len(train)} utterance(s): too little for one batch of "
            f"{batch_size} per process x {world_size} process(es); lower --batch-size or add data"
        )
    if eval is not None and len(eval) < world_size:
        raise SpeechPruneError(f"the evaluation set {eval.name} has fewer utterances than processes ({world_size})")
    check_learning_rate(learning_rate)
    mixed = _precision(precision)
    out, action = plan_out_dir(out_dir, resume=resume, overwrite=overwrite,
                               inputs=[model] if isinstance(model, (str, os.PathLike)) else ())
    resume = action == "resume"
    overlap = check_overlap(train, eval) if eval is not None else None

    if isinstance(model, (str, os.PathLike)):
        source = str(model)
        model, loaded = load_model(model, allow_new_weights=allow_new_weights)
        processor = processor or loaded
    else:
        source = getattr(model, "name_or_path", "") or type(model).__name__
    if processor is None:
        raise SpeechPruneError(f"no processor (feature extractor and tokenizer) for {source}: save one beside the "
                               "model, or pass processor= with a loaded model")
    family, kind = model_family(model), _kind(model)
    language = check_language(model, language)
    train_labels = encode_labels(model, processor, train, language=language)
    eval_labels = encode_labels(model, processor, eval, language=language) if eval is not None else None

    shapes = widths(model)
    run = dict(model=source, family=family, widths=shapes, parameters=count_parameters(model))
    if resume:
        _check_resumable(out, run)
    frozen = _freeze(model, freeze)
    lr = learning_rate if learning_rate is not None else DEFAULT_LEARNING_RATE[kind]
    args = _training_arguments(
        kind, out / CHECKPOINTS, world_size=world_size, batch_size=batch_size, grad_accum=grad_accum,
        epochs=epochs, max_steps=max_steps, learning_rate=lr, warmup=warmup, with_eval=eval is not None,
        save_steps=save_steps, keep_checkpoints=keep_checkpoints, logging_steps=logging_steps, seed=seed,
        num_workers=num_workers, progress=progress, mixed=mixed,
    )
    state = PartialState()
    state.wait_for_everyone()  # every process has checked the folder before any writes to it
    if state.is_main_process and not resume:
        if action in ("restart", "replace") and out.is_dir():
            remove_written(out)  # checked above: speechprune wrote all of it
        out.mkdir(parents=True, exist_ok=True)
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        (out / RUN_FILE).write_text(json.dumps(dict(run, started=started), indent=2))
        write_marker(out, "finetune", files=[RUN_FILE], folders=[CHECKPOINTS, ".model-partial"])

    timer = _Timer()
    trainer_class = transformers.Seq2SeqTrainer if kind == "whisper" else transformers.Trainer
    trainer = trainer_class(
        model=model,
        args=args,
        data_collator=SpeechCollator(processor, whisper=kind == "whisper"),
        train_dataset=LabelledSpeech(train, train_labels),
        eval_dataset=LabelledSpeech(eval, eval_labels) if eval is not None else None,
        processing_class=processor,
        callbacks=[timer, _KeepSpecialTokens(model), *(callbacks or [])],
    )
    if not progress:
        trainer.remove_callback(transformers.trainer_callback.PrinterCallback)
    use_cache = getattr(model.config, "use_cache", None)
    if kind == "whisper":
        model.config.use_cache = False  # no key/value cache while training
    try:
        output = trainer.train(resume_from_checkpoint=True if resume else None)
    except BaseException:
        if state.is_main_process and not resume and not any((out / CHECKPOINTS).glob("checkpoint-*")):
            remove_written(out)  # nothing worth keeping: leave --out as it was, ready for a new start
        raise
    finally:
        if kind == "whisper":
            model.config.use_cache = use_cache
    model = trainer.model
    if widths(model) != shapes:
        raise SpeechPruneError("training changed the model's pruned widths")  # never expected: a safeguard

    history = trainer.state.log_history
    epochs_run = (trainer.state.epoch or 0.0) - timer.start_epoch
    record = dict(
        out=str(out),
        model=dict(run, architecture=type(model).__name__, frozen=frozen),
        data=dict(train=_provenance(train), eval=_provenance(eval), overlap_check=overlap),
        settings=dict(
            epochs=epochs, max_steps=max_steps, learning_rate=lr, warmup=warmup, scheduler="linear",
            batch_size=batch_size, grad_accum=grad_accum, processes=args.world_size, parallel=args.parallel_mode.value,
            effective_batch=batch_size * grad_accum * args.world_size, precision=precision,
            mixed_precision=next((k for k, v in mixed.items() if v), "fp32"), freeze=freeze, seed=seed,
            objective="CTC" if kind == "ctc" else "cross-entropy on Whisper tokens",
            language=language, resumed_from_step=timer.start_step,
        ),
        results=dict(
            global_step=trainer.state.global_step,
            epoch=trainer.state.epoch,
            train_loss=output.training_loss,
            losses=[dict(step=h["step"], epoch=h.get("epoch"), loss=h["loss"]) for h in history if "loss" in h],
            eval_losses=[dict(step=h["step"], epoch=h.get("epoch"), loss=h["eval_loss"])
                         for h in history if "eval_loss" in h],
            train_seconds=round(timer.seconds, 2),
            seconds_per_epoch=round(timer.seconds / epochs_run, 2) if epochs_run > 0 else None,
        ),
        device=str(args.device),
        versions=_versions(),
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    if trainer.is_world_process_zero():
        staging = out / ".model-partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        write_pruned(model, staging, processor=processor)
        (staging / REPORT_FILE).write_text(json.dumps(record, indent=2) + "\n")
        write_card(staging)  # again, now that the record is there: the card says the weights were fine-tuned
        installed = sorted(p.name for p in staging.iterdir())
        # listed before they move in: a kill during the move leaves nothing unlisted
        write_marker(out, "finetune", files=sorted(set(read_marker(out) or []) | {RUN_FILE, *installed}),
                     folders=[CHECKPOINTS, staging.name])
        _install(staging, out)
    state.wait_for_everyone()
    return record
