"""Benchmark: what a user deploys. Dense vs pruned Whisper on transformers, CTranslate2 and ONNX Runtime.

    python benchmarks/bench_deploy.py --max-samples 16              # tiny.en and base, every case
    python benchmarks/bench_deploy.py --models tiny.en --backends ct2:int8,onnx:none
    python benchmarks/bench_deploy.py --table                        # the saved results as a table

For embedded whisper-tiny.en and whisper-base: dense, and ``--recipe`` (default ``pairs-2026``, the
recommended recipe when the saved results ran; ``--recipe recommended --out NEW.json`` for today's) at FFN 10%
(scope ffn, sparsity 0.1), encoder FFN 20% and all FFN 50%; each on transformers (float32),
CTranslate2 (float32, int8) and ONNX Runtime (float32, int8). Per case: size on disk (the weight
files), peak resident memory of the process that loads and runs it, seconds per utterance at
batch 1 on 1 and 2 threads (median over the clips) and at batch 8 (one batch of the first 8 clips),
and WER on ``embedded`` (greedy, batch 8,
the Whisper normaliser). Each case runs in a fresh process, so that its peak memory is its own
(it includes Python, torch and the runtime). Results go to ``results/benchmarks/deploy.json``
as each case finishes (and the table, with the combination to pick, to ``deploy_table.md``, which
the book includes); a rerun skips the cases already there. Speeds are meant as ratios to the
dense model on the same backend and precision, measured in one run on one machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from speechprune.outputs import write_file

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "benchmarks" / "deploy.json"
MODELS = {"tiny.en": "embedded:whisper-tiny.en", "base": "embedded:whisper-base"}
#: setting -> (scope, sparsity); "dense" is the model as it comes
SETTINGS = {"dense": None, "ffn10": ("ffn", 0.1), "encffn20": ("encoder.ffn", 0.2), "ffn50": ("ffn", 0.5)}
BACKENDS = ("transformers:float32", "ct2:none", "ct2:int8", "onnx:none", "onnx:int8")
#: The recipe of the saved results (``results/benchmarks/deploy.json``, whose ``options`` say what it resolved
#: to when they ran): every pruned case of one results file uses one recipe. When a recipe search changes
#: ``recommended``, rename the saved results' recipe to the name the old options keep (as ``pairs-2026``).
RECIPE = "recommended"


def prepare(model: str, setting: str, work: Path, recipe: str = RECIPE) -> Path:
    """The speechprune folder of a case (made once: compress with ``recipe``, or dense)."""
    from speechprune import CompressionOptions, compress, save_pruned
    from speechprune.models import load_model
    from speechprune.options import recipe_fields

    folder = work / (f"{model}-{setting}" if not SETTINGS[setting] else f"{model}-{setting}-{recipe}")
    if (folder / "config.json").is_file():
        if not SETTINGS[setting]:
            return folder
        made = CompressionOptions.from_report(json.loads((folder / "speechprune_report.json").read_text()))
        if recipe_fields(made) == recipe_fields(recipe):
            return folder
        # a recipe's name can outlive its options (``recommended`` changes when a recipe search picks
        # anew): a folder pruned with other options is not this case, so it is made again
        print(f"{folder.name}: pruned with other options than --recipe {recipe} has now; pruning again",
              file=sys.stderr)
    m, processor = load_model(MODELS[model])
    report = None
    if SETTINGS[setting]:
        scope, sparsity = SETTINGS[setting]
        report = compress(m, sparsity=sparsity, scope=scope, recipe=recipe, progress=False)
    save_pruned(m, folder, processor=processor, report=report, overwrite=folder.exists())  # this script's own folder
    return folder


def _files_size(folder: Path, names: list[str]) -> int:
    return sum((folder / n).stat().st_size for n in names)


def _timed(fn) -> tuple[float, float]:
    """Wall and CPU seconds (this process, every thread) of ``fn()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def _measure(key: str, folder: str, backend: str, precision: str, max_samples: int, speed_clips: int,
             queue, speed_only: bool = False) -> None:
    """Runs in a child process: WER, batch-1 and batch-8 speed on 1 and 2 threads, size and peak memory.

    Each timing is kept as wall seconds and as CPU seconds: on 1 thread the CPU time is what an idle
    machine's wall time would be, whatever else the machine runs (a load that makes wall times noise)."""
    import torch

    from speechprune.data import load_speech
    from speechprune.evaluate import evaluate, transcribe
    from speechprune.export import DeployedModel, evaluate_exported
    from speechprune.models import load_model

    speech = load_speech("embedded", max_samples=max_samples)
    clips = [u.audio for u in speech.utterances[:speed_clips]]
    batch8 = [u.audio for u in speech.utterances[:8]]  # one batch of 8, timed per thread count
    out = dict(key=key, backend=backend, precision=precision)
    path = Path(folder)
    record = None
    if backend == "transformers":
        model, processor = load_model(path)
        out["size_bytes"] = _files_size(path, [p.name for p in path.glob("*.safetensors")])
        if not speed_only:
            record = evaluate(model, processor, speech, batch_size=8, progress=False)

        def runner(threads):
            torch.set_num_threads(threads)
            return lambda audios, b: transcribe(model, processor, audios, batch_size=b, progress=False)
    else:
        settings = json.loads((path / "speechprune_export.json").read_text())
        out["size_bytes"] = _files_size(path, settings["model_files"])
        if not speed_only:
            record = evaluate_exported(path, speech, batch_size=8, progress=False)

        def runner(threads):
            deployed = DeployedModel(path, threads=threads)
            return lambda audios, b: deployed.transcribe(audios, batch_size=b, progress=False)
    for threads in (1, 2):
        run = runner(threads)
        run(clips[:1], 1)  # warm-up: first-call allocations are not the model's speed
        times = [_timed(lambda clip=clip: run([clip], 1)) for clip in clips]
        out[f"seconds_per_utt_{threads}t"] = statistics.median(t[0] for t in times)
        out[f"cpu_per_utt_{threads}t"] = statistics.median(t[1] for t in times)
        wall, cpu = _timed(lambda: run(batch8, 8))
        out[f"seconds_per_utt_b8_{threads}t"], out[f"cpu_per_utt_b8_{threads}t"] = wall / len(batch8), cpu / len(batch8)
    out.update(speed_clips=len(clips), load_average=os.getloadavg()[0])
    if record is not None:
        out.update(wer=record["wer"], n_utterances=record["n_utterances"], ref_words=record["ref_words"],
                   peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    queue.put(out)


def run_case(key: str, folder: Path, backend: str, precision: str, max_samples: int, speed_clips: int,
             speed_only: bool = False) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_measure, args=(key, str(folder), backend, precision, max_samples, speed_clips, queue,
                                               speed_only))
    child.start()
    result = queue.get()
    child.join()
    return result


def load_results(path: Path) -> dict:
    if path.is_file():
        return json.loads(path.read_text())
    return dict(machine=dict(platform=platform.platform(), python=platform.python_version(),
                             cpus=mp.cpu_count()), cases={})


def save_results(path: Path, results: dict) -> None:
    write_file(path, json.dumps(results, indent=1) + "\n")  # atomic, parents made: the package's own writer


def _loads(results: dict) -> str:
    loads = [c["load_average"] for c in results["cases"].values() if "load_average" in c]
    return f"{min(loads):.1f} to {max(loads):.1f}" if loads else "not recorded"


def _one_thread_words(results: dict) -> str:
    if one_thread_field(results) == "cpu_per_utt_1t":
        return "CPU seconds (what an idle machine's wall time would be, whatever else the machine ran)"
    return "wall seconds (on a machine that was busy with other work: read them as rough)"


def one_thread_field(results: dict) -> str:
    """The 1-thread timing every case is compared by: CPU seconds (what an idle machine's wall time would
    be, whatever else ran) when every case has them, else wall seconds (never a mix of the two)."""
    cases = results["cases"].values()
    return "cpu_per_utt_1t" if cases and all("cpu_per_utt_1t" in c for c in cases) else "seconds_per_utt_1t"


def _ratio(dense: dict, case: dict, field: str) -> str:
    """dense / case for a timing field, or "n/a" for results saved before the field existed."""
    if field not in dense or field not in case:
        return "n/a"
    return f"{dense[field] / case[field]:.2f}x"


def table(results: dict) -> str:
    """A markdown table: each case beside the dense model of the same model, backend and precision."""
    F = one_thread_field(results)
    cases = results["cases"]
    rows = ["| model | setting | backend | weights | size (MB) | size / dense | peak RSS (MB) | s/utt 1 thread "
            "| speed-up 1 thread | speed-up 2 threads | speed-up batch 8, 2 threads | WER % | WER - dense |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, c in cases.items():
        model, setting, backend, precision = key.split("/")
        dense = cases.get(f"{model}/dense/{backend}/{precision}")
        if dense is None:
            continue
        rows.append(
            f"| {model} | {setting} | {backend} | {precision} | {c['size_bytes'] / 1e6:.0f} "
            f"| {c['size_bytes'] / dense['size_bytes']:.2f} | {c['peak_rss_mb']:.0f} "
            f"| {c[F]:.2f} | {dense[F] / c[F]:.2f}x "
            f"| {dense['seconds_per_utt_2t'] / c['seconds_per_utt_2t']:.2f}x "
            f"| {_ratio(dense, c, 'seconds_per_utt_b8_2t')} | {c['wer']:.2f} "
            f"| {c['wer'] - dense['wer']:+.2f} |")
    return "\n".join(rows)


def _pruned_float32(cases: dict, model: str) -> dict:
    """``model``'s pruned settings in float32 transformers, {setting: case}, in the saved order."""
    return {k.split("/")[1]: c for k, c in cases.items()
            if k.startswith(model + "/") and k.endswith("/transformers/float32") and "/dense/" not in k}


def recommendation(results: dict, max_wer_increase: float = 1.0, two_threads: bool = True) -> str:
    """Per model, the fastest case (1 thread) whose WER is within ``max_wer_increase`` points of the dense
    float32 transformers model; and the pruned setting with the lowest WER on its fastest runtime (within
    ``max_wer_increase`` of that setting's float32 WER), each compared with the dense float32 model."""
    F = one_thread_field(results)
    lines = []
    cases = results["cases"]
    for model in dict.fromkeys(k.split("/")[0] for k in cases):
        base = cases.get(f"{model}/dense/transformers/float32")
        if base is None:
            continue
        fits = [(c[F], c["size_bytes"], k) for k, c in cases.items()
                if k.startswith(model + "/") and c["wer"] <= base["wer"] + max_wer_increase]
        picks = [("fastest", min(fits))]
        # the pruned setting that keeps the lowest WER (in float32 transformers), on its fastest runtime
        # within 1 point of that setting's own float32 WER: what the benchmark can recommend to prune with
        pruned = _pruned_float32(cases, model)
        if pruned:
            setting = min(pruned, key=lambda s: pruned[s]["wer"])
            own = pruned[setting]["wer"]
            fast = [(c[F], c["size_bytes"], k) for k, c in cases.items()
                    if k.startswith(f"{model}/{setting}/") and c["wer"] <= own + max_wer_increase]
            picks.append(("fastest pruned", min(fast)))
        for label, (seconds, size, key) in picks:
            c = cases[key]
            _, setting, backend, precision = key.split("/")
            lines.append(
                f"{model}, {label}: {setting} on {backend} with {precision} weights, {base['size_bytes'] / size:.1f}x "
                f"smaller and {base[F] / seconds:.2f}x as fast on 1 thread "
                + (f"({base['seconds_per_utt_2t'] / c['seconds_per_utt_2t']:.2f}x on 2) " if two_threads else "")
                + f"as the dense float32 "
                f"transformers model, WER {c['wer'] - base['wer']:+.2f} points ({c['wer']:.2f}% vs {base['wer']:.2f}% "
                f"on {c['n_utterances']} embedded clips, {c['ref_words']} words)")
    return "\n".join(lines)


def write_table(results: dict, path: Path) -> None:
    """The table and the recommendation as markdown, generated from the saved results (the book includes it)."""
    text = (f"{table(results)}\n\nSpeed-ups and size ratios are to the dense model on the same backend and "
            f"precision; seconds per utterance at batch 1 are medians over {results.get('speed_clips')} clips, and at "
            f"batch 8 the time of one batch of the first 8 clips divided by 8. On 1 thread they are "
            f"{_one_thread_words(results)}; on 2 threads wall seconds, under the machine's load "
            f"({_loads(results)}); "
            f"WER is greedy on the first {results.get('max_samples') or 'all'} embedded clips. Peak memory is the "
            f"resident peak of the process that loaded and ran the case (Python, torch and the runtime included). "
            f"Machine: {results['machine']['cpus']} CPUs.\n\n"
            f"**What to pick** (the fastest on 1 thread within 1 WER point of the dense float32 transformers "
            f"model; and the pruned setting with the lowest WER, on its fastest runtime within 1 point of its own "
            f"float32 WER):\n\n" + "\n".join(f"- {line}" for line in recommendation(results).splitlines()) + "\n")
    path.write_text(text)


README = ROOT / "README.md"
README_BLOCK = ("<!-- python benchmarks/bench_deploy.py --readme -->\n", "<!-- end of deploy table -->")


def readme_block(results: dict, model: str = "base") -> str:
    """The README's deployment table: every case of ``model`` against the dense float32 transformers model
    (what a user starts from), then the combinations to pick, generated from the saved results."""
    F = one_thread_field(results)
    cases = results["cases"]
    base = cases.get(f"{model}/dense/transformers/float32")
    if base is None:
        return "(no saved results for this model yet: run python benchmarks/bench_deploy.py)\n"
    rows = ["| setting | runtime | weights | size (MB) | smaller | faster, 1 thread | WER % |",
            "|---|---|---|---:|---:|---:|---:|"]
    for key, c in cases.items():
        m, setting, backend, precision = key.split("/")
        if m != model:
            continue
        rows.append(f"| {setting} | {backend} | {precision} | {c['size_bytes'] / 1e6:.0f} "
                    f"| {base['size_bytes'] / c['size_bytes']:.1f}x | {base[F] / c[F]:.2f}x | {c['wer']:.2f} |")
    picks = [line for line in recommendation(results, two_threads=False).splitlines() if line.startswith(model + ",")]
    return "\n".join([
        f"Whisper {model} (`embedded:whisper-{model}`), dense and `--recipe {results.get('recipe', RECIPE)}`, against the dense float32 "
        f"`transformers` model: size of the weight files, seconds per utterance at batch 1 (median over "
        f"{results.get('speed_clips')} clips, on 1 thread: {_one_thread_words(results)}), greedy WER on the first "
        f"{results.get('max_samples') or 'all'} embedded clips; one run on {results['machine']['cpus']} CPU cores. "
        f"The 2-thread and batch-8 timings, taken {'on the same busy machine' if F == 'seconds_per_utt_1t' else 'in the same run'}, "
        f"are in the book's full table.{_looping_words(cases, model)}",
        "", *rows, "", *[f"- {line}" for line in picks], ""])


def _looping_words(cases: dict, model: str) -> str:
    """A sentence naming the settings whose pruned float32 model loops (WER above 100%), or nothing."""
    looping = [setting for setting, c in _pruned_float32(cases, model).items() if c["wer"] > 100]
    if not looping:
        return ""
    return (f" At {', '.join(looping)} the pruned model loops (WER above 100%), so it decodes more tokens "
            "and runs slower.")


def write_readme(results: dict, check: bool = False) -> int:
    """Rewrite (or, with ``check``, compare) the README's block between :data:`README_BLOCK`'s markers."""
    text = README.read_text(encoding="utf-8")
    start, end = README_BLOCK
    if text.count(start) != 1 or text.count(end) != 1:
        print(f"README.md needs one {start.strip()} ... {end} block", file=sys.stderr)
        return 1
    head, rest = text.split(start)
    old, tail = rest.split(end)
    new = readme_block(results)
    if check:
        if old != new:
            print("README.md's deployment table differs from benchmarks/bench_deploy.py --readme", file=sys.stderr)
            return 1
        return 0
    README.write_text(head + start + new + end + tail, encoding="utf-8")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tiny.en,base", help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, from {', '.join(SETTINGS)}")
    parser.add_argument("--backends", default=",".join(BACKENDS), help=f"comma-separated, from {', '.join(BACKENDS)}")
    parser.add_argument("--max-samples", type=int, default=None, help="first N embedded clips for the WER")
    parser.add_argument("--speed-clips", type=int, default=8, help="clips timed at batch 1")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_deploy", help="pruned and exported folders")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--recipe", default=RECIPE, help="the pruned cases' recipe (default: the saved results')")
    parser.add_argument("--table", action="store_true", help="print the saved results as a table and stop")
    parser.add_argument("--note", default="", help="recorded with the results (e.g. how loaded the machine was)")
    parser.add_argument("--readme", action="store_true", help="rewrite README.md's deployment table and stop")
    parser.add_argument("--check-readme", action="store_true", help="exit 1 when README.md's table is stale")
    parser.add_argument("--speed-only", action="store_true",
                        help="time the saved cases again (CPU and wall time, load average), keeping their WER")
    args = parser.parse_args(argv)
    results = load_results(args.out)
    if args.readme or args.check_readme:
        return write_readme(results, check=args.check_readme)
    if args.table:
        write_table(results, args.out.with_name(args.out.stem + "_table.md"))
        print(table(results))
        print(recommendation(results))
        return 0
    from speechprune.export import export
    from speechprune.recipes import recipe_options  # what the recipe resolves to today, saved with the results

    if results["cases"] and results.get("recipe", RECIPE) != args.recipe:
        parser.error(f"{args.out} holds cases pruned with --recipe {results.get('recipe', RECIPE)}: "
                     f"give --recipe {args.recipe} another --out")
    options = recipe_options(args.recipe)
    if results["cases"] and results.get("options", options) != options:
        parser.error(f"{args.out} holds cases pruned with --recipe {args.recipe} as it was then ({results['options']}), "
                     f"not as it is now ({options}): give another --out")
    results.update(recipe=args.recipe, options=options)
    if args.note:
        results["note"] = args.note
    if not args.speed_only:
        results.update(max_samples=args.max_samples)
    results.update(speed_clips=args.speed_clips)
    for model in args.models.split(","):
        for setting in args.settings.split(","):
            folder = prepare(model, setting, args.work, args.recipe)
            for item in args.backends.split(","):
                backend, precision = item.split(":")
                key = f"{model}/{setting}/{backend}/{precision}"
                if key in results["cases"] and (not args.speed_only or "cpu_per_utt_1t" in results["cases"][key]):
                    continue
                target = folder
                if backend != "transformers":
                    target = args.work / f"{folder.name}-{backend}-{precision}"  # the recipe's, for pruned cases
                    stamp = target / "speechprune_export.json"
                    if not stamp.is_file() or stamp.stat().st_mtime < (folder / "config.json").stat().st_mtime:
                        export(folder, to=backend, out=target, quantize=precision, overwrite=True)
                started = time.perf_counter()
                result = run_case(key, target, backend, precision, results.get("max_samples"), args.speed_clips,
                                  speed_only=args.speed_only and key in results["cases"])
                result["seconds"] = round(time.perf_counter() - started, 1)
                result["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
                results["cases"][key] = {**results["cases"].get(key, {}), **result}
                result = results["cases"][key]
                save_results(args.out, results)
                write_table(results, args.out.with_name(args.out.stem + "_table.md"))
                print(f"{key}: WER {result['wer']:.2f}%, {result['seconds_per_utt_1t']:.2f} s/utt (1 thread), "
                      f"{result['size_bytes'] / 1e6:.0f} MB", file=sys.stderr, flush=True)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
