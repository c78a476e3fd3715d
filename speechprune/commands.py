"""The sub-commands of ``speechprune``: each one's options and the code that runs it.

The library modules hold the work (:mod:`speechprune.compress`, :mod:`speechprune.evaluate`,
:mod:`speechprune.finetune`, :mod:`speechprune.experiment`); this module turns their functions
into commands, so that none of them needs ``argparse``. ``speechprune study`` is still added by
:func:`speechprune.study.register_cli`. :mod:`speechprune.cli` runs them.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from speechprune import study
from speechprune.executors import add_executor_arguments, study_runner
from speechprune.allocation import ALLOCATIONS
from speechprune.checkpoint import save_pruned
from speechprune.compress import compress
from speechprune.data import load_speech, load_training_speech
from speechprune.errors import SpeechPruneError, check_device, cli_float, cli_int, cli_seed
from speechprune.evaluate import DECODINGS, evaluate, summary
from speechprune.export import evaluate_exported, export, read_settings, require_backend
from speechprune.experiment import (DEFAULT_DATA, DEFAULT_MODEL, format_main_job, format_table, plot_comparison,
                                    option_grid, plot_main_job, run_comparison, run_main_job)
from speechprune.finetune import FREEZE, PRECISIONS, check_learning_rate, finetune, plan_out_dir
from speechprune.hub import add_evaluation, command_line
from speechprune.methods import available_methods, entry_point_errors, load_entry_points
from speechprune.models import load_model
from speechprune.outputs import check_output_dir, check_output_file, output_state, staged_output, write_json
from speechprune.prune import FEATURES, MERGES, WEIGHTINGS
from speechprune.options import CompressionOptions, check_sparsity
from speechprune.recipes import RECIPES, recipe_options


# ---------------------------------------------------------------- compress


def _sparsity(text: str) -> float:
    """argparse ``type`` of ``--sparsity``: a number in [0, 1) (checked by :func:`check_sparsity`)."""
    try:
        return check_sparsity(text)
    except SpeechPruneError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("sparsity ")) from None


def _add_compress(sub: argparse._SubParsersAction) -> None:
    """Add ``speechprune compress``; its ``--method`` choices are the registered methods and plug-ins."""
    p = sub.add_parser("compress", help="prune a model's channels and save it as a folder",
                       description="Compress MODEL by channel clustering or magnitude pruning and save it to --out.")
    p.add_argument("model", help="local Hugging Face folder, embedded:whisper-base / embedded:whisper-tiny.en, or a hub id")
    with warnings.catch_warnings():  # reported once, below, in the command line's own words
        warnings.simplefilter("ignore", RuntimeWarning)
        load_entry_points()
    for name, why in entry_point_errors.items():  # a broken plug-in is named; the others stay usable
        print(f"speechprune: method plug-in {name!r} was not loaded: {why}", file=sys.stderr)
    p.add_argument("--method", choices=available_methods(), default=None,
                   help="assignment method: cluster (k-means, the paper), magnitude (the baseline), pairs (closest "
                        "pairs first, no seed), or one a plug-in registered (entry point group speechprune.methods); "
                        "default: the recipe's (paper: cluster)")
    p.add_argument("--sparsity", type=_sparsity, required=True, help="fraction of channels removed in the scope, in [0, 1)")
    p.add_argument("--scope", default="ffn",
                   help="comma-separated parts: encoder.ffn, encoder.attention, decoder.ffn, decoder.attention, "
                        "or encoder, decoder, ffn, attention, all (default: ffn)")
    p.add_argument("--recipe", choices=RECIPES, default=None,
                   help="a named set of the options below (default: paper); options given explicitly override it")
    p.add_argument("--allocation", choices=ALLOCATIONS, default=None,
                   help="how the budget is spread over layers (paper recipe: uniform)")
    p.add_argument("--features", choices=FEATURES, default=None,
                   help="what k-means compares: both = producer rows + consumer columns (the paper), producer, "
                        "normalized = producer rows as they act on the LayerNorm-normalised input, or function = "
                        "each channel's activations on synthetic inputs drawn from its LayerNorm (no data)")
    p.add_argument("--weighting", choices=WEIGHTINGS, default=None,
                   help="k-means weight of a channel: none, or consumer = its consumer column's squared norm")
    p.add_argument("--merge", choices=MERGES, default=None,
                   help="how a cluster's producers combine: mean (the paper), weighted (by consumer norm), "
                        "projection (first-order optimal), corrected = mean, with the mean output shift on "
                        "synthetic LayerNorm inputs put back into the consumer bias (no data), or refit = mean, "
                        "with each feed-forward consumer refitted to the dense block on synthetic speech-like "
                        "audio (no recordings)")
    p.add_argument("--seed", type=cli_seed, default=0)
    p.add_argument("--max-iter", type=cli_int(1), default=100, help="k-means iterations at most")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--allow-new-weights", action="store_true",
                   help="accept a dense MODEL folder with missing or extra tensors (a head meant to be trained); "
                        "without it such a folder is refused")
    p.add_argument("--out", required=True, help="folder to write the pruned model to (must be empty or absent)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an --out that speechprune wrote (refused if it holds anything else)")
    p.set_defaults(func=_run_compress)


def _run_compress(args: argparse.Namespace) -> int:
    # everything that can be checked without the model, before any work (numbers: by the parser)
    options = CompressionOptions(method=args.method, sparsity=args.sparsity, scope=args.scope,
                                 allocation=args.allocation, features=args.features, weighting=args.weighting,
                                 merge=args.merge, seed=args.seed, recipe=args.recipe)
    device = check_device(args.device)
    target = check_output_dir(args.out, overwrite=args.overwrite, inputs=[args.model])
    expect = output_state(target)
    model, processor = load_model(args.model, device=device, allow_new_weights=args.allow_new_weights)
    report = compress(model, options, max_iter=args.max_iter)
    command = command_line(report.to_dict(), model=args.model, out=args.out)
    if command and args.max_iter != 100:
        command += f" --max-iter {args.max_iter}"
    save_pruned(model, args.out, processor=processor, report=report, overwrite=args.overwrite,
                command=command, inputs=[args.model], expect=expect, caller="compress")
    print(report.table())
    print(f"saved to {args.out}")
    return 0

# ---------------------------------------------------------------- evaluate


def _run_evaluate(args: argparse.Namespace) -> int:
    if args.json is not None:  # checked before the work, so that neither its results nor an input can be lost
        if not args.json.parent.is_dir():
            raise SpeechPruneError(f"cannot write {args.json}: folder {args.json.parent} does not exist")
        check_output_file(args.json, overwrite=args.overwrite, inputs=[args.model, args.data], flag="--json")
    if args.backend != "transformers":  # an exported folder, decoded greedily in its own runtime
        return _evaluate_export(args)
    card = _card_folder(args.model) if args.card else None  # checked before loading anything
    device = check_device(args.device)  # the package-wide default when not given
    speech = load_speech(args.data, max_samples=args.max_samples, split=args.split)
    model, processor = load_model(args.model, device=device, allow_new_weights=args.allow_new_weights)
    record = evaluate(model, processor, speech, batch_size=args.batch_size, device=device,
                      label=args.model, long_form=args.long_form, decoding=args.decoding)
    print(summary(record))
    if args.json is not None:
        write_json(args.json, record)
        print(f"wrote {args.json}")
    if card is not None:
        print(f"recorded the WER in {add_evaluation(card, record)}")
    return 0


def _evaluate_export(args: argparse.Namespace) -> int:
    """``evaluate --backend ct2|onnx``: a folder ``speechprune export`` wrote, same greedy decoding and normaliser."""
    for flag, given in (("--card", args.card), ("--long-form", args.long_form),
                        ("--decoding fallback", args.decoding != "greedy"),
                        (f"--device {args.device}", args.device not in (None, "cpu"))):
        if given:
            raise SpeechPruneError(f"{flag} is for --backend transformers; the {args.backend} backend decodes "
                                   "greedily on the CPU")
    require_backend(args.backend)
    read_settings(args.model, args.backend)
    speech = load_speech(args.data, max_samples=args.max_samples, split=args.split)
    record = evaluate_exported(args.model, speech, backend=args.backend, batch_size=args.batch_size,
                               label=args.model)
    print(f"[{args.backend}, weights {record['export']['quantize']}] {summary(record)}")
    if args.json is not None:
        write_json(args.json, record)
        print(f"wrote {args.json}")
    return 0


def _card_folder(spec: str) -> Path:
    """The folder whose model card ``--card`` updates: a local folder saved by speechprune."""
    folder = Path(spec).expanduser()
    config = folder / "config.json"
    if not config.is_file() or '"speechprune"' not in config.read_text(encoding="utf-8"):
        raise SpeechPruneError(f"--card needs MODEL to be a folder saved by speechprune; {spec} is not one")
    return folder


def _add_evaluate(subparsers: argparse._SubParsersAction) -> None:
    """Add ``speechprune evaluate``."""
    parser = subparsers.add_parser(
        "evaluate",
        help="word error rate of a model on speech (greedy decoding)",
        description="Transcribe speech greedily and report the corpus WER with the Whisper English "
                    "normaliser; optionally write the full record as JSON.",
    )
    parser.add_argument("model", metavar="MODEL",
                        help="embedded:whisper-tiny.en, embedded:whisper-base, a local folder or a hub id")
    parser.add_argument("--data", default="embedded",
                        help="embedded (default), embedded-full, embedded:train, an audiofolder, "
                             "a LibriSpeech folder or librispeech:test-clean / test-other")
    parser.add_argument("--split", default=None, help="keep rows of this split (audiofolders with a split column)")
    parser.add_argument("--max-samples", type=cli_int(1), default=None, metavar="N", help="first N utterances only")
    parser.add_argument("--batch-size", type=cli_int(1), default=8, metavar="B")
    parser.add_argument("--device", default=None, metavar="D", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--card", action="store_true",
                        help="also record the WER in MODEL's model card (README.md of a folder saved by speechprune)")
    parser.add_argument("--decoding", choices=DECODINGS, default="greedy",
                        help="greedy (default, the paper's protocol) or fallback: Whisper's temperature fallback "
                             "(compression ratio 2.4, log-probability -1.0)")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT",
                        help="write the record here (never inside MODEL or the speech folder; a file speechprune "
                             "wrote is replaced, any other file only with --overwrite)")
    parser.add_argument("--overwrite", action="store_true",
                        help="let --json replace an existing file that speechprune did not write")
    parser.add_argument("--allow-new-weights", action="store_true",
                        help="accept a dense MODEL folder with missing or extra tensors (a head meant to be trained); "
                             "without it such a folder is refused")
    parser.add_argument("--long-form", action="store_true",
                        help="transcribe Whisper clips longer than 30 s whole, with transformers' sequential "
                             "long-form generation (default: cut them to 30 s, with a warning)")
    parser.add_argument("--backend", default="transformers", metavar="{transformers,ct2,onnx}",
                        help="transformers (default: MODEL is a model), or ct2 / onnx: MODEL is a folder that "
                             "speechprune export wrote, decoded greedily with CTranslate2 / ONNX Runtime on the CPU")
    parser.set_defaults(func=_run_evaluate)

# ---------------------------------------------------------------- finetune


def _add_finetune(sub: argparse._SubParsersAction) -> None:
    """Add ``speechprune finetune``."""
    p = sub.add_parser(
        "finetune",
        help="fine-tune a (pruned) model, keeping its shapes (CTC or Whisper seq2seq)",
        description="Fine-tune MODEL on speech with the Hugging Face Trainer and save it to --out in its "
                    "pruned shapes. Runs unchanged under torchrun / accelerate launch on several GPUs.",
    )
    p.add_argument("model", metavar="MODEL", help="a folder from `speechprune compress`, any supported model folder, "
                                                 "a hub id or embedded:whisper-tiny.en / embedded:whisper-base")
    p.add_argument("--data", required=True, help="train speech: an audiofolder, embedded:train, "
                                                 "librispeech:train-clean-100 / train-960, ...")
    p.add_argument("--split", default=None, help="rows of this split of an audiofolder with a split column")
    p.add_argument("--max-samples", type=cli_int(1), default=None, metavar="N", help="first N train utterances only")
    p.add_argument("--eval-data", default=None, help="evaluation speech (must not overlap the train set)")
    p.add_argument("--eval-split", default=None, help="split of the evaluation audiofolder")
    p.add_argument("--eval-max-samples", type=cli_int(1), default=None, metavar="N")
    p.add_argument("--out", required=True,
                   help="folder for the model and checkpoints (new or empty; or a run with --resume)")
    p.add_argument("--epochs", type=cli_float(above=0), default=3)
    p.add_argument("--max-steps", type=cli_int(1), default=None, help="stop after this many optimizer steps")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 5e-5 CTC, 1e-5 Whisper)")
    p.add_argument("--batch-size", type=cli_int(1), default=8, help="per device")
    p.add_argument("--grad-accum", type=cli_int(1), default=1, help="gradient accumulation steps")
    p.add_argument("--warmup", type=cli_float(minimum=0), default=0.1, help="warm-up: a fraction of the steps, or steps if >= 1")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help="auto: bf16/fp16 on CUDA, fp32 on CPU")
    p.add_argument("--freeze", choices=FREEZE, default="front-end",
                   help="what is not trained: the convolutional front end (default), Whisper's whole encoder, "
                        "or nothing")
    p.add_argument("--language", default=None,
                   help="Whisper language token for multilingual checkpoints (default en; other models refuse it)")
    p.add_argument("--save-steps", type=cli_int(1), default=None, help="checkpoint every N steps (default: each epoch)")
    p.add_argument("--logging-steps", type=cli_int(1), default=10)
    p.add_argument("--num-workers", type=cli_int(0), default=0, help="data loader worker processes")
    p.add_argument("--seed", type=cli_seed, default=0)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--allow-new-weights", action="store_true",
                   help="accept a dense MODEL folder with missing or extra tensors (a new head to train)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an --out that speechprune wrote (refused if it holds anything else)")
    p.set_defaults(func=_run_finetune)


def _run_finetune(args: argparse.Namespace) -> int:
    check_learning_rate(args.lr)
    plan_out_dir(args.out, resume=args.resume, overwrite=args.overwrite, inputs=[args.model])
    train = load_training_speech(args.data, max_samples=args.max_samples, split=args.split)
    eval_set = (load_training_speech(args.eval_data, max_samples=args.eval_max_samples, split=args.eval_split)
                if args.eval_data else None)
    record = finetune(args.model, train, eval=eval_set, out_dir=args.out, epochs=args.epochs, max_steps=args.max_steps,
                      learning_rate=args.lr, batch_size=args.batch_size, grad_accum=args.grad_accum, warmup=args.warmup,
                      precision=args.precision, freeze=args.freeze, language=args.language,
                      save_steps=args.save_steps, logging_steps=args.logging_steps, num_workers=args.num_workers,
                      seed=args.seed, resume=args.resume, overwrite=args.overwrite,
                      allow_new_weights=args.allow_new_weights)
    if int(os.environ.get("RANK", "0")) == 0:
        r = record["results"]
        per_epoch = f", {r['seconds_per_epoch']:.1f} s per epoch" if r["seconds_per_epoch"] else ""
        print(f"fine-tuned {record['model']['model']} for {r['global_step']} steps "
              f"({r['epoch']:.2f} epochs{per_epoch}); train loss {r['train_loss']:.4f}; saved to {record['out']} "
              f"(evaluate it with: speechprune evaluate {record['out']} --data ...)")
    return 0

# ---------------------------------------------------------------- compare


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="the main job: the paper's method, the recommended recipe and magnitude "
                                       "pruning at the same budget",
                       description="The main job: compress MODEL at the same sparsity and scope with the paper's "
                                   "recipe (over --seeds k-means seeds), the recommended recipe and magnitude "
                                   "pruning, evaluate them and the dense model on the same speech, print the table "
                                   "with what the differences mean, and save a plot. Given --recipe or any of "
                                   "--method/--allocations/--merges/--features/--weighting, it compares that method "
                                   "with magnitude pruning at --seed instead.")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--data", default=DEFAULT_DATA, help="embedded, embedded-full, an audiofolder, librispeech:test-clean ...")
    p.add_argument("--sparsity", type=_sparsity, default=0.2)
    p.add_argument("--scope", default="encoder.ffn")
    p.add_argument("--recipe", choices=RECIPES, default=None,
                   help="compare this recipe's clustering with magnitude; the options below, when given, override it "
                        "(default: no recipe, the paper's features and producer features side by side)")
    p.add_argument("--method", choices=available_methods(), default=None,
                   help="the method compared with magnitude pruning (default: the recipe's; without a recipe, "
                        "cluster): a built-in or a plug-in's (entry point group speechprune.methods)")
    p.add_argument("--allocations", default=None, help=f"comma-separated, from {', '.join(ALLOCATIONS)} (default: uniform)")
    p.add_argument("--merges", default=None,
                   help=f"comma-separated merge rules for cluster, from {', '.join(MERGES)} (default: mean)")
    p.add_argument("--features", default=None,
                   help=f"comma-separated feature sets for cluster, from {', '.join(FEATURES)} "
                        "(default: the paper's reading, both, and the producer rows alone)")
    p.add_argument("--weighting", default=None, choices=WEIGHTINGS,
                   help="k-means weight of each channel (cluster; default: none)")
    p.add_argument("--decoding", default="greedy", choices=DECODINGS,
                   help="greedy (default, the paper's protocol) or fallback (Whisper's temperature fallback)")
    p.add_argument("--max-samples", type=cli_int(1), default=None)
    p.add_argument("--batch-size", type=cli_int(1), default=8)
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=cli_seed, default=0, help="k-means seed when options or a recipe are given")
    p.add_argument("--seeds", type=cli_int(1, 100), default=3,
                   help="without options or a recipe (the main job): k-means seeds 0..N-1 of the paper's method "
                        "(default 3)")
    p.add_argument("--out", default="runs/main", help="folder for results.json and wer.png")
    p.add_argument("--overwrite", action="store_true",
                   help="replace results speechprune wrote in --out (refused if it holds anything else)")
    p.set_defaults(func=_run_compare)


def _run_compare(args: argparse.Namespace) -> int:
    # everything that can be checked before loading data or a model
    if args.recipe is None and all(getattr(args, f) is None for f in ("method", "allocations", "merges", "features",
                                                                      "weighting")):
        return _run_main_job(args)
    _apply_recipe(args)
    lists = {}
    for flag, kind, choices in (("allocations", "allocation", ALLOCATIONS), ("merges", "merge rule", MERGES),
                                ("features", "feature set", FEATURES)):
        lists[flag] = _names(getattr(args, flag))
        if not lists[flag]:
            raise SpeechPruneError(f"--{flag} names nothing: use one or more of {', '.join(choices)}")
    options = option_grid(sparsity=args.sparsity, scope=args.scope, methods=args.methods,
                          allocations=lists["allocations"], features=lists["features"], merges=lists["merges"],
                          weighting=args.weighting, seed=args.seed)
    device = check_device(args.device)
    target = check_output_dir(args.out, overwrite=args.overwrite, inputs=[args.model])
    expect = output_state(target)
    result = run_comparison(args.model, args.data, options, max_samples=args.max_samples, decoding=args.decoding,
                            batch_size=args.batch_size, device=device)
    return _publish_comparison(args, expect, result, plot_comparison, format_table)


def _run_main_job(args: argparse.Namespace) -> int:
    """``compare`` without options: dense, the paper's recipe over ``--seeds`` seeds, the recommended
    recipe and magnitude pruning, with what the differences mean."""
    device = check_device(args.device)
    target = check_output_dir(args.out, overwrite=args.overwrite, inputs=[args.model])
    expect = output_state(target)
    result = run_main_job(args.model, args.data, sparsity=args.sparsity, scope=args.scope, seeds=args.seeds,
                          max_samples=args.max_samples, decoding=args.decoding, batch_size=args.batch_size,
                          device=device)
    return _publish_comparison(args, expect, result, plot_main_job, format_main_job)


def _publish_comparison(args: argparse.Namespace, expect, result: dict, plot, describe) -> int:
    """Write ``results.json`` and ``wer.png`` to ``--out`` (staged, then published) and print the table."""
    with staged_output(args.out, overwrite=args.overwrite, expect=expect, command="compare") as staging:
        write_json(staging / "results.json", result)
        plot(result, staging / "wer.png")
    print(describe(result))
    out = Path(args.out)
    print(f"results: {out / 'results.json'}  figure: {out / 'wer.png'}")
    return 0


def _apply_recipe(args: argparse.Namespace) -> None:
    """Fill the options left unset: from ``--recipe`` when given, else the defaults (both feature sets)."""
    if args.recipe is None:
        defaults = dict(allocations="uniform", merges="mean", features="both,producer", weighting="none")
        args.methods = (args.method or "cluster", "magnitude")
    else:
        r = recipe_options(args.recipe)
        defaults = dict(allocations=r["allocation"], merges=r["merge"], features=r["features"],
                        weighting=r["weighting"])
        args.methods = (args.method or r["method"], "magnitude")
    for name, value in defaults.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)


def _names(text: str) -> tuple[str, ...]:
    return tuple(a.strip() for a in text.split(",") if a.strip())


# ---------------------------------------------------------------- export


def _add_export(sub: argparse._SubParsersAction) -> None:
    """Add ``speechprune export``."""
    p = sub.add_parser("export", help="export a pruned folder to CTranslate2 (faster-whisper) or ONNX Runtime",
                       description="Export FOLDER, written by speechprune compress, to a CTranslate2 directory "
                                   "(Whisper; faster-whisper loads it) or to ONNX Runtime graphs (Whisper's encoder "
                                   "and decoder with past keys and values; a CTC model with its head), with the "
                                   "model card, the compression report and the export settings.")
    p.add_argument("folder", metavar="FOLDER", help="a folder written by speechprune compress (or save_pruned)")
    p.add_argument("--to", required=True, metavar="{ct2,onnx}",
                   help="ct2: CTranslate2 (faster-whisper; Whisper only), onnx: ONNX Runtime")
    p.add_argument("--out", required=True, help="folder to write the export to (must be empty or absent)")
    p.add_argument("--quantize", default="none", metavar="{none,int8,float16}",
                   help="weights: none (float32, default), int8, or float16 (ct2 only)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an --out that speechprune wrote (refused if it holds anything else)")
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    out = export(args.folder, to=args.to, out=args.out, quantize=args.quantize, overwrite=args.overwrite)
    print(f"exported {args.folder} to {out} ({args.to}, weights {args.quantize}); "
          f"score it with: speechprune evaluate {out} --backend {args.to}")
    return 0


#: What ``speechprune --help`` lists, in this order: each adds its sub-parser and sets ``func``.
def _add_study(sub: argparse._SubParsersAction) -> None:
    """Add ``speechprune study`` with the executors' options (``--executor submitit`` ...)."""
    study.register_cli(sub, add_options=add_executor_arguments, runner=study_runner)


COMMANDS = (_add_compress, _add_evaluate, _add_finetune, _add_compare, _add_export, _add_study)


def register_all(sub: argparse._SubParsersAction) -> None:
    """Add every sub-command to ``sub``."""
    for add in COMMANDS:
        add(sub)
